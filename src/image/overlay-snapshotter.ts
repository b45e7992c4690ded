/**
 * The opt-in snapshotter: the kernel's overlayfs, mounted by uid 0 of the node's user
 * namespace. That needs Linux >= 5.11 (overlay became mountable in a user namespace) and
 * the `userxattr` option, with which overlay keeps its metadata in `user.overlay.*`
 * instead of `trusted.overlay.*` (which only the initial namespace's root may write).
 *
 * With userxattr the kernel reads whiteouts as character devices 0:0 and opaque dirs as
 * `user.overlay.opaque="y"` only (no `.wh.` files, no trusted.* xattr): exactly what
 * native/layer-unpack.c writes. The upper and work dirs need a filesystem with user
 * xattrs, RENAME_WHITEOUT and d_type (ext4, xfs, btrfs, tmpfs >= 6.6; not overlay or FUSE).
 *
 * Limits: the kernel stacks at most 500 lower layers (OVL_MAX_STACK), and mount(8) from
 * util-linux 2.38 passes options through mount(2), one 4 KiB page. Layers are passed as
 * `lowerdir=0:1:...` relative to the snapshot's lower/ link dir, so 500 layers take ~1.9 KB
 * and only the root path length can push the options past the page; both limits are
 * checked before mounting with a clear error.
 */
import { type CriError, FailedPreconditionError, InternalError, InvalidArgumentError } from '../errors.js';
import { type CommandResult, commandOutput } from '../os/mounts.js';
import {
  type IdMappingPair,
  type MountCommand,
  missingBinaryError,
  OverlaySnapshotterBase,
  relativeLowerdir,
  type SnapshotPaths,
  type SnapshotterOptions,
} from './snapshotter.js';

/** The kernel's OVL_MAX_STACK. */
export const OVERLAY_MAX_LAYERS = 500;
/** mount(2) copies at most one page of option data, NUL included. */
export const MOUNT_DATA_MAX = 4095;

export interface OverlaySnapshotterOptions extends SnapshotterOptions {
  /** The mount binary, default `mount` from PATH (umount likewise). */
  mountBinary?: string;
  umountBinary?: string;
}

export class OverlaySnapshotter extends OverlaySnapshotterBase {
  readonly name = 'overlay' as const;
  protected readonly maxLayers = OVERLAY_MAX_LAYERS;
  protected readonly unmountCommands: readonly (readonly string[])[];
  readonly #mountBinary: string;

  constructor(options: OverlaySnapshotterOptions) {
    super(options);
    this.#mountBinary = options.mountBinary ?? 'mount';
    this.unmountCommands = [[options.umountBinary ?? 'umount']];
  }

  protected async checkPrerequisites(): Promise<void> {}

  protected mountCommand(
    paths: SnapshotPaths,
    layerCount: number,
    readOnly: boolean,
    idMapping?: IdMappingPair,
  ): MountCommand {
    if (idMapping) {
      // The kernel refuses id-mapped overlay mounts, and overlay has no shifting of its own.
      throw new FailedPreconditionError(
        'a pod with its own user namespace (hostUsers: false) needs the fuse-overlayfs snapshotter, which shifts ' +
          'its root filesystem; set [image] snapshotter = "fuse-overlayfs"',
      );
    }
    const options = [
      `lowerdir=${relativeLowerdir(layerCount)}`,
      `upperdir=${paths.upper}`,
      `workdir=${paths.work}`,
      'userxattr',
    ];
    if (readOnly) options.push('ro');
    const data = options.join(',');
    if (data.length > MOUNT_DATA_MAX) {
      throw new InvalidArgumentError(
        `overlay mount options for ${paths.merged} are ${data.length} bytes, more than the ${MOUNT_DATA_MAX} ` +
          'mount(2) accepts: use a shorter root directory or the fuse-overlayfs snapshotter',
      );
    }
    return { command: this.#mountBinary, args: ['-t', 'overlay', 'overlay', '-o', data, paths.merged] };
  }

  protected mountError(result: CommandResult, paths: SnapshotPaths): CriError {
    const missing = missingBinaryError(result, this.#mountBinary, 'mount (util-linux)');
    if (missing !== undefined) return missing;
    const output = commandOutput(result);
    if (
      /permission denied|not permitted|must be superuser|unknown filesystem type|wrong fs type/i.test(output)
    ) {
      return new FailedPreconditionError(
        `the kernel would not mount overlay at ${paths.merged}: ${output}; the overlay snapshotter needs ` +
          "Linux >= 5.11, the daemon running as uid 0 inside the node's user and mount namespaces, and the " +
          'root directory on a filesystem with user xattrs (ext4, xfs, btrfs; not overlay or FUSE). ' +
          'Use the fuse-overlayfs snapshotter otherwise (run rootless-cri doctor)',
      );
    }
    return new InternalError(
      `overlay mount at ${paths.merged} failed: ${output || `exit code ${result.exitCode}`}`,
    );
  }
}
