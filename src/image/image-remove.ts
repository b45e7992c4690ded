import type { RemoveImageRequest__Output } from '../api/generated/runtime/v1/RemoveImageRequest.js';
import type { RemoveImageResponse } from '../api/generated/runtime/v1/RemoveImageResponse.js';
import type { Logger } from '../log.js';
import { findImage } from './image-status.js';
import type { ImageRecord, ImageStore } from './image-store.js';

/**
 * RemoveImage: removes the whole image the name finds, with every tag and digest it has
 * (also tags from other registries that point at it, e.g. registry.k8s.io/pause:3.9 and
 * k8s.gcr.io/pause:3.9). An image that is not there is fine (idempotent, as critest and
 * kubelet expect). An image a container still uses is untagged and hidden, and its data
 * stays until the last container releases it.
 */

export interface RemoveImageDeps {
  store: ImageStore;
  logger: Logger;
  /** Deletes unreferenced blobs and layers; called inside `store.exclusive`. */
  collectGarbage(): Promise<unknown>;
}

/** Drops `record` (or hides it while held). Call inside `store.exclusive`. Returns true when deleted. */
export async function dropImage(deps: RemoveImageDeps, record: ImageRecord): Promise<boolean> {
  if (record.holders.length > 0) {
    await deps.store.put({ ...record, repoTags: [], repoDigests: [], removed: true });
    deps.logger.info(
      { image: record.id, holders: record.holders.length },
      'image untagged; its layers stay until the containers using it are removed',
    );
    return false;
  }
  await deps.store.delete(record.id);
  return true;
}

export function createRemoveImageHandler(deps: RemoveImageDeps) {
  return async (request: RemoveImageRequest__Output): Promise<RemoveImageResponse> => {
    const name = request.image?.image ?? '';
    await deps.store.exclusive(async () => {
      const record = findImage(deps.store, name);
      if (record === undefined) return;
      deps.logger.info({ image: record.id, tags: record.repoTags }, 'removing image');
      if (await dropImage(deps, record)) await deps.collectGarbage();
    });
    return {};
  };
}
