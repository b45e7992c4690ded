import { createReadStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  CancelledError,
  CriError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  ResourceExhaustedError,
} from '../errors.js';
import { nativeHelperPath } from '../os/native-helpers.js';
import { type ChildProcessByStdio, start } from '../os/process-runner.js';
import { removeTree } from '../os/remove-tree.js';
import { MEDIA_TYPE } from './media-types.js';

/**
 * Unpacks one layer blob into an empty directory with the native helper
 * (native/layer-unpack.c), which does every filesystem write relative to fds resolved with
 * openat2(RESOLVE_IN_ROOT): Node has no such API, and a path-string untar is exactly how
 * the CVEs in the security reference (section A, catalog rows 1–11) happened. The helper also
 * decompresses (gzip, zstd) and hashes the tar stream (diff_id); this module pipes the blob's
 * bytes to it and turns its JSON report into an error kind. Any failure removes the partial
 * directory (fd-relative, see remove-tree.ts).
 *
 * Parent components of an entry are resolved through the merged view of the layer over the
 * layers below it (`lowerDirs`), as rootless containerd does by applying onto the mounted
 * overlay: "lib/x" over a lower "lib -> usr/lib" lands in usr/lib (see the helper).
 */

export interface LayerUnpackLimits {
  /** Uncompressed tar bytes (decompression bombs stop here). */
  maxBytes: number;
  maxEntries: number;
  /** Path components per entry name. */
  maxDepth: number;
  /**
   * Bytes of an entry's path inside the layer (default 3840). Lowered further so that the
   * layer directory's own path plus this stays under PATH_MAX: every file of a layer must
   * be reachable by path on the host, or tools (and Node) that use paths cannot handle it.
   */
  maxPathBytes?: number;
}

export const DEFAULT_LAYER_UNPACK_LIMITS: LayerUnpackLimits = {
  maxBytes: 16 * 1024 ** 3,
  maxEntries: 1_000_000,
  maxDepth: 256,
  maxPathBytes: 3840,
};

/** Linux PATH_MAX, including the terminating NUL. */
const PATH_MAX = 4096;
/** A layer's final directory name: its chain ID's hex (the temp name is shorter). */
const LAYER_DIR_NAME_BYTES = 64;

/** The IDs the helper may chown to, as seen where it runs (inside the node's user namespace). */
export interface LayerIdMap {
  uidMax: number;
  gidMax: number;
  /** When set, IDs above the range become this ID instead of failing the unpack. */
  squashTo?: number;
}

export type HelperProcess = ChildProcessByStdio<Writable, Readable, Readable>;

/**
 * Starts the helper. The daemon runs inside the node's user namespace already, so a plain
 * spawn makes the helper uid 0 there; tests wrap it (e.g. `unshare --user`).
 */
export type HelperRunner = (command: string, args: readonly string[]) => HelperProcess;

export const spawnRunner: HelperRunner = (command, args) =>
  start(command, args, { stdio: ['pipe', 'pipe', 'pipe'] }).child as HelperProcess;

/** Runs the helper behind a command prefix, e.g. `['unshare', '--user', '--map-root-user']`. */
export function prefixRunner(prefix: readonly string[]): HelperRunner {
  if (prefix.length === 0) return spawnRunner;
  return (command, args) => spawnRunner(prefix[0]!, [...prefix.slice(1), command, ...args]);
}

/**
 * The unpack needed the layers below (an entry's parent is missing from the layer) while
 * they were still being unpacked (`lowers.complete` false). Nothing is left behind; unpack
 * again, from the stored blob, once they are complete.
 */
export class LowerLayersPendingError extends CriError {
  constructor(message: string) {
    super('Unavailable', message);
  }
}

