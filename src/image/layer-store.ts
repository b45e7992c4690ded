import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { InvalidArgumentError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import { type Logger, silentLogger } from '../log.js';
import { removeTree } from '../os/remove-tree.js';
import { type Digest, digestHex, isDigest, parseDigest } from './digest.js';
import {
  type LayerIdMap,
  type LayerUnpackLimits,
  LowerLayersPendingError,
  type UnpackLayerOptions,
  type UnpackLayerResult,
  unpackLayer,
} from './layer-unpack.js';
import { Quarantine } from './quarantine.js';
import { abortError } from './registry-client.js';

/**
 * Unpacked layers, one directory per chain ID: `<imageDir>/layers/<chain id hex>`.
 *
 * A layer directory holds only that layer's own changes (whiteouts as 0:0 character
 * devices, opaque dirs as an xattr); the snapshotter stacks them. It is keyed by chain ID
 * (the OCI image spec's identity for "this layer on top of exactly these parents") so two
 * images share a directory only when their whole layer stack up to it is the same.
 *
 * A layer is unpacked into `layers/.tmp-<random>` and renamed to its final name only when
 * the helper reported success and the uncompressed content matched the config's diff_id,
 * so a directory under its chain ID is always complete. Concurrent requests for one chain
 * ID share one unpack; the unpack is cancelled only when every waiter has gone, and its
 * temp directory is removed before the last waiter's call returns. A crash leaves at most
 * `.tmp-*` directories, which `init` removes. Removal is fd-relative (remove-tree.ts), so no
 * depth or path length can block it; what still cannot be removed is quarantined.
 */

/** What the store needs from the unpacker (the real one runs native/layer-unpack). */
export type LayerUnpacker = (options: UnpackLayerOptions) => Promise<UnpackLayerResult>;

export interface LayerStoreOptions {
  /** `<rootDir>/image`; layers live in `<imageDir>/layers`. */
  imageDir: string;
  idMap: LayerIdMap;
  logger?: Logger;
  unpacker?: LayerUnpacker;
  /** Caps per layer (default: layer-unpack.ts's DEFAULT_LAYER_UNPACK_LIMITS). */
  limits?: LayerUnpackLimits;
  /** Where objects that cannot be removed go (default: one of its own under imageDir). */
  quarantine?: Quarantine;
  /**
   * Whether `unpacker` takes `source` (a stream) instead of `blobPath`, so a layer can be
   * unpacked while its blob downloads. Default: true for the real unpacker only, since an
   * injected one may read `blobPath` alone.
   */
  streaming?: boolean;
}

export interface LayerToUnpack {
  /** Blob digest (compressed), used in messages. */
  digest: Digest;
  mediaType: string;
  /** The stored blob. */
  blobPath: string;
  diffId: Digest;
  chainId: Digest;
  /**
   * Gets the blob when it may not be stored yet (called only when this layer is unpacked).
   * With a `tee`, the unpack reads the download as it arrives; otherwise it waits for
   * `result` and reads `blobPath`. Either way the layer is committed only after `result`
   * (the blob verified and stored) resolved. The signal fires when the unpack gives up.
   */
  fetch?: (signal: AbortSignal, tee: boolean) => Promise<FetchedBlob>;
  /**
   * The layers below, for an entry whose parent is missing from this layer (see
   * layer-unpack.ts): their directories, top first, and a promise that settles when they are
   * all complete (rejects when one failed). Absent for a base layer.
   */
  lowers?: { dirs: readonly string[]; ready: Promise<unknown> };
}

export interface FetchedBlob {
  result: Promise<unknown>;
  tee?: Readable;
}

interface Flight {
  promise: Promise<string>;
  controller: AbortController;
  waiters: number;
  settled: boolean;
}

const TEMP_PREFIX = '.tmp-';
const HEX64 = /^[a-f0-9]{64}$/;

/** chainId(L0) = diffId(L0); chainId(Ln) = sha256(chainId(Ln-1) + " " + diffId(Ln)). */
export function chainIds(diffIds: readonly Digest[]): Digest[] {
  const out: Digest[] = [];
  for (const diffId of diffIds) {
    const parent = out[out.length - 1];
    out.push(
      parent === undefined
        ? diffId
        : `sha256:${createHash('sha256').update(`${parent} ${diffId}`).digest('hex')}`,
    );
  }
  return out;
}

export class LayerStore {
  readonly layersDir: string;
  private readonly logger: Logger;
  private readonly unpacker: LayerUnpacker;
  private readonly streaming: boolean;
  private readonly quarantine: Quarantine;
  private readonly flights = new Map<Digest, Flight>();

  constructor(private readonly options: LayerStoreOptions) {
    this.layersDir = join(options.imageDir, 'layers');
    this.logger = options.logger ?? silentLogger();
    this.unpacker = options.unpacker ?? unpackLayer;
    this.streaming = options.streaming ?? options.unpacker === undefined;
    this.quarantine = options.quarantine ?? new Quarantine(options.imageDir, this.logger);
  }

  /**
   * Creates the directory and removes unpacks a crashed run left half done; one that cannot
   * be removed is quarantined. Throws only when the layers directory itself is unusable.
   */
  async init(): Promise<void> {
    await mkdir(this.layersDir, { recursive: true, mode: 0o700 });
    let removed = 0;
    for (const name of await readdir(this.layersDir)) {
      if (!name.startsWith(TEMP_PREFIX)) continue;
      if (await this.discard(join(this.layersDir, name), 'unfinished layer unpack of a previous run'))
        removed += 1;
    }
    if (removed > 0)
      this.logger.info({ count: removed }, 'removed unfinished layer unpacks of a previous run');
  }

  /** Removes a directory of ours; quarantines it when that fails. True when it is gone. */
  private async discard(dir: string, what: string): Promise<boolean> {
    try {
      await removeTree(dir);
      return true;
    } catch (err) {
      await this.quarantine.moveAside(dir, what, err);
      return false;
    }
  }

  /** Where the layer with this chain ID lives (or would live). */
  path(chainId: string): string {
    return join(this.layersDir, digestHex(parseDigest(chainId, 'layer chain ID')));
  }

  async has(chainId: string): Promise<boolean> {
    try {
      return (await stat(this.path(chainId))).isDirectory();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /** Chain IDs of every complete layer directory. */
  async list(): Promise<Digest[]> {
    let names: string[];
    try {
      names = await readdir(this.layersDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    return names.filter((n) => HEX64.test(n)).map((n) => `sha256:${n}` as Digest);
  }

  /** Chain IDs being unpacked right now (garbage collection leaves them alone). */
  inFlight(): Digest[] {
    return [...this.flights.keys()];
  }

  /** Unpacks the layer unless its directory exists; returns the directory. */
  async ensure(layer: LayerToUnpack, signal?: AbortSignal): Promise<string> {
    // Whether or not this call ends up unpacking, a failure below is its flight's to report.
    layer.lowers?.ready.catch(() => {});
    if (!isDigest(layer.chainId) || !isDigest(layer.diffId)) {
      throw new InvalidArgumentError(`layer ${layer.digest}: invalid chain ID or diff_id`);
    }
    if (signal?.aborted) throw abortError(signal, `unpack of layer ${layer.digest}`);
    const target = this.path(layer.chainId);
    let flight = this.flights.get(layer.chainId);
    if (flight === undefined || flight.controller.signal.aborted) {
      if (await this.has(layer.chainId)) return target;
      // Checked again: another caller may have started a flight while we looked at the disk.
      flight = this.flights.get(layer.chainId);
    }
    if (flight === undefined || flight.controller.signal.aborted) {
      const controller = new AbortController();
      const started: Flight = {
        controller,
        waiters: 0,
        settled: false,
        promise: this.unpack(layer, target, controller.signal),
      };
      started.promise = started.promise.finally(() => {
        started.settled = true;
        if (this.flights.get(layer.chainId) === started) this.flights.delete(layer.chainId);
      });
      started.promise.catch(() => {});
      this.flights.set(layer.chainId, started);
      flight = started;
    }
    return this.wait(flight, signal, `unpack of layer ${layer.digest}`);
  }

  /**
   * Removes a layer directory. It is renamed to a temp name first, so a crash in the middle
   * of a long delete leaves a `.tmp-*` (removed by `init`), never a half-empty layer under
   * its chain ID. A directory that cannot be removed is quarantined, not left in the way.
   */
  async remove(chainId: string): Promise<void> {
    const doomed = join(this.layersDir, `${TEMP_PREFIX}gc-${randomBytes(8).toString('hex')}`);
    try {
      await rename(this.path(chainId), doomed);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    await this.discard(doomed, `layer ${chainId}`);
  }

  private async unpack(layer: LayerToUnpack, target: string, signal: AbortSignal): Promise<string> {
    await mkdir(this.layersDir, { recursive: true, mode: 0o700 });
    const newTemp = () => join(this.layersDir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    let temp = newTemp();
    const started = Date.now();
    let lowersComplete = false;
    layer.lowers?.ready.then(
      () => {
        lowersComplete = true;
      },
      () => {},
    );
    // Leaves the blob download when this unpack fails or is cancelled (the download is then
    // cancelled too unless another caller still waits for it).
    const fetching = new AbortController();
    const onAbort = () => fetching.abort(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    let fetched: FetchedBlob | undefined;
    try {
      if (signal.aborted) throw abortError(signal, `unpack of layer ${layer.digest}`);
      if (layer.fetch !== undefined) {
        fetched = await layer.fetch(fetching.signal, this.streaming);
        fetched.result.catch(() => {});
        if (fetched.tee === undefined) await fetched.result;
      }
      const attempt = (input: { blobPath: string } | { source: Readable }) =>
        this.unpacker({
          ...input,
          layerDigest: layer.digest,
          mediaType: layer.mediaType,
          destDir: temp,
          idMap: this.options.idMap,
          diffId: layer.diffId,
          signal,
          ...(layer.lowers === undefined
            ? {}
            : { lowers: { dirs: layer.lowers.dirs, complete: lowersComplete } }),
          ...(this.options.limits === undefined ? {} : { limits: this.options.limits }),
        });
      let result: UnpackLayerResult;
      try {
        result = await attempt(
          fetched?.tee === undefined ? { blobPath: layer.blobPath } : { source: fetched.tee },
        );
      } catch (err) {
        if (!(err instanceof LowerLayersPendingError) || layer.lowers === undefined) throw err;
        // An entry's parent is in the layers below, which are still unpacking. Waiting for
        // them here would hold this download (and its slot) hostage to theirs; instead the
        // download finishes without us, and the layer is unpacked again from the blob.
        fetched?.tee?.destroy();
        if (fetched !== undefined) await fetched.result;
        await untilSettled(layer.lowers.ready, signal, `unpack of layer ${layer.digest}`);
        lowersComplete = true;
        await this.discard(temp, `unfinished unpack of layer ${layer.digest}`);
        temp = newTemp();
        this.logger.debug(
          { layer: layer.digest },
          'unpacking the layer again now that the layers below are complete',
        );
        result = await attempt({ blobPath: layer.blobPath });
      }
      // A streamed layer read the download's bytes before the blob was committed.
      if (fetched !== undefined) await fetched.result;
      if (signal.aborted) throw abortError(signal, `unpack of layer ${layer.digest}`);
      failpoint('pull.layer-unpacked');
      await rename(temp, target);
      for (const warning of result.warnings) {
        this.logger.warn({ layer: layer.digest }, `layer unpack: ${warning}`);
      }
      this.logger.debug(
        {
          layer: layer.digest,
          chainId: layer.chainId,
          entries: result.entries,
          streamed: fetched?.tee !== undefined,
          ms: Date.now() - started,
        },
        'unpacked layer',
      );
      return target;
    } catch (err) {
      // A tee nobody reads would stall the download; the download itself is left, and this
      // returns only once it has settled for us (its temp file gone if we were the last).
      fetched?.tee?.destroy();
      // A streamed unpack reads bytes before they are verified, so a corrupt or substituted
      // blob fails it as bad gzip or a bad tar long before the download checks the digest.
      // The download is let finish: when it fails, its error (digest or size mismatch) is
      // the cause; only a blob that verified leaves the unpack's own error as the answer.
      const blobError =
        fetched?.tee !== undefined && !signal.aborted ? await failureOf(fetched.result) : undefined;
      fetching.abort(err);
      await fetched?.result.catch(() => {});
      await this.discard(temp, `unfinished unpack of layer ${layer.digest}`);
      if (signal.aborted) throw abortError(signal, `unpack of layer ${layer.digest}`);
      if (blobError !== undefined) throw blobError;
      if (
        (err as NodeJS.ErrnoException).code === 'ENOTEMPTY' ||
        (err as NodeJS.ErrnoException).code === 'EEXIST'
      ) {
        // Someone else (an earlier daemon's flight finished the same layer) won the rename.
        return target;
      }
      throw err;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  private wait(flight: Flight, signal: AbortSignal | undefined, what: string): Promise<string> {
    flight.waiters += 1;
    return new Promise<string>((resolve, reject) => {
      let done = false;
      const finish = () => {
        done = true;
        flight.waiters -= 1;
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = () => {
        if (done) return;
        finish();
        const error = abortError(signal!, what);
        if (flight.waiters === 0 && !flight.settled) {
          // The last waiter left: stop the unpack and return once its temp dir is gone.
          flight.controller.abort(error);
          const settle = () => reject(error);
          flight.promise.then(settle, settle);
        } else {
          reject(error);
        }
      };
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      flight.promise.then(
        (value) => {
          if (done) return;
          finish();
          resolve(value);
        },
        (error: unknown) => {
          if (done) return;
          finish();
          reject(error);
        },
      );
    });
  }
}

/** What `promise` rejects with, or undefined when it resolves. */
function failureOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => undefined,
    (err: unknown) => err ?? new Error('the blob download failed'),
  );
}

/** Waits for `promise`, or throws as soon as `signal` fires. */
function untilSettled(promise: Promise<unknown>, signal: AbortSignal, what: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal, what));
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
