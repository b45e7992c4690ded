/**
 * The container RPCs of RuntimeService, assembled over the runtime core: the composition root
 * (src/daemon.ts) calls createContainerService once and registers `handlers`; `exec` and
 * `attach` are the streaming server's targets. Everything the RPCs share lives in the core
 * (stores, locks, names, events, the OCI runtime): nothing here is wired late.
 *
 * Layout on disk (the OCI runtime's and the core's; see os/oci-runtime.ts):
 *   <rootDir>/containers/<id>.json   the record (crash-safe, versioned)
 *   <runDir>/containers/<id>/        OCI bundle + conmon files (config.json, conmon.pid, ctl, exit, oom)
 *   <runDir>/exits/<id>              conmon's exit file (watched: exits are events)
 *   <runDir>/s/<id>/attach           conmon's attach socket (kept short: sun_path is 108 bytes)
 *   <pod cgroup>/<id>                the container cgroup (crun), <pod cgroup>/conmon for conmon
 */
import { randomBytes } from 'node:crypto';
import type { RuntimeHandlers } from '../api/handlers.js';
import type { RuntimeCore } from '../core/runtime-core.js';
import type { SpecAdjuster } from '../core/spec-adjust.js';
import type { AttachTarget, ExecTarget } from '../core/stream-targets.js';
import type { Logger } from '../log.js';
import { type NodeCounters, ProcNodeCounters } from '../os/process-counters.js';
import { ContainerAttachTarget } from './attach-target.js';
import { createCreateContainer } from './container-create.js';
import { type ContainerDeps, type ContainerOs, NodeContainerOs } from './container-deps.js';
import { createGetContainerEvents } from './container-events.js';
import { createListContainers } from './container-list.js';
import { createReopenContainerLog } from './container-log-reopen.js';
import { createRemoveContainer } from './container-remove.js';
import { createStartContainer } from './container-start.js';
import { createStatsHandlers } from './container-stats.js';
import { createContainerStatus } from './container-status.js';
import { createStopContainer } from './container-stop.js';
import { createUpdateContainerResources } from './container-update.js';
import { createExecSync } from './exec-sync.js';
import { ContainerExecTarget } from './exec-target.js';
import { createMetricsHandlers } from './pod-metrics.js';
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
  | 'ListMetricDescriptors'
  | 'ListPodSandboxMetrics'
  | 'GetContainerEvents'
  | 'ExecSync'
>;

export interface ContainerServiceOptions {
  core: RuntimeCore;
  logger: Logger;
  hostFacts: HostFacts;
  /** The snapshotter's directory, reported as the writable layers' filesystem in stats. */
  writableLayerRoot?: string;
  /** Replace the real file access (tests). */
  os?: ContainerOs;
  files?: SpecFiles;
  overrides?: Partial<Pick<ContainerDeps, 'newId' | 'undoTimeoutMs'>>;
  /** The adjust stage between building a spec and creating the container (NRI, CDI). */
  adjusters?: readonly SpecAdjuster[];
  /** Replace the /proc readers of the metrics RPCs (tests). */
  counters?: NodeCounters;
}

export interface ContainerService {
  handlers: ContainerHandlers;
  exec: ExecTarget;
  attach: AttachTarget;
}

/** A new container id: 64 hex characters, like containerd's and CRI-O's. */
export function newContainerId(): string {
  return randomBytes(32).toString('hex');
}

export function createContainerService(options: ContainerServiceOptions): ContainerService {
  const { core } = options;
  const deps: ContainerDeps = {
    core,
    hostFacts: options.hostFacts,
    files: options.files ?? new NodeSpecFiles(),
    os: options.os ?? new NodeContainerOs(),
    logger: options.logger,
    newId: options.overrides?.newId ?? newContainerId,
    undoTimeoutMs: options.overrides?.undoTimeoutMs ?? 60_000,
    writableLayerRoot: options.writableLayerRoot ?? '',
    adjusters: options.adjusters ?? [],
    counters: options.counters ?? new ProcNodeCounters(),
  };
  // Mutations are tracked so that a daemon shutdown waits for them (never cuts a record write).
  const tracked = <A extends unknown[], R>(fn: (...args: A) => Promise<R>) => {
    return (...args: A): Promise<R> => core.track(fn(...args));
  };
  const stats = createStatsHandlers(deps);
  const metrics = createMetricsHandlers(deps);
  const streamable = { containerView: (id: string) => core.containerView(id) };
  return {
    handlers: {
      CreateContainer: tracked(createCreateContainer(deps)),
      StartContainer: tracked(createStartContainer(deps)),
      StopContainer: tracked(createStopContainer(deps)),
      RemoveContainer: tracked(createRemoveContainer(deps)),
      ListContainers: createListContainers(deps),
      ContainerStatus: createContainerStatus(deps),
      UpdateContainerResources: tracked(createUpdateContainerResources(deps)),
      ReopenContainerLog: createReopenContainerLog(deps),
      ContainerStats: stats.ContainerStats,
      ListContainerStats: stats.ListContainerStats,
      PodSandboxStats: stats.PodSandboxStats,
      ListPodSandboxStats: stats.ListPodSandboxStats,
      ListMetricDescriptors: metrics.ListMetricDescriptors,
      ListPodSandboxMetrics: metrics.ListPodSandboxMetrics,
      GetContainerEvents: createGetContainerEvents(core.events),
      ExecSync: createExecSync({ containers: streamable, runtime: core.runtime }),
    },
    exec: new ContainerExecTarget(streamable, core.runtime),
    attach: new ContainerAttachTarget(streamable, core.runtime),
  };
}
