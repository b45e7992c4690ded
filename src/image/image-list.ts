import type { ListImagesRequest__Output } from '../api/generated/runtime/v1/ListImagesRequest.js';
import type { ListImagesResponse } from '../api/generated/runtime/v1/ListImagesResponse.js';
import { findImage, toCriImage } from './image-status.js';
import type { ImageStore } from './image-store.js';

/**
 * ListImages: every image the CRI can see (not the ones RemoveImage untagged while a
 * container still uses them), in id order. A filter with an image name returns just the
 * image that name finds, named the way ImageStatus accepts (id, tag, digest).
 */
export function createListImagesHandler(store: ImageStore) {
  return async (request: ListImagesRequest__Output): Promise<ListImagesResponse> => {
    const wanted = request.filter?.image?.image ?? '';
    if (wanted !== '') {
      const record = findImage(store, wanted);
      return { images: record === undefined ? [] : [toCriImage(record)] };
    }
    return {
      images: store
        .all()
        .filter((r) => !r.removed)
        .map(toCriImage),
    };
  };
}
