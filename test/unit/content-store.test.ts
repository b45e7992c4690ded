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
import { ContentStore, type IngestProgress } from '../../src/image/content-store.js';
import { DownloadSlots } from '../../src/image/download-slots.js';
import type { Descriptor } from '../../src/image/manifest.js';
import { parseImageReference } from '../../src/image/reference.js';
import { RegistryClient } from '../../src/image/registry-client.js';
import { FakeRegistry, sha256 } from '../fakes/fake-registry.js';
import { caught } from '../harness/caught.js';

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

async function leftovers(): Promise<{ blobs: string[]; ingest: string[] }> {
  return { blobs: await readdir(store.blobsDir), ingest: await readdir(store.ingestDir) };
}

function session(path: string) {
  return new RegistryClient().session(parseImageReference(`${registry.host}/${path}`));
}

/** Waits for a condition the code under test reaches through a few event-loop turns. */
async function until(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((resolve) => setImmediate(resolve));
  }
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

describe('download slots in the content store (row 48)', () => {
  /** A source that sends nothing until destroyed; `opened` counts the downloads that started. */
  function silent(counter: { opened: number; closed: number }) {
    return async () => {
      counter.opened += 1;
      return new Readable({
        read() {},
        destroy(err, cb) {
          counter.closed += 1;
          cb(err);
        },
      });
    };
  }

  it('holds a slot for the life of a download, opens no source while queued, and gives it back at once on cancel', async () => {
    store = new ContentStore({ root, downloadConcurrency: 2, downloadConcurrencyPerRegistry: 1 });
    const counter = { opened: 0, closed: 0 };
    const first = new AbortController();
    const a = store.ingest(sha256('a'), 10, silent(counter), {
      signal: first.signal,
      slot: { host: 'slow:1' },
    });
    const second = new AbortController();
    const b = store.ingest(sha256('b'), 10, silent(counter), {
      signal: second.signal,
      slot: { host: 'slow:1' },
    });
    await until(() => store.downloads.state().hosts['slow:1']?.waiting === 1 && counter.opened === 1);
    // One per host: the second waits, without a connection.
    expect(counter.opened).toBe(1);
    expect(store.downloads.state().hosts['slow:1']).toEqual({ running: 1, waiting: 1 });
    // Another host still gets the node's second slot.
    const c = store.ingest(sha256('c'), 1, Readable.from([Buffer.from('c')]), { slot: { host: 'fast:1' } });
    expect((await c).downloaded).toBe(true);
    first.abort(new CancelledError('client went away'));
    expect(await caught(a)).toBeInstanceOf(CancelledError);
    await until(() => counter.closed === 1);
    // The queued download got the slot and opened its source.
    await until(() => counter.opened === 2);
    expect(store.downloads.state().hosts['slow:1']).toEqual({ running: 1, waiting: 0 });
    second.abort();
    expect(await caught(b)).toBeInstanceOf(CancelledError);
    expect(store.downloads.state()).toEqual({ running: 0, waiting: 0, hosts: {} });
    expect(await leftovers()).toEqual({ blobs: [sha256('c').slice(7)], ingest: [] });
  });
});

describe('DownloadSlots', () => {
  it('runs at most `concurrency` tasks at once, in order', async () => {
    const limiter = new DownloadSlots(3);
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
    const limiter = new DownloadSlots(1);
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
    expect(() => new DownloadSlots(0)).toThrow(InvalidArgumentError);
  });

  it('gives one registry host at most its share, and freed slots to the hosts in turn (row 48)', async () => {
    const slots = new DownloadSlots(3, 2);
    // The slow registry asks first and for more than its share.
    const slow = [
      slots.acquire(undefined, 'slow:1'),
      slots.acquire(undefined, 'slow:1'),
      slots.acquire(undefined, 'slow:1'),
    ];
    const heldSlow = await Promise.all(slow.slice(0, 2));
    expect(slots.state().hosts['slow:1']).toEqual({ running: 2, waiting: 1 });
    // Another registry still gets the third slot at once.
    const fast = await slots.acquire(undefined, 'fast:1');
    expect(slots.running).toBe(3);
    // Two more waiters from each host: turns alternate, the slow host never above 2.
    const order: string[] = [];
    const more = [
      slots.acquire(undefined, 'fast:1').then((r) => {
        order.push('fast');
        return r;
      }),
      slots.acquire(undefined, 'other:1').then((r) => {
        order.push('other');
        return r;
      }),
    ];
    fast();
    const first = await Promise.race(more);
    expect(order).toEqual(['fast']);
    first();
    heldSlow[0]!();
    await Promise.all([more[1], slow[2]]);
    expect(order).toEqual(['fast', 'other']);
    expect(slots.state().hosts['slow:1']?.running).toBe(2);
  });

  it('gives the place of a cancelled waiter away and counts a slot back once', async () => {
    const slots = new DownloadSlots(1, 1);
    const held = await slots.acquire(undefined, 'a');
    const controller = new AbortController();
    const gone = slots.acquire(controller.signal, 'a');
    const next = slots.acquire(undefined, 'b');
    controller.abort();
    expect(await caught(gone)).toBeInstanceOf(CancelledError);
    held();
    held();
    const r = await next;
    expect(slots.running).toBe(1);
    r();
    expect(slots.state()).toEqual({ running: 0, waiting: 0, hosts: {} });
  });
});
