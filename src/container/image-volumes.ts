/**
 * Image volumes (KEP-4639, CRI `Mount.image`): a mount whose `image` names an image the node
 * already has (kubelet pulls it first and passes PullImage's image_ref) is the image's file
 * tree, read-only, at `container_path`; `image_sub_path` mounts one directory (or file) of it.
 *
 * How, on a rootless node: the image's unpacked layers are stacked by the container
 * snapshotter (fuse-overlayfs, or kernel overlay) as a snapshot of their own, mounted with
 * `ro` — one per volume and container, never shared, so no other container and no later pull
 * can change what this one sees — and that tree (or its sub-path, resolved in-root) is handed
 * to the spec builder as an ordinary read-only bind mount. Reads go through the same FUSE
 * daemon as a root filesystem; writes fail twice over (the bind is `ro`, and so is the mount
 * under it). Nothing is copied.
 *
 * Rules (each break is INVALID_ARGUMENT naming the mount, before anything is made):
 *   - `readonly` must be true: image volumes are read-only by definition (kubelet always sets it);
 *   - `host_path` must be empty (the two are exclusive), `image.image` must not be;
 *   - `image_sub_path` is relative, without `..`, and only with `image`;
 *   - the image must be on the node (NOT_FOUND: pull it first);
 *   - a sub-path the image does not have is NOT_FOUND (the CRI says runtimes fail then).
 *
 * The container holds each volume's image like its own (RemoveImage then only untags it, and
 * its layers stay until the container is removed). The record names the volumes before the
 * first is mounted; src/core/image-volumes.ts removes them with the container, undoes them for
 * a half-made one and finds strays at recovery.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Mount__Output } from '../api/proto.js';
import { type ImageVolume, imageVolumeSnapshotId } from '../core/image-volumes.js';
import type { ContainerSnapshotter, ImageLookup } from '../core/providers.js';
import type { RollbackStack } from '../core/rollback.js';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import { resolveInRoot } from '../os/in-root.js';

/** An image volume checked and resolved against the image store, not yet mounted. */
export interface PlannedImageVolume extends ImageVolume {
  containerPath: string;
  /** What the request named (Mount.image.image). */
  requested: string;
  /** Normalised, relative; '' = the image's root. */
  subPath: string;
  /** The image's layers, top first. */
  layerDirs: string[];
}

function where(mount: Mount__Output): string {
  return `mount ${JSON.stringify(mount.container_path)}`;
}

/** `image_sub_path` as a clean relative path ('' for none); INVALID_ARGUMENT for anything else. */
export function normaliseSubPath(mount: Mount__Output): string {
  const raw = mount.image_sub_path;
  if (raw === '') return '';
  if (raw.includes('\0') || raw.startsWith('/') || raw.split('/').includes('..')) {
    throw new InvalidArgumentError(
      `${where(mount)}: image_sub_path ${JSON.stringify(raw.slice(0, 300))} must be a relative path ` +
        'inside the image, without ".." (e.g. "etc" or "usr/share/data")',
    );
  }
  const clean = path.posix.normalize(raw).replace(/\/+$/, '');
  return clean === '.' ? '' : clean;
}

/**
 * Checks every image mount of the request and finds its image; no side effects. Mounts
 * without `image` are left to the spec builder (except a stray image_sub_path).
 */
export async function planImageVolumes(
  images: Pick<ImageLookup, 'resolveImage'>,
  containerId: string,
  mounts: readonly Mount__Output[],
): Promise<PlannedImageVolume[]> {
  const planned: PlannedImageVolume[] = [];
  for (const [mountIndex, mount] of mounts.entries()) {
    if (!mount.image) {
      if (mount.image_sub_path !== '') {
        throw new InvalidArgumentError(
          `${where(mount)}: image_sub_path is only meaningful for an image volume (with image set)`,
        );
      }
      continue;
    }
    const requested = mount.image.image;
    if (requested === '') {
      throw new InvalidArgumentError(`${where(mount)}: image.image is empty; name the image to mount`);
    }
    if (mount.host_path !== '') {
      throw new InvalidArgumentError(
        `${where(mount)}: host_path and image are exclusive; an image volume has no host path`,
      );
    }
    if (!mount.readonly) {
      throw new InvalidArgumentError(
        `${where(mount)}: image volumes are read-only; set readonly: true (kubelet always does)`,
      );
    }
    const subPath = normaliseSubPath(mount);
    const image = await images.resolveImage(requested).catch((err: unknown) => {
      if (err instanceof NotFoundError) {
        throw new NotFoundError(
          `${where(mount)}: image ${JSON.stringify(requested.slice(0, 300))} of the image volume is not present on the node; pull it first`,
          { cause: err },
        );
      }
      throw err;
    });
    planned.push({
      mountIndex,
      snapshotId: imageVolumeSnapshotId(containerId, mountIndex),
      imageId: image.id,
      containerPath: mount.container_path,
      requested,
      subPath,
      layerDirs: image.layerDirs,
    });
  }
  return planned;
}

/** What the core keeps of a planned volume (the container record's `imageVolumes`). */
export function imageVolumeRecords(planned: readonly PlannedImageVolume[]): ImageVolume[] {
  return planned.map(({ mountIndex, snapshotId, imageId }) => ({ mountIndex, snapshotId, imageId }));
}

/** Where a mounted volume's tree (or sub-path) is on the node; NOT_FOUND for a missing sub-path. */
async function volumeSource(root: string, volume: PlannedImageVolume): Promise<string> {
  if (volume.subPath === '') return root;
  // In-root: a sub-path that is (or crosses) a symlink stays inside the image, as in a chroot.
  const resolved = await resolveInRoot(root, volume.subPath);
  const what = `mount ${JSON.stringify(volume.containerPath)}: image_sub_path ${JSON.stringify(volume.subPath)}`;
  if (!resolved.exists) {
    throw new NotFoundError(
      `${what} does not exist in image ${volume.requested} (${volume.imageId}); name a directory the image has`,
    );
  }
  const info = await stat(resolved.hostPath);
  if (!info.isDirectory() && !info.isFile()) {
    throw new InvalidArgumentError(`${what} is neither a directory nor a regular file in the image`);
  }
  return resolved.hostPath;
}

/**
 * Holds each volume's image and mounts its read-only snapshot, pushing each undo on the
 * rollback stack first; returns the request's mounts with every image mount turned into a
 * read-only bind of its source (what the spec builder takes).
 */
export async function mountImageVolumes(
  core: { images: Pick<ImageLookup, 'markInUse' | 'release'>; snapshotter: ContainerSnapshotter },
  containerId: string,
  mounts: readonly Mount__Output[],
  planned: readonly PlannedImageVolume[],
  rollback: RollbackStack,
): Promise<Mount__Output[]> {
  const sources = new Map<number, string>();
  for (const volume of planned) {
    rollback.push(`release image ${volume.imageId} of the volume at ${volume.containerPath}`, () =>
      core.images.release(volume.imageId, containerId),
    );
    await core.images.markInUse(volume.imageId, containerId);
    rollback.push(`remove the image volume snapshot ${volume.snapshotId}`, () =>
      core.snapshotter.remove(volume.snapshotId),
    );
    const { rootfs } = await core.snapshotter.prepare(volume.snapshotId, volume.layerDirs, {
      readOnly: true,
    });
    sources.set(volume.mountIndex, await volumeSource(rootfs, volume));
  }
  return mounts.map((mount, index) => {
    const source = sources.get(index);
    if (source === undefined) return mount;
    return { ...mount, host_path: source, image: null, image_sub_path: '', readonly: true };
  });
}
