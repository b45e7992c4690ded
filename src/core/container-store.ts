/**
 * Container records: what rootless-cri knows about one container, persisted as
 * `<rootDir>/containers/<id>.json` (crash-safe, versioned: src/store/record-store.ts).
 *
 * State machine:
 *
 *        CreateContainer
 *              │
 *              ▼
 *        ┌──────────┐  a step fails: rollback stack undone, record deleted, name released
 *        │ creating │ ─────────────────────────────────────────────────────────────▶ (gone)
 *        └──────────┘  daemon killed midway: recover() undoes what the record names ──▶ (gone)
 *              │ conmon + crun create done
 *              ▼
 *        ┌──────────┐  StartContainer fails (StartError), or Stop/Remove of a
 *        │ created  │ ──────────────────────────────────────────────┐ container never started
 *        └──────────┘                                               │
 *              │ StartContainer                                     │
 *              ▼                                                    ▼
 *        ┌──────────┐  process exits (conmon's exit file), StopContainer,  ┌────────┐
 *        │ running  │ ───────────────────────────────────────────────────▶ │ exited │
 *        └──────────┘  or conmon found dead (reason ContainerMonitorDied)  └────────┘
 *                                                                               │
 *                     RemoveContainer (from any state; running ones are       │
 *                     killed first): runtime state, writable layer, bundle,   ▼
 *                     record deleted, image released, name released        (removed)
 *
 * `creating` is written before the first side effect, so a daemon killed at any instruction
 * leaves a record naming everything that may exist. A running container keeps running when
 * the daemon dies (conmon holds it); recovery finds it again with the same id, pid and times.
 *
 * CRI states: created → CONTAINER_CREATED, running → CONTAINER_RUNNING, exited →
 * CONTAINER_EXITED, creating → CONTAINER_UNKNOWN (criContainerState() decides; creating
 * records are not listed).
 *
 * This file also defines ContainerLookup, the read access the streaming layer (exec, attach)
 * uses.
 */
import type {
  ContainerConfig__Output,
  ContainerState__Output,
  LinuxContainerResources__Output,
} from '../api/proto.js';
import { InternalError } from '../errors.js';
import { CachedRecordStore } from '../store/cached-record-store.js';

/** Who the container's process runs as, resolved against the image's passwd and group files. */
export interface ResolvedUser {
  uid: number;
  gid: number;
  /** Primary gid first, then the image's groups naming the user, then supplemental_groups. */
  additionalGids: number[];
  /** The passwd name of the uid, when the image has one. */
  username: string | null;
}

/** One image volume (Mount.image) of a container; see image-volumes.ts. */
export interface ImageVolume {
  /** The mount's index in the record's config.mounts. */
  mountIndex: number;
  /** The read-only snapshot holding the image's layers. */
  snapshotId: string;
  /** The image id (sha256:...), == PullImage's image_ref; ContainerStatus reports it as image_ref. */
  imageId: string;
}

export const CONTAINER_RECORD_VERSION = 1;

export type ContainerStateName = 'creating' | 'created' | 'running' | 'exited';

export interface ContainerRecord {
  version: number;
  id: string;
  podSandboxId: string;
  state: ContainerStateName;
  /** The name reservation key (container name, attempt and pod identity). */
  reservedName: string;
  /** The request's config, decoded (metadata, labels, annotations, image, mounts, ...). */
  config: ContainerConfig__Output;
  image: {
    /** Image id (sha256:...), == PullImage's image_ref. */
    id: string;
    /** What the request named (tag, digest or id). */
    requested: string;
    /** A repo digest of the image, or '' (what ContainerStatus.image_ref shows, like containerd). */
    repoDigest: string;
    /** A repo tag of the image, or '' (ContainerStatus.image.image). */
    repoTag: string;
  };
  /** Absolute CRI log path ('' = no log file requested). */
  logPath: string;
  /** The OCI bundle (config.json) and conmon's files. */
  bundleDir: string;
  rootfs: string;
  /** Container cgroup relative to the node's cgroup root, or null without cgroups. */
  cgroupPath: string | null;
  /** The leaf conmon runs in (relative), or null. */
  conmonCgroup: string | null;
  /** Nanoseconds since the epoch, decimal strings; '0' = not yet. */
  createdAt: string;
  startedAt: string;
  finishedAt: string;
  /** The container's init pid while created/running (as the daemon sees it); 0 otherwise. */
  pid: number;
  exitCode: number;
  /** Completed, Error, OOMKilled, StartError, ContainerMonitorDied, ... ('' while running). */
  reason: string;
  message: string;
  stopSignal: string;
  /** Requested but not applied on this node (dropped limits, LSMs): verbose status shows them. */
  warnings: string[];
  user: ResolvedUser;
  /** The resources in force (the request's, then UpdateContainerResources'). */
  resources: LinuxContainerResources__Output | null;
  tty: boolean;
  stdin: boolean;
  stdinOnce: boolean;
  /** Image volumes (Mount.image), named before the first is mounted; absent = none. */
  imageVolumes?: ImageVolume[];
}

