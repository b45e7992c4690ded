import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ImageHandlers } from '../api/handlers.js';
import type { Config } from '../config.js';
import { NotFoundError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ImagePullMetrics } from '../metrics.js';
import type { Dialer } from '../os/host-dialer.js';
import { ContentStore } from './content-store.js';
import { ActivePulls, collectGarbage } from './image-gc.js';
import { createListImagesHandler } from './image-list.js';
import { createPullImageHandler } from './image-pull.js';
import { createRemoveImageHandler, dropImage } from './image-remove.js';
import { createImageStatusHandler, findImage } from './image-status.js';
import { type ImageRecord, ImageStore } from './image-store.js';
import { LayerStore, type LayerUnpacker } from './layer-store.js';
import {
  type LayerIdMap,
  type LayerUnpackLimits,
  type UnpackLayerOptions,
  unpackLayer,
} from './layer-unpack.js';
import { Quarantine, type QuarantinedObject } from './quarantine.js';
import { RegistryClient } from './registry-client.js';
import type { RegistryHostsConfig } from './registry-hosts.js';

/**
 * The CRI ImageService (except ImageFsInfo, see image-fs-info.ts) and what the container
 * layer needs from images. Everything lives under `<rootDir>/image`:
 *
 *   image/images/<id hex>.json       image records (image-store.ts)
 *   image/content/sha256/<hex>       verified blobs (content-store.ts)
 *   image/layers/<chain id hex>      unpacked layers (layer-store.ts)
 *
 * Image size (ImageStatus/ListImages `size`) is the compressed size of the config and layer
 * blobs as listed in the manifest: fixed per image, the same whatever name asks for it,
 * and what `crictl images` shows for containerd. ImageFsInfo reports the real disk usage.
 */

export interface ResolvedLocalImage {
  id: string;
  /** The parsed OCI image config (a fresh copy per call: callers may not share it). */
  config: Record<string, unknown>;
  /** Unpacked layer directories, top layer first (what the snapshotter stacks). */
  layerDirs: string[];
  repoTags: string[];
  repoDigests: string[];
}

export type ImageServiceHandlers = Pick<
  ImageHandlers,
  'PullImage' | 'ImageStatus' | 'ListImages' | 'RemoveImage'
>;

export interface ImageService {
  handlers: ImageServiceHandlers;
  /**
   * Loads records, drops damaged images, removes leftovers of a crash, collects garbage.
   * One object that cannot be read or removed is quarantined, never fatal; this throws only
   * when the image directory itself is unusable.
   */
  recover(): Promise<{ images: number; dropped: string[] }>;
  /** Objects moved aside because they could not be read or removed (for verbose Status). */
  quarantined(): QuarantinedObject[];
  close(): Promise<void>;
  /** By id, tag or digest; NotFound when absent. Exact ids also find untagged-but-held images. */
  resolveImage(nameOrIdOrDigest: string): Promise<ResolvedLocalImage>;
  /** Records that `holder` (a container id) uses the image: it is never deleted meanwhile. */
  markInUse(id: string, holder: string): Promise<void>;
  /** Drops the hold, in memory only: the next start's retainHolders drops it on disk. */
  release(id: string, holder: string): Promise<void>;
  /** After the container layer's recovery: drops holds of holders that no longer exist. */
  retainHolders(live: ReadonlySet<string>): Promise<void>;
}

export interface ImageServiceOptions {
  config: Pick<Config, 'rootDir' | 'image'>;
  logger: Logger;
  /** IDs layers may use (default: read from /proc/self/{uid,gid}_map). */
  idMap?: LayerIdMap;
  unpacker?: LayerUnpacker;
  /** Per-layer unpack caps (default: DEFAULT_LAYER_UNPACK_LIMITS). */
  unpackLimits?: LayerUnpackLimits;
  /** Host name resolution for registries (tests pass one that refuses). */
  lookup?: import('node:net').LookupFunction;
  /** How registry connections are opened; the daemon passes the host dialer. */
  dial?: Dialer;
  /** Told of every pull's outcome (bytes, layers, duration, failure kind). */
  metrics?: ImagePullMetrics;
}

