/**
 * Snapshotters: a container's root filesystem as an overlay of the image's unpacked
 * layer directories (read-only, shared) and a per-container writable ("upper") directory.
 *
 * Two implementations share everything but the mount itself:
 *  - `fuse-overlayfs` (default): works on any kernel with FUSE in user namespaces;
 *  - `overlay`: the kernel's overlayfs with `userxattr` (Linux >= 5.11 in a user namespace).
 *
 * Layout, under the snapshotter's root (one root per snapshotter, so their upper dirs
 * never mix: each writes whiteouts/opaque markers its own way):
 *
 *   <root>/snapshots/<id>/upper    the writable layer (what `usage` counts)
 *   <root>/snapshots/<id>/work     overlay's scratch dir, same filesystem as upper
 *   <root>/snapshots/<id>/merged   the mount point = the container's rootfs
 *   <root>/snapshots/<id>/lower/N  symlinks to the layer dirs, 0 = top layer
 *
 * The `lower/N` links keep the mount options short: the mount runs with `lower/` as its
 * cwd and passes `lowerdir=0:1:2...`, so a 500-layer image needs ~1.9 KB of options
 * instead of 500 absolute paths (the legacy mount(2) data is limited to one 4 KiB page),
 * and a layer path may contain ':' or ',' without breaking the option syntax.
 *
 * Layer format both snapshotters read (what native/layer-unpack.c writes):
 *  - whiteout: a character device 0:0 named like the hidden entry;
 *  - opaque directory: xattr `user.overlay.opaque="y"` (kernel overlay with userxattr
 *    reads only this one; fuse-overlayfs reads trusted.overlay.opaque,
 *    user.overlay.opaque, user.fuseoverlayfs.opaque or a `.wh..wh..opq` file).
 */
import { constants } from 'node:fs';
import { access, chmod, chown, lstat, mkdir, readdir, rm, stat, symlink } from 'node:fs/promises';
import { isAbsolute, join, normalize } from 'node:path';
import {
  CriError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../errors.js';
import { readKernelDirectory, readKernelFile } from '../os/kernel-file.js';
import {
  type CommandResult,
  type CommandRunner,
  commandOutput,
  type MountTableReader,
  mountsAt,
  mountsAtOrUnder,
  readSelfMountInfo,
  spawnCommand,
  unmountWithRetries,
} from '../os/mounts.js';
import type { IdMapping } from '../os/pod-user-namespace.js';
import { removeTree } from '../os/remove-tree.js';
import { type DirectoryUsage, measureExistingDirectory, turnTakingSyncAccess } from './image-fs-info.js';

export type SnapshotterName = 'fuse-overlayfs' | 'overlay';

export interface PrepareOptions {
  /** Mount read-only (the upper dir still exists, so a later read-write prepare keeps its data). */
  readOnly?: boolean;
  /**
   * Show the files shifted into a pod's user namespace (its maps, node ids as host ids): a file
   * stored as id N appears as the node id that is N in the pod. Storage stays unshifted.
   */
  idMapping?: IdMappingPair;
}

export interface IdMappingPair {
  uids: readonly IdMapping[];
  gids: readonly IdMapping[];
}

export interface Snapshotter {
  readonly name: SnapshotterName;
  /**
   * Creates <root>/snapshots/<id>/{upper,work,merged} and mounts the layer dirs (top
   * layer first) plus the upper dir at merged; returns merged. Idempotent: an id that is
   * already mounted is returned as it is (the layers and options it was mounted with are not compared),
   * unless its mount is dead (a fuse-overlayfs daemon that was killed), which is replaced.
   * An existing but unmounted snapshot (e.g. after a node restart) keeps its upper dir.
   */
  prepare(id: string, lowerDirs: readonly string[], options?: PrepareOptions): Promise<{ rootfs: string }>;
  /** Unmounts the rootfs, keeping the upper dir; a no-op when not mounted. */
  unmount(id: string): Promise<void>;
  /** Unmounts and deletes the snapshot; a no-op when it does not exist. */
  remove(id: string): Promise<void>;
  /** Allocated bytes and inodes of the writable layer (du semantics). */
  usage(id: string): Promise<DirectoryUsage>;
  /** Ids with a snapshot directory, mounted or not (for recovery and garbage collection). */
  list(): Promise<string[]>;
  isMounted(id: string): Promise<boolean>;
}

// ---- validation -----------------------------------------------------------------------

const SNAPSHOT_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Up to this many entries, a snapshot's dir is removed in-process (removeTree's inProcessUpTo). */
const SMALL_SNAPSHOT_ENTRIES = 512;

