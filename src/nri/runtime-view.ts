/**
 * What the runtime tells NRI about its pods and containers: plain interfaces, filled from
 * the runtime's own records, so wiring NRI in is a mapping and nothing here imports the
 * runtime. The adapter turns them into NRI messages (convert.ts).
 */
import type { NriOciResources, NriOciSpec } from './oci-spec.js';

export interface NriPod {
  id: string;
  name: string;
  uid: string;
  namespace: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  runtimeHandler?: string;
  /** The cgroup parent kubelet asked for (LinuxPodSandboxConfig.cgroup_parent). */
  cgroupParent?: string;
  /** The pod's cgroup as the runtime created it. */
  cgroupsPath?: string;
  /** The pod's namespaces (type in OCI terms: network, ipc, uts, pid, ...; path of its pin). */
  namespaces?: { type: string; path?: string }[];
  /** Pid of the pod's infra process, 0 when there is none. */
  pid?: number;
  ips?: string[];
  /** kubelet's pod overhead and summed container resources, when known. */
  overhead?: NriOciResources;
  resources?: NriOciResources;
}

export type NriContainerState = 'created' | 'running' | 'paused' | 'stopped' | 'unknown';

export interface NriContainer {
  id: string;
  podSandboxId: string;
  /** The CRI metadata name. */
  name: string;
  state: NriContainerState;
  labels?: Record<string, string>;
  /** The CRI annotations; when `spec` is given its annotations are sent instead (they include these). */
  annotations?: Record<string, string>;
  /** The container's OCI spec: args, env, mounts, hooks, rlimits, user and linux.* are taken from it. */
  spec?: NriOciSpec;
  pid?: number;
  /** Nanoseconds since the epoch; 0n (or absent) = not yet. */
  createdAt?: bigint;
  startedAt?: bigint;
  finishedAt?: bigint;
  exitCode?: number;
  statusReason?: string;
  statusMessage?: string;
  image?: { name: string; digest?: string; configDigest?: string };
}

/** A resource update a plugin asked for, for the runtime to apply (crun update). */
export interface NriContainerUpdate {
  containerId: string;
  resources: NriOciResources;
  /** The plugin accepts that this update may fail. */
  ignoreFailure: boolean;
  /** Resource fields that have no place in an OCI resources object here, dropped. */
  warnings: string[];
}

/** A container a plugin wants stopped. */
export interface NriContainerEviction {
  containerId: string;
  reason: string;
  plugin: string;
}

/** Current pods and containers, for synchronizing a plugin that connects. */
export interface NriStateProvider {
  listPodsAndContainers(): Promise<{ pods: NriPod[]; containers: NriContainer[] }>;
}
