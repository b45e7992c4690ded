import { execFileSync } from 'node:child_process';
import { link, mkdir, mkdtemp, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CallContext } from '../../src/api/handlers.js';
import {
  createImageFsInfoHandler,
  type DirectoryUsage,
  measureDirectory,
  measureExistingDirectory,
  poolAccess,
  turnTakingSyncAccess,
} from '../../src/image/image-fs-info.js';
import { silentLogger } from '../../src/log.js';
import { makeDeepTree } from '../fixtures/deep-tree.js';

const ctx: CallContext = {
  method: 'ImageFsInfo',
  requestId: '0',
  logger: silentLogger(),
  signal: new AbortController().signal,
  deadline: undefined,
};

/** GNU du as the independent oracle: allocated bytes and inodes, hard links once, no symlink following, one filesystem. */
function du(dir: string): { bytes: bigint; inodes: bigint } {
  const bytes = execFileSync('du', ['-s', '-x', '-B1', dir]).toString().split('\t')[0]!;
  const inodes = execFileSync('du', ['-s', '-x', '--inodes', dir]).toString().split('\t')[0]!;
  return { bytes: BigInt(bytes), inodes: BigInt(inodes) };
}

describe.each([
  ['through the libuv pool', poolAccess],
  ['with synchronous calls', turnTakingSyncAccess],
])('measureDirectory %s', (_how, access) => {
  let root: string;
  let store: string;
  let outside: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'image-fs-info-'));
    store = join(root, 'store');
    outside = join(root, 'outside');
    await mkdir(join(store, 'blobs', 'sha256'), { recursive: true });
    await mkdir(join(store, 'layers', 'a', 'usr', 'bin'), { recursive: true });
    await mkdir(outside);
    await writeFile(join(store, 'blobs', 'sha256', 'one'), Buffer.alloc(100_000, 1));
    await writeFile(join(store, 'blobs', 'sha256', 'two'), Buffer.alloc(5_000, 2));
    await writeFile(join(store, 'layers', 'a', 'usr', 'bin', 'tool'), Buffer.alloc(300_000, 3));
    // A sparse file: 10 MB apparent, almost nothing allocated.
    await writeFile(join(store, 'layers', 'a', 'sparse'), '');
    await truncate(join(store, 'layers', 'a', 'sparse'), 10_000_000);
    // A big file outside, reachable only through symlinks that must not be followed.
    await writeFile(join(outside, 'big'), Buffer.alloc(2_000_000, 4));
    await symlink(join(outside, 'big'), join(store, 'layers', 'a', 'link-to-big'));
    await symlink(outside, join(store, 'layers', 'a', 'link-to-dir'));
  });

  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('counts allocated bytes and inodes like du, never through symlinks', async () => {
    const usage = await measureDirectory(store, access);
    expect(usage).toEqual(du(store));
    // The 2 MB file behind the links is not in it, and the sparse file counts its blocks only.
    expect(usage.bytes).toBeLessThan(2_000_000n);
    expect(usage.bytes).toBeGreaterThanOrEqual(405_000n);
  });

  it('counts a hard-linked file once', async () => {
    const before = await measureDirectory(store, access);
    await link(join(store, 'blobs', 'sha256', 'one'), join(store, 'layers', 'a', 'usr', 'bin', 'one-again'));
    const after = await measureDirectory(store, access);
    expect(after).toEqual(before);
    expect(after).toEqual(du(store));
    await writeFile(join(store, 'blobs', 'sha256', 'three'), Buffer.alloc(50_000, 5));
    const grown = await measureDirectory(store, access);
    expect(grown.inodes).toBe(before.inodes + 1n);
    expect(grown.bytes).toBeGreaterThanOrEqual(before.bytes + 50_000n);
    expect(grown).toEqual(du(store));
  });

  it('skips what lies beyond PATH_MAX instead of failing, and says how much it skipped (row 45)', async () => {
    const deep = join(root, 'deep');
    await mkdir(deep);
    makeDeepTree(deep, 150);
    const usage = await measureDirectory(deep, access);
    expect(usage.inodes).toBeGreaterThan(90n);
    expect(usage.skipped).toBeGreaterThan(0);
    expect(usage.firstSkipError).toMatch(/ENAMETOOLONG/);
    execFileSync('rm', ['-rf', deep]);
  });

  it('reports zero for a directory that does not exist yet', async () => {
    expect(await measureDirectory(join(root, 'not-there'), access)).toEqual({ bytes: 0n, inodes: 0n });
  });

  it('measureExistingDirectory: the same figures, and undefined for a missing directory or a file', async () => {
    expect(await measureExistingDirectory(store, access)).toEqual(await measureDirectory(store, access));
    expect(await measureExistingDirectory(join(root, 'not-there'), access)).toBeUndefined();
    await writeFile(join(root, 'a-file'), 'x');
    expect(await measureExistingDirectory(join(root, 'a-file'), access)).toBeUndefined();
  });
});