const CRI_STATE: Record<ContainerStateName, ContainerState__Output> = {
  creating: 'CONTAINER_UNKNOWN',
  created: 'CONTAINER_CREATED',
  running: 'CONTAINER_RUNNING',
  exited: 'CONTAINER_EXITED',
};

/** The one mapping from internal states to CRI states. */
export function criContainerState(state: ContainerStateName): ContainerState__Output {
  return CRI_STATE[state];
}

/** The reservation key of a container name, as containerd builds it. */
export function containerName(
  meta: { name: string; attempt: number },
  pod: { name: string; namespace: string; uid: string },
): string {
  return [meta.name, pod.name, pod.namespace, pod.uid, String(meta.attempt)].join('_');
}

/** Minimal structural check of a record read from disk; the store moves bad ones aside. */
export function parseContainerRecord(value: unknown): ContainerRecord {
  const r = value as Partial<ContainerRecord> | null;
  if (!r || typeof r !== 'object') throw new InternalError('not an object');
  if (typeof r.id !== 'string' || !/^[0-9a-f]{64}$/.test(r.id)) throw new InternalError('bad "id"');
  if (typeof r.podSandboxId !== 'string') throw new InternalError('bad "podSandboxId"');
  if (!r.state || !(r.state in CRI_STATE)) throw new InternalError(`bad "state" ${JSON.stringify(r.state)}`);
  if (!r.config || typeof r.config !== 'object' || !r.config.metadata) {
    throw new InternalError('no "config.metadata"');
  }
  if (!r.image || typeof r.image.id !== 'string') throw new InternalError('no "image.id"');
  if (typeof r.bundleDir !== 'string' || typeof r.createdAt !== 'string') {
    throw new InternalError('bad "bundleDir"/"createdAt"');
  }
  return {
    ...(r as ContainerRecord),
    warnings: Array.isArray(r.warnings) ? r.warnings : [],
    startedAt: r.startedAt ?? '0',
    finishedAt: r.finishedAt ?? '0',
    reason: r.reason ?? '',
    message: r.message ?? '',
  };
}

/** Containers in memory, each backed by one crash-safe record file; disk first, then memory. */
export class ContainerStore extends CachedRecordStore<ContainerRecord> {
  constructor(dir: string) {
    super(dir, CONTAINER_RECORD_VERSION, parseContainerRecord, 'container', 'containers');
  }
}

// ---- read access for the streaming layer ----------------------------------------------

/** What exec/attach need to know about a container. */
export interface ContainerView {
  id: string;
  podSandboxId: string;
  /** The CRI state, after checking for an exit the daemon has not seen yet. */
  state: ContainerState__Output;
  /** Init pid while created/running, 0 after exit. */
  pid: number;
  tty: boolean;
  stdin: boolean;
  stdinOnce: boolean;
  /** The OCI bundle dir (config.json, conmon.pid, ctl and winsz FIFOs). */
  bundleDir: string;
  /** conmon's attach socket (SOCK_SEQPACKET), when conmon runs. */
  attachSocketPath?: string;
  /** conmon's control FIFO ("1 <width> <height>\n" resizes; "2 0 0\n" reopens the log). */
  ctlFifoPath?: string;
  /** Set once exited. */
  exitCode?: number;
}

export interface ContainerLookup {
  /** By full id or unique prefix; undefined when absent (or still being created). */
  getContainer(id: string): Promise<ContainerView | undefined>;
}
