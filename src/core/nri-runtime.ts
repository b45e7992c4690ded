/**
 * NRI in the runtime: the core's side of src/nri/. NriRuntime owns the NRI endpoint (the
 * adapter) when `[nri] enable = true`, and is a set of no-ops when it is not. It turns the
 * core's records into the plain views the adapter sends (pods and containers as they are
 * now, never `creating` ones), answers a plugin synchronizing with the stores' contents,
 * applies the resource updates and evictions plugins ask for, and holds the sync gate around
 * each lifecycle change so that a plugin connecting meanwhile either finds the object in its
 * Synchronize or receives its event.
 *
 * Who calls what (the contract is in src/nri/index.ts):
 *   RunPodSandbox     sandbox-run.ts, record still `creating`, runPodSandbox() vetoes by throwing
 *   StopPodSandbox    sandbox-stop.ts, once every container is EXITED
 *   RemovePodSandbox  sandbox-remove.ts, with the record's deletion
 *   CreateContainer   specAdjuster(), the adjust stage of container-create.ts
 *   StartContainer    container-start.ts (a plugin may veto), postStartContainer() after
 *   UpdateContainerResources  container-update.ts: updateContainer() adjusts the resources
 *   StopContainer     container-lifecycle.ts recordExit: the first transition to EXITED,
 *                     whoever caused it (StopContainer, the exit watcher, a failed start)
 *   RemoveContainer   container-lifecycle.ts removeContainerLocked, with the record's deletion
 *
 * The gate is reentrant within one call chain (AsyncLocalStorage), and is never held while
 * waiting for an object lock: resource updates of *other* containers that plugins return
 * with an event are applied after the event's call chain, not inside it.
 *
 * What a plugin may change on a rootless node: its adjustments go through applyAdjustment
 * (src/nri/adjust-spec.ts); on top of that, resource limits of cgroup controllers that are
 * not delegated to the node are dropped with a warning (as for CRI limits), hugepage limits
 * are dropped, and the container's cgroup path is kept (it must stay under the pod's cgroup,
 * which the runtime created and removes). What the kernel refuses in a user namespace
 * (real-time scheduling, raising hard rlimits, device nodes the user cannot open) fails the
 * creation with crun's error, and the creation is rolled back.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { LinuxContainerResources__Output } from '../api/proto.js';
import { describeError } from '../errors.js';
import {
  NriAdapter,
  type NriContainer,
  type NriContainerEviction,
  type NriContainerState,
  type NriContainerUpdate,
  type NriCreateContainerResult,
  type NriOciResources,
  type NriOciSpec,
  type NriPluginInfo,
  type NriPod,
  type SyncBlock,
} from '../nri/index.js';
import type { OciResources, OciSpec } from '../os/oci-spec.js';
import { packageVersion } from '../version.js';
import { stopContainerLocked } from './container-lifecycle.js';
import type { ContainerRecord, ContainerStateName } from './container-store.js';
import type { CoreContext, NriLifecycle } from './core-context.js';
import type { SandboxRecord } from './sandbox-record.js';
import type { SpecAdjuster } from './spec-adjust.js';

export interface NriRuntimeOptions {
  /** The socket plugins connect to. */
  socketPath: string;
  registrationTimeoutMs: number;
  requestTimeoutMs: number;
}

export interface NriStatus {
  enabled: boolean;
  socket: string | null;
  registrationTimeoutMs: number | null;
  requestTimeoutMs: number | null;
  /** Synchronized plugins, in invocation order. */
  plugins: NriPluginInfo[];
}

const NO_BLOCK: SyncBlock = { release: () => {} };

const CONTAINER_STATE: Record<ContainerStateName, NriContainerState> = {
  creating: 'unknown',
  created: 'created',
  running: 'running',
  exited: 'stopped',
};

function nanoseconds(value: string): bigint {
  try {
    return BigInt(value);
  } catch {
    return 0n;
  }
}