export interface UnpackLayerOptions {
  /** The stored blob; or `source`. */
  blobPath?: string;
  /**
   * The blob's bytes as they are downloaded (the content store's tee), instead of
   * `blobPath`. Its failure (a digest mismatch, a cancel) fails the unpack with that error.
   */
  source?: Readable;
  /** Blob digest, used in messages. */
  layerDigest: string;
  mediaType: string;
  destDir: string;
  limits?: LayerUnpackLimits;
  idMap: LayerIdMap;
  /** Expected digest of the uncompressed tar (the config's rootfs.diff_ids entry). */
  diffId?: string;
  /**
   * The unpacked layers below this one, top first (absent for a base layer). Looked at only
   * when an entry's parent is missing from this layer. While they are not `complete`, such
   * an entry fails the unpack with LowerLayersPendingError instead.
   */
  lowers?: { dirs: readonly string[]; complete: boolean };
  signal?: AbortSignal;
  runner?: HelperRunner;
  helperPath?: string;
}

export interface UnpackLayerResult {
  entries: number;
  /** Uncompressed tar bytes read. */
  bytes: number;
  diffId: string;
  warnings: string[];
}

type Compression = 'none' | 'gzip' | 'zstd';

const COMPRESSION_BY_MEDIA_TYPE: ReadonlyMap<string, Compression> = new Map([
  [MEDIA_TYPE.ociLayer, 'none'],
  [MEDIA_TYPE.ociLayerNondistributable, 'none'],
  [MEDIA_TYPE.ociLayerGzip, 'gzip'],
  [MEDIA_TYPE.ociLayerNondistributableGzip, 'gzip'],
  [MEDIA_TYPE.dockerLayerGzip, 'gzip'],
  [MEDIA_TYPE.dockerLayerForeignGzip, 'gzip'],
  [MEDIA_TYPE.ociLayerZstd, 'zstd'],
  [MEDIA_TYPE.ociLayerNondistributableZstd, 'zstd'],
]);

const STDERR_CAP = 16 * 1024;
/** Reads of the stored blob; larger reads mean fewer event-loop turns per layer. */
const READ_CHUNK = 1024 * 1024;
const STDOUT_CAP = 64 * 1024;

/** Where `npm run build` puts the helper. */
export function defaultHelperPath(): string {
  return nativeHelperPath('layer-unpack');
}

/**
 * The path budget for entries: the configured one, lowered so that the layer's final
 * directory (a sibling of `destDir` named by its chain ID) plus the entry stays < PATH_MAX.
 */
export function entryPathBudget(destDir: string, limits: LayerUnpackLimits): number {
  const finalDir = Buffer.byteLength(dirname(destDir)) + 1 + LAYER_DIR_NAME_BYTES;
  const fromDir = PATH_MAX - 1 - finalDir - 1;
  return Math.max(0, Math.min(limits.maxPathBytes ?? DEFAULT_LAYER_UNPACK_LIMITS.maxPathBytes!, fromDir));
}

function helperArgs(options: UnpackLayerOptions, compression: Compression): string[] {
  const limits = options.limits ?? DEFAULT_LAYER_UNPACK_LIMITS;
  const { idMap } = options;
  // (uid_t)-1 means "leave unchanged" to chown, so the largest usable ID is one below it.
  const ID_MAX = 0xfffffffe;
  const numbers: [string, number, number][] = [
    ['maxBytes', limits.maxBytes, Number.MAX_SAFE_INTEGER],
    ['maxEntries', limits.maxEntries, Number.MAX_SAFE_INTEGER],
    ['maxDepth', limits.maxDepth, 4096],
    ['maxPathBytes', limits.maxPathBytes ?? DEFAULT_LAYER_UNPACK_LIMITS.maxPathBytes!, PATH_MAX - 1],
    ['uidMax', idMap.uidMax, ID_MAX],
    ['gidMax', idMap.gidMax, ID_MAX],
  ];
  if (idMap.squashTo !== undefined) numbers.push(['squashTo', idMap.squashTo, ID_MAX]);
  for (const [name, value, max] of numbers) {
    if (!Number.isSafeInteger(value) || value < 0 || value > max) {
      throw new InvalidArgumentError(
        `layer unpack ${name} must be an integer from 0 to ${max}, got ${value}`,
      );
    }
  }
  const args = [
    `--max-bytes=${limits.maxBytes}`,
    `--max-entries=${limits.maxEntries}`,
    `--max-depth=${limits.maxDepth}`,
    `--max-path=${entryPathBudget(options.destDir, limits)}`,
    `--uid-max=${idMap.uidMax}`,
    `--gid-max=${idMap.gidMax}`,
    '--whiteout-format=overlay',
    // zstd and zstd:chunked alike: libzstd's streaming decoder reads concatenated frames and
    // skips skippable ones (where zstd:chunked keeps its table of contents and tar-split data),
    // so what comes out is the layer tar that diff_id names.
    `--compression=${compression}`,
  ];
  if (idMap.squashTo !== undefined) args.push(`--squash-ids=${idMap.squashTo}`);
  if (options.lowers?.complete === false) args.push('--lowers-pending');
  else for (const dir of options.lowers?.dirs ?? []) args.push(`--lower=${dir}`);
  return [...args, options.destDir];
}

