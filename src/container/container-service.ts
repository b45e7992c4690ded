/**
 * The container half of RuntimeService, assembled. The composition root (src/daemon.ts)
 * calls createContainerService once, awaits recover() before opening the readiness gate,
 * spreads `handlers` into the CRI server's handlers, hands `podContainers` to the pod sandbox
 * layer (Stop/RemovePodSandbox stop/remove the pod's containers), `lookup` to the streaming
 * layer, and calls close() on shutdown (containers keep running: conmon holds them).
 *
 * Layout on disk:
 *   <rootDir>/containers/<id>.json   the record (crash-safe, versioned)
 *   <runDir>/containers/<id>/        OCI bundle + conmon files (config.json, conmon.pid, ctl, exit, oom)
 *   <runDir>/exits/<id>              conmon's exit file
 *   <runDir>/s/<id>/attach           conmon's attach socket (kept short: sun_path is 108 bytes)
 *   <pod cgroup>/<id>                the container cgroup (crun), <pod cgroup>/conmon for conmon
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import path from 'node:path';
import type { RuntimeHandlers } from '../api/handlers.js';
import type { PodSandboxStatus } from '../api/proto.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { PodContainers, SandboxReader } from '../podsandbox/index.js';
import { KeyedMutex } from '../store/keyed-mutex.js';
import { NameRegistrar } from '../store/name-registrar.js';
import { conmonCgroupOf, createCreateContainer, newContainerId } from './container-create.js';
import {
  type ContainerDeps,
  type ContainerOs,
  type ContainerSnapshotter,
  type ImageLookup,
  NodeContainerOs,
  nowNanoseconds,
  type RuntimePaths,
} from './container-deps.js';
import { type ContainerEventKind, ContainerEvents, createGetContainerEvents } from './container-events.js';
import { createListContainers } from './container-list.js';
import { createReopenContainerLog } from './container-log-reopen.js';
import { type ContainerRecoveryReport, checkContainers, recoverContainers } from './container-recovery.js';
import { createRemoveContainer, removeContainerLocked } from './container-remove.js';
import { createStartContainer } from './container-start.js';
import { createStatsHandlers, type SandboxLister } from './container-stats.js';
import { createContainerStatus, observeExit } from './container-status.js';
import { createStopContainer, stopContainerLocked } from './container-stop.js';
import { type ContainerLookup, ContainerStore, criContainerState } from './container-store.js';
import { createUpdateContainerResources } from './container-update.js';
import type { CrunConmonOptions, OciRuntime } from './oci-runtime.js';
import type { SandboxInfo, SandboxLookup } from './sandbox-info.js';
import type { HostFacts, SpecFiles } from './spec-builder.js';
import { NodeSpecFiles } from './spec-files.js';

export type ContainerHandlers = Pick<
  RuntimeHandlers,
  | 'CreateContainer'
  | 'StartContainer'
  | 'StopContainer'
  | 'RemoveContainer'
  | 'ListContainers'
  | 'ContainerStatus'
  | 'UpdateContainerResources'
  | 'ReopenContainerLog'
  | 'ContainerStats'
  | 'ListContainerStats'
  | 'PodSandboxStats'
  | 'ListPodSandboxStats'
  | 'GetContainerEvents'
>;

/**
 * A program name as an absolute path (PATH, then the standard directories). conmon execs its
 * runtime with execv(3), which does not search PATH: a bare `crun` makes conmon fail before
 * it reports anything.
 */