describe('turnTakingSyncAccess', () => {
  let root: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'image-fs-info-sliced-'));
    for (let d = 0; d < 20; d++) {
      await mkdir(join(root, `d${d}`));
      await Promise.all(Array.from({ length: 500 }, (_, f) => writeFile(join(root, `d${d}`, `f${f}`), '')));
    }
  });

  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('gives the event loop turns while it walks, not only before it starts', async () => {
    // 10,000 lstat calls are hundreds of 32-call turns; a walk that never yielded would run to
    // its end in microtasks, before any setImmediate callback.
    let turns = 0;
    let walking = true;
    const spin = () => {
      if (!walking) return;
      turns += 1;
      setImmediate(spin);
    };
    setImmediate(spin);
    const usage = await measureDirectory(root, turnTakingSyncAccess);
    walking = false;
    expect(usage.inodes).toBe(10_021n);
    expect(turns).toBeGreaterThanOrEqual(3);
  });
});

describe('ImageFsInfo handler', () => {
  let root: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'image-fs-info-handler-'));
    await mkdir(join(root, 'images'));
    await writeFile(join(root, 'images', 'blob'), Buffer.alloc(70_000, 1));
  });

  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('reports the image store with a nanosecond timestamp and its directory as mountpoint', async () => {
    const before = BigInt(Date.now()) * 1_000_000n;
    const handler = createImageFsInfoHandler({ imageDir: join(root, 'images') });
    const response = await handler({}, ctx);
    const expected = du(join(root, 'images'));
    expect(response.container_filesystems).toEqual([]);
    expect(response.image_filesystems).toHaveLength(1);
    const [usage] = response.image_filesystems!;
    expect(usage!.fs_id).toEqual({ mountpoint: join(root, 'images') });
    expect(usage!.used_bytes).toEqual({ value: expected.bytes.toString() });
    expect(usage!.inodes_used).toEqual({ value: expected.inodes.toString() });
    const timestamp = BigInt(usage!.timestamp as string);
    expect(timestamp).toBeGreaterThanOrEqual(before);
    expect(timestamp).toBeLessThanOrEqual(BigInt(Date.now()) * 1_000_000n);
  });

  it('reports the writable-layers directory as the container filesystem, and 0 while it is missing', async () => {
    const handler = createImageFsInfoHandler({
      imageDir: join(root, 'images'),
      containerDir: join(root, 'rw'),
    });
    const response = await handler({}, ctx);
    expect(response.container_filesystems).toEqual([
      {
        timestamp: expect.any(String),
        fs_id: { mountpoint: join(root, 'rw') },
        used_bytes: { value: '0' },
        inodes_used: { value: '0' },
      },
    ]);
  });

  it('reuses a walk for the cache period and shares one walk between concurrent calls', async () => {
    let now = 1_000_000;
    const walks: string[] = [];
    let bytes = 4096n;
    const measure = async (dir: string): Promise<DirectoryUsage> => {
      walks.push(dir);
      await new Promise((r) => setTimeout(r, 10));
      return { bytes, inodes: 1n };
    };
    const handler = createImageFsInfoHandler({
      imageDir: '/images',
      cacheTtlMs: 5_000,
      now: () => now,
      measure,
    });
    const [a, b] = await Promise.all([handler({}, ctx), handler({}, ctx)]);
    expect(walks).toEqual(['/images']);
    expect(a).toEqual(b);
    expect(a.image_filesystems![0]!.timestamp).toBe((1_000_000n * 1_000_000n).toString());
    bytes = 8192n;
    now += 4_999;
    expect((await handler({}, ctx)).image_filesystems![0]!.used_bytes).toEqual({ value: '4096' });
    expect(walks).toHaveLength(1);
    now += 1;
    expect((await handler({}, ctx)).image_filesystems![0]!.used_bytes).toEqual({ value: '8192' });
    expect(walks).toHaveLength(2);
  });

  it('a failed walk fails this call only; the next call walks again', async () => {
    let fail = true;
    const handler = createImageFsInfoHandler({
      imageDir: '/images',
      measure: async () => {
        if (fail) throw new Error('EIO reading /images');
        return { bytes: 1n, inodes: 1n };
      },
    });
    await expect(handler({}, ctx)).rejects.toThrow('EIO');
    fail = false;
    expect((await handler({}, ctx)).image_filesystems![0]!.inodes_used).toEqual({ value: '1' });
  });
});
