/**
 * What the runtime core asks of the image service and the snapshotter (both in src/image/).
 * The composition root hands the real ones in; the core never imports the image layer.
 */
import type { IdMapping } from '../os/pod-user-namespace.js';

/** What containers need of the image store. */
export interface ImageLookup {
  resolveImage(nameOrIdOrDigest: string): Promise<{
    id: string;
    config: Record<string, unknown>;
    layerDirs: string[];
    repoTags: string[];
    repoDigests: string[];
  }>;
  /** Records that `holder` (a container id) uses the image: it is never deleted meanwhile. */
  markInUse(id: string, holder: string): Promise<void>;
  /** Drops the hold, in memory only: the next start's retainHolders drops it on disk. */
  release(id: string, holder: string): Promise<void>;
  /** Loads the image store (last step of recovery). */
  recover(): Promise<unknown>;
  /** After recovery: drops holds of containers that no longer exist. */
  retainHolders(live: ReadonlySet<string>): Promise<void>;
}

/** Container root filesystems (src/image/snapshotter.ts). */
export interface ContainerSnapshotter {
  /**
   * `readOnly` mounts the snapshot read-only (image volumes); `idMapping` shifts the files into a
   * pod's user namespace (its maps, node ids as host ids).
   */
  prepare(
    id: string,
    lowerDirs: readonly string[],
    options?: { readOnly?: boolean; idMapping?: { uids: readonly IdMapping[]; gids: readonly IdMapping[] } },
  ): Promise<{ rootfs: string }>;
  /** Unmounts the root filesystem and keeps the writable layer (an exited container's). */
  unmount(id: string): Promise<void>;
  remove(id: string): Promise<void>;
  usage(id: string): Promise<{ bytes: bigint; inodes: bigint }>;
  /** Ids with a snapshot (recovery removes those no record names). */
  list?(): Promise<string[]>;
  /** Whether the container's root filesystem is mounted and answering (its FUSE server alive). */
  rootfsAlive?(id: string): Promise<boolean>;
}
