import type { AuthConfig__Output } from '../api/generated/runtime/v1/AuthConfig.js';
import type { PullImageRequest__Output } from '../api/generated/runtime/v1/PullImageRequest.js';
import type { PullImageResponse } from '../api/generated/runtime/v1/PullImageResponse.js';
import type { CallContext } from '../api/handlers.js';
import {
  CancelledError,
  CriError,
  DeadlineExceededError,
  errorKind,
  InvalidArgumentError,
} from '../errors.js';
import type { Logger } from '../log.js';
import type { ImagePullMetrics, PullSummary } from '../metrics.js';
import type { ContentStore } from './content-store.js';
import { type Digest, parseDigest } from './digest.js';
import type { ActivePulls } from './image-gc.js';
import { dropImage } from './image-remove.js';
import { IMAGE_RECORD_VERSION, type ImageRecord, type ImageStore, type LayerRecord } from './image-store.js';
import { chainIds, type FetchedBlob, type LayerStore } from './layer-store.js';
import { LAYER_MEDIA_TYPES } from './media-types.js';
import { type ImageReference, parseImageReference } from './reference.js';
import type { AuthConfig } from './registry-auth.js';
import { abortError, type RegistryClient, type RegistrySession } from './registry-client.js';

/**
 * PullImage: resolve the reference (mirrors first, then the registry), fetch and check the
 * config, download every layer blob into the content store (verified, at most
 * `maxConcurrentDownloads` at once, shared with concurrent pulls) and unpack each into its
 * layer directory while its blob downloads (committed only once the blob verified; a bad
 * blob is reported as the download's digest or size mismatch, see LayerStore.unpack), then
 * record the image under the name that was asked for. The answer is the image id, the
 * config digest.
 *
 * A client cancel or deadline aborts every download and unpack of this pull (shared ones
 * only when no other pull waits for them) and the call returns only once their temp files
 * are gone. Any failure does the same, then garbage collection removes what the pull stored
 * that no image uses (config, manifest, finished layers), so a failed pull leaves nothing.
 */

export interface PullDeps {
  store: ImageStore;
  content: ContentStore;
  layers: LayerStore;
  registry: RegistryClient;
  active: ActivePulls;
  logger: Logger;
  /** Deletes unreferenced blobs and layers; called inside `store.exclusive`. */
  collectGarbage(): Promise<unknown>;
  /** A whole pull's time limit (image.pull_deadline_seconds); 0 or absent: none. */
  pullDeadlineMs?: number;
  /** Told of every pull's outcome, once, here in the handler. */
  metrics?: ImagePullMetrics;
}

/** The parts of an image config the daemon relies on; the rest is kept as data. */
export interface ParsedImageConfig {
  raw: Record<string, unknown>;
  diffIds: Digest[];
  user: string;
}

/**
 * Checks an image config: a JSON object whose `rootfs.diff_ids` lists one valid digest per
 * layer. `config.User` must be a string when present. Everything else (Env, Volumes,
 * Labels...) is data for the container layer, which validates what it uses.
 */
export function parseImageConfig(bytes: Uint8Array, layerCount: number, source: string): ParsedImageConfig {
  const fail = (why: string, cause?: unknown): never => {
    throw new InvalidArgumentError(`${source}: ${why}`, { cause });
  };
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    fail('the image config is not valid JSON', err);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    fail('the image config is not a JSON object');
  const config = raw as Record<string, unknown>;
  const rootfs = config.rootfs as Record<string, unknown> | undefined;
  if (typeof rootfs !== 'object' || rootfs === null || !Array.isArray(rootfs.diff_ids)) {
    fail('the image config has no rootfs.diff_ids list');
  }
  const listed = (rootfs as { diff_ids: unknown[] }).diff_ids;
  if (listed.length !== layerCount) {
    fail(`the image config lists ${listed.length} diff_ids but the manifest has ${layerCount} layers`);
  }
  const diffIds = listed.map((d, i) => {
    try {
      return parseDigest(d, `rootfs.diff_ids[${i}]`);
    } catch (err) {
      return fail(err instanceof Error ? err.message : String(err), err);
    }
  });
  const inner = config.config;
  let user = '';
  if (inner !== undefined && inner !== null) {
    if (typeof inner !== 'object' || Array.isArray(inner))
      fail('"config" of the image config is not an object');
    const u = (inner as Record<string, unknown>).User;
    if (u !== undefined && u !== null) {
      if (typeof u !== 'string') fail('config.User is not a string');
      user = u as string;
    }
  }
  return { raw: config, diffIds, user };
}

