/**
 * The pod sandbox RPCs of RuntimeService, assembled over the runtime core: the composition
 * root (src/daemon.ts) calls createPodSandboxService once and registers `handlers`;
 * `portForward` is the streaming server's target.
 *
 * Layout on disk:
 *   <rootDir>/sandboxes/<id>.json          the record (crash-safe, versioned; the core's store)
 *   <rootDir>/sandboxes/<id>/              resolv.conf, hosts, hostname
 *   <runDir>/{netns,ipcns,utsns,userns}/<id>  namespace pins (bind mounts inside the node)
 *   network.ipam_data_dir                  host-local IP leases
 *   /sys/fs/cgroup/pods/<id>/ (or cgroup_parent), with the infra leaf sandbox-<id12>/
 */
import { hostname as osHostname } from 'node:os';
import path from 'node:path';
import type { RuntimeHandlers } from '../api/handlers.js';
import type { Config } from '../config.js';
import type { RuntimeCore } from '../core/runtime-core.js';
import type { PortForwardTarget } from '../core/stream-targets.js';
import type { Logger } from '../log.js';
import { CniNetwork, type NetworkDriver } from '../os/cni-network.js';
import type { PortManager } from '../os/port-manager.js';
import { NodeSandboxOs, type SandboxOs } from '../os/sandbox-os.js';
import type { PodUserNamespaceFacts } from './pod-user-namespace.js';
import { SandboxPortForwardTarget } from './port-forward-target.js';
import type { SandboxDeps } from './sandbox-deps.js';
import { createListPodSandbox } from './sandbox-list.js';
import { createRemovePodSandbox } from './sandbox-remove.js';
import { createRunPodSandbox, newSandboxId } from './sandbox-run.js';
import { createPodSandboxStatus } from './sandbox-status.js';
import { createStopPodSandbox } from './sandbox-stop.js';

export type PodSandboxHandlers = Pick<
  RuntimeHandlers,
  'RunPodSandbox' | 'StopPodSandbox' | 'RemovePodSandbox' | 'PodSandboxStatus' | 'ListPodSandbox'
>;

export interface PodSandboxServiceOptions {
  core: RuntimeCore;
  config: Pick<Config, 'rootDir' | 'runDir' | 'network'>;
  logger: Logger;
  portManager: PortManager | null;
  /** The pods' namespaces (the composition root builds it from the programs found at start). */
  os: SandboxOs;
  /** Pod user namespaces (hostUsers: false): the node's id maps, or why they are not offered. */
  userNamespaces?: PodUserNamespaceFacts;
  /** The pod network; default: a CniNetwork without node-wide egress (the composition root passes its own). */
  network?: NetworkDriver;
  /** Replaces parts of the rest (tests). */
  overrides?: Partial<Pick<SandboxDeps, 'newId' | 'nodeHostname' | 'undoTimeoutMs' | 'paths'>>;
}

export interface PodSandboxService {
  handlers: PodSandboxHandlers;
  portForward: PortForwardTarget;
}

export function createPodSandboxService(options: PodSandboxServiceOptions): PodSandboxService {
  const { config, logger, core } = options;
  const deps: SandboxDeps = {
    core,
    os: options.os,
    network:
      options.network ??
      new CniNetwork({
        confDir: config.network.cniConfDir,
        binDirs: config.network.cniBinDirs,
        ipamDataDir: config.network.ipamDataDir,
        logger,
      }),
    ports: options.portManager,
    logger,
    paths: {
      sandboxesDir: path.join(config.rootDir, 'sandboxes'),
      runDir: config.runDir,
      nodeResolvConf: '/etc/resolv.conf',
      nodeHosts: '/etc/hosts',
      ...options.overrides?.paths,
    },
    nodeHostname: options.overrides?.nodeHostname ?? osHostname,
    newId: options.overrides?.newId ?? newSandboxId,
    undoTimeoutMs: options.overrides?.undoTimeoutMs ?? 60_000,
    ...(options.userNamespaces ? { userNamespaces: options.userNamespaces } : {}),
  };
  const tracked = <A extends unknown[], R>(fn: (...args: A) => Promise<R>) => {
    return (...args: A): Promise<R> => core.track(fn(...args));
  };
  return {
    handlers: {
      RunPodSandbox: tracked(createRunPodSandbox(deps)),
      StopPodSandbox: tracked(createStopPodSandbox(deps)),
      RemovePodSandbox: tracked(createRemovePodSandbox(deps)),
      PodSandboxStatus: createPodSandboxStatus(deps),
      ListPodSandbox: createListPodSandbox(deps),
    },
    portForward: new SandboxPortForwardTarget({ sandboxes: core.sandboxes }),
  };
}

export { NodeSandboxOs };
