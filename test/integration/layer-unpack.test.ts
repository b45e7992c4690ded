/**
 * The layer unpacker against hostile tars (catalog rows 1–11 of the security reference),
 * with the real native helper. Every scenario runs three ways: as root, as root inside a
 * user namespace that maps only uid 0, and as the unprivileged test user inside a user
 * namespace with its subordinate IDs (how the daemon runs it in the node). "Host" targets
 * are sentinels in a sibling directory of the layer, plus real /etc and /tmp paths whose
 * state is compared before and after.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chownSync, existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CriError, type ErrorKind } from '../../src/errors.js';
import {
  type HelperRunner,
  type LayerIdMap,
  type LayerUnpackLimits,
  prefixRunner,
  spawnRunner,
  type UnpackLayerResult,
  unpackLayer,
} from '../../src/image/layer-unpack.js';
import { MEDIA_TYPE } from '../../src/image/media-types.js';
import * as evil from '../fixtures/evil-tars.js';
import { zstdChunked } from '../fixtures/zstd-chunked.js';

const NATIVE_DIR = fileURLToPath(new URL('../../native', import.meta.url));
const TEST_USER = process.env['ROOTLESS_CRI_TEST_USER'] ?? 'rcri-test';
const TEST_UID = Number(execFileSync('id', ['-u', TEST_USER], { encoding: 'utf8' }).trim());
const TEST_GID = Number(execFileSync('id', ['-g', TEST_USER], { encoding: 'utf8' }).trim());

interface Variant {
  name: string;
  runner: HelperRunner;
  idMap: LayerIdMap;
  /** The host ID a file owned by `id` inside the layer ends up with. */
  hostId: (id: number) => number;
  /** trusted.* xattrs can only be set with CAP_SYS_ADMIN in the initial user namespace. */
  setsTrustedXattrs: boolean;
}

const unprivilegedRunner: HelperRunner = (command, args) => {
  // The daemon user owns the directories it unpacks into; here that user is TEST_USER.
  chownSync(args.at(-1)!, TEST_UID, TEST_GID);
  return prefixRunner([
    'setpriv',
    `--reuid=${TEST_UID}`,
    `--regid=${TEST_GID}`,
    '--clear-groups',
    'unshare',
    '--user',
    '--map-root-user',
    '--map-auto',
  ])(command, args);
};

const VARIANTS: Variant[] = [
  {
    name: 'as root',
    runner: spawnRunner,
    idMap: { uidMax: 65535, gidMax: 65535 },
    hostId: (id) => id,
    setsTrustedXattrs: true,
  },
  {
    name: 'as root in a user namespace mapping only uid 0',
    runner: prefixRunner(['unshare', '--user', '--map-root-user']),
    idMap: { uidMax: 0, gidMax: 0, squashTo: 0 },
    hostId: () => 0,
    setsTrustedXattrs: false,
  },
  {
    name: `as ${TEST_USER} in a user namespace with subordinate IDs`,
    runner: unprivilegedRunner,
    // unshare --map-auto: 0 → the user, 1..65535 → the first /etc/subuid range.
    idMap: { uidMax: 65535, gidMax: 65535 },
    hostId: (id) => (id === 0 ? TEST_UID : Number(subordinateStart()) + id - 1),
    setsTrustedXattrs: false,
  },
];

