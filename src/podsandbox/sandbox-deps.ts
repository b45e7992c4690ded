/**
 * What the sandbox RPC modules share: the store, name reservations, per-sandbox locks and
 * the narrow interfaces to the OS, the network, rootlesskit's port API and (later) the
 * container layer. Built once by createPodSandboxService; unit tests build it with fakes.
 */
import type { Logger } from '../log.js';
import type { PortManager } from '../rootless/port-manager.js';
import type { KeyedMutex } from '../store/keyed-mutex.js';
import type { NameRegistrar } from '../store/name-registrar.js';
import type { NetworkDriver } from './cni-network.js';
import type { SandboxOs } from './sandbox-os.js';
import type { SandboxStore } from './sandbox-store.js';

/** What the container layer will do for a pod; until it exists, nothing. */
export interface PodContainers {
  /** Stops every container of the pod, each with this grace period. */
  stopAll(podId: string, timeoutSeconds: number): Promise<void>;
  /** Removes every container of the pod (stopping what still runs). */
  removeAll(podId: string): Promise<void>;
}

export const NO_CONTAINERS: PodContainers = {
  stopAll: async () => undefined,
  removeAll: async () => undefined,
};

export interface SandboxPaths {
  /** Records (<id>.json) and per-sandbox file directories (<id>/). */
  sandboxesDir: string;
  /** Pins: <runDir>/netns/<id>, <runDir>/ipcns/<id>, <runDir>/utsns/<id>. */
  runDir: string;
  /** The node's resolv.conf and hosts, used when the pod asks for nothing else. */
  nodeResolvConf: string;
  nodeHosts: string;
}

export interface SandboxDeps {
  store: SandboxStore;
  names: NameRegistrar;
  locks: KeyedMutex;
  os: SandboxOs;
  network: NetworkDriver;
  ports: PortManager | null;
  containers: PodContainers;
  logger: Logger;
  paths: SandboxPaths;
  /** Node hostname, for pods on the node network. */
  nodeHostname: () => string;
  /** Nanoseconds since the epoch. */
  now: () => bigint;
  newId: () => string;
  undoTimeoutMs: number;
}

export function nowNanoseconds(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}