/** The CRI AuthConfig as the registry client takes it (empty fields dropped). */
export function toAuthConfig(auth: AuthConfig__Output | null | undefined): AuthConfig | undefined {
  if (auth === null || auth === undefined) return undefined;
  const out: AuthConfig = {};
  for (const key of [
    'username',
    'password',
    'auth',
    'server_address',
    'identity_token',
    'registry_token',
  ] as const) {
    const value = auth[key];
    if (typeof value === 'string' && value !== '') out[key] = value;
  }
  return Object.keys(out).length === 0 ? undefined : out;
}

export function createPullImageHandler(deps: PullDeps) {
  return async (request: PullImageRequest__Output, ctx: CallContext): Promise<PullImageResponse> => {
    const name = request.image?.image ?? '';
    if (name === '') throw new InvalidArgumentError('PullImage needs image.image: the reference to pull');
    const ref = parseImageReference(name);
    const deadline = withPullDeadline(ctx.signal, deps.pullDeadlineMs, ref);
    try {
      const pulled = await pullImage(deps, ref, toAuthConfig(request.auth), deadline.signal);
      deps.metrics?.pulled(pulled.summary);
      return { image_ref: pulled.id };
    } catch (err) {
      deps.metrics?.failed(errorKind(err));
      throw err;
    } finally {
      deadline.clear();
    }
  };
}

/**
 * The client's signal, firing also when the configured whole-pull deadline passes, with a
 * DeadlineExceeded that names the setting. A pull that makes progress too slowly to ever
 * finish (above the progress floor, below any useful rate) ends here.
 */
export function withPullDeadline(
  signal: AbortSignal | undefined,
  deadlineMs: number | undefined,
  ref: ImageReference,
): { signal: AbortSignal | undefined; clear(): void } {
  if (deadlineMs === undefined || deadlineMs <= 0) return { signal, clear: () => {} };
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal!.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  if (signal?.aborted) onAbort();
  const timer = setTimeout(
    () =>
      controller.abort(
        new DeadlineExceededError(
          `pull of ${ref} did not finish within ${deadlineMs / 1000} s (image.pull_deadline_seconds); ` +
            'the registry is too slow for this image, or raise the setting',
        ),
      ),
    deadlineMs,
  );
  timer.unref();
  return {
    signal: controller.signal,
    clear: () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    },
  };
}

/** Opens a blob's download from the registry (what the content store calls when it needs one). */
type BlobOpener = Pick<RegistrySession, 'openBlob'>;

