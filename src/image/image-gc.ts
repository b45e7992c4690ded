import type { Logger } from '../log.js';
import type { ContentStore } from './content-store.js';
import type { Digest } from './digest.js';
import type { ImageStore } from './image-store.js';
import type { LayerStore } from './layer-store.js';

/**
 * Garbage collection of the image store: a blob or an unpacked layer stays while an image
 * record names it or a pull in progress uses it; everything else is deleted.
 *
 * Runs inside `ImageStore.exclusive` (records cannot change under it) and while it runs
 * no pull can register what it is about to use (`ActivePulls.hold` waits for it), so a blob
 * a pull has just found present cannot be deleted before that pull's record names it.
 */

/** What pulls in progress are using: blobs by digest, layers by chain ID. */
export class ActivePulls {
  private readonly blobCounts = new Map<string, number>();
  private readonly layerCounts = new Map<string, number>();
  private collecting: Promise<unknown> = Promise.resolve();

  /** Registers a pull's blobs and layers (after any running collection); release when done. */
  async hold(blobs: readonly Digest[], chainIds: readonly Digest[]): Promise<{ release(): void }> {
    await this.collecting;
    for (const d of blobs) this.blobCounts.set(d, (this.blobCounts.get(d) ?? 0) + 1);
    for (const c of chainIds) this.layerCounts.set(c, (this.layerCounts.get(c) ?? 0) + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        decrement(this.blobCounts, blobs);
        decrement(this.layerCounts, chainIds);
      },
    };
  }

  usesBlob(digest: string): boolean {
    return this.blobCounts.has(digest);
  }

  usesLayer(chainId: string): boolean {
    return this.layerCounts.has(chainId);
  }

  /** Runs a collection; holds requested meanwhile wait for it. */
  async during<T>(task: () => Promise<T>): Promise<T> {
    const run = task();
    this.collecting = run.catch(() => undefined);
    return run;
  }
}

function decrement(counts: Map<string, number>, keys: readonly string[]): void {
  for (const key of keys) {
    const n = (counts.get(key) ?? 1) - 1;
    if (n <= 0) counts.delete(key);
    else counts.set(key, n);
  }
}

export interface GarbageCollectorParts {
  store: ImageStore;
  content: ContentStore;
  layers: LayerStore;
  active: ActivePulls;
  logger: Logger;
}

export interface GarbageReport {
  blobs: number;
  layers: number;
  bytes: number;
}

/** Deletes unreferenced blobs and layer dirs. Call inside `store.exclusive`. */
export function collectGarbage(parts: GarbageCollectorParts): Promise<GarbageReport> {
  const { store, content, layers, active, logger } = parts;
  return active.during(async () => {
    const keepBlobs = new Set<string>();
    const keepLayers = new Set<string>(layers.inFlight());
    for (const record of store.all()) {
      keepBlobs.add(record.id);
      keepBlobs.add(record.manifestDigest);
      for (const d of record.indexDigests) keepBlobs.add(d);
      for (const layer of record.layers) {
        keepBlobs.add(layer.digest);
        keepLayers.add(layer.chainId);
      }
    }
    const report: GarbageReport = { blobs: 0, layers: 0, bytes: 0 };
    // One object that cannot be deleted is logged and left for the next collection; it
    // must not stop the rest (or the pull or removal that asked for the collection).
    for (const blob of await content.list()) {
      if (keepBlobs.has(blob.digest) || active.usesBlob(blob.digest)) continue;
      try {
        await content.delete(blob.digest);
        report.blobs += 1;
        report.bytes += blob.size;
      } catch (err) {
        logger.warn({ blob: blob.digest, err: String(err) }, 'garbage collection cannot delete a blob');
      }
    }
    for (const chainId of await layers.list()) {
      if (keepLayers.has(chainId) || active.usesLayer(chainId)) continue;
      try {
        await layers.remove(chainId);
        report.layers += 1;
      } catch (err) {
        logger.warn({ layer: chainId, err: String(err) }, 'garbage collection cannot delete a layer');
      }
    }
    if (report.blobs > 0 || report.layers > 0) {
      logger.info(report, 'image garbage collection removed unused blobs and layers');
    }
    return report;
  });
}
