/**
 * The pod sandbox half of RuntimeService, assembled: the composition root (src/daemon.ts)
 * calls createPodSandboxService once, awaits recover() before opening the readiness gate,
 * spreads `handlers` into the CRI server's handlers and calls close() on shutdown.
 *
 * Layout on disk:
 *   <rootDir>/sandboxes/<id>.json          the record (crash-safe, versioned)
 *   <rootDir>/sandboxes/<id>/              resolv.conf, hosts, hostname
 *   <runDir>/{netns,ipcns,utsns}/<id>      namespace pins (bind mounts inside the node)
 *   network.ipam_data_dir                  host-local IP leases
 *   /sys/fs/cgroup/pods/<id>/ (or cgroup_parent), with the infra leaf sandbox-<id12>/
 */
import { hostname as osHostname } from 'node:os';
import path from 'node:path';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { PortManager } from '../rootless/port-manager.js';
import { KeyedMutex } from '../store/keyed-mutex.js';
import { NameRegistrar } from '../store/name-registrar.js';
import { CniNetwork, type NetworkDriver } from './cni-network.js';
import { NO_CONTAINERS, nowNanoseconds, type PodContainers, type SandboxDeps } from './sandbox-deps.js';
import { createListPodSandbox } from './sandbox-list.js';
import { NodeSandboxOs, type SandboxOs } from './sandbox-os.js';
import { type RecoveryReport, recoverSandboxes } from './sandbox-recover.js';
import { createRemovePodSandbox } from './sandbox-remove.js';
import { createRunPodSandbox, newSandboxId } from './sandbox-run.js';
import { createPodSandboxStatus } from './sandbox-status.js';
import { createStopPodSandbox } from './sandbox-stop.js';
import { type SandboxReader, SandboxStore } from './sandbox-store.js';

export interface PodSandboxServiceOptions {
  config: Pick<Config, 'rootDir' | 'runDir' | 'network' | 'node'>;
  logger: Logger;
  portManager: PortManager | null;
  containers?: PodContainers;
  /** Replaces the real OS access (tests). */
  os?: SandboxOs;
  /** Replaces the real CNI network (tests). */
  network?: NetworkDriver;
  /** Replaces parts of the rest (tests). */
  overrides?: Partial<Pick<SandboxDeps, 'now' | 'newId' | 'nodeHostname' | 'undoTimeoutMs' | 'paths'>>;
}

export interface PodSandboxService {
  handlers: {
    RunPodSandbox: ReturnType<typeof createRunPodSandbox>;
    StopPodSandbox: ReturnType<typeof createStopPodSandbox>;
    RemovePodSandbox: ReturnType<typeof createRemovePodSandbox>;
    PodSandboxStatus: ReturnType<typeof createPodSandboxStatus>;
    ListPodSandbox: ReturnType<typeof createListPodSandbox>;
  };
  /** Loads records and settles their states; run before serving. */
  recover(): Promise<void>;
  /** What the last recover() found (for Status info and tests). */
  readonly lastRecovery: RecoveryReport | null;
  /** Waits for running sandbox operations to finish. Pods keep running: they outlive the daemon. */
  close(): Promise<void>;
  /** Read access for the container layer. */
  store: SandboxReader;
}

export function createPodSandboxService(options: PodSandboxServiceOptions): PodSandboxService {
  const { config, logger } = options;
  const sandboxesDir = path.join(config.rootDir, 'sandboxes');
  const deps: SandboxDeps = {
    store: new SandboxStore(sandboxesDir),
    names: new NameRegistrar('pod sandbox'),
    locks: new KeyedMutex(),
    os: options.os ?? new NodeSandboxOs({ catatonit: config.node.catatonit, nsenter: config.node.nsenter }),
    network:
      options.network ??
      new CniNetwork({
        confDir: config.network.cniConfDir,
        binDirs: config.network.cniBinDirs,
        ipamDataDir: config.network.ipamDataDir,
        logger,
      }),
    ports: options.portManager,
    containers: options.containers ?? NO_CONTAINERS,
    logger,
    paths: {
      sandboxesDir,
      runDir: config.runDir,
      nodeResolvConf: '/etc/resolv.conf',
      nodeHosts: '/etc/hosts',
      ...options.overrides?.paths,
    },
    nodeHostname: options.overrides?.nodeHostname ?? osHostname,
    now: options.overrides?.now ?? nowNanoseconds,
    newId: options.overrides?.newId ?? newSandboxId,
    undoTimeoutMs: options.overrides?.undoTimeoutMs ?? 60_000,
  };
  const running = new Set<Promise<unknown>>();
  const track = <A extends unknown[], R>(fn: (...args: A) => Promise<R>) => {
    return (...args: A): Promise<R> => {
      const p = fn(...args);
      running.add(p);
      const done = () => running.delete(p);
      p.then(done, done);
      return p;
    };
  };
  let lastRecovery: RecoveryReport | null = null;
  return {
    get lastRecovery() {
      return lastRecovery;
    },
    handlers: {
      RunPodSandbox: track(createRunPodSandbox(deps)),
      StopPodSandbox: track(createStopPodSandbox(deps)),
      RemovePodSandbox: track(createRemovePodSandbox(deps)),
      PodSandboxStatus: createPodSandboxStatus(deps),
      ListPodSandbox: createListPodSandbox(deps),
    },
    async recover() {
      const report = await recoverSandboxes(deps);
      logger.info(
        {
          loaded: report.loaded,
          ready: report.ready,
          notReady: report.notReady,
          problems: report.problems.length,
        },
        'pod sandboxes recovered',
      );
      lastRecovery = report;
    },
    async close() {
      await Promise.allSettled([...running]);
    },
    store: deps.store,
  };
}
