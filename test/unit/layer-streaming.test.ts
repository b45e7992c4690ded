/**
 * Unpacking a layer while its blob downloads: LayerStore with `streaming` on, fed by the
 * content store's tee. The unpacker here is a fake that reads the stream (the real one is
 * covered by test/integration/layer-unpack.test.ts); what is checked is the store's part:
 * the blob is committed only after its digest matched, the layer only after its diff_id
 * matched and its blob was committed, and any failure or cancel leaves no blob, no layer
 * and no temp file.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CancelledError, InvalidArgumentError } from '../../src/errors.js';
import { ContentStore } from '../../src/image/content-store.js';
import type { Digest } from '../../src/image/digest.js';
import { LayerStore, type LayerUnpacker } from '../../src/image/layer-store.js';
import { LowerLayersPendingError } from '../../src/image/layer-unpack.js';
import { MEDIA_TYPE } from '../../src/image/media-types.js';
import { caught } from '../harness/caught.js';

const sha = (data: Buffer): Digest => `sha256:${createHash('sha256').update(data).digest('hex')}`;

let root: string;
let content: ContentStore;
let layers: LayerStore;
let seen: { streamed: boolean; bytes: number }[];

/** Gunzips the stream, checks the diff_id and writes the tar as one file, like the real one. */
const streamingUnpacker: LayerUnpacker = async (options) => {
  const source = options.source ?? Readable.from([await readFile(options.blobPath!)]);
  await mkdir(options.destDir);
  const chunks: Buffer[] = [];
  // pipeline() passes the download's failure (the tee destroyed with it) to the caller.
  await pipeline(source, createGunzip(), async (gunzipped: AsyncIterable<Buffer>) => {
    for await (const chunk of gunzipped) chunks.push(chunk);
  });
  const tar = Buffer.concat(chunks);
  seen.push({ streamed: options.source !== undefined, bytes: tar.length });
  if (options.diffId !== undefined && sha(tar) !== options.diffId) {
    throw new InvalidArgumentError(`layer ${options.layerDigest}: diff_id mismatch (${sha(tar)})`);
  }
  await writeFile(join(options.destDir, 'layer.tar'), tar);
  return { entries: 1, bytes: tar.length, diffId: sha(tar), warnings: [] };
};

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'layer-streaming-'));
  content = new ContentStore({ root });
  await content.init();
  layers = new LayerStore({
    imageDir: root,
    idMap: { uidMax: 0, gidMax: 0 },
    unpacker: streamingUnpacker,
    streaming: true,
  });
  await layers.init();
  seen = [];
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

function layerOf(tar: Buffer) {
  const blob = gzipSync(tar);
  return { tar, blob, digest: sha(blob), diffId: sha(tar) };
}

/** Serves `bytes` in 64 KiB chunks; `stallAfter` stops sending (without ending) after that many. */
function source(bytes: Buffer, stallAfter = Number.POSITIVE_INFINITY): Readable {
  let offset = 0;
  return new Readable({
    read() {
      if (offset >= stallAfter) return;
      if (offset >= bytes.length) {
        this.push(null);
        return;
      }
      const end = Math.min(offset + 64 * 1024, bytes.length, stallAfter);
      this.push(bytes.subarray(offset, end));
      offset = end;
    },
  });
}

function ensure(
  layer: { digest: Digest; diffId: Digest },
  served: () => Readable,
  size: number,
  signal?: AbortSignal,
) {
  return layers.ensure(
    {
      digest: layer.digest,
      diffId: layer.diffId,
      chainId: layer.diffId,
      mediaType: MEDIA_TYPE.ociLayerGzip,
      blobPath: content.path(layer.digest),
      fetch: (s, tee) => content.openIngest(layer.digest, size, served(), { signal: s, tee }),
    },
    signal,
  );
}

/** Everything under the content and layer dirs: must be empty after a failure. */
async function leftovers() {
  return {
    blobs: await readdir(content.blobsDir),
    ingest: await readdir(content.ingestDir),
    layers: await readdir(layers.layersDir),
  };
}

// Incompressible enough that the blob spans many chunks and the tee fills up.
const BIG = Buffer.from(Array.from({ length: 3 * 1024 * 1024 }, (_, i) => (i * 2654435761) >>> 24));