/** Pulls `ref` and records it; returns the image id and what the pull downloaded. */
export async function pullImage(
  deps: PullDeps,
  ref: ImageReference,
  auth: AuthConfig | undefined,
  signal: AbortSignal | undefined,
): Promise<{ id: Digest; summary: PullSummary }> {
  const what = `pull of ${ref}`;
  const started = Date.now();
  const session = deps.registry.session(ref, auth);
  // The layer blobs this pull itself downloads: the content store opens a download only when
  // the blob is neither stored nor being downloaded by another pull.
  const downloaded = new Map<string, number>();
  const downloads: BlobOpener = {
    openBlob: (descriptor, options) => {
      downloaded.set(descriptor.digest, descriptor.size);
      return session.openBlob(descriptor, options);
    },
  };
  const resolved = await session.resolve({ signal });
  const { manifest } = resolved;
  const id = parseDigest(manifest.config.digest, 'config digest');
  const source = `image ${ref} (manifest ${resolved.manifestDigest})`;
  for (const [i, layer] of manifest.layers.entries()) {
    if (!LAYER_MEDIA_TYPES.has(layer.mediaType)) {
      throw new InvalidArgumentError(
        `${source}: layers[${i}] has media type ${JSON.stringify(layer.mediaType.slice(0, 200))}, which is not an image layer`,
      );
    }
  }
  const configBytes = await session.readBlob(manifest.config, { signal });
  const config = parseImageConfig(configBytes, manifest.layers.length, `${source} config ${id}`);
  const chains = chainIds(config.diffIds);
  const layers: LayerRecord[] = manifest.layers.map((d, i) => ({
    digest: d.digest,
    mediaType: d.mediaType,
    size: d.size,
    diffId: config.diffIds[i]!,
    chainId: chains[i]!,
  }));
  const indexDigests = resolved.index === undefined ? [] : [resolved.index.digest];
  const blobs = [id, resolved.manifestDigest, ...indexDigests, ...layers.map((l) => l.digest)];

  const hold = await deps.active.hold(blobs, chains);
  try {
    await deps.content.writeBlob(configBytes, id, `registry ${resolved.endpoint.host}`);
    await deps.content.writeBlob(
      resolved.manifestBytes,
      resolved.manifestDigest,
      `registry ${resolved.endpoint.host}`,
    );
    if (resolved.index !== undefined) {
      await deps.content.writeBlob(
        resolved.index.bytes,
        resolved.index.digest,
        `registry ${resolved.endpoint.host}`,
      );
    }
    await fetchLayers(deps, downloads, layers, signal, what, resolved.endpoint.host);
    if (signal?.aborted) throw abortError(signal, what);

    const tag = ref.digest === undefined ? ref.repoTag() : undefined;
    const repoDigest = ref.repoDigest(resolved.digest);
    await deps.store.exclusive(async () => {
      let collect = false;
      // A tag names one image: moving it leaves the previous image without it.
      const previous = tag === undefined ? undefined : deps.store.idByTag(tag);
      if (previous !== undefined && previous !== id) {
        const old = deps.store.get(previous)!;
        const rest = { ...old, repoTags: old.repoTags.filter((t) => t !== tag) };
        if (rest.repoTags.length === 0 && rest.repoDigests.length === 0)
          collect = await dropImage(deps, rest);
        else await deps.store.put(rest);
      }
      const existing = deps.store.get(id);
      const record: ImageRecord = {
        version: IMAGE_RECORD_VERSION,
        id,
        repoTags: [
          ...(existing?.removed === false ? existing.repoTags : []),
          ...(tag === undefined ? [] : [tag]),
        ],
        repoDigests: [...(existing?.removed === false ? existing.repoDigests : []), repoDigest],
        manifestDigest: resolved.manifestDigest,
        manifestMediaType: manifest.mediaType,
        indexDigests,
        configSize: manifest.config.size,
        layers,
        size: manifest.config.size + layers.reduce((sum, l) => sum + l.size, 0),
        user: config.user,
        holders: existing?.holders ?? [],
        removed: false,
        pulledAt: new Date().toISOString(),
      };
      await deps.store.put(record);
      // Blobs of an earlier manifest of the same config (e.g. docker vs OCI) are now unused.
      if (existing !== undefined && existing.manifestDigest !== record.manifestDigest) collect = true;
      if (collect) await deps.collectGarbage();
    });
    deps.logger.info(
      {
        image: ref.toString(),
        id,
        layers: layers.length,
        bytes: manifest.config.size,
        ms: Date.now() - started,
      },
      'pulled image',
    );
    let bytes = configBytes.length + resolved.manifestBytes.length + (resolved.index?.bytes.length ?? 0);
    for (const size of downloaded.values()) bytes += size;
    const summary: PullSummary = {
      bytes,
      layersDownloaded: downloaded.size,
      layersPresent: layers.length - downloaded.size,
      durationSeconds: (Date.now() - started) / 1000,
    };
    return { id, summary };
  } catch (err) {
    // Nothing of a failed or cancelled pull stays behind: what it stored that no image uses
    // (its config, manifest, finished layers) goes now, not at the next removal.
    hold.release();
    await deps.store
      .exclusive(() => deps.collectGarbage())
      .catch((gcError: unknown) => {
        deps.logger.warn({ err: String(gcError) }, 'cleaning up after a failed pull failed');
      });
    throw err;
  } finally {
    hold.release();
  }
}

