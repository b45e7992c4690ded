/**
 * The sandbox record: what rootless-cri knows about one pod sandbox, persisted as
 * `<rootDir>/sandboxes/<id>.json` (crash-safe, src/store/record-store.ts).
 *
 * State machine:
 *
 *              RunPodSandbox
 *                   │
 *                   ▼
 *             ┌──────────┐  step fails: rollback stack undone,   ┌─────────┐
 *             │ creating │ ─────────────────────────────────────▶│ (gone)  │
 *             └──────────┘  record deleted, name released        └─────────┘
 *               │   │   └──── rollback itself fails ──────┐           ▲
 *     all steps │   │ daemon killed midway:               │           │
 *          done │   │ recover() marks it                  ▼           │ RemovePodSandbox
 *               ▼   └───────────────────────────▶ ┌──────────┐        │ (containers removed,
 *          ┌────────┐   StopPodSandbox, or        │ notready │────────┘  namespaces unpinned,
 *          │ ready  │ ──────────────────────────▶ └──────────┘           cgroup, files, record
 *          └────────┘   recover() finds the netns             ▲          deleted, name released)
 *               │       pin or the infra process gone         │
 *               └── RemovePodSandbox stops first ─────────────┘
 *
 * `creating` is written before the first side effect, so a daemon killed at any instruction
 * leaves a record naming everything that may exist; Stop and Remove then clean what is
 * there (every undo is idempotent). A stopped sandbox never becomes ready again (CRI).
 *
 * CRI states: ready → SANDBOX_READY; creating and notready → SANDBOX_NOTREADY
 * (criState() below is the one place that decides).
 */

import type { PodSandboxConfig__Output, PodSandboxState__Output } from '../api/proto.js';
import { InternalError } from '../errors.js';
import type { SandboxNetwork } from '../os/cni-network.js';
import type { IdMapping } from '../os/pod-user-namespace.js';
import type { InfraProcess } from '../os/sandbox-os.js';

export type { IdMapping, InfraProcess, SandboxNetwork };

export const SANDBOX_RECORD_VERSION = 1;

export type SandboxState = 'creating' | 'ready' | 'notready';

export type NamespaceModeName = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';

/** A namespace of the pod pinned by a bind mount of its nsfs file; null path = the node's own. */
export interface PinnedNamespace {
  mode: NamespaceModeName;
  path: string | null;
}

export interface PublishedHostPort {
  /** rootlesskit port id. */
  id: number;
  protocol: 'tcp' | 'udp';
  hostIp: string;
  hostPort: number;
  containerPort: number;
}

export interface SandboxRecord {
  version: number;
  id: string;
  state: SandboxState;
  /** Nanoseconds since the epoch, as a decimal string (int64 in CRI). */
  createdAt: string;
  runtimeHandler: string;
  /** The request's config, decoded (the container layer reads it: DNS, security context, ...). */
  config: PodSandboxConfig__Output;
  hostname: string;
  namespaces: {
    network: PinnedNamespace;
    ipc: PinnedNamespace;
    uts: PinnedNamespace;
    pid: { mode: NamespaceModeName; targetId: string; infra: InfraProcess | null };
    /**
     * The pod's own user namespace (hostUsers: false): its pin and the kernel's lines of its
     * maps (node ids as host ids). Absent for pods in the node's user namespace.
     */
    user?: { mode: 'POD'; path: string; uids: IdMapping[]; gids: IdMapping[] };
  };
  /** null until CNI ADD succeeded, and again after DEL. */
  network: SandboxNetwork | null;
  /**
   * The CNI network configuration, recorded before ADD starts and cleared after a successful
   * DEL: while it is set, cleanup must run DEL with exactly this configuration.
   */
  networkConfig: Record<string, unknown> | null;
  ports: PublishedHostPort[];
  cgroup: {
    /** Pod cgroup relative to the node's cgroup root, e.g. /pods/<id>. */
    path: string;
    /** The sandbox's own leaf (infra process), relative, e.g. /pods/<id>/sandbox. */
    leaf: string;
    /** Directories this sandbox created (relative), deepest last; removed on Remove. */
    created: string[];
  } | null;
  /** Directory of resolv.conf, hosts, hostname. */
  filesDir: string;
  /** When stop finished (ns), or null. */
  stoppedAt: string | null;
  /** Why the sandbox is notready when it did not get there by StopPodSandbox. */
  notReadyReason: string | null;
  /**
   * The node the sandbox was made in (os/node-identity.ts); null in records written before it
   * was recorded. Pins, the infra pid and host port ids mean nothing outside that node.
   */
  nodeId: string | null;
}

