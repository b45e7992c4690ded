/**
 * A bad blob under the streaming unpack, with the real unpacker (native/layer-unpack, run in
 * a user namespace of its own so no privilege is needed) reading the download as it arrives.
 * The unpack sees unverified bytes, so a corrupt or substituted blob trips the gunzip or the
 * tar parser long before the download can check the digest; what must come out is the
 * download's verdict, the same InvalidArgument "digest mismatch" / "size mismatch" that the
 * non-streaming path gives, with no blob, layer or temp file left, and the next pull of the
 * good blob must work. A blob that verifies but is not gzip keeps its own error.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { gzipSync, zstdCompressSync } from 'node:zlib';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { ContentStore } from '../../src/image/content-store.js';
import type { Digest } from '../../src/image/digest.js';
import { LayerStore } from '../../src/image/layer-store.js';
import { prefixRunner, unpackLayer } from '../../src/image/layer-unpack.js';
import { MEDIA_TYPE } from '../../src/image/media-types.js';
import { buildTar } from '../fixtures/evil-tars.js';
import { caught } from '../harness/caught.js';

const HELPER = fileURLToPath(new URL('../../native/build/layer-unpack', import.meta.url));
const runner = prefixRunner(['unshare', '--user', '--map-root-user']);
const sha = (data: Buffer): Digest => `sha256:${createHash('sha256').update(data).digest('hex')}`;

let root: string;
let content: ContentStore;
let layers: LayerStore;
/** Settles when an unpack attempt has ended (failed or not). */
let unpackEnded: Promise<void>;

beforeAll(() => {
  // Not a skip: without the helper this suite would test nothing.
  if (!existsSync(HELPER)) throw new Error(`${HELPER} is missing: run npm run build`);
});

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'layer-streaming-corrupt-'));
  content = new ContentStore({ root });
  await content.init();
  let ended!: () => void;
  unpackEnded = new Promise((resolve) => {
    ended = resolve;
  });
  layers = new LayerStore({
    imageDir: root,
    idMap: { uidMax: 0, gidMax: 0, squashTo: 0 },
    unpacker: (options) => unpackLayer({ ...options, runner, helperPath: HELPER }).finally(() => ended()),
    streaming: true,
  });
  await layers.init();
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/**
 * Pseudo-random text over 16 letters: it compresses only by half, so the blob spans many
 * download chunks and fills the tee, and the compressors code it (gzip's Huffman blocks,
 * zstd's entropy-coded literals) instead of storing it, so corrupt bytes are caught where
 * they are, not only by the checksum at the end.
 */
function noise(bytes: number, seed: number): Buffer {
  const out = Buffer.alloc(bytes);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < bytes; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = 0x61 + (x & 0x0f);
  }
  return out;
}

/** Random-looking bytes: what a corruption writes over the blob. */
function garbage(bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 32) createHash('sha256').update(`garbage ${i}`).digest().copy(out, i);
  return out;
}

interface Layer {
  tar: Buffer;
  blob: Buffer;
  digest: Digest;
  diffId: Digest;
  mediaType: string;
}

function layerOf(tar: Buffer, compression: 'gzip' | 'zstd' = 'gzip'): Layer {
  const blob = compression === 'gzip' ? gzipSync(tar) : zstdCompressSync(tar);
  const mediaType = compression === 'gzip' ? MEDIA_TYPE.ociLayerGzip : MEDIA_TYPE.ociLayerZstd;
  return { tar, blob, digest: sha(blob), diffId: sha(tar), mediaType };
}

const TAR = buildTar([
  { name: 'etc/', type: 'dir' },
  { name: 'etc/hostname', content: 'streamed\n' },
  { name: 'data/a.bin', content: noise(2 * 1024 * 1024, 1) },
  { name: 'data/b.bin', content: noise(1024 * 1024, 2) },
]);

/** The blob with `bytes` garbage bytes written over it at `at` (a fraction of its length). */
function corrupted(blob: Buffer, at: number, bytes = 4096): Buffer {
  const copy = Buffer.from(blob);
  const start = Math.floor(blob.length * at);
  garbage(bytes).copy(copy, start);
  return copy;
}

const CHUNK = 64 * 1024;

/**
 * Serves `bytes` in 64 KiB chunks, like a registry body. With `hold`, the chunk that reaches
 * byte `hold.at` waits for `hold.until`: the unpack has then failed on what came before
 * while the download cannot yet know the blob is bad, which is the case to get right (not a
 * race the download may win).
 */
function served(bytes: Buffer, hold?: { at: number; until: Promise<void> }): Readable {
  let offset = 0;
  return new Readable({
    read() {
      if (offset >= bytes.length) {
        this.push(null);
        return;
      }
      const end = Math.min(offset + CHUNK, bytes.length);
      const send = () => {
        this.push(bytes.subarray(offset, end));
        offset = end;
      };
      if (hold !== undefined && end >= hold.at) void hold.until.then(send);
      else send();
    },
  });
}

/**
 * Unpacks `layer` (as the manifest and config describe it) from a download of `body`; with
 * `failsEarly`, the chunk that completes (or overruns) the descriptor's size is held until
 * the unpack has failed.
 */