/**
 * Downloads and unpacks every layer, each as soon as its own blob is in. The first failure
 * cancels the rest; the call settles only when every branch has cleaned up.
 */
async function fetchLayers(
  deps: PullDeps,
  session: BlobOpener,
  layers: readonly LayerRecord[],
  signal: AbortSignal | undefined,
  what: string,
  host: string,
): Promise<void> {
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal!.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  if (signal?.aborted) onAbort();
  const inner = controller.signal;
  let firstError: unknown;
  const branches: Promise<void>[] = [];
  // A layer whose entry has a parent only the layers below have looks it up in them
  // (layer-unpack.ts), so each unpack learns where they are and when they are complete.
  const lowersOf = (index: number) => {
    if (index === 0) return undefined;
    const ready = Promise.all(branches.slice(0, index));
    ready.catch(() => {});
    const dirs = layers.slice(0, index).map((l) => deps.layers.path(l.chainId));
    return { dirs: dirs.reverse(), ready };
  };
  const branch = async (layer: LayerRecord, index: number) => {
    try {
      const blobPath = deps.content.path(layer.digest);
      if ((await deps.layers.has(layer.chainId)) && !(await deps.content.has(layer.digest))) {
        await deps.content.ingest(layer.digest, layer.size, (s) => openBlobGuarded(session, layer, s), {
          signal: inner,
          slot: { host },
        });
      }
      // A layer still to unpack reads its blob while it downloads (see LayerStore.unpack).
      const lowers = lowersOf(index);
      await deps.layers.ensure(
        {
          ...layer,
          blobPath,
          fetch: (s, tee) => fetchForUnpack(deps, session, layer, s, tee, host),
          ...(lowers === undefined ? {} : { lowers }),
        },
        inner,
      );
    } catch (err) {
      // The first real failure wins; the cancellations it causes in other branches do not.
      if (firstError === undefined && !(isAbort(err) && !signal?.aborted && inner.aborted)) firstError = err;
      controller.abort(err);
      throw err;
    }
  };
  for (const [index, layer] of layers.entries()) branches.push(branch(layer, index));
  const results = await Promise.allSettled(branches);
  signal?.removeEventListener('abort', onAbort);
  if (signal?.aborted) throw abortError(signal, what);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed !== undefined) throw firstError ?? (failed as PromiseRejectedResult).reason;
}

/**
 * Starts (or joins, or finds) the download of a layer's blob for its unpack. A download this
 * call starts waits for a download slot of `host` (see download-slots.ts), holds it until it
 * ends, and comes with a tee of its bytes; the unpack reading that tee is what paces it.
 */
async function fetchForUnpack(
  deps: PullDeps,
  session: BlobOpener,
  layer: LayerRecord,
  signal: AbortSignal,
  tee: boolean,
  host: string,
): Promise<FetchedBlob> {
  if (await deps.content.has(layer.digest)) {
    return { result: Promise.resolve() };
  }
  return deps.content.openIngest(layer.digest, layer.size, (s) => openBlobGuarded(session, layer, s), {
    signal,
    tee,
    slot: { host },
  });
}

/**
 * The registry client's blob stream starts flowing as soon as it is opened and may fail (a
 * registry sending more than the descriptor's size) before the content store has attached
 * its reader; without a listener that 'error' would be an uncaught exception that ends the
 * daemon. The no-op listener keeps the error on the stream, where the store's read finds it.
 */
async function openBlobGuarded(session: BlobOpener, layer: LayerRecord, signal: AbortSignal) {
  const stream = await session.openBlob(
    { mediaType: layer.mediaType, digest: layer.digest, size: layer.size },
    { signal },
  );
  stream.on('error', () => {});
  return stream;
}

function isAbort(err: unknown): boolean {
  return (
    err instanceof CancelledError ||
    err instanceof DeadlineExceededError ||
    (err instanceof CriError && err.kind === 'Cancelled')
  );
}
