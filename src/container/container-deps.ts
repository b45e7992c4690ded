/**
 * What the container RPC modules share: the store, name reservations, per-container locks,
 * and the narrow interfaces to the OCI runtime, the pods, the images, the snapshotter and the
 * few OS files the container layer touches itself (cgroup files, log directories, conmon's
 * control FIFO). Built once by createContainerService; unit tests build it with fakes.
 */
import { constants } from 'node:fs';
import { access, mkdir, open, readFile, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { InternalError } from '../errors.js';
import type { Logger } from '../log.js';
import type { KeyedMutex } from '../store/keyed-mutex.js';
import type { NameRegistrar } from '../store/name-registrar.js';
import type { ContainerEvents } from './container-events.js';
import type { ContainerRecord, ContainerStore } from './container-store.js';
import { resolveInRoot } from './in-root.js';
import type { OciRuntime } from './oci-runtime.js';
import type { SandboxLookup } from './sandbox-info.js';
import type { HostFacts, SpecFiles } from './spec-builder.js';

/** What the container layer asks of the image service. */
export interface ImageLookup {
  resolveImage(nameOrIdOrDigest: string): Promise<{
    id: string;
    config: Record<string, unknown>;
    layerDirs: string[];
    repoTags: string[];
    repoDigests: string[];
  }>;
  markInUse(id: string, holder: string): Promise<void>;
  release(id: string, holder: string): Promise<void>;
  /** After recovery: drops holds of containers that no longer exist. */
  retainHolders?(live: ReadonlySet<string>): Promise<void>;
}

/** What the container layer asks of the snapshotter (src/image/snapshotter.ts). */
export interface ContainerSnapshotter {
  prepare(id: string, lowerDirs: readonly string[]): Promise<{ rootfs: string }>;
  remove(id: string): Promise<void>;
  usage(id: string): Promise<{ bytes: bigint; inodes: bigint }>;
  /** Ids with a snapshot (recovery removes those no record names). */
  list?(): Promise<string[]>;
}

/** Where conmon keeps a container's sockets and FIFOs (CrunConmonRuntime's layout). */
export interface RuntimePaths {
  bundleDir(id: string): string;
  ctlFifo(id: string): string;
  attachSocket(id: string): string;
  conmonPidFile(id: string): string;
}

/** The OS files the container layer reads and writes itself. */
export interface ContainerOs {
  /** mkdir -p of a cgroup relative to the node's cgroup root; returns the absolute path. */
  ensureCgroup(relative: string): Promise<string>;
  /** rmdir of an empty cgroup; absent is fine, busy is reported. */
  removeCgroup(relative: string): Promise<void>;
  /** A cgroup file's text, or null when the cgroup or file is absent (controller not delegated). */
  readCgroupFile(relative: string, file: string): Promise<string | null>;
  /** Creates the directory a log file goes in. */
  prepareLogDirectory(logPath: string): Promise<void>;
  exists(p: string): Promise<boolean>;
  /** Writes to a FIFO without blocking; false when nobody reads it (its owner is gone). */
  writeFifo(p: string, text: string): Promise<boolean>;
  /** Creates image VOLUME directories inside the rootfs (in-root, never through a link out). */
  makeVolumeDirs(rootfs: string, containerPaths: string[]): Promise<void>;
  /** Whether the process in a pid file is alive and is a conmon; null when there is no pid file. */
  monitorAlive(pidFile: string): Promise<boolean | null>;
}

export interface ContainerDeps {
  store: ContainerStore;
  names: NameRegistrar;
  locks: KeyedMutex;
  runtime: OciRuntime;
  sandboxes: SandboxLookup;
  images: ImageLookup;
  snapshotter: ContainerSnapshotter;
  hostFacts: HostFacts;
  files: SpecFiles;
  os: ContainerOs;
  events: ContainerEvents;
  paths: RuntimePaths;
  logger: Logger;
  /** Nanoseconds since the epoch. */
  now: () => bigint;
  newId: () => string;
  undoTimeoutMs: number;
  /** Where writable layers live (FilesystemUsage.fs_id of the stats), '' when unknown. */
  writableLayerRoot: string;
}

export function nowNanoseconds(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}

/** A Date as CRI nanoseconds. */
export function dateToNanoseconds(date: Date): string {
  return (BigInt(date.getTime()) * 1_000_000n).toString();
}

export function describeContainer(record: ContainerRecord): string {
  return `${record.config.metadata?.name ?? '?'} (${record.id.slice(0, 12)})`;
}

export class NodeContainerOs implements ContainerOs {
  constructor(private readonly cgroupRoot = '/sys/fs/cgroup') {}

  private cgroupDir(relative: string): string {
    // Cgroup paths come from records and pod configs: a `..` is refused, not clamped.
    if (relative.split('/').includes('..') || relative.includes('\0')) {
      throw new InternalError(`bad cgroup path ${JSON.stringify(relative)}`);
    }
    return path.join(this.cgroupRoot, path.posix.normalize(`/${relative}`));
  }

  async ensureCgroup(relative: string): Promise<string> {
    const dir = this.cgroupDir(relative);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  async removeCgroup(relative: string): Promise<void> {
    try {
      await rmdir(this.cgroupDir(relative));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  async readCgroupFile(relative: string, file: string): Promise<string | null> {
    return readFile(path.join(this.cgroupDir(relative), file), 'utf8').catch(() => null);
  }

  async prepareLogDirectory(logPath: string): Promise<void> {
    await mkdir(path.dirname(logPath), { recursive: true, mode: 0o755 });
  }

  exists(p: string): Promise<boolean> {
    return access(p).then(
      () => true,
      () => false,
    );
  }

  async writeFifo(p: string, text: string): Promise<boolean> {
    let handle: import('node:fs/promises').FileHandle;
    try {
      handle = await open(p, constants.O_WRONLY | constants.O_NONBLOCK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENXIO' || code === 'ENOENT') return false;
      throw err;
    }
    try {
      await handle.write(text);
      return true;
    } finally {
      await handle.close();
    }
  }

  async makeVolumeDirs(rootfs: string, containerPaths: string[]): Promise<void> {
    for (const p of containerPaths) {
      const resolved = await resolveInRoot(rootfs, p);
      if (!resolved.exists) await mkdir(resolved.hostPath, { recursive: true, mode: 0o755 });
    }
  }

  async monitorAlive(pidFile: string): Promise<boolean | null> {
    const text = await readFile(pidFile, 'utf8').catch(() => null);
    if (text === null) return null;
    const pid = Number.parseInt(text.trim(), 10);
    if (!Number.isSafeInteger(pid) || pid <= 0) return false;
    // A reused pid belongs to another program: conmon's comm is "conmon".
    const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => null);
    return comm !== null && comm.trim() === 'conmon';
  }
}