export function resolveProgram(name: string, searchPath = process.env.PATH ?? ''): string {
  if (name.includes('/')) return name;
  const dirs = [
    ...searchPath.split(':'),
    '/usr/local/sbin',
    '/usr/local/bin',
    '/usr/sbin',
    '/usr/bin',
    '/sbin',
    '/bin',
  ];
  for (const dir of dirs.filter((d) => d.startsWith('/'))) {
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return name;
}

/** Where CrunConmonRuntime keeps its files, so the service and the runtime agree. */
export function runtimeLayout(
  config: Pick<Config, 'runDir' | 'runtime'>,
): Pick<CrunConmonOptions, 'conmonPath' | 'crunPath' | 'crunRoot' | 'stateDir' | 'exitDir' | 'socketDir'> {
  return {
    conmonPath: resolveProgram(config.runtime.conmon),
    crunPath: resolveProgram(config.runtime.crun),
    crunRoot: config.runtime.crunRoot,
    stateDir: path.join(config.runDir, 'containers'),
    exitDir: path.join(config.runDir, 'exits'),
    socketDir: path.join(config.runDir, 's'),
  };
}

export function runtimePathsOf(layout: Pick<CrunConmonOptions, 'stateDir' | 'socketDir'>): RuntimePaths {
  return {
    bundleDir: (id) => path.join(layout.stateDir, id),
    ctlFifo: (id) => path.join(layout.stateDir, id, 'ctl'),
    attachSocket: (id) => path.join(layout.socketDir, id, 'attach'),
    conmonPidFile: (id) => path.join(layout.stateDir, id, 'conmon.pid'),
  };
}

/** The pod layer's records as the container layer's narrow view (full ids or unique prefixes). */
export function sandboxLookupFromReader(reader: SandboxReader): SandboxLookup & SandboxLister {
  type Rec = NonNullable<ReturnType<SandboxReader['get']>>;
  const infoOf = (r: Rec): SandboxInfo => ({
    id: r.id,
    config: r.config,
    hostname: r.hostname,
    namespaces: {
      network: r.namespaces.network.path,
      ipc: r.namespaces.ipc.path,
      uts: r.namespaces.uts.path,
    },
    infraPid: r.namespaces.pid.infra?.pid ?? null,
    cgroupParent: r.cgroup?.path ?? null,
    files: {
      hosts: path.join(r.filesDir, 'hosts'),
      resolvConf: path.join(r.filesDir, 'resolv.conf'),
      hostname: path.join(r.filesDir, 'hostname'),
      shm: null,
    },
    ready: r.state === 'ready',
  });
  return {
    async getSandbox(idOrPrefix) {
      const exact = reader.get(idOrPrefix);
      if (exact) return infoOf(exact);
      const matches = reader.list().filter((r) => r.id.startsWith(idOrPrefix));
      return matches.length === 1 ? infoOf(matches[0]!) : null;
    },
    async listSandboxes() {
      return reader.list().map(infoOf);
    },
  };
}

export interface ContainerServiceOptions {
  config: Pick<Config, 'rootDir' | 'runDir' | 'runtime'>;
  logger: Logger;
  runtime: OciRuntime;
  sandboxes: SandboxLookup & Partial<SandboxLister>;
  images: ImageLookup;
  snapshotter: ContainerSnapshotter;
  /** The snapshotter's directory, reported as the writable layers' filesystem in stats. */
  snapshotRoot?: string;
  hostFacts: HostFacts;
  /** The pod's status in container events (optional). */
  sandboxStatus?: (podId: string) => Promise<PodSandboxStatus | null>;
  /** Replace the real OS access, spec files and runtime file layout (tests). */
  os?: ContainerOs;
  files?: SpecFiles;
  paths?: RuntimePaths;
  overrides?: Partial<Pick<ContainerDeps, 'now' | 'newId' | 'undoTimeoutMs'>>;
  /** How often exits and dead conmons are looked for while serving (ms; 0 = never). */
  monitorIntervalMs?: number;
}

export interface ContainerService {
  handlers: ContainerHandlers;
  podContainers: PodContainers;
  lookup: ContainerLookup;
  recover(): Promise<void>;
  readonly lastRecovery: ContainerRecoveryReport | null;
  close(): Promise<void>;
  /**
   * The hook for sandbox events: the pod layer calls it when a pod is created, stopped or
   * deleted, and every GetContainerEvents subscriber gets the event with container_id = the
   * pod's id and the pod's status (containerd sends sandbox events the same way).
   */
  publishSandboxEvent(kind: ContainerEventKind, podId: string): void;
  /** For tests: one pass of the exit/monitor check. */
  checkNow(): Promise<void>;
}

export function createContainerService(options: ContainerServiceOptions): ContainerService {
  const { config, logger } = options;
  const paths = options.paths ?? runtimePathsOf(runtimeLayout(config));
  const events = new ContainerEvents(options.sandboxStatus);
  const deps: ContainerDeps = {
    store: new ContainerStore(path.join(config.rootDir, 'containers')),
    names: new NameRegistrar('container'),
    locks: new KeyedMutex(),
    runtime: options.runtime,
    sandboxes: options.sandboxes,
    images: options.images,
    snapshotter: options.snapshotter,
    hostFacts: options.hostFacts,
    files: options.files ?? new NodeSpecFiles(),
    os: options.os ?? new NodeContainerOs(),
    events,
    paths,
    logger,
    now: options.overrides?.now ?? nowNanoseconds,
    newId: options.overrides?.newId ?? newContainerId,
    undoTimeoutMs: options.overrides?.undoTimeoutMs ?? 60_000,
    writableLayerRoot: options.snapshotRoot ?? '',
  };
  const lister: SandboxLister = {
    listSandboxes: async () => (options.sandboxes.listSandboxes ? options.sandboxes.listSandboxes() : []),
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

  const podRecords = (podId: string) => deps.store.list().filter((r) => r.podSandboxId === podId);
  const podContainers: PodContainers = {
    async stopAll(podId, timeoutSeconds) {
      await Promise.all(
        podRecords(podId)
          .filter((r) => r.state === 'running' || r.state === 'created')
          .map((r) =>
            deps.locks.run(r.id, async () => {
              const current = deps.store.get(r.id);
              if (current && current.state !== 'creating')
                await stopContainerLocked(deps, current, timeoutSeconds);
            }),
          ),
      );
    },
    async removeAll(podId) {
      const records = podRecords(podId);
      await Promise.all(
        records.map((r) =>
          deps.locks.run(r.id, async () => {
            const current = deps.store.get(r.id);
            if (current && current.state !== 'creating') await removeContainerLocked(deps, current);
          }),
        ),
      );
      // conmon's leaf under the pod cgroup must go before the pod layer removes the pod cgroup.
      const sandbox = await deps.sandboxes.getSandbox(podId);
      const leaves = new Set(records.map((r) => r.conmonCgroup).filter((c): c is string => c !== null));
      if (sandbox?.cgroupParent) leaves.add(conmonCgroupOf(sandbox.cgroupParent));
      for (const leaf of leaves) {
        // conmon exits right after writing the exit file; its cgroup empties a moment later.
        for (let attempt = 0; ; attempt++) {
          try {
            await deps.os.removeCgroup(leaf);
            break;
          } catch (err) {
            if (attempt >= 100) {
              logger.warn({ cgroup: leaf, err }, 'conmon cgroup of the pod could not be removed');
              break;
            }
            await new Promise((r) => setTimeout(r, 50));
          }
        }
      }
    },
  };

  const lookup: ContainerLookup = {
    async getContainer(idOrPrefix) {
      let id: string | undefined;
      try {
        id = deps.store.resolve(idOrPrefix);
      } catch {
        return undefined;
      }
      const record = id === undefined ? undefined : await observeExit(deps, id);
      if (!record || record.state === 'creating') return undefined;
      const live = record.state === 'running' || record.state === 'created';
      return {
        id: record.id,
        podSandboxId: record.podSandboxId,
        state: criContainerState(record.state),
        pid: record.pid,
        tty: record.tty,
        stdin: record.stdin,
        stdinOnce: record.stdinOnce,
        bundleDir: record.bundleDir,
        ...(live
          ? { attachSocketPath: paths.attachSocket(record.id), ctlFifoPath: paths.ctlFifo(record.id) }
          : {}),
        ...(record.state === 'exited' ? { exitCode: record.exitCode } : {}),
      };
    },
  };

  let monitorTimer: NodeJS.Timeout | null = null;
  let closed = false;
  let ticks = 0;
  const interval = options.monitorIntervalMs ?? 1000;
  const scheduleMonitor = () => {
    if (closed || interval <= 0) return;
    monitorTimer = setTimeout(async () => {
      ticks += 1;
      // Exit files are cheap to read; conmon liveness (a /proc read) is checked less often.
      await checkContainers(deps, ticks % 5 === 0).catch(() => undefined);
      scheduleMonitor();
    }, interval);
    monitorTimer.unref();
  };

  let lastRecovery: ContainerRecoveryReport | null = null;
  const stats = createStatsHandlers(deps, lister);
  return {
    handlers: {
      CreateContainer: track(createCreateContainer(deps)),
      StartContainer: track(createStartContainer(deps)),
      StopContainer: track(createStopContainer(deps)),
      RemoveContainer: track(createRemoveContainer(deps)),
      ListContainers: createListContainers(deps),
      ContainerStatus: createContainerStatus(deps),
      UpdateContainerResources: track(createUpdateContainerResources(deps)),
      ReopenContainerLog: createReopenContainerLog(deps),
      ContainerStats: stats.ContainerStats,
      ListContainerStats: stats.ListContainerStats,
      PodSandboxStats: stats.PodSandboxStats,
      ListPodSandboxStats: stats.ListPodSandboxStats,
      GetContainerEvents: createGetContainerEvents(events),
    },
    podContainers,
    lookup,
    get lastRecovery() {
      return lastRecovery;
    },
    async recover() {
      lastRecovery = await recoverContainers(deps);
      logger.info(
        {
          loaded: lastRecovery.loaded,
          running: lastRecovery.running,
          exitedWhileDown: lastRecovery.exitedWhileDown,
          monitorDied: lastRecovery.monitorDied,
          rolledBack: lastRecovery.rolledBack,
          problems: lastRecovery.problems.length,
        },
        'containers recovered',
      );
      scheduleMonitor();
    },
    async close() {
      closed = true;
      if (monitorTimer) clearTimeout(monitorTimer);
      events.close();
      await Promise.allSettled([...running]);
    },
    publishSandboxEvent(kind, podId) {
      void events.publish(kind, podId, podId, null, deps.now());
    },
    checkNow: () => checkContainers(deps, true),
  };
}