/** The pod as NRI plugins see it. */
export function nriPodOf(record: SandboxRecord): NriPod {
  const meta = record.config.metadata;
  const namespaces: { type: string; path?: string }[] = [];
  if (record.namespaces.network.path)
    namespaces.push({ type: 'network', path: record.namespaces.network.path });
  if (record.namespaces.ipc.path) namespaces.push({ type: 'ipc', path: record.namespaces.ipc.path });
  if (record.namespaces.uts.path) namespaces.push({ type: 'uts', path: record.namespaces.uts.path });
  const infra = record.namespaces.pid.infra;
  if (infra) namespaces.push({ type: 'pid', path: `/proc/${infra.pid}/ns/pid` });
  const pod: NriPod = {
    id: record.id,
    name: meta?.name ?? '',
    uid: meta?.uid ?? '',
    namespace: meta?.namespace ?? '',
    labels: { ...record.config.labels },
    annotations: { ...record.config.annotations },
    runtimeHandler: record.runtimeHandler,
    cgroupParent: record.config.linux?.cgroup_parent ?? '',
    cgroupsPath: record.cgroup?.path ?? '',
    namespaces,
    pid: infra?.pid ?? 0,
    ips: record.network ? [record.network.ip, ...record.network.additionalIps] : [],
  };
  return pod;
}

/** The container as NRI plugins see it; `spec` when the runtime has it at hand. */
export function nriContainerOf(record: ContainerRecord, spec?: NriOciSpec): NriContainer {
  return {
    id: record.id,
    podSandboxId: record.podSandboxId,
    name: record.config.metadata?.name ?? '',
    state: CONTAINER_STATE[record.state],
    labels: { ...record.config.labels },
    annotations: { ...record.config.annotations },
    ...(spec ? { spec } : {}),
    pid: record.pid,
    createdAt: nanoseconds(record.createdAt),
    startedAt: nanoseconds(record.startedAt),
    finishedAt: nanoseconds(record.finishedAt),
    exitCode: record.exitCode,
    statusReason: record.reason,
    statusMessage: record.message,
    image: {
      name: record.image.repoTag || record.image.requested,
      digest: record.image.repoDigest,
      configDigest: record.image.id,
    },
  };
}

/**
 * The part of `resources` this node can apply with crun (the OCI resources object of
 * os/oci-spec.ts), with a warning for each limit left out: controllers not delegated to the
 * node, hugepages (never applied here), and cgroup v1 or real-time knobs cgroup v2 lacks.
 */
export function applicableResources(
  resources: NriOciResources,
  controllers: readonly string[],
  haveCgroup: boolean,
  what: string,
): { resources: OciResources; warnings: string[] } {
  const warnings: string[] = [];
  const delegated = (c: string) => haveCgroup && controllers.includes(c);
  const drop = (field: string, controller: string) =>
    warnings.push(
      haveCgroup
        ? `${what}: ${field} dropped: the ${controller} cgroup controller is not delegated to rootless-cri on this node (see rootless-cri doctor)`
        : `${what}: ${field} dropped: the container has no cgroup on this node`,
    );
  const out: OciResources = {};
  if (resources.devices) {
    const types = ['a', 'b', 'c'] as const;
    out.devices = [];
    for (const d of resources.devices) {
      const type = types.find((t) => t === (d.type ?? 'a'));
      if (type) out.devices.push({ ...d, type });
      else warnings.push(`${what}: device rule of type ${JSON.stringify(d.type)} dropped (a, b or c)`);
    }
  }
  const cpu = resources.cpu;
  if (cpu) {
    const next: NonNullable<OciResources['cpu']> = {};
    for (const field of ['shares', 'quota', 'period'] as const) {
      if (cpu[field] === undefined) continue;
      if (delegated('cpu')) next[field] = cpu[field];
      else drop(`cpu.${field}`, 'cpu');
    }
    for (const field of ['cpus', 'mems'] as const) {
      if (!cpu[field]) continue;
      if (delegated('cpuset')) next[field] = cpu[field];
      else drop(`cpu.${field}`, 'cpuset');
    }
    if (cpu.realtimeRuntime !== undefined || cpu.realtimePeriod !== undefined) {
      warnings.push(`${what}: cpu.realtime* dropped: cgroup v2 has no real-time CPU limits`);
    }
    if (Object.keys(next).length > 0) out.cpu = next;
  }
  const memory = resources.memory;
  if (memory) {
    const next: NonNullable<OciResources['memory']> = {};
    for (const field of ['limit', 'swap'] as const) {
      if (memory[field] === undefined) continue;
      if (delegated('memory')) next[field] = memory[field];
      else drop(`memory.${field}`, 'memory');
    }
    const v1 = (['reservation', 'kernel', 'kernelTCP', 'swappiness', 'disableOOMKiller'] as const).filter(
      (f) => memory[f] !== undefined,
    );
    if (v1.length > 0) {
      warnings.push(`${what}: memory.${v1.join(', memory.')} dropped: rootless-cri does not apply them`);
    }
    if (Object.keys(next).length > 0) out.memory = next;
  }
  if (resources.pids) {
    if (delegated('pids')) out.pids = { limit: resources.pids.limit };
    else drop('pids.limit', 'pids');
  }
  if (resources.hugepageLimits && resources.hugepageLimits.length > 0) {
    warnings.push(`${what}: hugepage limits dropped: rootless-cri does not apply hugetlb limits`);
  }
  if (resources.unified) {
    const unified: Record<string, string> = {};
    for (const [key, value] of Object.entries(resources.unified)) {
      const controller = key.slice(0, key.indexOf('.'));
      if (controller === 'cgroup' ? haveCgroup : delegated(controller)) unified[key] = value;
      else drop(`unified ${key}`, controller);
    }
    if (Object.keys(unified).length > 0) out.unified = unified;
  }
  return { resources: out, warnings };
}