/** The largest N such that IDs 0..N are all mapped, from a /proc/<pid>/uid_map text. */
export function contiguousIdMax(mapText: string): number {
  const ranges = mapText
    .trim()
    .split('\n')
    .map((line) => line.trim().split(/\s+/).map(Number))
    .filter((f) => f.length === 3 && f.every(Number.isSafeInteger))
    .map(([inside, , count]) => ({ start: inside!, end: inside! + count! - 1 }))
    .sort((a, b) => a.start - b.start);
  let max = -1;
  for (const range of ranges) {
    if (range.start > max + 1) break;
    max = Math.max(max, range.end);
  }
  // (uid_t)-1 is "no change" for chown, never a real owner.
  return Math.min(max, 0xfffffffe);
}

export async function readIdMap(): Promise<LayerIdMap> {
  const [uids, gids] = await Promise.all([
    readFile('/proc/self/uid_map', 'utf8'),
    readFile('/proc/self/gid_map', 'utf8'),
  ]);
  return { uidMax: Math.max(contiguousIdMax(uids), 0), gidMax: Math.max(contiguousIdMax(gids), 0) };
}

function registryHosts(config: ImageServiceOptions['config']): RegistryHostsConfig {
  const hosts: RegistryHostsConfig = {};
  for (const [host, entry] of Object.entries(config.image.registries)) {
    hosts[host] = { mirrors: [...entry.mirrors] };
    // `insecure = false` is the config's default; passing it would force HTTPS on loopback.
    if (entry.insecure) hosts[host].insecure = true;
    if (entry.caFile !== undefined) hosts[host].caFile = entry.caFile;
  }
  return hosts;
}