function subordinateStart(): string {
  const line = readFileSync('/etc/subuid', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${TEST_USER}:`) || l.startsWith(`${TEST_UID}:`));
  return line!.split(':')[1]!;
}

let xattrReader = '';

beforeAll(async () => {
  execFileSync('make', ['-C', NATIVE_DIR, '--quiet', 'build/layer-unpack'], { stdio: 'inherit' });
  // Node has no xattr API; a five-line reader is cheaper than a dependency.
  const dir = await mkdtemp(join(tmpdir(), 'layer-unpack-tools-'));
  xattrReader = join(dir, 'getxattr');
  execFileSync('cc', ['-x', 'c', '-o', xattrReader, '-'], {
    input: `#include <stdio.h>
#include <sys/xattr.h>
int main(int c, char **v) { char b[256]; ssize_t n = c == 3 ? lgetxattr(v[1], v[2], b, sizeof b) : -1;
  if (n < 0) return 1; fwrite(b, 1, (size_t)n, stdout); return 0; }`,
  });
});

function getXattr(path: string, name: string): string | undefined {
  try {
    return execFileSync(xattrReader, [path, name], { encoding: 'utf8' });
  } catch {
    return undefined;
  }
}

function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** What must not change on the host: content (or listing), mode, times, links, owner. */
function snapshot(path: string): string {
  if (!existsSync(path) && !isDanglingLink(path)) return 'absent';
  const st = lstatSync(path, { bigint: true });
  const what = st.isDirectory()
    ? readdirSync(path).sort().join(',')
    : st.isSymbolicLink()
      ? readlinkSync(path)
      : sha256(readFileSync(path));
  return JSON.stringify([what, String(st.mode), String(st.mtimeNs), String(st.nlink), String(st.uid)]);
}

function isDanglingLink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

function isWhiteout(path: string): boolean {
  const st = lstatSync(path);
  return st.isCharacterDevice() && st.rdev === 0;
}

describe.each(VARIANTS)('layer unpack $name', (variant) => {
  let work = '';
  let host = '';
  let dest = '';
  let sentinel = '';

  async function setUp(): Promise<void> {
    work = await mkdtemp(join(tmpdir(), 'layer-unpack-'));
    await chmod(work, 0o755);
    host = join(work, 'host');
    sentinel = join(host, 'sentinel');
    await mkdir(host);
    await writeFile(sentinel, 'sentinel\n', { mode: 0o600 });
    // Deep enough that "../../x" from the layer would still land inside `work`.
    dest = join(work, 'a', 'b', 'layer');
  }

  afterEach(async () => {
    if (work) await rm(work, { recursive: true, force: true });
    work = '';
  });

  async function unpack(
    tar: Buffer,
    options: {
      mediaType?: string;
      limits?: LayerUnpackLimits;
      idMap?: LayerIdMap;
      diffId?: string;
      destDir?: string;
      lowers?: { dirs: readonly string[]; complete: boolean };
    } = {},
  ): Promise<UnpackLayerResult> {
    if (!work) await setUp();
    const blobPath = join(work, `blob-${randomBytes(4).toString('hex')}`);
    await writeFile(blobPath, tar);
    return unpackLayer({
      blobPath,
      layerDigest: sha256(tar),
      mediaType: options.mediaType ?? MEDIA_TYPE.ociLayer,
      destDir: options.destDir ?? dest,
      limits: options.limits,
      idMap: options.idMap ?? variant.idMap,
      diffId: options.diffId,
      runner: variant.runner,
      ...(options.lowers === undefined ? {} : { lowers: options.lowers }),
    });
  }

  async function expectFailure(tar: Buffer, kind: ErrorKind, message: RegExp, options = {}): Promise<void> {
    if (!work) await setUp();
    const before = [snapshot(sentinel), snapshot(host), snapshot('/etc/passwd')];
    const err = await unpack(tar, options).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CriError);
    expect((err as CriError).message).toMatch(message);
    expect((err as CriError).kind).toBe(kind);
    expect(existsSync(dest), 'partial layer removed').toBe(false);
    expect([snapshot(sentinel), snapshot(host), snapshot('/etc/passwd')]).toEqual(before);
  }

  it('unpacks a normal layer with its modes, owners, links, xattrs and times', async () => {
    const tar = evil.normalLayer();
    const result = await unpack(tar, { diffId: sha256(tar) });
    expect(result).toMatchObject({ entries: 16, bytes: tar.length, diffId: sha256(tar), warnings: [] });

    const root = statSync(dest);
    expect(root.mode & 0o7777).toBe(0o755);
    expect(root.mtimeMs).toBe(1_000_000_000_000);
    const tool = statSync(join(dest, 'bin/tool'));
    expect(readFileSync(join(dest, 'bin/tool'), 'utf8')).toBe('#!/bin/sh\necho hi\n');
    expect(tool.mode & 0o7777).toBe(0o4755);
    expect([tool.uid, tool.gid]).toEqual([variant.hostId(0), variant.hostId(0)]);
    expect(tool.mtimeMs).toBe(1_200_000_000_000);
    expect(statSync(join(dest, 'bin')).mtimeMs).toBe(1_100_000_000_000);

    const alias = lstatSync(join(dest, 'bin/alias'));
    expect(alias.isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(dest, 'bin/alias'))).toBe('tool');
    expect([alias.uid, alias.gid]).toEqual([variant.hostId(1000), variant.hostId(1000)]);
    expect(alias.mtimeMs).toBe(1_300_000_000_000);

    const hard = statSync(join(dest, 'bin/hard'));
    expect(hard.ino).toBe(tool.ino);
    expect(hard.nlink).toBe(2);

    const home = statSync(join(dest, 'home/user'));
    expect(home.mode & 0o7777).toBe(0o700);
    expect(home.uid).toBe(variant.hostId(1000));
    expect(home.mtimeMs).toBe(1_400_000_000_000);
    const notes = statSync(join(dest, 'home/user/notes'), { bigint: true });
    expect(Number(notes.mode) & 0o7777).toBe(0o640);
    expect([Number(notes.uid), Number(notes.gid)]).toEqual([variant.hostId(1000), variant.hostId(1001)]);
    expect(notes.mtimeNs).toBe(1_500_000_000_250_000_000n);
    expect(getXattr(join(dest, 'home/user/notes'), 'user.origin')).toBe('layer-test');

    expect(statSync(join(dest, 'tmp')).mode & 0o7777).toBe(0o1777);
    const longDir = join(dest, 'long-' + 'n'.repeat(120));
    expect(readFileSync(join(longDir, 'pax-name'), 'utf8')).toBe('pax');
    expect(readFileSync(join(longDir, 'gnu-name'), 'utf8')).toBe('gnu');
    const pipe = lstatSync(join(dest, 'run/pipe'));
    expect(pipe.isFIFO()).toBe(true);
    expect(pipe.mode & 0o7777).toBe(0o620);
    expect(statSync(join(dest, 'run')).mode & 0o7777).toBe(0o755);
    expect(readFileSync(join(dest, 'etc/replaced'), 'utf8')).toBe('second');
    expect(statSync(join(dest, 'etc/replaced')).mode & 0o7777).toBe(0o600);
  });

  it('keeps names that climb out or are absolute inside the layer (row 1)', async () => {
    expect(existsSync('/etc/x')).toBe(false);
    await unpack(evil.traversalNames());
    expect(readFileSync(join(dest, 'v'), 'utf8')).toBe('v1');
    expect(readFileSync(join(dest, 'v2'), 'utf8')).toBe('v2');
    expect(readFileSync(join(dest, 'etc/x'), 'utf8')).toBe('x');
    expect(readFileSync(join(dest, 'w'), 'utf8')).toBe('w');
    expect(readdirSync(join(work, 'a')).sort()).toEqual(['b']);
    expect(readdirSync(join(work, 'a', 'b')).sort()).toEqual(['layer']);
    expect(existsSync('/etc/x')).toBe(false);
    expect(existsSync('/v2')).toBe(false);
  });

  it.each(['/etc', '../../../etc'])(
    'writes through a symlink to %s inside the layer (row 2)',
    async (target) => {
      const before = snapshot('/etc');
      await unpack(evil.symlinkThenWriteThrough(target));
      expect(readFileSync(join(dest, 'etc/x'), 'utf8')).toBe('through the link');
      expect(readlinkSync(join(dest, 'l'))).toBe(target);
      expect(snapshot('/etc')).toBe(before);
    },
  );

  it('creates the missing in-layer target of a symlink to a host path, like containerd (row 2)', async () => {
    await setUp();
    await unpack(evil.symlinkThenWriteThrough(host));
    expect(readFileSync(join(dest, host, 'x'), 'utf8')).toBe('through the link');
    expect(readdirSync(host)).toEqual(['sentinel']);
  });

  it.each(['/etc/passwd', '../../etc/passwd'])(
    'refuses a hardlink to %s that the layer does not have (row 3)',
    async (target) => {
      await expectFailure(
        evil.hardlinkOut(target),
        'InvalidArgument',
        /not a valid tar: hardlink "h" points at .* not in this layer/,
      );
    },
  );

  it.each(['/etc/passwd', '../../etc/passwd'])(
    'links %s to the in-layer copy, never the host file (row 3)',
    async (target) => {
      const before = snapshot('/etc/passwd');
      await unpack(evil.hardlinkOutWithInRootCopy(target));
      const link = statSync(join(dest, 'h'));
      expect(link.ino).toBe(statSync(join(dest, 'etc/passwd')).ino);
      expect(link.ino).not.toBe(statSync('/etc/passwd').ino);
      expect(readFileSync(join(dest, 'h'), 'utf8')).toContain(':layer:');
      expect(snapshot('/etc/passwd')).toBe(before);
    },
  );

  it('refuses a hardlink to an absolute host sentinel (row 3)', async () => {
    await setUp();
    await expectFailure(evil.hardlinkOut(sentinel), 'InvalidArgument', /not in this layer/);
  });

  it.each(['etc', '.', '/', '../..'])('refuses a hardlink to the directory %s (row 3)', async (target) => {
    const tar = evil.buildTar([
      { name: 'etc/', type: 'dir' },
      { name: 'h', type: 'hardlink', linkname: target },
    ]);
    await expectFailure(tar, 'InvalidArgument', /hardlink "h" points at a directory/);
  });

  it('drops xattrs that would change how the overlay reads the layer', async () => {
    const tar = evil.buildTar([
      {
        name: 'd/',
        type: 'dir',
        pax: { 'SCHILY.xattr.user.overlay.opaque': 'y', 'SCHILY.xattr.user.overlay.redirect': '/etc' },
      },
      { name: 'f', pax: { 'SCHILY.xattr.trusted.overlay.metacopy': '', 'SCHILY.xattr.user.kept': 'yes' } },
    ]);
    const result = await unpack(tar);
    expect(getXattr(join(dest, 'd'), 'user.overlay.opaque')).toBeUndefined();
    expect(getXattr(join(dest, 'd'), 'user.overlay.redirect')).toBeUndefined();
    expect(getXattr(join(dest, 'f'), 'user.kept')).toBe('yes');
    expect(result.warnings).toEqual([
      'dropped reserved xattr user.overlay.opaque on "d/"',
      'dropped reserved xattr user.overlay.redirect on "d/"',
      'dropped reserved xattr trusted.overlay.metacopy on "f"',
    ]);
  });

  it('re-resolves every entry, so a dir swapped for a symlink to / cannot redirect writes (row 4)', async () => {
    const unique = `rcri-layer-unpack-${randomBytes(6).toString('hex')}`;
    await unpack(evil.dirSwappedForSymlink('/', `tmp/${unique}`));
    expect(existsSync(join('/tmp', unique))).toBe(false);
    expect(readFileSync(join(dest, 'tmp', unique), 'utf8')).toBe('through the swapped dir');
    expect(readlinkSync(join(dest, 'foo'))).toBe('/');
    expect(existsSync(join(dest, 'keep'))).toBe(false);
  });

  it('keeps a dir swapped for a symlink to a host directory inside the layer (row 4)', async () => {
    await setUp();
    await unpack(evil.dirSwappedForSymlink(host, 'x'));
    expect(readFileSync(join(dest, host, 'x'), 'utf8')).toBe('through the swapped dir');
    expect(readdirSync(host)).toEqual(['sentinel']);
  });

  it.each([
    ['a host sentinel', 'sentinel'],
    ['/etc/passwd', '/etc/passwd'],
  ])('never chmods through a hardlink to a symlink pointing at %s (row 5)', async (_label, which) => {
    if (!work) await setUp();
    const target = which === 'sentinel' ? sentinel : which;
    const before = snapshot(target);
    const result = await unpack(evil.hardlinkToOutwardSymlink(target));
    expect(result.warnings).toEqual([]);
    expect(lstatSync(join(dest, 'h')).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(dest, 'h'))).toBe(target);
    expect(lstatSync(join(dest, 's')).isFile()).toBe(true);
    expect(statSync(join(dest, 's')).mode & 0o7777).toBe(0o777);
    expect(snapshot(target)).toBe(before);
  });

  it('ignores entries that would replace the root itself (row 6)', async () => {
    await setUp();
    const result = await unpack(evil.rootSymlinks(host));
    const root = lstatSync(dest);
    expect(root.isDirectory()).toBe(true);
    expect(root.mode & 0o7777).toBe(0o755);
    expect(readdirSync(dest)).toEqual(['after']);
    expect(result.warnings).toHaveLength(5);
    for (const warning of result.warnings) expect(warning).toMatch(/cannot replace the layer root/);
    expect(readdirSync(host)).toEqual(['sentinel']);
  });

  it.each(['.wh..', '.wh...', 'etc/.wh..', 'etc/.wh...', '.wh.', '.wh.x/y'])(
    'rejects the whiteout %s (row 7)',
    async (name) => {
      await expectFailure(evil.whiteoutTraversal(name), 'InvalidArgument', /invalid whiteout/);
      expect(existsSync(work)).toBe(true);
      expect(readdirSync(work).sort()).toEqual(expect.arrayContaining(['a', 'host']));
    },
  );

  it('applies a whiteout reached through a symlink inside the layer only (row 7)', async () => {
    const before = snapshot('/etc');
    await unpack(evil.whiteoutThroughSymlink());
    expect(isWhiteout(join(dest, 'etc/x'))).toBe(true);
    expect(snapshot('/etc')).toBe(before);
  });

  it('marks opaque dirs and whiteouts for the overlay, keeping same-layer siblings (row 8)', async () => {
    await unpack(evil.opaqueAfterSiblings());
    expect(getXattr(join(dest, 'd'), 'user.overlay.opaque')).toBe('y');
    expect(getXattr(join(dest, 'd'), 'trusted.overlay.opaque')).toBe(
      variant.setsTrustedXattrs ? 'y' : undefined,
    );
    expect(readFileSync(join(dest, 'd/new'), 'utf8')).toBe('new in this layer');
    expect(statSync(join(dest, 'd/sub')).isDirectory()).toBe(true);
    expect(existsSync(join(dest, 'd/.wh..wh..opq'))).toBe(false);
    expect(isWhiteout(join(dest, 'gone'))).toBe(true);
    expect(isWhiteout(join(dest, 'e/old'))).toBe(true);
    expect(readdirSync(dest).sort()).toEqual(['d', 'e', 'gone']);
  });

  it('produces a layer that kernel overlay (userxattr) and fuse-overlayfs read correctly', async () => {
    await unpack(evil.opaqueAfterSiblings());
    const lower = join(work, 'lower');
    for (const dir of ['d', 'e']) await mkdir(join(lower, dir), { recursive: true });
    for (const file of ['d/old', 'e/old', 'e/kept', 'gone', 'kept']) await writeFile(join(lower, file), file);
    const expected = ['d/new', 'd/sub', 'e/kept', 'kept'];
    const visible = (root: string) =>
      ['d/new', 'd/sub', 'd/old', 'e/old', 'e/kept', 'gone', 'kept'].filter((p) => existsSync(join(root, p)));

    const merged = join(work, 'merged');
    await mkdir(merged);
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${dest}:${lower},userxattr`, merged]);
    try {
      expect(visible(merged)).toEqual(expected);
    } finally {
      execFileSync('umount', [merged]);
    }

    for (const dir of ['upper', 'fuse-work']) await mkdir(join(work, dir));
    execFileSync('fuse-overlayfs', [
      '-o',
      `lowerdir=${dest}:${lower},upperdir=${join(work, 'upper')},workdir=${join(work, 'fuse-work')}`,
      merged,
    ]);
    try {
      expect(visible(merged)).toEqual(expected);
    } finally {
      execFileSync('fusermount3', ['-u', merged]);
    }
  });

  it('skips device nodes with a warning and creates fifos (row 9)', async () => {
    const result = await unpack(evil.deviceNodes());
    expect(result.warnings).toEqual([
      'skipped device node "dev/null": devices cannot be created without privileges',
      'skipped device node "dev/sda": devices cannot be created without privileges',
    ]);
    expect(readdirSync(join(dest, 'dev'))).toEqual(['fifo']);
    expect(lstatSync(join(dest, 'dev/fifo')).isFIFO()).toBe(true);
  });

  it('refuses owners outside the mapped range unless squashing is configured (row 9)', async () => {
    const strict = { uidMax: variant.idMap.uidMax, gidMax: variant.idMap.gidMax };
    await expectFailure(
      evil.foreignOwner(70000),
      'InvalidArgument',
      /owned by 70000:70000, outside the mapped range/,
      {
        idMap: strict,
      },
    );
    await unpack(evil.foreignOwner(70000), { idMap: { ...strict, squashTo: 0 } });
    const st = statSync(join(dest, 'f'));
    expect([st.uid, st.gid]).toEqual([variant.hostId(0), variant.hostId(0)]);
  });

  it('stops a decompression bomb at the byte limit and removes the partial layer (row 10)', async () => {
    const bomb = evil.gzipBomb(64 * 1024 * 1024);
    expect(bomb.length).toBeLessThan(128 * 1024);
    const limits = { maxBytes: 4 * 1024 * 1024, maxEntries: 100, maxDepth: 64 };
    await expectFailure(bomb, 'ResourceExhausted', /larger than the limit of 4194304 bytes/, {
      mediaType: MEDIA_TYPE.ociLayerGzip,
      limits,
    });
  });

  it.each(['pax', 'gnu'] as const)(
    'stops a 100k-deep path (%s) at the depth limit (row 10)',
    async (longNames) => {
      await expectFailure(
        evil.deepPath(100_000, longNames),
        'ResourceExhausted',
        /deeper than the limit of 256/,
      );
    },
  );

  it('stops at the entry limit (row 10)', async () => {
    const limits = { maxBytes: 1 << 30, maxEntries: 100, maxDepth: 8 };
    await expectFailure(evil.manyEntries(101), 'ResourceExhausted', /more than the limit of 100 entries/, {
      limits,
    });
    const result = await unpack(evil.manyEntries(100), { limits });
    expect(result.entries).toBe(100);
    expect(readdirSync(dest)).toHaveLength(100);
  });

  it.each([
    ['cut inside file data', evil.truncatedInData(), /truncated archive: data of "f" ends early/],
    [
      'without an end-of-archive marker',
      evil.missingEndMarker(),
      /truncated archive: it ends without an end-of-archive marker/,
    ],
    ['not a tar at all', evil.notATar(), /not a valid tar: invalid tar header/],
    ['with a bad header checksum', evil.badChecksum(), /checksum mismatch/],
    ['with a negative size', evil.forgedSize('negative'), /negative size/],
    ['with a size that overflows 64 bits', evil.forgedSize('overflow'), /size overflows/],
    ['with an 8 GiB size and 4 bytes of data', evil.forgedSize('huge-octal'), /truncated archive/],
  ])('rejects a tar %s without hanging (row 11)', { timeout: 10_000 }, async (_label, tar, message) => {
    await expectFailure(tar, 'InvalidArgument', message);
  });

  it('refuses a forged size bigger than the byte limit before reading it (row 11)', async () => {
    const limits = { maxBytes: 1 << 20, maxEntries: 10, maxDepth: 8 };
    await expectFailure(evil.forgedSize('huge-octal'), 'ResourceExhausted', /larger than the limit/, {
      limits,
    });
  });

  it('verifies the diff_id while streaming (row 12)', async () => {
    const tar = evil.normalLayer();
    const gzipped = gzipSync(tar);
    const result = await unpack(gzipped, { mediaType: MEDIA_TYPE.dockerLayerGzip, diffId: sha256(tar) });
    expect(result.diffId).toBe(sha256(tar));
    await rm(dest, { recursive: true });
    await expectFailure(gzipped, 'InvalidArgument', /does not match|diff_id is sha256:0{64}/, {
      mediaType: MEDIA_TYPE.ociLayerGzip,
      diffId: `sha256:${'0'.repeat(64)}`,
    });
  });

  it('unpacks zstd and zstd:chunked layers, verifying the diff_id of what they decompress to', async () => {
    const tar = evil.normalLayer();
    // zstd:chunked: many frames plus skippable TOC, tar-split and footer frames.
    const pieces: Buffer[] = [];
    for (let at = 0; at < tar.length; at += 1536) pieces.push(tar.subarray(at, at + 1536));
    const blobs = { zstd: zstdCompressSync(tar), 'zstd:chunked': zstdChunked(pieces).blob };
    for (const [name, blob] of Object.entries(blobs)) {
      const result = await unpack(blob, { mediaType: MEDIA_TYPE.ociLayerZstd, diffId: sha256(tar) });
      expect(result, name).toMatchObject({ entries: 16, bytes: tar.length, diffId: sha256(tar) });
      expect(readFileSync(join(dest, 'bin/tool'), 'utf8'), name).toBe('#!/bin/sh\necho hi\n');
      await rm(dest, { recursive: true });
      await expectFailure(blob, 'InvalidArgument', /diff_id is sha256:0{64}/, {
        mediaType: MEDIA_TYPE.ociLayerZstd,
        diffId: `sha256:${'0'.repeat(64)}`,
      });
    }
  });

  it('rejects corrupt and truncated zstd data', async () => {
    const zstd = zstdCompressSync(evil.normalLayer());
    const corrupt = Buffer.from(zstd);
    corrupt.fill(0x41, 0, 4); // the frame magic
    const mediaType = MEDIA_TYPE.ociLayerZstd;
    const notZstd = /is not valid application\/vnd.oci.image.layer.v1.tar\+zstd data/;
    await expectFailure(corrupt, 'InvalidArgument', notZstd, { mediaType });
    await expectFailure(zstd.subarray(0, zstd.length - 20), 'InvalidArgument', notZstd, { mediaType });
  });

  it('reads a gzip blob of several members as one tar stream, and refuses anything else after the last member', async () => {
    const tar = evil.normalLayer();
    const half = Math.floor(tar.length / 1024) * 512;
    const members = Buffer.concat([gzipSync(tar.subarray(0, half)), gzipSync(tar.subarray(half))]);
    const mediaType = MEDIA_TYPE.ociLayerGzip;
    const result = await unpack(members, { mediaType, diffId: sha256(tar) });
    expect(result).toMatchObject({ entries: 16, bytes: tar.length, diffId: sha256(tar) });
    await rm(dest, { recursive: true });
    // Go's gzip reader (containerd) refuses trailing bytes that are not another member, too.
    const trailing = Buffer.concat([gzipSync(tar), Buffer.alloc(512)]);
    await expectFailure(trailing, 'InvalidArgument', /not gzip follows the end of the gzip stream/, {
      mediaType,
    });
    await expectFailure(gzipSync(tar).subarray(0, 100), 'InvalidArgument', /gzip stream ends early/, {
      mediaType,
    });
  });

  it('rejects corrupt gzip data', async () => {
    const gzipped = gzipSync(evil.normalLayer());
    gzipped.fill(0x41, 40, 80);
    await expectFailure(
      gzipped,
      'InvalidArgument',
      /is not valid application\/vnd.oci.image.layer.v1.tar\+gzip data/,
      {
        mediaType: MEDIA_TYPE.ociLayerGzip,
      },
    );
  });

  it('refuses a 250 x 40-character directory chain with a short InvalidArgument, leaving nothing (row 45)', async () => {
    await setUp();
    const err = await unpack(evil.deepDirectories(250, 40)).then(
      () => undefined,
      (e: unknown) => e as CriError,
    );
    expect(err?.kind).toBe('InvalidArgument');
    expect(err?.message).toMatch(/is \d+ bytes long, over the limit of \d+ bytes/);
    expect(err?.message.length).toBeLessThan(400);
    expect(existsSync(dest), 'partial layer removed').toBe(false);
  });

  it('unpacks a deep chain within the path budget, and honours a lower configured budget (row 45)', async () => {
    const result = await unpack(evil.deepDirectories(80, 40));
    expect(result.entries).toBe(81);
    await rm(dest, { recursive: true });
    await expectFailure(evil.deepDirectories(80, 40), 'InvalidArgument', /over the limit of 1000 bytes/, {
      limits: { maxBytes: 1 << 30, maxEntries: 1000, maxDepth: 256, maxPathBytes: 1000 },
    });
  });

  describe('through the layers below (row 51)', () => {
    let lower = '';
    async function withBase(): Promise<void> {
      await setUp();
      lower = join(work, 'lower', 'layer');
      await unpack(evil.mergedUsrBase(), { destDir: lower });
    }

    it('resolves implicit parents through a merged-/usr base, like rootless containerd', async () => {
      await withBase();
      const hostUsrLib = snapshot('/usr/lib');
      const result = await unpack(evil.overMergedUsr(), { lowers: { dirs: [lower], complete: true } });
      expect(result.warnings).toEqual([]);
      // The layer itself: everything under usr/, none of the base's symlinks shadowed.
      expect(readdirSync(dest).sort()).toEqual(['usr']);
      expect(readdirSync(join(dest, 'usr')).sort()).toEqual(['bin', 'lib']);
      expect(readdirSync(join(dest, 'usr/lib')).sort()).toEqual(['libbar.so', 'libfoo.so', 'old.so', 'sub']);
      expect(readFileSync(join(dest, 'usr/lib/libfoo.so'), 'utf8')).toBe('foo');
      expect(readFileSync(join(dest, 'usr/lib/libbar.so'), 'utf8')).toBe('bar');
      expect(readFileSync(join(dest, 'usr/lib/sub/deep/x'), 'utf8')).toBe('x');
      expect(isWhiteout(join(dest, 'usr/lib/old.so'))).toBe(true);
      expect(getXattr(join(dest, 'usr/lib'), 'user.overlay.opaque')).toBeUndefined();
      expect(getXattr(join(dest, 'usr/bin'), 'user.overlay.opaque')).toBe('y');
      expect(readdirSync(join(dest, 'usr/bin')).sort()).toEqual(['escape', 'tool']);
      // Directories copied up take the owner and mode of the one below; new ones are 0755.
      const sub = statSync(join(dest, 'usr/lib/sub'));
      expect(sub.mode & 0o7777).toBe(0o750);
      expect([sub.uid, sub.gid]).toEqual([variant.hostId(7), variant.hostId(8)]);
      expect(statSync(join(dest, 'usr/lib/sub/deep')).mode & 0o7777).toBe(0o755);
      expect(snapshot('/usr/lib')).toBe(hostUsrLib);

      const merged = join(work, 'merged');
      await mkdir(merged);
      const check = () => {
        expect(readlinkSync(join(merged, 'lib'))).toBe('usr/lib');
        expect(readFileSync(join(merged, 'lib/libfoo.so'), 'utf8')).toBe('foo');
        expect(readFileSync(join(merged, 'usr/lib/libbar.so'), 'utf8')).toBe('bar');
        expect(readFileSync(join(merged, 'lib/sub/deep/x'), 'utf8')).toBe('x');
        expect(readFileSync(join(merged, 'usr/lib/libc.so'), 'utf8')).toBe('libc');
        expect(existsSync(join(merged, 'usr/lib/old.so'))).toBe(false);
        expect(readdirSync(join(merged, 'usr/bin')).sort()).toEqual(['escape', 'tool']);
      };
      execFileSync('mount', [
        '-t',
        'overlay',
        'overlay',
        '-o',
        `lowerdir=${dest}:${lower},userxattr`,
        merged,
      ]);
      try {
        check();
      } finally {
        execFileSync('umount', [merged]);
      }
      for (const dir of ['upper', 'fuse-work']) await mkdir(join(work, dir));
      execFileSync('fuse-overlayfs', [
        '-o',
        `lowerdir=${dest}:${lower},upperdir=${join(work, 'upper')},workdir=${join(work, 'fuse-work')}`,
        merged,
      ]);
      try {
        check();
      } finally {
        execFileSync('fusermount3', ['-u', merged]);
      }
    });

    it('creates a real directory where a middle layer whited the symlink out', async () => {
      await withBase();
      const middle = join(work, 'middle', 'layer');
      await unpack(evil.buildTar([{ name: '.wh.lib' }]), {
        destDir: middle,
        lowers: { dirs: [lower], complete: true },
      });
      await unpack(evil.buildTar([{ name: 'lib/x', content: 'x' }]), {
        lowers: { dirs: [middle, lower], complete: true },
      });
      expect(readdirSync(dest)).toEqual(['lib']);
      expect(lstatSync(join(dest, 'lib')).isDirectory()).toBe(true);
      expect(getXattr(join(dest, 'lib'), 'user.overlay.opaque')).toBeUndefined();
      expect(readFileSync(join(dest, 'lib/x'), 'utf8')).toBe('x');
    });

    it('replaces a lower symlink with an explicit directory entry, like containerd', async () => {
      await withBase();
      await unpack(
        evil.buildTar([
          { name: 'lib/', type: 'dir' },
          { name: 'lib/y', content: 'y' },
        ]),
        { lowers: { dirs: [lower], complete: true } },
      );
      expect(readdirSync(dest)).toEqual(['lib']);
      expect(readdirSync(join(dest, 'lib'))).toEqual(['y']);
    });

    it('keeps hiding the layers below where a directory replaces its own whiteout', async () => {
      await withBase();
      await unpack(
        evil.buildTar([
          { name: '.wh.usr' },
          { name: 'usr/bin/x', content: 'x' },
          { name: '.wh.etc' },
          { name: 'etc/', type: 'dir' },
        ]),
        { lowers: { dirs: [lower], complete: true } },
      );
      expect(getXattr(join(dest, 'usr'), 'user.overlay.opaque')).toBe('y');
      expect(getXattr(join(dest, 'etc'), 'user.overlay.opaque')).toBe('y');
      expect(readdirSync(join(dest, 'usr'))).toEqual(['bin']);
    });

    it('refuses a symlink loop in the layers below', async () => {
      await withBase();
      await expectFailure(
        evil.buildTar([{ name: 'loop1/x', content: 'x' }]),
        'InvalidArgument',
        /too many levels of symbolic links/,
        { lowers: { dirs: [lower], complete: true } },
      );
    });

    it('needs no layers below while every parent is in the layer or hidden by it', async () => {
      await setUp();
      const result = await unpack(
        evil.buildTar([
          { name: 'a/', type: 'dir' },
          { name: 'a/b', content: 'b' },
          { name: 'top', content: 't' },
          { name: 'l', type: 'symlink', linkname: 'a' },
          { name: 'l/c', content: 'c' },
          { name: '.wh.gone' },
          { name: 'gone/new', content: 'n' },
        ]),
        { lowers: { dirs: [], complete: false } },
      );
      expect(result.entries).toBe(7);
      expect(readFileSync(join(dest, 'a/c'), 'utf8')).toBe('c');
      expect(getXattr(join(dest, 'gone'), 'user.overlay.opaque')).toBe('y');
    });

    it('stops, leaving nothing, when an entry needs layers below that are not complete yet', async () => {
      await expectFailure(
        evil.buildTar([
          { name: 'a', content: 'a' },
          { name: 'lib/x', content: 'x' },
        ]),
        'Unavailable',
        /cannot be unpacked yet: "lib\/x" needs the layers below this one/,
        { lowers: { dirs: [], complete: false } },
      );
    });
  });
});