interface HelperReport {
  ok: boolean;
  entries?: number;
  bytes?: number;
  /** sha256 of the tar stream the helper read (after decompression). */
  diffId?: string;
  warnings?: string[];
  kind?: string;
  errno?: string;
  error?: string;
}

function parseReport(stdout: string): HelperReport | undefined {
  const line = stdout.trim().split('\n').pop();
  if (!line) return undefined;
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null && 'ok' in value ? (value as HelperReport) : undefined;
  } catch {
    return undefined;
  }
}

function reportError(report: HelperReport, options: UnpackLayerOptions): CriError {
  const layer = `layer ${options.layerDigest}`;
  const why = report.error ?? 'unknown error';
  switch (report.kind) {
    case 'invalid_archive':
      return new InvalidArgumentError(`${layer} is not a valid tar: ${why}`);
    case 'compression':
      return new InvalidArgumentError(`${layer} is not valid ${options.mediaType} data: ${why}`);
    case 'id_range':
    case 'path_length':
      return new InvalidArgumentError(`${layer} cannot be unpacked: ${why}`);
    case 'needs_lowers':
      return new LowerLayersPendingError(`${layer} cannot be unpacked yet: ${why}`);
    case 'lowers':
      return new FailedPreconditionError(`${layer} cannot be unpacked: ${why}; pull the image again`);
    case 'limit':
      return new ResourceExhaustedError(
        `${layer} exceeds an unpack limit: ${why}; raise the image unpack limits only for trusted images`,
      );
    default:
      if (report.errno === 'ENOSPC' || report.errno === 'EDQUOT') {
        return new ResourceExhaustedError(
          `${layer} cannot be unpacked: ${why}; free space on the image store`,
        );
      }
      return new InternalError(`${layer} cannot be unpacked: ${why}`);
  }
}

/**
 * Decompresses, verifies and unpacks one layer into `destDir`, which must not exist yet
 * (its parent is created). On any error `destDir` is removed again.
 */
export async function unpackLayer(options: UnpackLayerOptions): Promise<UnpackLayerResult> {
  if ((options.blobPath === undefined) === (options.source === undefined)) {
    throw new InternalError(`layer ${options.layerDigest}: unpack needs either a blob path or a stream`);
  }
  const compression = COMPRESSION_BY_MEDIA_TYPE.get(options.mediaType);
  if (compression === undefined) {
    throw new InvalidArgumentError(
      `layer ${options.layerDigest} has unsupported media type ${JSON.stringify(options.mediaType.slice(0, 200))}`,
    );
  }
  const args = helperArgs(options, compression);
  throwIfAborted(options.signal);
  // Created here, never reused: the directory removed on failure is always one we made.
  await mkdir(dirname(options.destDir), { recursive: true });
  try {
    await mkdir(options.destDir);
  } catch (err) {
    throw new FailedPreconditionError(`cannot unpack ${options.layerDigest} into ${options.destDir}`, {
      cause: err,
    });
  }
  try {
    return await runHelper(options, args);
  } catch (err) {
    // fd-relative and never through a symlink: no hostile partial layer can redirect or
    // outgrow the removal. If even that fails, the layer store's recovery quarantines it.
    await removeTree(options.destDir).catch(() => undefined);
    throw err;
  }
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  if (signal.reason instanceof CriError) throw signal.reason;
  throw new CancelledError('layer unpack was cancelled', { cause: signal.reason });
}