/** Ids are 64-hex container ids or short safe names: never a path. */
export function validateSnapshotId(id: string): void {
  if (typeof id !== 'string' || !SNAPSHOT_ID.test(id)) {
    throw new InvalidArgumentError(
      `invalid snapshot id ${JSON.stringify(String(id).slice(0, 200))}: use 1-128 characters of ` +
        'A-Z a-z 0-9 _ . - starting with a letter or digit (no "/")',
    );
  }
}

/** Characters that would break the mount option syntax or the kernel's path escaping. */
const UNSAFE_IN_OPTIONS = /[,:\\\s"']/;

export function validateRoot(root: string): string {
  if (!isAbsolute(root)) throw new InvalidArgumentError(`snapshotter root ${root} must be an absolute path`);
  const clean = normalize(root).replace(/\/+$/, '') || '/';
  if (UNSAFE_IN_OPTIONS.test(clean)) {
    throw new InvalidArgumentError(
      `snapshotter root ${JSON.stringify(clean)} contains a character that mount options cannot carry ` +
        '(comma, colon, backslash, quote or whitespace): choose another root directory',
    );
  }
  return clean;
}

export function validateLowerDirs(lowerDirs: readonly string[]): void {
  for (const dir of lowerDirs) {
    if (typeof dir !== 'string' || !isAbsolute(dir) || dir.includes('\0')) {
      throw new InvalidArgumentError(`layer directory ${JSON.stringify(dir)} must be an absolute path`);
    }
  }
}

// ---- paths ----------------------------------------------------------------------------

export interface SnapshotPaths {
  dir: string;
  upper: string;
  work: string;
  merged: string;
  /** Short symlinks to the layer dirs, the cwd of the mount command. */
  lower: string;
  /** An empty lower layer, for an image without layers (overlay needs one). */
  empty: string;
}

export function snapshotPaths(root: string, id: string): SnapshotPaths {
  const dir = join(root, 'snapshots', id);
  return {
    dir,
    upper: join(dir, 'upper'),
    work: join(dir, 'work'),
    merged: join(dir, 'merged'),
    lower: join(dir, 'lower'),
    empty: join(dir, 'empty'),
  };
}

// ---- OS access ------------------------------------------------------------------------

export interface ProcessInfo {
  pid: number;
  argv: string[];
}

/** What the snapshotters need from the OS besides the filesystem under their root. */
export interface SnapshotterOs {
  run: CommandRunner;
  readMountTable: MountTableReader;
  /** Processes visible in our pid namespace (to find stray fuse-overlayfs daemons). */
  listProcesses(): Promise<ProcessInfo[]>;
  kill(pid: number, signal: NodeJS.Signals): void;
  /** Rejects when `path` cannot be opened for reading and writing. */
  checkReadWrite(path: string): Promise<void>;
  sleep(ms: number): Promise<void>;
}

/**
 * Every process's argv, from /proc. Each removal looks for its fuse-overlayfs daemon this way,
 * and a node of 110 pods has several hundred processes:
 * through fs.promises each cmdline was four round trips to the libuv pool. These are procfs
 * files, read like the other kernel files (kernel-file.ts: synchronous, yielding in turns).
 */
async function listProcessesFromProc(): Promise<ProcessInfo[]> {
  const processes: ProcessInfo[] = [];
  for (const entry of await readKernelDirectory('/proc')) {
    if (!/^\d+$/.test(entry.name)) continue;
    const raw = await readKernelFile(`/proc/${entry.name}/cmdline`);
    if (!raw) continue; // gone, or a kernel thread
    processes.push({ pid: Number(entry.name), argv: raw.replace(/\0$/, '').split('\0') });
  }
  return processes;
}

export const realSnapshotterOs: SnapshotterOs = {
  run: spawnCommand,
  readMountTable: readSelfMountInfo,
  listProcesses: listProcessesFromProc,
  kill: (pid, signal) => process.kill(pid, signal),
  checkReadWrite: (path) => access(path, constants.R_OK | constants.W_OK),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
};

// ---- shared implementation ------------------------------------------------------------

export interface SnapshotterOptions {
  /** The snapshotter's own directory (snapshots live in <root>/snapshots). */
  root: string;
  os?: SnapshotterOs;
}

/** The mount command for one snapshot, run with `cwd` = the snapshot's lower/ dir. */
export interface MountCommand {
  command: string;
  args: string[];
}

function errnoCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Everything but the mount and unmount commands. Operations on one id are serialised, so
 * a concurrent prepare and remove of the same container cannot interleave.
 */
export abstract class OverlaySnapshotterBase implements Snapshotter {
  abstract readonly name: SnapshotterName;
  protected readonly root: string;
  protected readonly os: SnapshotterOs;
  readonly #locks = new Map<string, Promise<unknown>>();
  /** Merged dirs unmounted by #unmount, their mount server gone, and not mounted since. */
  readonly #cleanlyUnmounted = new Set<string>();

  constructor(options: SnapshotterOptions) {
    this.root = validateRoot(options.root);
    this.os = options.os ?? realSnapshotterOs;
  }

  /** The largest number of layers one mount can stack. */
  protected abstract readonly maxLayers: number;
  /** Checks host prerequisites before mounting; throws FailedPrecondition naming the fix. */
  protected abstract checkPrerequisites(): Promise<void>;
  protected abstract mountCommand(
    paths: SnapshotPaths,
    layerCount: number,
    readOnly: boolean,
    idMapping?: IdMappingPair,
  ): MountCommand;
  /** Turns a failed mount command into an error kind with a message saying what to do. */
  protected abstract mountError(result: CommandResult, paths: SnapshotPaths): CriError;
  /** Unmount commands in order of preference (each is followed by the path). */
  protected abstract readonly unmountCommands: readonly (readonly string[])[];
  /** Whether a mount at merged still works (a FUSE mount outlives a killed daemon). */
  protected async mountAlive(_paths: SnapshotPaths): Promise<boolean> {
    return true;
  }
  /** After the mount is gone: make sure nothing serving it is left (fuse daemons). */
  protected async afterUnmount(_paths: SnapshotPaths): Promise<void> {}

  paths(id: string): SnapshotPaths {
    validateSnapshotId(id);
    return snapshotPaths(this.root, id);
  }

  async prepare(
    id: string,
    lowerDirs: readonly string[],
    options: PrepareOptions = {},
  ): Promise<{ rootfs: string }> {
    const paths = this.paths(id);
    validateLowerDirs(lowerDirs);
    if (lowerDirs.length > this.maxLayers) {
      throw new InvalidArgumentError(
        `cannot mount ${lowerDirs.length} layers with the ${this.name} snapshotter: it stacks at most ` +
          `${this.maxLayers}; squash the image into fewer layers` +
          (this.name === 'overlay' ? ' or use the fuse-overlayfs snapshotter' : ''),
      );
    }
    return this.#locked(id, async () => {
      if (await this.#mounted(paths)) {
        if (await this.mountAlive(paths)) return { rootfs: paths.merged };
        // A mount whose server died answers ENOTCONN to everything: replace it.
        await this.#unmount(paths);
      }
      this.#cleanlyUnmounted.delete(paths.merged);
      await this.checkPrerequisites();
      for (const dir of lowerDirs) await this.#checkLayerDir(dir);
      const created = await this.#createDirs(paths, lowerDirs);
      try {
        await this.#mount(paths, lowerDirs, options?.readOnly === true, options?.idMapping);
      } catch (err) {
        // A snapshot made by this call goes; an existing one keeps its upper dir (data).
        const mountedBelow = await mountsAtOrUnder(paths.dir, this.os.readMountTable).catch(() => [1]);
        if (created && mountedBelow.length === 0) {
          await rm(paths.dir, { recursive: true, force: true }).catch(() => undefined);
        }
        throw err;
      }
      return { rootfs: paths.merged };
    });
  }

  async unmount(id: string): Promise<void> {
    const paths = this.paths(id);
    await this.#locked(id, () => this.#unmount(paths));
  }

  async remove(id: string): Promise<void> {
    const paths = this.paths(id);
    await this.#locked(id, async () => {
      await this.#unmount(paths);
      const left = await mountsAtOrUnder(paths.dir, this.os.readMountTable);
      if (left.length > 0) {
        // Deleting through a live mount would empty whatever is mounted there.
        throw new UnavailableError(
          `cannot remove snapshot ${id}: ${left.map((m) => m.mountPoint).join(', ')} is still mounted; ` +
            'unmount it and retry',
        );
      }
      // A small layer (most are: the few dirs crun made) is removed in-process: nothing can
      // reach it once unmounted, and the helper's spawn was a fifth of RemoveContainer. A
      // larger one goes to the fd-relative helper: a container can grow its upper dir past
      // PATH_MAX (catalogue row 45), which fs.rm could never delete.
      await removeTree(paths.dir, { inProcessUpTo: SMALL_SNAPSHOT_ENTRIES }).catch((err: unknown) => {
        // A kind the removal chose is kept: a mount found below (FailedPrecondition), a full
        // disk, the run server ending under the helper (Unavailable: retry).
        if (err instanceof CriError && err.kind !== 'Internal') throw err;
        throw new InternalError(
          `cannot delete snapshot directory ${paths.dir}: ${(err as Error).message.slice(0, 500)}`,
          { cause: err },
        );
      });
      this.#cleanlyUnmounted.delete(paths.merged);
    });
  }

  async usage(id: string): Promise<DirectoryUsage> {
    const paths = this.paths(id);
    const usage = await measureExistingDirectory(paths.upper, turnTakingSyncAccess).catch(() => undefined);
    if (usage === undefined) {
      throw new NotFoundError(`snapshot ${id} does not exist in the ${this.name} snapshotter`);
    }
    return usage;
  }

  async list(): Promise<string[]> {
    const base = join(this.root, 'snapshots');
    const entries = await readdir(base, { withFileTypes: true }).catch((err: unknown) => {
      if (errnoCode(err) === 'ENOENT') return [];
      throw new InternalError(`cannot list ${base}: ${(err as Error).message}`, { cause: err });
    });
    return entries
      .filter((e) => e.isDirectory() && SNAPSHOT_ID.test(e.name))
      .map((e) => e.name)
      .sort();
  }

  async isMounted(id: string): Promise<boolean> {
    return this.#mounted(this.paths(id));
  }

  /** Mounted and answering: a fuse-overlayfs whose process died stays mounted but answers ENOTCONN. */
  async rootfsAlive(id: string): Promise<boolean> {
    const paths = this.paths(id);
    return (await this.#mounted(paths)) && (await this.mountAlive(paths));
  }

  // ---- internals ----------------------------------------------------------------------

  async #mounted(paths: SnapshotPaths): Promise<boolean> {
    return (await mountsAt(paths.merged, this.os.readMountTable)).length > 0;
  }

  async #locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(id) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    const tail = run.catch(() => undefined);
    this.#locks.set(id, tail);
    try {
      return await run;
    } finally {
      if (this.#locks.get(id) === tail) this.#locks.delete(id);
    }
  }

  async #checkLayerDir(dir: string): Promise<void> {
    const info = await stat(dir).catch((err: unknown) => {
      throw new NotFoundError(
        `layer directory ${dir} is missing (${errnoCode(err) ?? (err as Error).message}): ` +
          'the image store is incomplete; remove the image and pull it again',
        { cause: err },
      );
    });
    if (!info.isDirectory()) {
      throw new NotFoundError(
        `layer directory ${dir} is not a directory: remove the image and pull it again`,
      );
    }
  }

  /** Creates the snapshot's dirs; returns true when the snapshot dir did not exist before. */
  async #createDirs(paths: SnapshotPaths, lowerDirs: readonly string[]): Promise<boolean> {
    const existed = await lstat(paths.dir).then(
      () => true,
      () => false,
    );
    try {
      await mkdir(join(this.root, 'snapshots'), { recursive: true, mode: 0o700 });
      await mkdir(paths.dir, { recursive: true, mode: 0o700 });
      await this.#createUpper(paths.upper, lowerDirs[0]);
      await mkdir(paths.work, { recursive: true, mode: 0o700 });
      await mkdir(paths.merged, { recursive: true, mode: 0o755 });
      // The links are rebuilt every time: the layers may differ after a node restart.
      await rm(paths.lower, { recursive: true, force: true });
      await mkdir(paths.lower, { mode: 0o700 });
      const targets = lowerDirs.length > 0 ? lowerDirs : [paths.empty];
      if (lowerDirs.length === 0) await mkdir(paths.empty, { recursive: true, mode: 0o755 });
      for (const [index, target] of targets.entries()) {
        await symlink(normalize(target), join(paths.lower, String(index)));
      }
    } catch (err) {
      if (!existed) await rm(paths.dir, { recursive: true, force: true }).catch(() => undefined);
      throw new InternalError(
        `cannot create snapshot directories in ${paths.dir}: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
    return !existed;
  }

  /**
   * The rootfs "/" takes its owner and mode from the upper dir's root, so a new upper dir
   * copies them from the top layer's root (an image whose "/" is 0700 or not owned by
   * root keeps that; most are root:root 0755).
   */
  async #createUpper(upper: string, topLayer: string | undefined): Promise<void> {
    const exists = await lstat(upper).then(
      () => true,
      () => false,
    );
    if (exists) return;
    await mkdir(upper, { mode: 0o755 });
    if (topLayer === undefined) return;
    const info = await stat(topLayer);
    await chown(upper, info.uid, info.gid).catch(() => undefined);
    await chmod(upper, info.mode & 0o7777);
  }

  async #mount(
    paths: SnapshotPaths,
    lowerDirs: readonly string[],
    readOnly: boolean,
    idMapping: IdMappingPair | undefined,
  ): Promise<void> {
    const { command, args } = this.mountCommand(paths, Math.max(lowerDirs.length, 1), readOnly, idMapping);
    const result = await this.os.run(command, args, { cwd: paths.lower, timeoutMs: 60_000 });
    if (result.exitCode !== 0) throw this.mountError(result, paths);
    if (!(await this.#mounted(paths))) {
      throw new InternalError(
        `${command} reported success but nothing is mounted at ${paths.merged}` +
          (commandOutput(result) ? ` (${commandOutput(result)})` : ''),
      );
    }
  }

  async #unmount(paths: SnapshotPaths): Promise<void> {
    // Unmounted before (an exited container's release), its mount server seen gone then, and
    // nothing mounted since: RemoveContainer need not look for the server again (a /proc scan).
    if (
      this.#cleanlyUnmounted.has(paths.merged) &&
      (await mountsAt(paths.merged, this.os.readMountTable)).length === 0
    ) {
      return;
    }
    this.#cleanlyUnmounted.delete(paths.merged);
    await unmountWithRetries(paths.merged, {
      run: this.os.run,
      readMountTable: this.os.readMountTable,
      commands: this.unmountCommands,
      sleep: this.os.sleep,
    });
    await this.afterUnmount(paths);
    this.#cleanlyUnmounted.add(paths.merged);
  }
}

/** `lowerdir=0:1:...:n-1`, relative to the lower/ dir the mount command runs in. */
export function relativeLowerdir(layerCount: number): string {
  return Array.from({ length: layerCount }, (_, i) => String(i)).join(':');
}

/** A spawn failure of a mount helper as a FailedPrecondition naming the package to install. */
export function missingBinaryError(result: CommandResult, binary: string, pkg: string): CriError | undefined {
  if (result.spawnError?.code !== 'ENOENT') return undefined;
  return new FailedPreconditionError(
    `${binary} is not installed or not in PATH: install the ${pkg} package (run rootless-cri doctor)`,
    { cause: result.spawnError },
  );
}

/** Fails with FailedPrecondition when a device the mount needs cannot be opened. */
export async function checkDevice(os: SnapshotterOs, device: string, doctorHint: string): Promise<void> {
  try {
    await os.checkReadWrite(device);
  } catch (err) {
    throw new FailedPreconditionError(
      `${device} is not usable: ${errnoCode(err) ?? (err as Error).message}; ${doctorHint} ` +
        '(run rootless-cri doctor)',
      { cause: err },
    );
  }
}
