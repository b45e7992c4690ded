import type { Image } from '../api/generated/runtime/v1/Image.js';
import type { ImageStatusRequest__Output } from '../api/generated/runtime/v1/ImageStatusRequest.js';
import type { ImageStatusResponse } from '../api/generated/runtime/v1/ImageStatusResponse.js';
import { InvalidArgumentError } from '../errors.js';
import type { Digest } from './digest.js';
import type { ImageRecord, ImageStore } from './image-store.js';
import { parseImageReference } from './reference.js';

/**
 * ImageStatus, and the one lookup every image RPC shares. An image can be named by
 *   - its id, `sha256:<64 hex>` or the bare 64 hex digits (critest removes `000…0` so);
 *   - a reference, normalised as docker does (`busybox` = `docker.io/library/busybox:latest`):
 *     `name@sha256:…` finds a repo digest, `name:tag` a repo tag;
 *   - a unique prefix of the id's hex digits (what `crictl images` prints), when the
 *     string names no reference.
 * Whatever the name, the same image gives the same `Image` (tags and digests sorted).
 */

const FULL_ID = /^sha256:[a-f0-9]{64}$/;
const BARE_ID = /^[a-f0-9]{64}$/;
const ID_PREFIX = /^(?:sha256:)?([a-f0-9]{3,63})$/;

export interface FindOptions {
  /** Also find images RemoveImage untagged while containers hold them (by exact id only). */
  includeRemoved?: boolean;
}

/** The record `name` refers to, or undefined. Throws InvalidArgument for a malformed name. */
export function findImage(
  store: ImageStore,
  name: string,
  options: FindOptions = {},
): ImageRecord | undefined {
  if (typeof name !== 'string' || name === '') {
    throw new InvalidArgumentError('image name is empty: give an image id, a tag or a digest reference');
  }
  const visible = (record: ImageRecord | undefined) =>
    record !== undefined && (!record.removed || options.includeRemoved === true) ? record : undefined;
  if (FULL_ID.test(name)) return visible(store.get(name));
  if (BARE_ID.test(name)) return visible(store.get(`sha256:${name}`));

  let byReference: ImageRecord | undefined;
  let referenceError: unknown;
  try {
    const ref = parseImageReference(name);
    const id: Digest | undefined =
      ref.digest !== undefined ? store.idByDigest(ref.repoDigest(ref.digest)) : store.idByTag(ref.repoTag()!);
    byReference = id === undefined ? undefined : visible(store.get(id));
  } catch (err) {
    referenceError = err;
  }
  if (byReference !== undefined) return byReference;

  const prefix = ID_PREFIX.exec(name)?.[1];
  if (prefix !== undefined) {
    const matches = store.all().filter((r) => !r.removed && r.id.startsWith(`sha256:${prefix}`));
    if (matches.length === 1) return matches[0];
    if (matches.length > 1) {
      throw new InvalidArgumentError(
        `image id prefix ${JSON.stringify(name)} is ambiguous (${matches.length} images match); give more digits`,
      );
    }
  }
  if (referenceError !== undefined) throw referenceError;
  return undefined;
}

/** `USER` of an image config: uid when its user part is a number that fits uint32, else the name. */
export function imageUser(user: string): { uid?: number; username?: string } {
  const name = user.split(':', 1)[0] ?? '';
  if (name === '') return {};
  if (/^[0-9]{1,10}$/.test(name) && Number(name) <= 0xffffffff) return { uid: Number(name) };
  return { username: name };
}

/** The CRI `Image` of a record. */
export function toCriImage(record: ImageRecord): Image {
  const user = imageUser(record.user);
  return {
    id: record.id,
    repo_tags: [...record.repoTags],
    repo_digests: [...record.repoDigests],
    size: String(record.size),
    uid: user.uid === undefined ? null : { value: String(user.uid) },
    username: user.username ?? '',
    spec: { image: record.id, annotations: {} },
    pinned: false,
  };
}

/** What ImageStatus needs: the store and, for verbose answers, the stored config. */
export interface ImageStatusDeps {
  store: ImageStore;
  readConfig(record: ImageRecord): Promise<unknown>;
}

export function createImageStatusHandler(deps: ImageStatusDeps) {
  return async (request: ImageStatusRequest__Output): Promise<ImageStatusResponse> => {
    const record = findImage(deps.store, request.image?.image ?? '');
    if (record === undefined) return { image: null, info: {} };
    const response: ImageStatusResponse = { image: toCriImage(record), info: {} };
    if (request.verbose) {
      response.info = {
        info: JSON.stringify({
          id: record.id,
          repoTags: record.repoTags,
          repoDigests: record.repoDigests,
          manifestDigest: record.manifestDigest,
          manifestMediaType: record.manifestMediaType,
          size: record.size,
          sizeDescription: 'compressed bytes of the config and layer blobs, as the registry served them',
          layers: record.layers,
          pulledAt: record.pulledAt,
          inUseBy: record.holders.length,
          imageSpec: await deps.readConfig(record),
        }),
      };
    }
    return response;
  };
}