const CRI_STATE: Record<SandboxState, PodSandboxState__Output> = {
  creating: 'SANDBOX_NOTREADY',
  ready: 'SANDBOX_READY',
  notready: 'SANDBOX_NOTREADY',
};

/** The one mapping from internal states to CRI states. */
export function criState(state: SandboxState): PodSandboxState__Output {
  return CRI_STATE[state];
}

/** What a record found at startup becomes, given what recovery observed of the node. */
export function recoveredState(
  record: Pick<SandboxRecord, 'state'>,
  observed: { networkPinned: boolean; infraAlive: boolean; nodeGone: boolean },
): { state: SandboxState; reason: string | null } {
  if (observed.nodeGone && record.state !== 'notready') {
    return {
      state: 'notready',
      reason:
        'the node this pod ran in is gone (stopped with `rootless-cri stop --all`, its holder died, or the host rebooted): its processes, namespaces and host ports ended with it; remove the pod',
    };
  }
  if (record.state === 'creating') {
    return { state: 'notready', reason: 'the daemon stopped while this sandbox was being created' };
  }
  if (record.state === 'ready') {
    if (!observed.networkPinned) {
      return { state: 'notready', reason: 'the pod network namespace is gone (node restarted?)' };
    }
    if (!observed.infraAlive) return { state: 'notready', reason: 'the pod infra process (PID 1) is gone' };
  }
  return { state: record.state, reason: null };
}

/** The reservation key of a sandbox name, as containerd builds it (name_namespace_uid_attempt). */
export function sandboxName(meta: { name: string; namespace: string; uid: string; attempt: number }): string {
  return [meta.name, meta.namespace, meta.uid, String(meta.attempt)].join('_');
}

/** Minimal structural check of a record read from disk; the store moves bad ones aside. */
export function parseSandboxRecord(value: unknown): SandboxRecord {
  const r = value as Partial<SandboxRecord> | null;
  if (!r || typeof r !== 'object') throw new InternalError('not an object');
  if (typeof r.id !== 'string' || !/^[0-9a-f]{64}$/.test(r.id)) throw new InternalError('bad "id"');
  if (r.state !== 'creating' && r.state !== 'ready' && r.state !== 'notready') {
    throw new InternalError(`bad "state" ${JSON.stringify(r.state)}`);
  }
  if (!r.config || typeof r.config !== 'object' || !r.config.metadata)
    throw new InternalError('no "config.metadata"');
  if (!r.namespaces || typeof r.namespaces !== 'object') throw new InternalError('no "namespaces"');
  if (typeof r.createdAt !== 'string' || typeof r.filesDir !== 'string')
    throw new InternalError('bad "createdAt"/"filesDir"');
  return {
    ...(r as SandboxRecord),
    ports: Array.isArray(r.ports) ? r.ports : [],
    network: r.network ?? null,
    networkConfig: r.networkConfig ?? null,
    cgroup: r.cgroup ?? null,
    stoppedAt: r.stoppedAt ?? null,
    notReadyReason: r.notReadyReason ?? null,
    nodeId: typeof r.nodeId === 'string' ? r.nodeId : null,
  };
}
