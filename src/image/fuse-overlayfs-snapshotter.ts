/**
 * The default snapshotter: fuse-overlayfs, a userspace overlay that needs only /dev/fuse.
 *
 * Run as uid 0 inside the node's user namespace, fuse-overlayfs mounts with the kernel's
 * FUSE (allowed in a user namespace that owns the mount namespace) and adds
 * `allow_other,suid,default_permissions` itself, so container processes of any uid in
 * the namespace can use the rootfs. It reads whiteouts as character devices 0:0 (or
 * `.wh.<name>` files) and opaque directories from trusted.overlay.opaque,
 * user.overlay.opaque or user.fuseoverlayfs.opaque (or a `.wh..wh..opq` file): the
 * unpacker's format (0:0 devices, user.overlay.opaque) is read as is, with no
 * squash_to_root or xattr_permissions options needed.
 *
 * In the upper dir it writes whiteouts as 0:0 devices (mknod of a whiteout is allowed in
 * a user namespace since Linux 5.8; it falls back to `.wh.` files) and marks opaque dirs
 * with user.fuseoverlayfs.opaque, which only fuse-overlayfs reads: an upper dir belongs to
 * the snapshotter that made it.
 *
 * Limits: the mount helper's daemon opens every layer dir (it raises its open-file limit
 * to the hard limit first); option length is no concern since the layers are passed as
 * `lowerdir=0:1:...` relative to the snapshot's lower/ link dir (one argv string may be
 * 128 KiB). We refuse more than MAX_LAYERS layers as a sanity bound.
 */
import { basename } from 'node:path';
import { type CriError, FailedPreconditionError, InternalError } from '../errors.js';
import { type CommandResult, commandOutput } from '../os/mounts.js';
import { mappingSpec } from '../os/pod-user-namespace.js';
import {
  checkDevice,
  type IdMappingPair,
  type MountCommand,
  missingBinaryError,
  OverlaySnapshotterBase,
  relativeLowerdir,
  type SnapshotPaths,
  type SnapshotterOptions,
} from './snapshotter.js';

const MAX_LAYERS = 4096;
/** How long a fuse-overlayfs daemon gets to exit by itself, then after SIGTERM. */
const EXIT_WAIT_MS = 2_000;
const POLL_MS = 25;

export interface FuseOverlayfsSnapshotterOptions extends SnapshotterOptions {
  /** The binary, default `fuse-overlayfs` from PATH. */
  binary?: string;
  /** The FUSE device checked before mounting, default /dev/fuse. */
  fuseDevice?: string;
}

export class FuseOverlayfsSnapshotter extends OverlaySnapshotterBase {
  readonly name = 'fuse-overlayfs' as const;
  protected readonly maxLayers = MAX_LAYERS;
  protected readonly unmountCommands = [['fusermount3', '-u'], ['fusermount', '-u'], ['umount']] as const;
  readonly #binary: string;
  readonly #fuseDevice: string;

  constructor(options: FuseOverlayfsSnapshotterOptions) {
    super(options);
    this.#binary = options.binary ?? 'fuse-overlayfs';
    this.#fuseDevice = options.fuseDevice ?? '/dev/fuse';
  }

  protected async checkPrerequisites(): Promise<void> {
    await checkDevice(
      this.os,
      this.#fuseDevice,
      'fuse-overlayfs needs it readable and writable by the user (chmod 0666, as deploy/setup-host.sh does; ' +
        'load the fuse module if it is missing)',
    );
  }

  protected mountCommand(
    paths: SnapshotPaths,
    layerCount: number,
    readOnly: boolean,
    idMapping?: IdMappingPair,
  ): MountCommand {
    const options = [
      `lowerdir=${relativeLowerdir(layerCount)}`,
      `upperdir=${paths.upper}`,
      `workdir=${paths.work}`,
    ];
    if (readOnly) options.push('ro');
    // A pod user namespace: fuse-overlayfs shifts the ids itself (the kernel refuses id-mapped
    // mounts of FUSE and overlayfs). container:host:length triples, joined by ':'.
    if (idMapping) {
      options.push(
        `uidmapping=${mappingSpec(idMapping.uids, ':')}`,
        `gidmapping=${mappingSpec(idMapping.gids, ':')}`,
      );
    }
    return { command: this.#binary, args: ['-o', options.join(','), paths.merged] };
  }

  protected mountError(result: CommandResult, paths: SnapshotPaths): CriError {
    const missing = missingBinaryError(result, this.#binary, 'fuse-overlayfs');
    if (missing !== undefined) return missing;
    // fuse-overlayfs always warns about the lazytime option it passes itself.
    const output = commandOutput({
      ...result,
      stderr: result.stderr
        .split('\n')
        .filter((l) => !l.startsWith('unknown argument ignored'))
        .join('\n'),
    });
    if (/\/dev\/fuse|fuse: device not found|No such device/i.test(output)) {
      return new FailedPreconditionError(
        `${this.#fuseDevice} is not usable: ${output}; make it readable and writable by the user ` +
          '(chmod 0666) and load the fuse module (run rootless-cri doctor)',
      );
    }
    if (/Operation not permitted|Permission denied/i.test(output)) {
      return new FailedPreconditionError(
        `fuse-overlayfs may not mount at ${paths.merged}: ${output}; the daemon must run as uid 0 inside the ` +
          "node's user and mount namespaces (start it with rootless-cri serve, or join with rootless-cri enter; " +
          'run rootless-cri doctor)',
      );
    }
    return new InternalError(
      `fuse-overlayfs failed to mount ${paths.merged}: ${output || `exit code ${result.exitCode}`}`,
    );
  }

  /** The daemon serving a mount dies with its node's pid namespace or an OOM kill. */
  protected override async mountAlive(paths: SnapshotPaths): Promise<boolean> {
    return (await this.#daemonsFor(paths.merged)).length > 0;
  }

  /**
   * After the unmount the daemon normally exits by itself; one that does not (hung, or
   * whose mount was detached elsewhere) would keep the upper dir open, so it is ended.
   */
  protected override async afterUnmount(paths: SnapshotPaths): Promise<void> {
    let pids = await this.#daemonsFor(paths.merged);
    for (const signal of [undefined, 'SIGTERM', 'SIGKILL'] as const) {
      if (pids.length === 0) return;
      if (signal !== undefined) {
        for (const pid of pids) {
          try {
            this.os.kill(pid, signal);
          } catch {
            // already gone
          }
        }
      }
      // Counted polls rather than a clock, so a fake OS needs no timers.
      const polls = (signal === 'SIGKILL' ? 2 : 1) * (EXIT_WAIT_MS / POLL_MS);
      for (let i = 0; pids.length > 0 && i < polls; i++) {
        await this.os.sleep(POLL_MS);
        pids = await this.#daemonsFor(paths.merged);
      }
    }
    if (pids.length > 0) {
      throw new InternalError(
        `fuse-overlayfs for ${paths.merged} (pid ${pids.join(', ')}) did not exit after SIGKILL`,
      );
    }
  }

  async #daemonsFor(merged: string): Promise<number[]> {
    const processes = await this.os.listProcesses();
    return processes
      .filter((p) => basename(p.argv[0] ?? '') === basename(this.#binary) && p.argv.at(-1) === merged)
      .map((p) => p.pid);
  }
}
