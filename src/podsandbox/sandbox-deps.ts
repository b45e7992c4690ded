/**
 * What the sandbox RPC modules share: the runtime core (stores, names, locks, events,
 * cgroups, and the pod's containers) and the narrow interfaces to what only pods use: the
 * namespaces (SandboxOs), the network (NetworkDriver) and rootlesskit's port API. Built once
 * by createPodSandboxService; unit tests build it with fakes.
 */
import type { RuntimeCore } from '../core/runtime-core.js';
import type { Logger } from '../log.js';
import type { NetworkDriver } from '../os/cni-network.js';
import type { PortManager } from '../os/port-manager.js';
import type { SandboxOs } from '../os/sandbox-os.js';
import type { PodUserNamespaceFacts } from './pod-user-namespace.js';

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
  core: RuntimeCore;
  os: SandboxOs;
  network: NetworkDriver;
  ports: PortManager | null;
  logger: Logger;
  paths: SandboxPaths;
  /** Node hostname, for pods on the node network. */
  nodeHostname: () => string;
  newId: () => string;
  undoTimeoutMs: number;
  /** What pods with their own user namespace may use; absent = not offered. */
  userNamespaces?: PodUserNamespaceFacts;
}
