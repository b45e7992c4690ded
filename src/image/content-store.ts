import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { type FileHandle, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import {
  CriError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from '../errors.js';
import { failpoint } from '../failpoint.js';
import { type Logger, silentLogger } from '../log.js';
import { removeTree } from '../os/remove-tree.js';
import { type Digest, digestHex, parseDigest, sha256Digest } from './digest.js';
import { DownloadSlots } from './download-slots.js';
import type { Quarantine } from './quarantine.js';
import { abortError, formatBytes } from './registry-client.js';
import { describeEndpoint, type RegistryEndpoint } from './registry-hosts.js';

/**
 * Content-addressed blob store: `<root>/content/sha256/<hex>`.
 *
 * A blob is written to `<root>/content/ingest/<random>`, hashed and counted as it is
 * written, and renamed into place only when its size and sha256 match what the manifest
 * promised (file and directory fsynced first, so a crash leaves either the whole verified
 * blob or a stray temp file that `init` removes). Nothing unverified is ever visible under
 * `sha256/`.
 *
 * Concurrent ingests of one digest share a single download; a download is cancelled only
 * when every caller waiting for it has given up. A download that asks for a slot (`slot`)
 * waits for one of `downloads` (fair per registry host, see download-slots.ts) before it
 * opens its source, and holds it until it ends; a cancel gives it back at once.
 */

export interface ContentStoreOptions {
  /** The daemon's root dir; blobs live under `<root>/content`. */
  root: string;
  logger?: Logger;
  /** Parallel layer downloads allowed through `downloads` (default 3). */
  downloadConcurrency?: number;
  /** Of those, how many may come from one registry host (default: all). */
  downloadConcurrencyPerRegistry?: number;
  /** How often an ongoing download reports progress (default 5 s). */
  progressIntervalMs?: number;
  /** Where leftovers that cannot be removed go (default: they are only logged). */
  quarantine?: Quarantine;
}

/** A stream of blob bytes, or a function that opens one (called only if a download is needed). */
export type BlobSource =
  | Readable
  | AsyncIterable<Uint8Array>
  | ((signal: AbortSignal) => Promise<Readable | AsyncIterable<Uint8Array>>);

export interface IngestOptions {
  signal?: AbortSignal | undefined;
  /** Where the bytes come from, for messages: `registry 127.0.0.1:5000`. */
  origin?: string;
  /** A download started by this call waits for a slot of `downloads` for this registry host. */
  slot?: { host: string };
}

export interface IngestResult {
  digest: Digest;
  size: number;
  path: string;
  /** False when the blob was already in the store (no bytes were read). */
  downloaded: boolean;
}

export interface IngestProgress {
  digest: Digest;
  done: number;
  total: number;
  origin: string;
}

export interface BlobInfo {
  digest: Digest;
  size: number;
}

export interface OpenedIngest {
  /** Settles when the blob is stored (or the download failed, or this caller left it). */
  result: Promise<IngestResult>;
  /** The blob's bytes while they are downloaded; only for the caller that started it. */
  tee?: Readable;
}

interface Flight {
  promise: Promise<IngestResult>;
  controller: AbortController;
  waiters: number;
  settled: boolean;
}

const HEX64 = /^[a-f0-9]{64}$/;
/** Downloaded bytes collected before one write to the temp file (and the tee). */
const WRITE_BATCH = 1024 * 1024;
/** Bytes a tee buffers ahead of its reader before the download waits for it. */
const TEE_HIGH_WATER_MARK = 1024 * 1024;

export class ContentStore {
  readonly blobsDir: string;
  readonly ingestDir: string;
  readonly downloads: DownloadSlots;
  /** Emits 'progress' (IngestProgress) for ongoing downloads. */
  readonly events = new EventEmitter();
  private readonly logger: Logger;
  private readonly progressIntervalMs: number;
  private readonly quarantine: Quarantine | undefined;
  private readonly flights = new Map<Digest, Flight>();

  constructor(options: ContentStoreOptions) {
    this.blobsDir = join(options.root, 'content', 'sha256');
    this.ingestDir = join(options.root, 'content', 'ingest');
    this.logger = options.logger ?? silentLogger();
    this.progressIntervalMs = options.progressIntervalMs ?? 5000;
    this.quarantine = options.quarantine;
    this.downloads = new DownloadSlots(
      options.downloadConcurrency ?? 3,
      options.downloadConcurrencyPerRegistry ?? options.downloadConcurrency ?? 3,
    );
  }

  /** Creates the directories and removes temp files a crashed run left behind. */
  async init(): Promise<void> {
    await mkdir(this.blobsDir, { recursive: true, mode: 0o700 });
    await mkdir(this.ingestDir, { recursive: true, mode: 0o700 });
    const leftovers = await readdir(this.ingestDir);
    for (const name of leftovers) {
      const path = join(this.ingestDir, name);
      await removeTree(path).catch(async (err: unknown) => {
        if (this.quarantine) await this.quarantine.moveAside(path, 'unfinished download', err);
        else this.logger.warn({ path, err: String(err) }, 'cannot remove an unfinished download');
      });
    }
    if (leftovers.length > 0) {
      this.logger.info({ count: leftovers.length }, 'removed unfinished downloads left by a previous run');
    }
  }

  /** Where the blob lives (or would live). Throws on a malformed digest. */
  path(digest: string): string {
    return join(this.blobsDir, digestHex(parseDigest(digest, 'blob digest')));
  }

  async has(digest: string): Promise<boolean> {
    return (await this.sizeOf(digest)) !== undefined;
  }

  /** The stored size of a blob, or undefined when it is absent. */
  async sizeOf(digest: string): Promise<number | undefined> {
    try {
      const info = await stat(this.path(digest));
      return info.isFile() ? info.size : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /**
   * Stores the blob `digest` of `size` bytes read from `source`, unless it is already
   * present. Throws InvalidArgument on a size or digest mismatch, leaving nothing behind.
   */
  async ingest(
    digest: string,
    size: number,
    source: BlobSource,
    options: IngestOptions = {},
  ): Promise<IngestResult> {
    return (await this.openIngest(digest, size, source, options)).result;
  }

  /**
   * `ingest`, answering as soon as it is known whether this call starts the download. When
   * it does and `options.tee` is set, `tee` carries the blob's bytes as they arrive, so a
   * reader (the layer unpack) works while the download runs. The tee ends only after the
   * size and digest matched; on any failure it is destroyed with the download's error, so
   * its reader never sees a clean end of unverified data. A reader that stops early (its
   * own failure) is left behind: the download goes on for everyone else waiting for it.
   * `result` settles as `ingest` would; when the blob is present or already being
   * downloaded there is no tee.
   */
  async openIngest(
    digest: string,
    size: number,
    source: BlobSource,
    options: IngestOptions & { tee?: boolean } = {},
  ): Promise<OpenedIngest> {
    const checked = parseDigest(digest, 'blob digest');
    if (!Number.isSafeInteger(size) || size < 0) {
      discard(source);
      throw new InvalidArgumentError(`blob ${checked}: invalid size ${size}`);
    }
    if (options.signal?.aborted) {
      discard(source);
      throw abortError(options.signal, `download of blob ${checked}`);
    }
    const origin = options.origin ?? originOf(source);
    const existing = await this.sizeOf(checked);
    if (existing !== undefined) {
      discard(source);
      if (existing !== size) {
        throw new InvalidArgumentError(
          `blob ${checked} from ${origin}: size mismatch (the descriptor says ${size} bytes; the blob with this digest has ${existing})`,
        );
      }
      return {
        result: Promise.resolve({ digest: checked, size, path: this.path(checked), downloaded: false }),
      };
    }

    let flight = this.flights.get(checked);
    let tee: PassThrough | undefined;
    // A flight everyone abandoned is being torn down; a new caller starts afresh.
    if (flight === undefined || flight.controller.signal.aborted) {
      const controller = new AbortController();
      if (options.tee === true) {
        tee = new PassThrough({ highWaterMark: TEE_HIGH_WATER_MARK });
        // The reader has its own listener; this one keeps a failure after the reader left
        // from becoming an uncaught exception.
        tee.on('error', () => {});
      }
      const started: Flight = {
        controller,
        waiters: 0,
        settled: false,
        promise: this.download(checked, size, source, options, controller.signal, tee),
      };
      started.promise = started.promise.finally(() => {
        started.settled = true;
        if (this.flights.get(checked) === started) this.flights.delete(checked);
      });
      // A flight that every waiter abandoned still settles; nobody may be listening.
      started.promise.catch(() => {});
      this.flights.set(checked, started);
      flight = started;
    } else {
      discard(source);
    }
    const result = this.wait(flight, options.signal, `download of blob ${checked}`).then((stored) => {
      if (stored.size !== size) {
        throw new InvalidArgumentError(
          `blob ${checked} from ${origin}: size mismatch (the descriptor says ${size} bytes; the blob with this digest has ${stored.size})`,
        );
      }
      return stored;
    });
    return tee === undefined ? { result } : { result, tee };
  }

  /** How many callers are waiting for an ongoing download of `digest` (0: none running). */
  waitersFor(digest: string): number {
    return this.flights.get(parseDigest(digest, 'blob digest'))?.waiters ?? 0;
  }

  /** Stores bytes already in memory (a manifest, a config), checking `digest` if given. */
  async writeBlob(bytes: Uint8Array, digest?: string, origin = 'memory'): Promise<IngestResult> {
    const target = digest ?? sha256Digest(bytes);
    return this.ingest(target, bytes.length, Readable.from([Buffer.from(bytes)]), { origin });
  }

  /** Reads a stored blob of at most `maxBytes`, verifying its digest. */
  async readBytes(digest: string, maxBytes: number): Promise<Buffer> {
    const checked = parseDigest(digest, 'blob digest');
    let handle: FileHandle;
    try {
      handle = await open(this.path(checked), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new NotFoundError(`blob ${checked} is not in the content store`, { cause: err });
      }
      throw err;
    }
    try {
      const { size } = await handle.stat();
      if (size > maxBytes) {
        throw new InvalidArgumentError(
          `blob ${checked} is ${size} bytes, more than the ${formatBytes(maxBytes)} limit for reading it`,
        );
      }
      const data = await handle.readFile();
      const actual = sha256Digest(data);
      if (actual !== checked) {
        throw new FailedPreconditionError(
          `blob ${checked} in the content store is corrupt (its content hashes to ${actual}); remove the image and pull it again`,
        );
      }
      return data;
    } finally {
      await handle.close();
    }
  }

  /** Reads and parses a stored JSON blob of at most `maxBytes`. */
  async readJson(digest: string, maxBytes: number): Promise<unknown> {
    const data = await this.readBytes(digest, maxBytes);
    try {
      return JSON.parse(data.toString('utf8'));
    } catch (err) {
      throw new InvalidArgumentError(`blob ${digest} is not valid JSON`, { cause: err });
    }
  }

  /** Removes a blob; absent is fine. */
  async delete(digest: string): Promise<void> {
    await rm(this.path(digest), { force: true });
  }

  async list(): Promise<BlobInfo[]> {
    let names: string[];
    try {
      names = await readdir(this.blobsDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const blobs: BlobInfo[] = [];
    for (const name of names) {
      if (!HEX64.test(name)) continue;
      try {
        const info = await stat(join(this.blobsDir, name));
        if (info.isFile()) blobs.push({ digest: `sha256:${name}`, size: info.size });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return blobs;
  }

  /** Bytes (allocated on disk) and inodes used by stored blobs and ongoing downloads. */
  async usage(): Promise<{ bytes: number; inodes: number }> {
    let bytes = 0;
    let inodes = 0;
    for (const dir of [this.blobsDir, this.ingestDir]) {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      for (const name of names) {
        try {
          const info = await stat(join(dir, name));
          bytes += info.blocks * 512;
          inodes += 1;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      }
    }
    return { bytes, inodes };
  }

  /**
   * Waits for a shared download. A waiter whose signal fires stops waiting; when it was the
   * last one, the download itself is cancelled and its temp file removed before returning.
   */
  private async wait(flight: Flight, signal: AbortSignal | undefined, what: string): Promise<IngestResult> {
    flight.waiters += 1;
    if (signal === undefined) {
      try {
        return await flight.promise;
      } finally {
        flight.waiters -= 1;
      }
    }
    return new Promise<IngestResult>((resolve, reject) => {
      let done = false;
      const onAbort = () => {
        if (done) return;
        done = true;
        flight.waiters -= 1;
        const error = abortError(signal, what);
        if (flight.waiters === 0 && !flight.settled) {
          flight.controller.abort(error);
          const settle = () => reject(error);
          flight.promise.then(settle, settle);
        } else {
          reject(error);
        }
      };
      if (signal.aborted) {
        onAbort();
        return;
      }
      signal.addEventListener('abort', onAbort, { once: true });
      flight.promise.then(
        (value) => {
          if (done) return;
          done = true;
          flight.waiters -= 1;
          signal.removeEventListener('abort', onAbort);
          resolve(value);
        },
        (error: unknown) => {
          if (done) return;
          done = true;
          flight.waiters -= 1;
          signal.removeEventListener('abort', onAbort);
          reject(error);
        },
      );
    });
  }

  private async download(
    digest: Digest,
    size: number,
    source: BlobSource,
    options: IngestOptions,
    signal: AbortSignal,
    tee?: PassThrough,
  ): Promise<IngestResult> {
    const givenOrigin = options.origin;
    const temp = join(this.ingestDir, randomBytes(16).toString('hex'));
    const target = this.path(digest);
    let origin = givenOrigin ?? originOf(source);
    let what = `blob ${digest} from ${origin}`;
    let stream: Readable | undefined;
    let handle: FileHandle | undefined;
    let done = 0;
    let writing = false;
    const started = Date.now();
    const report = () => {
      const progress: IngestProgress = { digest, done, total: size, origin };
      this.events.emit('progress', progress);
      this.logger.info(progress, `downloading blob: ${formatBytes(done)} of ${formatBytes(size)}`);
    };
    const timer = setInterval(report, this.progressIntervalMs);
    timer.unref();
    let releaseSlot: (() => void) | undefined;
    const onAbort = () => {
      // The slot goes back at once; the cleanup below needs none.
      releaseSlot?.();
      stream?.destroy(abortError(signal, what));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      if (signal.aborted) throw abortError(signal, what);
      if (options.slot !== undefined) {
        releaseSlot = await this.downloads.acquire(signal, options.slot.host);
        if (signal.aborted) releaseSlot();
      }
      const opened = typeof source === 'function' ? await source(signal) : source;
      stream = opened instanceof Readable ? opened : Readable.from(opened, { objectMode: false });
      if (givenOrigin === undefined) {
        origin = originOf(opened);
        what = `blob ${digest} from ${origin}`;
      }
      if (signal.aborted) throw abortError(signal, what);
      writing = true;
      handle = await open(temp, 'wx', 0o644);
      writing = false;
      const hash = createHash('sha256');
      // Network reads are small (often 16-64 KiB); collecting them into larger writes costs
      // one thread-pool trip per MiB instead of one per read, and hands the tee's reader
      // (the pipe to the unpack helper) fewer, larger chunks.
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      const flush = async () => {
        if (pendingBytes === 0) return;
        const batch = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
        // Handed to the tee first, so its reader works while the batch goes to disk.
        const full = tee !== undefined && !tee.destroyed && !tee.write(batch);
        writing = true;
        await writeAll(handle!, batch);
        writing = false;
        if (full) await drained(tee!, signal, what);
      };
      for await (const chunk of stream) {
        const buffer = chunk as Buffer;
        done += buffer.length;
        if (done > size) {
          throw new InvalidArgumentError(`${what}: size mismatch (more than the expected ${size} bytes)`);
        }
        hash.update(buffer);
        pending.push(buffer);
        pendingBytes += buffer.length;
        if (pendingBytes >= WRITE_BATCH) await flush();
      }
      await flush();
      if (done !== size) {
        throw new InvalidArgumentError(`${what}: size mismatch (truncated: got ${done} of ${size} bytes)`);
      }
      const actual: Digest = `sha256:${hash.digest('hex')}`;
      if (actual !== digest) {
        throw new InvalidArgumentError(`${what}: digest mismatch (got ${actual})`);
      }
      // Verified: the tee's reader may now take the end of the stream as the end of the blob.
      if (tee !== undefined && !tee.destroyed) tee.end();
      writing = true;
      await handle.sync();
      await handle.close();
      handle = undefined;
      failpoint('pull.blob-verified');
      await rename(temp, target);
      await syncDir(this.blobsDir);
      const seconds = (Date.now() - started) / 1000;
      this.logger.debug({ digest, size, origin, seconds }, 'stored blob');
      return { digest, size, path: target, downloaded: true };
    } catch (err) {
      const error = signal.aborted ? abortError(signal, what) : storeError(err, what, writing);
      stream?.destroy();
      // A tee that ended was verified and read; only an unfinished one carries the failure.
      if (tee !== undefined && !tee.writableEnded) tee.destroy(error);
      await handle?.close().catch(() => {});
      await rm(temp, { force: true });
      throw error;
    } finally {
      releaseSlot?.();
      clearInterval(timer);
      signal.removeEventListener('abort', onAbort);
    }
  }
}

async function writeAll(handle: FileHandle, buffer: Buffer): Promise<void> {
  let offset = 0;
  while (offset < buffer.length) {
    const { bytesWritten } = await handle.write(buffer, offset, buffer.length - offset);
    offset += bytesWritten;
  }
}

/** Waits until the tee's reader caught up (or left: a destroyed tee is skipped from then on). */
function drained(tee: PassThrough, signal: AbortSignal, what: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const stop = () => {
      tee.off('drain', done);
      tee.off('close', done);
      signal.removeEventListener('abort', onAbort);
    };
    const done = () => {
      stop();
      resolve();
    };
    const onAbort = () => {
      stop();
      reject(abortError(signal, what));
    };
    if (signal.aborted) {
      onAbort();
      return;
    }
    // The reader may have caught up while the batch was being written to disk.
    if (!tee.writableNeedDrain || tee.destroyed) {
      resolve();
      return;
    }
    tee.once('drain', done);
    tee.once('close', done);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Maps a failure to a kind: the disk side (`writing`) or the source side of the copy. */
function storeError(err: unknown, what: string, writing: boolean): Error {
  if (err instanceof CriError) return err;
  const code = (err as NodeJS.ErrnoException).code;
  const detail = err instanceof Error ? err.message : String(err);
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new ResourceExhaustedError(`${what}: no space left for the content store (${code})`, {
      cause: err,
    });
  }
  if (writing) {
    return new FailedPreconditionError(`${what}: cannot write to the content store: ${detail}`, {
      cause: err,
    });
  }
  return new UnavailableError(`${what}: reading the blob failed: ${detail}`, { cause: err });
}

function originOf(source: BlobSource): string {
  const endpoint = (source as { endpoint?: RegistryEndpoint }).endpoint;
  return endpoint === undefined ? 'an unnamed source' : `registry ${describeEndpoint(endpoint)}`;
}

/** A stream handed in but not needed (blob already present or being downloaded). */
function discard(source: BlobSource): void {
  if (source instanceof Readable) source.destroy();
}