async function runHelper(options: UnpackLayerOptions, args: string[]): Promise<UnpackLayerResult> {
  const helperPath = options.helperPath ?? defaultHelperPath();
  const child = (options.runner ?? spawnRunner)(helperPath, args);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    if (stdout.length < STDOUT_CAP) stdout += chunk;
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    if (stderr.length < STDERR_CAP) stderr += chunk;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; spawnError?: Error }>(
    (resolve) => {
      child.once('error', (spawnError) => resolve({ code: null, signal: null, spawnError }));
      child.once('close', (code, signal) => resolve({ code, signal }));
    },
  );
  const onAbort = () => child.kill('SIGKILL');
  options.signal?.addEventListener('abort', onAbort, { once: true });
  if (options.signal?.aborted) onAbort();

  // pipeline() destroys every stage with the first error, so only the first one observed
  // says which stage failed (a helper that stopped early shows up as EPIPE on its stdin).
  let firstFailure: { stage: 'source' | 'helper'; error: Error } | undefined;
  // A stage torn down because another one ended reports ERR_STREAM_PREMATURE_CLOSE; that
  // is never the cause (the helper closing its stdin after a bad entry looks like this).
  const recordFailure = (stage: 'source' | 'helper') => (error: NodeJS.ErrnoException) => {
    if (error.code !== 'ERR_STREAM_PREMATURE_CLOSE') firstFailure ??= { stage, error };
  };
  const source = (options.source ?? createReadStream(options.blobPath!, { highWaterMark: READ_CHUNK })).once(
    'error',
    recordFailure('source'),
  );
  child.stdin.once('error', recordFailure('helper'));
  // The helper stopping early (bad entry, limit) shows up here as EPIPE; its report says why.
  const fed = pipeline(source, child.stdin).then(
    () => undefined,
    (e: Error) => e,
  );
  const [feedError, exit] = await Promise.all([fed, exited]);
  options.signal?.removeEventListener('abort', onAbort);

  throwIfAborted(options.signal);
  const layer = `layer ${options.layerDigest}`;
  if (exit.spawnError) {
    throw new InternalError(
      `cannot start the layer unpack helper ${helperPath}: ${exit.spawnError.message} (run npm run build)`,
      { cause: exit.spawnError },
    );
  }
  // TypeScript cannot see the assignments made in the listeners above.
  const failure = firstFailure as { stage: string; error: Error } | undefined;
  if (failure?.stage === 'source') {
    // The download feeding a streamed unpack failed; its error says what went wrong.
    if (options.source !== undefined && failure.error instanceof CriError) throw failure.error;
    throw new InternalError(`cannot read ${layer} from the content store`, { cause: failure.error });
  }
  const report = parseReport(stdout);
  if (report?.ok === false) throw reportError(report, options);
  if (report?.ok !== true || exit.code !== 0) {
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
    throw new InternalError(`layer unpack helper ${how} without a report for ${layer}: ${stderr.trim()}`);
  }
  if (feedError)
    throw new InternalError(`streaming ${layer} to the unpack helper failed`, { cause: feedError });
  const diffId = report.diffId;
  if (typeof diffId !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(diffId)) {
    throw new InternalError(
      `layer unpack helper reported no diff_id for ${layer} (rebuild it: npm run build)`,
    );
  }
  if (options.diffId !== undefined && diffId !== options.diffId) {
    throw new InvalidArgumentError(
      `${layer} uncompressed to ${diffId}, but the image config says its diff_id is ${options.diffId}`,
    );
  }
  return {
    entries: report.entries ?? 0,
    bytes: report.bytes ?? 0,
    diffId,
    warnings: report.warnings ?? [],
  };
}