function pull(layer: Layer, body: Buffer, options: { size?: number; failsEarly?: boolean } = {}) {
  const size = options.size ?? layer.blob.length;
  const hold =
    options.failsEarly === true ? { at: Math.min(size, body.length), until: unpackEnded } : undefined;
  return layers.ensure({
    digest: layer.digest,
    diffId: layer.diffId,
    chainId: layer.diffId,
    mediaType: layer.mediaType,
    blobPath: content.path(layer.digest),
    fetch: (signal, tee) => content.openIngest(layer.digest, size, served(body, hold), { signal, tee }),
  });
}

async function leftovers() {
  return {
    blobs: await readdir(content.blobsDir),
    ingest: await readdir(content.ingestDir),
    layers: await readdir(layers.layersDir),
  };
}

const NOTHING = { blobs: [], ingest: [], layers: [] };

/** A later pull of the good blob works and unpacks every file. */
async function pullsCleanly(layer: Layer): Promise<void> {
  const dir = await pull(layer, layer.blob);
  expect(await readFile(join(dir, 'etc/hostname'), 'utf8')).toBe('streamed\n');
  expect((await readFile(join(dir, 'data/a.bin'))).equals(noise(2 * 1024 * 1024, 1))).toBe(true);
  expect(await readdir(content.ingestDir)).toEqual([]);
  expect((await readdir(layers.layersDir)).filter((n) => n.startsWith('.'))).toEqual([]);
}

function expectDigestMismatch(error: Error, layer: Layer): void {
  expect(error).toBeInstanceOf(InvalidArgumentError);
  // The content store's own message, as a non-streaming pull reports it.
  expect(error.message).toMatch(
    new RegExp(`^blob ${layer.digest} from .*: digest mismatch \\(got sha256:[a-f0-9]{64}\\)$`),
  );
}

describe('a bad blob under the streaming unpack', () => {
  it('corrupt gzip early in the blob is a digest mismatch, not a gzip error', async () => {
    const layer = layerOf(TAR);
    const error = await caught(pull(layer, corrupted(layer.blob, 0.05), { failsEarly: true }));
    expectDigestMismatch(error, layer);
    expect(await leftovers()).toEqual(NOTHING);
    await pullsCleanly(layer);
  });

  it('corrupt zstd is a digest mismatch too', async () => {
    const layer = layerOf(TAR, 'zstd');
    // zstd decodes corrupt entropy-coded data without complaint (no checksum by default), so
    // the corruption is put where the decoder must notice: the frame header.
    const error = await caught(pull(layer, corrupted(layer.blob, 0), { failsEarly: true }));
    expectDigestMismatch(error, layer);
    expect(await leftovers()).toEqual(NOTHING);
    await pullsCleanly(layer);
  });

  it('a substituted blob that is valid gzip of a broken tar is a digest mismatch, not a tar error', async () => {
    const layer = layerOf(TAR);
    // Gunzips fine; the tar parser trips on the garbage header well before the end.
    const brokenTar = gzipSync(Buffer.concat([TAR.subarray(0, 1536), noise(TAR.length - 1536, 7)]));
    const error = await caught(pull(layer, brokenTar, { size: brokenTar.length, failsEarly: true }));
    expectDigestMismatch(error, layer);
    expect(await leftovers()).toEqual(NOTHING);
    await pullsCleanly(layer);
  });

  it('a substituted blob that unpacks fine is a digest mismatch and leaves no layer', async () => {
    const layer = layerOf(TAR);
    const other = layerOf(
      buildTar([
        { name: 'etc/hostname', content: 'substituted\n' },
        { name: 'data/a.bin', content: noise(3 * 1024 * 1024, 3) },
      ]),
    );
    const error = await caught(pull(layer, other.blob, { size: other.blob.length }));
    expectDigestMismatch(error, layer);
    expect(await leftovers()).toEqual(NOTHING);
    await pullsCleanly(layer);
  });

  it('a truncated blob is a size mismatch', async () => {
    const layer = layerOf(TAR);
    const error = await caught(pull(layer, layer.blob.subarray(0, Math.floor(layer.blob.length * 0.6))));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toMatch(
      new RegExp(
        `^blob ${layer.digest} from .*: size mismatch \\(truncated: got \\d+ of ${layer.blob.length} bytes\\)$`,
      ),
    );
    expect(await leftovers()).toEqual(NOTHING);
    await pullsCleanly(layer);
  });

  it('a blob longer than its descriptor is a size mismatch, also when its tail is garbage', async () => {
    const layer = layerOf(TAR);
    const longer = Buffer.concat([corrupted(layer.blob, 0.5), noise(512 * 1024, 5)]);
    const error = await caught(pull(layer, longer, { failsEarly: true }));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toMatch(
      new RegExp(
        `^blob ${layer.digest} from .*: size mismatch \\(more than the expected ${layer.blob.length} bytes\\)$`,
      ),
    );
    expect(await leftovers()).toEqual(NOTHING);
    await pullsCleanly(layer);
  });

  it('a blob that verifies but is not gzip keeps the gzip error (the blob is the bad one)', async () => {
    const tar = TAR;
    const notGzip = Buffer.concat([Buffer.from('this is not gzip'), noise(1024 * 1024, 4)]);
    const layer: Layer = {
      tar,
      blob: notGzip,
      digest: sha(notGzip),
      diffId: sha(tar),
      mediaType: MEDIA_TYPE.ociLayerGzip,
    };
    const error = await caught(pull(layer, notGzip));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toMatch(/is not valid .*gzip.* data/);
    const left = await leftovers();
    expect(left.layers).toEqual([]);
    expect(left.ingest).toEqual([]);
  });
});