describe('layer unpack API', () => {
  let work = '';
  afterEach(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });
  const idMap = { uidMax: 65535, gidMax: 65535 };

  it('refuses unknown media types', async () => {
    work = await mkdtemp(join(tmpdir(), 'layer-unpack-api-'));
    const base = { blobPath: join(work, 'none'), layerDigest: 'sha256:' + 'a'.repeat(64), idMap };
    const other = unpackLayer({ ...base, mediaType: 'application/x-tar-but-not', destDir: join(work, 'o') });
    await expect(other).rejects.toMatchObject({ kind: 'InvalidArgument' });
    expect(readdirSync(work)).toEqual([]);
  });

  it('never unpacks into, or removes, a directory it did not create', async () => {
    work = await mkdtemp(join(tmpdir(), 'layer-unpack-api-'));
    const destDir = join(work, 'existing');
    await mkdir(destDir);
    await writeFile(join(destDir, 'precious'), 'keep');
    await writeFile(join(work, 'blob'), evil.normalLayer());
    const attempt = unpackLayer({
      blobPath: join(work, 'blob'),
      layerDigest: 'sha256:' + 'b'.repeat(64),
      mediaType: MEDIA_TYPE.ociLayer,
      destDir,
      idMap,
    });
    await expect(attempt).rejects.toMatchObject({ kind: 'FailedPrecondition' });
    expect(readFileSync(join(destDir, 'precious'), 'utf8')).toBe('keep');
  });

  it('cancels a running unpack and removes the partial layer', async () => {
    work = await mkdtemp(join(tmpdir(), 'layer-unpack-api-'));
    await writeFile(join(work, 'blob'), evil.gzipBomb(128 * 1024 * 1024));
    const controller = new AbortController();
    const destDir = join(work, 'layer');
    const attempt = unpackLayer({
      blobPath: join(work, 'blob'),
      layerDigest: 'sha256:' + 'c'.repeat(64),
      mediaType: MEDIA_TYPE.ociLayerGzip,
      destDir,
      idMap,
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(), 50);
    await expect(attempt).rejects.toMatchObject({ kind: 'Cancelled' });
    expect(existsSync(destDir)).toBe(false);
  });

  it('reports a missing helper binary clearly', async () => {
    work = await mkdtemp(join(tmpdir(), 'layer-unpack-api-'));
    await writeFile(join(work, 'blob'), evil.normalLayer());
    const attempt = unpackLayer({
      blobPath: join(work, 'blob'),
      layerDigest: 'sha256:' + 'd'.repeat(64),
      mediaType: MEDIA_TYPE.ociLayer,
      destDir: join(work, 'layer'),
      idMap,
      helperPath: join(work, 'no-such-helper'),
    });
    await expect(attempt).rejects.toMatchObject({
      kind: 'Internal',
      message: expect.stringMatching(/npm run build/),
    });
    expect(existsSync(join(work, 'layer'))).toBe(false);
  });
});