describe('unpacking a layer while its blob downloads', () => {
  it('reads the download, then stores both the verified blob and the layer', async () => {
    const layer = layerOf(BIG);
    const dir = await ensure(layer, () => source(layer.blob), layer.blob.length);
    expect(seen).toEqual([{ streamed: true, bytes: BIG.length }]);
    expect((await readFile(join(dir, 'layer.tar'))).equals(BIG)).toBe(true);
    expect((await readFile(content.path(layer.digest))).equals(layer.blob)).toBe(true);
    expect((await leftovers()).ingest).toEqual([]);
  });

  it('refuses a blob that is longer than its descriptor mid-stream: no blob, no layer, no temp', async () => {
    const layer = layerOf(BIG);
    const error = await caught(ensure(layer, () => source(layer.blob), Math.floor(layer.blob.length / 2)));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toMatch(/size mismatch/);
    expect(await leftovers()).toEqual({ blobs: [], ingest: [], layers: [] });
  });

  it('refuses a blob whose digest does not match even though its tar unpacked fine', async () => {
    const layer = layerOf(BIG);
    // The registry serves a valid layer of the right size, but not the one the manifest names.
    const claimed = { ...layer, digest: sha(Buffer.from('another blob')) };
    const error = await caught(ensure(claimed, () => source(layer.blob), layer.blob.length));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toMatch(/digest mismatch/);
    // The unpack read every byte, yet neither the blob nor the layer was committed.
    expect(seen).toEqual([]);
    expect(await leftovers()).toEqual({ blobs: [], ingest: [], layers: [] });
  });

  it('a layer whose content does not match its diff_id leaves no layer and no temp', async () => {
    const layer = layerOf(BIG);
    const wrong = { ...layer, diffId: sha(Buffer.from('something else')) };
    const error = await caught(ensure(wrong, () => source(layer.blob), layer.blob.length));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toMatch(/diff_id/);
    expect(seen).toEqual([{ streamed: true, bytes: BIG.length }]);
    const left = await leftovers();
    expect(left.layers).toEqual([]);
    expect(left.ingest).toEqual([]);
    // The blob itself was verified before the unpack could fail; it is either dropped with
    // the download or kept whole (the failed pull's garbage collection then removes it).
    for (const name of left.blobs) {
      expect((await readFile(join(content.blobsDir, name))).equals(layer.blob)).toBe(true);
    }
  });

  it('a cancel mid-stream leaves no blob, no layer and no temp file', async () => {
    const layer = layerOf(BIG);
    const controller = new AbortController();
    const pending = ensure(
      layer,
      () => source(layer.blob, Math.floor(layer.blob.length / 2)),
      layer.blob.length,
      controller.signal,
    );
    // Wait until the download and the unpack are both under way.
    for (let i = 0; i < 200 && (await readdir(content.ingestDir)).length === 0; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    expect((await readdir(content.ingestDir)).length).toBe(1);
    controller.abort(new CancelledError('test cancel'));
    expect(await caught(pending)).toBeInstanceOf(CancelledError);
    expect(await leftovers()).toEqual({ blobs: [], ingest: [], layers: [] });
    expect(layers.inFlight()).toEqual([]);
    expect(content.waitersFor(layer.digest)).toBe(0);
  });

  it('a second caller of the same layer shares the one download and unpack', async () => {
    const layer = layerOf(BIG);
    let opened = 0;
    const served = () => {
      opened += 1;
      return source(layer.blob);
    };
    const [a, b] = await Promise.all([
      ensure(layer, served, layer.blob.length),
      ensure(layer, served, layer.blob.length),
    ]);
    expect(a).toBe(b);
    // The second caller's stream is handed over and discarded; only one is read.
    expect(seen).toHaveLength(1);
    expect(opened).toBeLessThanOrEqual(2);
    expect((await leftovers()).ingest).toEqual([]);
  });

  it('reads the stored file when the blob is already there (no tee)', async () => {
    const layer = layerOf(BIG);
    await content.ingest(layer.digest, layer.blob.length, source(layer.blob));
    await ensure(layer, () => source(layer.blob), layer.blob.length);
    expect(seen).toEqual([{ streamed: false, bytes: BIG.length }]);
  });
});

describe('a layer that needs the layers below while they still unpack', () => {
  /** Like the real helper: an entry that needs the layers below stops an unpack that lacks them. */
  const needsLowers: LayerUnpacker = async (options) => {
    if (options.lowers?.complete === false) {
      // The real helper stops at the entry, having read part of the stream.
      if (options.source) options.source.resume();
      await mkdir(options.destDir);
      await rm(options.destDir, { recursive: true });
      throw new LowerLayersPendingError(`layer ${options.layerDigest} cannot be unpacked yet`);
    }
    seenLowers.push(options.lowers?.dirs ?? []);
    return streamingUnpacker(options);
  };
  let seenLowers: (readonly string[])[];

  beforeEach(() => {
    seenLowers = [];
    layers = new LayerStore({
      imageDir: root,
      idMap: { uidMax: 0, gidMax: 0 },
      unpacker: needsLowers,
      streaming: true,
    });
  });

  function deferred() {
    let resolve!: () => void;
    let reject!: (err: Error) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  }

  function ensureOver(layer: { digest: Digest; diffId: Digest; blob: Buffer }, ready: Promise<unknown>) {
    return layers.ensure({
      digest: layer.digest,
      diffId: layer.diffId,
      chainId: layer.diffId,
      mediaType: MEDIA_TYPE.ociLayerGzip,
      blobPath: content.path(layer.digest),
      fetch: (s, tee) =>
        content.openIngest(layer.digest, layer.blob.length, source(layer.blob), { signal: s, tee }),
      lowers: { dirs: ['/lower/a', '/lower/b'], ready },
    });
  }

  it('lets the download finish without it, then unpacks again from the blob with the layers below', async () => {
    const layer = layerOf(BIG);
    const lowers = deferred();
    const pending = ensureOver(layer, lowers.promise);
    // The blob is stored while the layers below are still pending: no download waits for them.
    for (let i = 0; i < 400 && !(await content.has(layer.digest)); i++)
      await new Promise((r) => setTimeout(r, 5));
    expect(await content.has(layer.digest)).toBe(true);
    expect(seenLowers).toEqual([]);
    lowers.resolve();
    const dir = await pending;
    expect(seenLowers).toEqual([['/lower/a', '/lower/b']]);
    expect(seen).toEqual([{ streamed: false, bytes: BIG.length }]);
    expect((await readFile(join(dir, 'layer.tar'))).equals(BIG)).toBe(true);
    expect((await leftovers()).layers).toHaveLength(1);
  });

  it('fails with the lower layer failure and leaves no temp dir', async () => {
    const layer = layerOf(BIG);
    const lowers = deferred();
    const pending = ensureOver(layer, lowers.promise);
    lowers.reject(new InvalidArgumentError('the layer below is broken'));
    const error = await caught(pending);
    expect(error.message).toBe('the layer below is broken');
    expect((await leftovers()).layers).toEqual([]);
    expect(layers.inFlight()).toEqual([]);
  });
});
