/**
 * Image volumes (KEP-4639, CRI `Mount.image`) as the core keeps them: what a container record
 * says about each one, how a removal (or the undo of a half-made container) releases them, how
 * recovery finds the ones no record names, and how ContainerStatus reports them.
 *
 * Each image volume of a container is its own read-only snapshot of the image's layers
 * (`<container id>-iv<mount index>` in the container snapshotter, mounted with `ro`), held on
 * the image like the container's own image (`markInUse(image, container id)`), and bind-mounted
 * read-only into the container by the OCI spec. The record names every volume before the first
 * is mounted, so a daemon killed at any point leaves nothing that recovery cannot find.
 * The domain side (validation, mounting, sub-paths) is src/container/image-volumes.ts.
 */
import type { ImageSpec } from '../api/proto.js';
import { describeError, errorKind } from '../errors.js';
import type { ContainerRecord, ImageVolume } from './container-store.js';

export type { ImageVolume };

import type { CoreContext } from './core-context.js';

/** Snapshot ids of image volumes: the container id, "-iv", the mount index. */
const IMAGE_VOLUME_SNAPSHOT = /^([0-9a-f]{64})-iv(\d{1,5})$/;

export function imageVolumeSnapshotId(containerId: string, mountIndex: number): string {
  return `${containerId}-iv${mountIndex}`;
}

/**
 * Unmounts and deletes every image volume of the record and drops its holds on the images.
 * Idempotent: a volume that is already gone, or a hold already dropped, is fine.
 */
export async function releaseImageVolumes(core: CoreContext, record: ContainerRecord): Promise<void> {
  for (const volume of record.imageVolumes ?? []) {
    await core.snapshotter.remove(volume.snapshotId);
    // As for the container's own image: a hold that cannot be recorded on a full disk is dropped
    // at the next start (retainHolders), and must not keep the container from going.
    await core.images.release(volume.imageId, record.id).catch((err: unknown) => {
      if (errorKind(err) !== 'ResourceExhausted') throw err;
      core.logger.warn(
        { container: record.id, image: volume.imageId, err },
        'could not record the release of an image volume (disk full); it is dropped at the next start',
      );
    });
  }
}

/**
 * Recovery: removes image-volume snapshots that no container record names (their container
 * is gone, or was rolled back). Problems are reported, never thrown.
 */
export async function removeStrayImageVolumes(core: CoreContext, problems: string[]): Promise<void> {
  if (!core.snapshotter.list) return;
  const named = new Set(
    core.containers.list().flatMap((r) => (r.imageVolumes ?? []).map((v) => v.snapshotId)),
  );
  for (const id of await core.snapshotter.list().catch(() => [] as string[])) {
    if (!IMAGE_VOLUME_SNAPSHOT.test(id) || named.has(id)) continue;
    await core.snapshotter
      .remove(id)
      .catch((err: unknown) => problems.push(`stray image volume ${id}: ${describeError(err)}`));
  }
}

/** The `image` of a ContainerStatus mount: what the request named, plus the image id as image_ref. */
export function imageVolumeStatus(record: ContainerRecord, mountIndex: number): ImageSpec | null {
  const requested = record.config.mounts[mountIndex]?.image;
  if (!requested) return null;
  const volume = record.imageVolumes?.find((v) => v.mountIndex === mountIndex);
  return {
    image: requested.image,
    annotations: requested.annotations,
    user_specified_image: requested.user_specified_image,
    runtime_handler: requested.runtime_handler,
    image_ref: volume?.imageId ?? '',
  };
}