export function createImageService(options: ImageServiceOptions): ImageService {
  const { config, logger } = options;
  const imageDir = join(config.rootDir, 'image');
  const quarantine = new Quarantine(imageDir, logger);
  const store = new ImageStore(imageDir, logger, quarantine);
  const content = new ContentStore({
    root: imageDir,
    logger,
    downloadConcurrency: config.image.maxConcurrentDownloads,
    downloadConcurrencyPerRegistry: config.image.maxConcurrentDownloadsPerRegistry,
    quarantine,
  });
  let idMap = options.idMap;
  const unpacker = options.unpacker ?? unpackLayer;
  const layers = new LayerStore({
    imageDir,
    logger,
    // The id map is read once at recover(); it is fixed for the life of the node.
    get idMap(): LayerIdMap {
      return idMap ?? { uidMax: 0, gidMax: 0 };
    },
    unpacker: (o: UnpackLayerOptions) => unpacker(o),
    // The real unpacker reads a layer while its blob downloads; an injected one gets the blob.
    streaming: options.unpacker === undefined,
    quarantine,
    ...(options.unpackLimits === undefined ? {} : { limits: options.unpackLimits }),
  });
  const registry = new RegistryClient({
    hosts: registryHosts(config),
    maxManifestBytes: config.image.maxManifestBytes,
    maxConfigBytes: config.image.maxConfigBytes,
    progressFloor: {
      windowMs: config.image.downloadProgressWindowSeconds * 1000,
      minBytes: config.image.downloadMinBytesPerWindow,
    },
    logger,
    ...(options.lookup === undefined ? {} : { lookup: options.lookup }),
    ...(options.dial === undefined ? {} : { dial: options.dial }),
  });
  const active = new ActivePulls();
  const gc = () => collectGarbage({ store, content, layers, active, logger });
  const readConfig = (record: ImageRecord) => content.readJson(record.id, config.image.maxConfigBytes);

  const handlers: ImageServiceHandlers = {
    PullImage: createPullImageHandler({
      store,
      content,
      layers,
      registry,
      active,
      logger,
      collectGarbage: gc,
      pullDeadlineMs: config.image.pullDeadlineSeconds * 1000,
      metrics: options.metrics,
    }),
    ImageStatus: createImageStatusHandler({ store, readConfig }),
    ListImages: createListImagesHandler(store),
    RemoveImage: createRemoveImageHandler({ store, logger, collectGarbage: gc }),
  };

  /** `durable: false` changes the record in memory only (see replaceInMemory). */
  const updateHolders = (id: string, change: (holders: Set<string>) => void, { durable = true } = {}) =>
    store.exclusive(async () => {
      const record = findImage(store, id, { includeRemoved: true });
      if (record === undefined) return false;
      const holders = new Set(record.holders);
      const before = holders.size;
      change(holders);
      if (holders.size === before) return false;
      const updated = { ...record, holders: [...holders] };
      if (updated.removed && holders.size === 0) {
        await dropImage({ store, logger, collectGarbage: gc }, updated);
        await gc();
        return true;
      }
      if (durable) await store.put(updated);
      else store.replaceInMemory(updated);
      return true;
    });

  return {
    handlers,

    async recover() {
      idMap ??= await readIdMap();
      await quarantine.sweep();
      await content.init();
      await layers.init();
      const { dropped } = await store.load();
      await store.exclusive(async () => {
        for (const record of store.all()) {
          const missing: string[] = [];
          try {
            if (!(await content.has(record.id))) missing.push(`config ${record.id}`);
            for (const layer of record.layers) {
              if (!(await layers.has(layer.chainId))) missing.push(`layer ${layer.chainId}`);
            }
          } catch (err) {
            // Its files cannot even be looked at: as good as missing.
            missing.push(`unreadable (${err instanceof Error ? err.message.slice(0, 300) : String(err)})`);
          }
          if (missing.length === 0) continue;
          logger.warn(
            { image: record.id, tags: record.repoTags, missing },
            'image is damaged (files missing on disk); removing its record, pull it again',
          );
          await store.delete(record.id);
          dropped.push(record.id);
        }
        await gc();
      });
      const images = store.all().length;
      logger.info({ images, dropped: dropped.length, idMap }, 'image store recovered');
      return { images, dropped };
    },

    quarantined() {
      return quarantine.list();
    },

    async close() {
      // Wait for record writes in progress; pulls are cancelled by the server's shutdown.
      await store.exclusive(async () => undefined);
    },

    async resolveImage(name) {
      const record = findImage(store, name, { includeRemoved: true });
      if (record === undefined) {
        throw new NotFoundError(`image ${JSON.stringify(name.slice(0, 300))} is not present; pull it first`);
      }
      const raw = await readConfig(record);
      return {
        id: record.id,
        config: structuredClone(raw) as Record<string, unknown>,
        layerDirs: record.layers.map((l) => layers.path(l.chainId)).reverse(),
        repoTags: [...record.repoTags],
        repoDigests: [...record.repoDigests],
      };
    },

    async markInUse(id, holder) {
      const changed = await updateHolders(id, (h) => h.add(holder));
      if (!changed && findImage(store, id, { includeRemoved: true }) === undefined) {
        throw new NotFoundError(`image ${JSON.stringify(id.slice(0, 300))} is not present; pull it first`);
      }
    },

    async release(id, holder) {
      // Not written: RemoveContainer's fsyncs were a tenth of its time, and a hold its container
      // outlived is dropped at the next start (retainHolders) whether or not it was written. An
      // image removed while held still goes for good when its last hold does.
      await updateHolders(id, (h) => h.delete(holder), { durable: false });
    },

    async retainHolders(live) {
      for (const record of store.all()) {
        if (record.holders.every((h) => live.has(h))) continue;
        await updateHolders(record.id, (h) => {
          for (const holder of [...h]) if (!live.has(holder)) h.delete(holder);
        });
      }
    },
  };
}
