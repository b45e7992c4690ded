import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CancelledError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from '../../src/errors.js';
import { ContentStore, DownloadLimiter, type IngestProgress } from '../../src/image/content-store.js';
import type { Descriptor } from '../../src/image/manifest.js';
import { parseImageReference } from '../../src/image/reference.js';
import { RegistryClient } from '../../src/image/registry-client.js';
import { FakeRegistry, sha256 } from '../fakes/fake-registry.js';

let root: string;
let store: ContentStore;
let registry: FakeRegistry;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'content-store-'));
  store = new ContentStore({ root });
  await store.init();
  registry = await FakeRegistry.start();
});

afterEach(async () => {
  await registry.close();
  await rm(root, { recursive: true, force: true });
});

async function caught(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

async function leftovers(): Promise<{ blobs: string[]; ingest: string[] }> {
  return { blobs: await readdir(store.blobsDir), ingest: await readdir(store.ingestDir) };
}

function session(path: string) {
  return new RegistryClient().session(parseImageReference(`${registry.host}/${path}`));
}

function blobRequests(digest: string) {
  return registry.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${digest}`));
}

describe('ingest from the registry', () => {
  it('stores a layer under content/sha256/<hex> and reports it present', async () => {
    const image = registry.pushImage('app', 'v1', { layers: ['hello layer'] });
    const s = session('app:v1');
    const resolved = await s.resolve();
    const layer = resolved.manifest.layers[0]!;
    const result = await store.ingest(layer.digest, layer.size, (signal) => s.openBlob(layer, { signal }));
    expect(result).toEqual({
      digest: layer.digest,
      size: layer.size,
      path: join(root, 'content', 'sha256', layer.digest.slice(7)),
      downloaded: true,
    });
    expect(await readFile(result.path)).toEqual(image.layers[0]!.bytes);
    expect(await store.has(layer.digest)).toBe(true);
    expect((await leftovers()).ingest).toEqual([]);
    // Present already: no second download.
    const again = await store.ingest(layer.digest, layer.size, (signal) => s.openBlob(layer, { signal }));
    expect(again.downloaded).toBe(false);
    expect(blobRequests(layer.digest)).toHaveLength(1);
  });

  it('rejects a digest mismatch and leaves nothing behind', async () => {
    const image = registry.pushImage('app', 'v1', { layers: ['the real layer'] });
    const layer = image.layers[0]!;
    registry.intercept((_req, res, url) => {
      if (!url.pathname.endsWith(layer.digest)) return false;
      res.writeHead(200, { 'content-length': layer.size }).end(Buffer.alloc(layer.size, 0x2a));
      return true;
    });
    const s = session('app:v1');
    const descriptor = layer as unknown as Descriptor;
    const error = await caught(
      store.ingest(layer.digest, layer.size, (signal) => s.openBlob(descriptor, { signal })),
    );
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toBe(
      `blob ${layer.digest} from registry ${registry.url}: digest mismatch (got ${sha256(Buffer.alloc(layer.size, 0x2a))})`,
    );
    expect(await leftovers()).toEqual({ blobs: [], ingest: [] });
    expect(await store.has(layer.digest)).toBe(false);
  });

  it('rejects a size mismatch (short or long) and leaves nothing behind', async () => {
    const data = Buffer.from('0123456789');
    const digest = sha256(data);
    const short = await caught(store.ingest(digest, 11, Readable.from([data]), { origin: 'registry test' }));
    expect(short.message).toBe(
      `blob ${digest} from registry test: size mismatch (truncated: got 10 of 11 bytes)`,
    );
    const long = await caught(store.ingest(digest, 9, Readable.from([data]), { origin: 'registry test' }));
    expect(long.message).toBe(
      `blob ${digest} from registry test: size mismatch (more than the expected 9 bytes)`,
    );
    expect(await leftovers()).toEqual({ blobs: [], ingest: [] });
  });

  it('rejects a truncated body from the registry and leaves nothing behind', async () => {
    const image = registry.pushImage('app', 'v1', { layers: ['z'.repeat(10_000)] });
    const layer = image.layers[0]! as unknown as Descriptor;
    registry.intercept((_req, res, url) => {
      if (!url.pathname.includes('/blobs/')) return false;
      res.writeHead(200, { 'content-length': 10_000 });
      res.write(Buffer.alloc(3000, 0x7a));
      setTimeout(() => res.destroy(), 20);
      return true;
    });
    const s = session('app:v1');
    const error = await caught(
      store.ingest(layer.digest, layer.size, (signal) => s.openBlob(layer, { signal })),
    );
    expect(error.message).toMatch(/3000/);
    expect(await leftovers()).toEqual({ blobs: [], ingest: [] });
  });

  it('downloads a blob once for concurrent ingests of the same digest', async () => {
    const image = registry.pushImage('app', 'v1', { layers: ['s'.repeat(200_000)] });
    const layer = image.layers[0]! as unknown as Descriptor;
    registry.intercept(async (_req, _res, url) => {
      // Hold the blob response a little so every ingest below starts while it is in flight.
      if (url.pathname.includes('/blobs/')) await new Promise((resolve) => setTimeout(resolve, 50));
      return false;
    });
    const s = session('app:v1');
    const results = await Promise.all(
      Array.from({ length: 8 }, () =>
        store.ingest(layer.digest, layer.size, (signal) => s.openBlob(layer, { signal })),
      ),
    );
    expect(blobRequests(layer.digest)).toHaveLength(1);
    expect(results.filter((r) => r.downloaded)).toHaveLength(8);
    expect(new Set(results.map((r) => r.path)).size).toBe(1);
    expect((await readFile(results[0]!.path)).equals(image.layers[0]!.bytes)).toBe(true);
  });

  it('cancels a slow download on abort and leaves no temp file', async () => {
    const image = registry.pushImage('slow', 'v1', { layers: ['q'.repeat(1_000_000)] });
    const layer = image.layers[0]! as unknown as Descriptor;
    let serverClosed = false;
    registry.intercept((_req, res, url) => {
      if (!url.pathname.includes('/blobs/')) return false;
      res.writeHead(200, { 'content-length': layer.size });
      res.write(Buffer.alloc(64 * 1024, 0x71));
      res.on('close', () => {
        serverClosed = true;
      });
      return true; // and never finish
    });
    const s = session('slow:v1');
    const controller = new AbortController();
    const pending = store.ingest(layer.digest, layer.size, (signal) => s.openBlob(layer, { signal }), {
      signal: controller.signal,
    });
    // Wait until the temp file exists, so the cancel hits a download in progress.
    for (let i = 0; i < 100 && (await readdir(store.ingestDir)).length === 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect((await readdir(store.ingestDir)).length).toBe(1);
    controller.abort();
    const error = await caught(pending);
    expect(error).toBeInstanceOf(CancelledError);
    expect(await leftovers()).toEqual({ blobs: [], ingest: [] });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(serverClosed).toBe(true);
  });

  it('keeps a shared download going while another waiter still wants it', async () => {
    const data = Buffer.from('shared');
    const digest = sha256(data);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let opens = 0;
    const open = async () => {
      opens++;
      return Readable.from(
        (async function* () {
          await gate;
          yield data;
        })(),
      );
    };
    const patient = store.ingest(digest, data.length, open);
    while (opens === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    const impatient = new AbortController();
    const leaving = store.ingest(digest, data.length, open, { signal: impatient.signal });
    while (store.waitersFor(digest) < 2) await new Promise((resolve) => setTimeout(resolve, 1));
    impatient.abort();
    expect(await caught(leaving)).toBeInstanceOf(CancelledError);
    expect(store.waitersFor(digest)).toBe(1);
    release();
    expect((await patient).downloaded).toBe(true);
    expect(opens).toBe(1);
    expect(await store.has(digest)).toBe(true);
  });

  it('does not start a download for a caller that has already given up', async () => {
    let opened = false;
    const open = async () => {
      opened = true;
      return Readable.from([Buffer.from('x')]);
    };
    const error = await caught(store.ingest(sha256('x'), 1, open, { signal: AbortSignal.abort() }));
    expect(error).toBeInstanceOf(CancelledError);
    expect(opened).toBe(false);
    expect(await leftovers()).toEqual({ blobs: [], ingest: [] });
  });

  it('rejects malformed digests before touching the filesystem', async () => {
    for (const digest of [
      'sha256:../../x',
      `sha256:${'A'.repeat(64)}`,
      `sha256:${'a'.repeat(63)}`,
      '../../etc/passwd',
    ]) {
      expect(() => store.path(digest)).toThrow(InvalidArgumentError);
      expect(await caught(store.ingest(digest, 1, Readable.from([Buffer.from('x')])))).toBeInstanceOf(
        InvalidArgumentError,
      );
      expect(await caught(store.readJson(digest, 100))).toBeInstanceOf(InvalidArgumentError);
      await expect(store.delete(digest)).rejects.toThrow(InvalidArgumentError);
    }
    expect(await leftovers()).toEqual({ blobs: [], ingest: [] });
  });

  it('reports progress while a download runs', async () => {
    const progressStore = new ContentStore({ root, progressIntervalMs: 20 });
    const events: IngestProgress[] = [];
    progressStore.events.on('progress', (p: IngestProgress) => events.push(p));
    const data = Buffer.alloc(3000, 1);
    const source = Readable.from(
      (async function* () {
        for (let i = 0; i < 3; i++) {
          await new Promise((resolve) => setTimeout(resolve, 40));
          yield data.subarray(i * 1000, (i + 1) * 1000);
        }
      })(),
    );
    await progressStore.ingest(sha256(data), data.length, source, { origin: 'registry test' });
    expect(events.length).toBeGreaterThanOrEqual(2);
    expect(events.every((e) => e.total === 3000 && e.origin === 'registry test')).toBe(true);
    expect(events.at(-1)!.done).toBeGreaterThan(events[0]!.done);
  });
});

describe('stored blobs', () => {
  it('reads JSON with a cap, verifying the digest', async () => {
    const json = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux' }));
    const { digest } = await store.writeBlob(json);
    expect(await store.readJson(digest, 1024)).toEqual({ architecture: 'amd64', os: 'linux' });
    const tooBig = await caught(store.readJson(digest, 10));
    expect(tooBig).toBeInstanceOf(InvalidArgumentError);
    expect(tooBig.message).toContain('more than the 10 B limit');
    await writeFile(store.path(digest), '{"tampered":1}');
    expect(await caught(store.readJson(digest, 1024))).toBeInstanceOf(FailedPreconditionError);
    expect(await caught(store.readJson(sha256('absent'), 1024))).toBeInstanceOf(NotFoundError);
  });

  it('refuses writeBlob content that does not match the given digest', async () => {
    const error = await caught(store.writeBlob(Buffer.from('abc'), sha256('abd'), 'manifest of x'));
    expect(error.message).toContain('digest mismatch');
    expect(await leftovers()).toEqual({ blobs: [], ingest: [] });
  });

  it('lists, measures and deletes blobs; init clears unfinished downloads', async () => {
    const a = await store.writeBlob(Buffer.from('a'.repeat(5000)));
    const b = await store.writeBlob(Buffer.from('b'));
    // Stray files that are not blobs are not listed.
    await writeFile(join(store.blobsDir, 'not-a-digest'), 'x');
    const listed = (await store.list()).sort((x, y) => x.size - y.size);
    expect(listed).toEqual([
      { digest: b.digest, size: 1 },
      { digest: a.digest, size: 5000 },
    ]);
    const usage = await store.usage();
    expect(usage.inodes).toBe(3);
    expect(usage.bytes).toBeGreaterThanOrEqual(5000);
    await store.delete(a.digest);
    await store.delete(a.digest);
    expect(await store.has(a.digest)).toBe(false);

    await mkdir(store.ingestDir, { recursive: true });
    await writeFile(join(store.ingestDir, 'crashed-download'), 'partial');
    await new ContentStore({ root }).init();
    expect(await readdir(store.ingestDir)).toEqual([]);
    expect(await store.has(b.digest)).toBe(true);
  });

  it('refuses a descriptor size that contradicts a stored blob', async () => {
    const { digest } = await store.writeBlob(Buffer.from('four'));
    const error = await caught(store.ingest(digest, 5, Readable.from([Buffer.from('four')])));
    expect(error.message).toContain('size mismatch');
  });
});

describe('DownloadLimiter', () => {
  it('runs at most `concurrency` tasks at once, in order', async () => {
    const limiter = new DownloadLimiter(3);
    let running = 0;
    let peak = 0;
    const order: number[] = [];
    const tasks = Array.from({ length: 10 }, (_, i) =>
      limiter.run(async () => {
        running++;
        peak = Math.max(peak, running);
        order.push(i);
        await new Promise((resolve) => setTimeout(resolve, 5));
        running--;
        return i;
      }),
    );
    expect(await Promise.all(tasks)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(peak).toBe(3);
    expect(order).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(limiter.running).toBe(0);
  });

  it('drops a queued task whose signal fires, and frees the slot of a failed one', async () => {
    const limiter = new DownloadLimiter(1);
    let release!: () => void;
    const blocker = limiter.run(() => new Promise<void>((resolve) => (release = resolve)));
    const controller = new AbortController();
    let ran = false;
    const queued = limiter.run(async () => {
      ran = true;
    }, controller.signal);
    expect(limiter.waiting).toBe(1);
    controller.abort();
    expect(await caught(queued)).toBeInstanceOf(CancelledError);
    expect(limiter.waiting).toBe(0);
    release();
    await blocker;
    await expect(limiter.run(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(await limiter.run(async () => 'next')).toBe('next');
    expect(ran).toBe(false);
    expect(() => new DownloadLimiter(0)).toThrow(InvalidArgumentError);
  });
});