/** The CRI resources a container has once `applied` (OCI) is in force over `base`. */
export function criResourcesWith(
  base: LinuxContainerResources__Output | null,
  applied: OciResources,
): LinuxContainerResources__Output {
  const out: LinuxContainerResources__Output = {
    cpu_period: '0',
    cpu_quota: '0',
    cpu_shares: '0',
    memory_limit_in_bytes: '0',
    oom_score_adj: '0',
    cpuset_cpus: '',
    cpuset_mems: '',
    hugepage_limits: [],
    unified: {},
    memory_swap_limit_in_bytes: '0',
    ...(base ?? {}),
  };
  const set = (field: 'cpu_period' | 'cpu_quota' | 'cpu_shares', v: number | undefined) => {
    if (v !== undefined) out[field] = String(v);
  };
  set('cpu_shares', applied.cpu?.shares);
  set('cpu_quota', applied.cpu?.quota);
  set('cpu_period', applied.cpu?.period);
  if (applied.cpu?.cpus) out.cpuset_cpus = applied.cpu.cpus;
  if (applied.cpu?.mems) out.cpuset_mems = applied.cpu.mems;
  if (applied.memory?.limit !== undefined) out.memory_limit_in_bytes = String(applied.memory.limit);
  if (applied.memory?.swap !== undefined) out.memory_swap_limit_in_bytes = String(applied.memory.swap);
  if (applied.unified) out.unified = { ...out.unified, ...applied.unified };
  return out;
}

export class NriRuntime implements NriLifecycle {
  readonly enabled: boolean;
  private readonly adapter: NriAdapter | null;
  /** Set inside a call chain that holds the sync gate. */
  private readonly holding = new AsyncLocalStorage<true>();
  /** Specs of containers, for the events that follow creation (the bundle is gone at removal). */
  private readonly specs = new Map<string, NriOciSpec>();
  /** Updates and evictions applied after the event that returned them. */
  private readonly background = new Set<Promise<void>>();

  constructor(
    private readonly core: CoreContext,
    private readonly options: NriRuntimeOptions | null,
  ) {
    this.enabled = options !== null;
    this.adapter = options
      ? new NriAdapter({
          socketPath: options.socketPath,
          runtimeName: 'rootless-cri',
          runtimeVersion: packageVersion(),
          registrationTimeoutMs: options.registrationTimeoutMs,
          requestTimeoutMs: options.requestTimeoutMs,
          logger: core.logger,
          state: { listPodsAndContainers: () => this.snapshot() },
          updateContainers: (updates) => this.applyUpdates(updates),
          evictContainers: (evictions) => this.evict(evictions),
        })
      : null;
  }

