/**
 * What the container RPC modules share: the runtime core (stores, locks, names, events, the
 * OCI runtime, cgroups, images, snapshotter) plus what only containers need — the node facts
 * the spec builder reads, the image rootfs reader and the few files the container layer
 * creates itself (log directories, image VOLUME directories). Built once by
 * createContainerService; unit tests build it with fakes.
 */
import { mkdir } from 'node:fs/promises';
import type { RuntimeCore } from '../core/runtime-core.js';
import type { SpecAdjuster } from '../core/spec-adjust.js';
import type { Logger } from '../log.js';
import { resolveInRoot } from '../os/in-root.js';
import type { NodeCounters } from '../os/process-counters.js';
import { checkLogReopen, prepareLogFile } from '../os/safe-log-file.js';
import type { HostFacts, SpecFiles } from './spec-builder.js';

/** The files the container layer creates itself. */
export interface ContainerOs {
  /**
   * Creates the directory a log file goes in and the file itself, so that conmon can open it by
   * path safely: refused when another user could plant a link there (os/safe-log-file.ts).
   */
  prepareLogDirectory(logPath: string): Promise<void>;
  /** Before conmon reopens a log: the directory is still private, its `.tmp` name not a link. */
  checkLogReopen?(logPath: string): Promise<void>;
  /** Creates image VOLUME directories inside the rootfs (in-root, never through a link out). */
  makeVolumeDirs(rootfs: string, containerPaths: string[]): Promise<void>;
}

export interface ContainerDeps {
  core: RuntimeCore;
  hostFacts: HostFacts;
  files: SpecFiles;
  os: ContainerOs;
  logger: Logger;
  newId: () => string;
  undoTimeoutMs: number;
  /** Where writable layers live (FilesystemUsage.fs_id of the stats), '' when unknown. */
  writableLayerRoot: string;
  /** Run over every new container's spec before it is created (NRI, CDI, hooks). */
  adjusters: readonly SpecAdjuster[];
  /** Processes, pod network counters and filesystems, for the metrics RPCs (pod-metrics.ts). */
  counters: NodeCounters;
}

/** A Date as CRI nanoseconds. */
export function dateToNanoseconds(date: Date): string {
  return (BigInt(date.getTime()) * 1_000_000n).toString();
}

export { describeContainer } from '../core/container-lifecycle.js';

export class NodeContainerOs implements ContainerOs {
  prepareLogDirectory(logPath: string): Promise<void> {
    return prepareLogFile(logPath);
  }

  checkLogReopen(logPath: string): Promise<void> {
    return checkLogReopen(logPath);
  }

  async makeVolumeDirs(rootfs: string, containerPaths: string[]): Promise<void> {
    for (const p of containerPaths) {
      const resolved = await resolveInRoot(rootfs, p);
      if (!resolved.exists) await mkdir(resolved.hostPath, { recursive: true, mode: 0o755 });
    }
  }
}