  // ---- the endpoint -------------------------------------------------------------------------

  /** Listen on the NRI socket (after recovery: plugins synchronize with what it found). */
  async start(): Promise<void> {
    await this.adapter?.start();
  }

  /** Tell plugins the runtime is going down and close the socket; pods and containers stay. */
  async stop(): Promise<void> {
    await this.adapter?.stop();
    while (this.background.size > 0) await Promise.allSettled([...this.background]);
  }

  status(): NriStatus {
    return {
      enabled: this.enabled,
      socket: this.options?.socketPath ?? null,
      registrationTimeoutMs: this.options?.registrationTimeoutMs ?? null,
      requestTimeoutMs: this.options?.requestTimeoutMs ?? null,
      plugins: this.adapter?.listPlugins() ?? [],
    };
  }

  // ---- the sync gate --------------------------------------------------------------------------

  /**
   * Runs `fn` with plugin synchronization held off: from before the NRI call that announces a
   * change until the stores show it. Nested calls in the same chain share the outer hold.
   */
  async withSyncBlocked<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.adapter || this.holding.getStore()) return fn();
    const block = await this.adapter.blockPluginSync();
    try {
      return await this.holding.run(true, fn);
    } finally {
      block.release();
    }
  }

  /** A hold released by the caller (one that spans several steps: CreateContainer). */
  private async blockSync(): Promise<SyncBlock> {
    if (!this.adapter || this.holding.getStore()) return NO_BLOCK;
    return this.adapter.blockPluginSync();
  }

  // ---- pods -----------------------------------------------------------------------------------

  /** A plugin's error vetoes the pod (FailedPrecondition); the caller rolls back. */
  async runPodSandbox(record: SandboxRecord): Promise<void> {
    if (!this.adapter) return;
    await this.withSyncBlocked(() => this.adapter!.runPodSandbox(nriPodOf(record)));
  }

  /** The pod announced by runPodSandbox was not created after all. */
  async undoRunPodSandbox(record: SandboxRecord): Promise<void> {
    if (!this.adapter) return;
    await this.adapter.undoRunPodSandbox(nriPodOf(record));
  }

  /** Once per pod, after its containers are stopped; plugin errors are warnings. */
  async stopPodSandbox(record: SandboxRecord): Promise<void> {
    if (!this.adapter) return;
    await this.withSyncBlocked(() => this.adapter!.stopPodSandbox(nriPodOf(record)));
  }

  async removePodSandbox(record: SandboxRecord): Promise<void> {
    if (!this.adapter) return;
    await this.withSyncBlocked(() => this.adapter!.removePodSandbox(nriPodOf(record)));
  }

  // ---- containers -------------------------------------------------------------------------------

  /**
   * The CreateContainer step of the adjust stage: plugins see the container (record still
   * `creating`, so not listed) with the generated spec and answer with adjustments. The gate
   * is held from before the call until the creation settles.
   */
  specAdjuster(): SpecAdjuster {
    return {
      name: 'NRI',
      adjust: async (spec, context) => {
        const adapter = this.adapter;
        const record = this.core.containers.get(context.containerId);
        const sandbox = this.core.sandboxes.get(context.sandbox.id);
        if (!adapter || !record || !sandbox) return { spec, warnings: [] };
        const pod = nriPodOf(sandbox);
        const view = { ...nriContainerOf(record), state: 'created' as const };
        const block = await this.blockSync();
        let result: NriCreateContainerResult<OciSpec>;
        try {
          result = await adapter.createContainer(pod, view, spec);
        } catch (err) {
          // Plugins that answered before the veto may have set something aside for it.
          await this.undoCreate(pod, view);
          block.release();
          throw err;
        }
        const adjusted = result.spec;
        const warnings = [...result.warnings];
        // The cgroup path is the runtime's: the pod cgroup it created and removes.
        if (adjusted.linux.cgroupsPath !== spec.linux.cgroupsPath) {
          warnings.push(
            `NRI: the container's cgroup path stays ${spec.linux.cgroupsPath ?? '(none)'}: plugins cannot move it on a rootless node`,
          );
          if (spec.linux.cgroupsPath === undefined) delete adjusted.linux.cgroupsPath;
          else adjusted.linux.cgroupsPath = spec.linux.cgroupsPath;
        }
        if (adjusted.linux.resources) {
          const kept = applicableResources(
            adjusted.linux.resources as NriOciResources,
            this.core.cgroups.controllers,
            adjusted.linux.cgroupsPath !== undefined,
            'NRI',
          );
          warnings.push(...kept.warnings);
          adjusted.linux.resources = kept.resources;
        }
        return {
          spec: adjusted,
          warnings,
          settle: async (created: boolean) => {
            if (!created) {
              await this.undoCreate(pod, view);
              block.release();
              return;
            }
            block.release();
            this.specs.set(record.id, adjusted);
            const current = this.core.containers.get(record.id) ?? record;
            await adapter
              .postCreateContainer(pod, nriContainerOf(current, adjusted))
              .catch((err: unknown) => this.warn(record.id, 'PostCreateContainer', err));
            this.later(result.updates, result.evictions);
          },
        };
      },
    };
  }

  private async undoCreate(pod: NriPod, view: NriContainer): Promise<void> {
    await this.adapter
      ?.undoCreateContainer(pod, { ...view, state: 'stopped' })
      .catch((err: unknown) => this.warn(view.id, 'undo of CreateContainer', err));
  }

  /** Before `crun start`; a plugin's error vetoes the start (FailedPrecondition). */
  async startContainer(record: ContainerRecord): Promise<void> {
    if (!this.adapter) return;
    const { pod, container } = await this.views(record);
    await this.withSyncBlocked(() => this.adapter!.startContainer(pod, container));
  }

  async postStartContainer(record: ContainerRecord): Promise<void> {
    if (!this.adapter) return;
    const { pod, container } = await this.views(record);
    await this.adapter.postStartContainer(pod, container);
  }

  /**
   * UpdateContainerResources: the resources to apply, as plugins adjusted them and as this
   * node can apply them. A plugin's error vetoes the update (FailedPrecondition).
   */
  async updateContainer(
    record: ContainerRecord,
    resources: OciResources,
  ): Promise<{ resources: OciResources; warnings: string[] }> {
    if (!this.adapter) return { resources, warnings: [] };
    const { pod, container } = await this.views(record);
    const result = await this.withSyncBlocked(() =>
      this.adapter!.updateContainer(pod, container, resources as NriOciResources),
    );
    const kept = applicableResources(
      result.resources,
      this.core.cgroups.controllers,
      record.cgroupPath !== null,
      'NRI',
    );
    this.later(result.updates, result.evictions);
    return { resources: kept.resources, warnings: [...result.warnings, ...kept.warnings] };
  }

  async postUpdateContainer(record: ContainerRecord): Promise<void> {
    if (!this.adapter) return;
    const { pod, container } = await this.views(record);
    await this.adapter.postUpdateContainer(pod, container);
  }

  /** The first transition to EXITED (the adapter sends it once per container). */
  async containerStopped(record: ContainerRecord): Promise<void> {
    if (!this.adapter) return;
    const { pod, container } = await this.views(record);
    const result = await this.withSyncBlocked(() => this.adapter!.stopContainer(pod, container));
    this.later(result.updates, []);
  }

  async containerRemoved(record: ContainerRecord): Promise<void> {
    if (!this.adapter) return;
    const { pod, container } = await this.views(record);
    this.specs.delete(record.id);
    // Removal stops a container first: it is gone stopped, whatever the record said before.
    const removed = { ...container, state: 'stopped' as const, pid: 0 };
    await this.withSyncBlocked(() => this.adapter!.removeContainer(pod, removed));
  }

  // ---- views, synchronization, updates ----------------------------------------------------------

  private async views(record: ContainerRecord): Promise<{ pod: NriPod; container: NriContainer }> {
    const sandbox = this.core.sandboxes.get(record.podSandboxId);
    const pod: NriPod = sandbox
      ? nriPodOf(sandbox)
      : { id: record.podSandboxId, name: '', uid: '', namespace: '' };
    return { pod, container: nriContainerOf(record, await this.specOf(record)) };
  }

  /** The container's OCI spec: from creation, else its bundle; read only while plugins listen. */
  private async specOf(record: ContainerRecord): Promise<NriOciSpec | undefined> {
    const known = this.specs.get(record.id);
    if (known || !this.adapter || this.adapter.listPlugins().length === 0) return known;
    try {
      const spec = JSON.parse(
        await readFile(path.join(record.bundleDir, 'config.json'), 'utf8'),
      ) as NriOciSpec;
      if (this.core.containers.get(record.id)) this.specs.set(record.id, spec);
      return spec;
    } catch {
      return undefined;
    }
  }

  /** What a synchronizing plugin is told: every pod and container but those being created. */
  private async snapshot(): Promise<{ pods: NriPod[]; containers: NriContainer[] }> {
    const pods = this.core.sandboxes
      .list()
      .filter((r) => r.state !== 'creating')
      .map(nriPodOf);
    const records = this.core.containers.list().filter((r) => r.state !== 'creating');
    const containers = await Promise.all(records.map(async (r) => nriContainerOf(r, await this.specOf(r))));
    return { pods, containers };
  }

  /** Applies plugin updates (crun update) under each container's lock; returns those that failed. */
  private async applyUpdates(updates: NriContainerUpdate[]): Promise<NriContainerUpdate[]> {
    const failed: NriContainerUpdate[] = [];
    for (const update of updates) {
      const outcome = await this.core.containerLocks
        .run(update.containerId, async () => {
          const record = this.core.containers.get(update.containerId);
          if (!record || (record.state !== 'running' && record.state !== 'created')) {
            return `container ${update.containerId} is not created or running`;
          }
          const { resources, warnings } = applicableResources(
            update.resources,
            this.core.cgroups.controllers,
            record.cgroupPath !== null,
            `NRI update of ${record.id.slice(0, 12)}`,
          );
          for (const warning of warnings) this.core.logger.warn({ container: record.id }, warning);
          if (Object.keys(resources).length > 0) await this.core.runtime.update(record.id, resources);
          await this.core.containers.put({
            ...record,
            resources: criResourcesWith(record.resources, resources),
          });
          return null;
        })
        .catch((err: unknown) => describeError(err));
      if (outcome !== null) {
        const level = update.ignoreFailure ? 'info' : 'warn';
        this.core.logger[level](
          { container: update.containerId, reason: outcome },
          'NRI: container update failed',
        );
        failed.push(update);
      }
    }
    return failed;
  }

  /** Stops the containers plugins want evicted (no grace period: the plugin decided). */
  private async evict(evictions: NriContainerEviction[]): Promise<void> {
    for (const eviction of evictions) {
      this.core.logger.warn(
        { container: eviction.containerId, plugin: eviction.plugin, reason: eviction.reason },
        'NRI: evicting a container at a plugin’s request',
      );
      await this.core.containerLocks
        .run(eviction.containerId, async () => {
          const record = this.core.containers.get(eviction.containerId);
          if (record && (record.state === 'running' || record.state === 'created')) {
            await stopContainerLocked(this.core, record, 0);
          }
        })
        .catch((err: unknown) =>
          this.core.logger.warn(
            { container: eviction.containerId, err: describeError(err) },
            'NRI: eviction failed',
          ),
        );
    }
  }

  /** Updates and evictions returned with an event, applied once the event's chain is done. */
  private later(updates: NriContainerUpdate[], evictions: NriContainerEviction[]): void {
    if (!this.adapter || (updates.length === 0 && evictions.length === 0)) return;
    const task = this.holding.exit(async () => {
      await this.applyUpdates(updates);
      await this.evict(evictions);
    });
    const tracked = task.catch((err: unknown) =>
      this.core.logger.warn({ err: describeError(err) }, 'NRI: applying plugin updates failed'),
    );
    this.background.add(tracked);
    void tracked.finally(() => this.background.delete(tracked));
  }

  private warn(containerId: string, what: string, err: unknown): void {
    this.core.logger.warn({ container: containerId, err: describeError(err) }, `NRI: ${what} failed`);
  }
}
