/**
 * The runtime core (containerd's criService, CRI-O's Server): one object that owns what pods
 * and containers share, so the pod and container RPC modules are plain functions over it and
 * nothing is wired late:
 *
 *   - the sandbox and container stores (crash-safe records, in memory after load), their name
 *     registrars and per-object locks;
 *   - the event bus (container AND sandbox events, to every GetContainerEvents subscriber);
 *   - the OCI runtime's exits, taken in as they happen (the exit watcher is the one source of
 *     exits; a low-rate check finds monitors that died without writing one);
 *   - the transitions both sides need (stop or remove a pod's containers, record an exit);
 *   - the recovery order: node → sandboxes → containers → images.
 *
 * The OS adapters (OciRuntime, CgroupManager, SandboxOs) and the image side (ImageLookup,
 * ContainerSnapshotter) are handed in by the composition root; the core imports no domain
 * module.
 */
import path from 'node:path';
import type { ContainerStatus, PodSandboxStatus } from '../api/proto.js';
import { describeError } from '../errors.js';
import type { Logger } from '../log.js';
import type { CgroupManager } from '../os/cgroup-manager.js';
import type { ExitInfo, OciRuntime } from '../os/oci-runtime.js';
import type { SandboxOs } from '../os/sandbox-os.js';
import { KeyedMutex } from '../store/keyed-mutex.js';
import { NameRegistrar } from '../store/name-registrar.js';
import { conmonCgroupOf } from './cgroup-layout.js';
import { recordExit, removeContainerLocked, stopContainerLocked } from './container-lifecycle.js';
import { type ContainerRecoveryReport, checkContainers, recoverContainers } from './container-recovery.js';
import { type ContainerRecord, ContainerStore, criContainerState } from './container-store.js';
import { statusOf } from './container-view.js';
import type { CoreContext, CoreObserver } from './core-context.js';
import { type ContainerEventKind, EventBus } from './event-bus.js';
import { NriRuntime, type NriRuntimeOptions } from './nri-runtime.js';
import type { ContainerSnapshotter, ImageLookup } from './providers.js';
import type { SandboxInfo } from './sandbox-info.js';
import { type RecoveryReport, recoverSandboxes } from './sandbox-recovery.js';
import { SandboxStore } from './sandbox-store.js';
import { sandboxInfoOf, sandboxStatusOf } from './sandbox-view.js';

/** What exec/attach need to know about a container. */
export interface ContainerView {
  id: string;
  podSandboxId: string;
  /** The CRI state, after checking for an exit the daemon has not seen yet. */
  state: string;
  /** Init pid while created/running, 0 after exit. */
  pid: number;
  tty: boolean;
  stdin: boolean;
  stdinOnce: boolean;
  bundleDir: string;
  /** Set once exited. */
  exitCode?: number;
}

/** Hooks for metrics; every one optional. */
export interface RuntimeCoreObserver extends CoreObserver {
  recovered?(report: CoreRecoveryReport): void;
}

export interface CoreRecoveryReport {
  sandboxes: RecoveryReport | null;
  containers: ContainerRecoveryReport | null;
  imagesRecovered: boolean;
  problems: string[];
  durationMs: number;
}

export interface RuntimeCoreOptions {
  rootDir: string;
  runtime: OciRuntime;
  cgroups: CgroupManager;
  /** What recovery asks of the pods' namespaces (is a pin mounted, is the infra alive). */
  sandboxOs: Pick<SandboxOs, 'isPinned' | 'infraAlive'>;
  images: ImageLookup;
  snapshotter: ContainerSnapshotter;
  logger: Logger;
  /** Nanoseconds since the epoch. */
  now?: () => bigint;
  /** The node the daemon joined (os/node-identity.ts). */
  nodeId: string;
  /** How often monitors are checked for having died without an exit file (ms; 0 = never). */
  monitorCheckMs?: number;
  observer?: RuntimeCoreObserver;
  /** NRI plugins ([nri] enable = true); null or absent = off. */
  nri?: NriRuntimeOptions | null;
}

export function nowNanoseconds(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}

export class RuntimeCore implements CoreContext {
  readonly sandboxes: SandboxStore;
  readonly sandboxNames = new NameRegistrar('pod sandbox');
  readonly sandboxLocks = new KeyedMutex();
  readonly containers: ContainerStore;
  readonly containerNames = new NameRegistrar('container');
  readonly containerLocks = new KeyedMutex();
  readonly events: EventBus;
  readonly runtime: OciRuntime;
  readonly cgroups: CgroupManager;
  readonly images: ImageLookup;
  readonly snapshotter: ContainerSnapshotter;
  readonly logger: Logger;
  readonly now: () => bigint;
  readonly observer: RuntimeCoreObserver;
  readonly nodeId: string;
  readonly nri: NriRuntime;
  private readonly sandboxOs: Pick<SandboxOs, 'isPinned' | 'infraAlive'>;
  private readonly monitorCheckMs: number;
  private monitorTimer: NodeJS.Timeout | null = null;
  private stopExits: (() => void) | null = null;
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly exitsInFlight = new Set<Promise<unknown>>();
  private closed = false;
  private lastRecovery: CoreRecoveryReport | null = null;

  constructor(options: RuntimeCoreOptions) {
    this.sandboxes = new SandboxStore(path.join(options.rootDir, 'sandboxes'));
    this.containers = new ContainerStore(path.join(options.rootDir, 'containers'));
    this.runtime = options.runtime;
    this.cgroups = options.cgroups;
    this.images = options.images;
    this.snapshotter = options.snapshotter;
    this.logger = options.logger;
    this.now = options.now ?? nowNanoseconds;
    this.observer = options.observer ?? {};
    this.nodeId = options.nodeId;
    this.sandboxOs = options.sandboxOs;
    this.monitorCheckMs = options.monitorCheckMs ?? 10_000;
    this.events = new EventBus({
      podStatus: (podId) => {
        const record = this.sandboxes.get(podId);
        return record ? sandboxStatusOf(record) : null;
      },
      podContainerStatuses: (podId) => this.podContainers(podId).map(statusOf),
    });
    this.nri = new NriRuntime(this, options.nri ?? null);
  }

  get recovery(): CoreRecoveryReport | null {
    return this.lastRecovery;
  }

  // ---- views ------------------------------------------------------------------------------

  /** A sandbox by full id or unique prefix, as the container layer sees it. */
  sandboxInfo(idOrPrefix: string): SandboxInfo | null {
    const exact = this.sandboxes.get(idOrPrefix);
    if (exact) return sandboxInfoOf(exact);
    const matches = this.sandboxes.list().filter((r) => r.id.startsWith(idOrPrefix));
    return matches.length === 1 ? sandboxInfoOf(matches[0]!) : null;
  }

  sandboxStatus(podId: string): PodSandboxStatus | null {
    const record = this.sandboxes.get(podId);
    return record ? sandboxStatusOf(record) : null;
  }

  /** The pod's containers but those being created: the stored records, frozen (read, never change). */
  podContainers(podId: string): Readonly<ContainerRecord>[] {
    return this.containers.peekAll().filter((r) => r.podSandboxId === podId && r.state !== 'creating');
  }

  podContainerStatuses(podId: string): ContainerStatus[] {
    return this.podContainers(podId).map(statusOf);
  }

  /** A container by full id or unique prefix for exec/attach; undefined when absent or being created. */
  async containerView(idOrPrefix: string): Promise<ContainerView | undefined> {
    let id: string | undefined;
    try {
      id = this.containers.resolve(idOrPrefix);
    } catch {
      return undefined;
    }
    const record = id === undefined ? undefined : this.containers.get(id);
    if (!record || record.state === 'creating') return undefined;
    return {
      id: record.id,
      podSandboxId: record.podSandboxId,
      state: criContainerState(record.state),
      pid: record.pid,
      tty: record.tty,
      stdin: record.stdin,
      stdinOnce: record.stdinOnce,
      bundleDir: record.bundleDir,
      ...(record.state === 'exited' ? { exitCode: record.exitCode } : {}),
    };
  }

  // ---- transitions shared by pods and containers --------------------------------------------

  publishSandbox(kind: ContainerEventKind, podId: string, podStatus?: PodSandboxStatus): void {
    this.events.publishSandbox(kind, podId, this.now(), podStatus);
  }

  /** Stops every container of the pod, each with this grace period (StopPodSandbox). */
  async stopPodContainers(podId: string, timeoutSeconds: number): Promise<void> {
    await Promise.all(
      this.podContainers(podId)
        .filter((r) => r.state === 'running' || r.state === 'created')
        .map((r) =>
          this.containerLocks.run(r.id, async () => {
            const current = this.containers.get(r.id);
            if (current && current.state !== 'creating')
              await stopContainerLocked(this, current, timeoutSeconds);
          }),
        ),
    );
  }

  /**
   * Removes every container of the pod (RemovePodSandbox), then the pod's conmon cgroup leaf,
   * which must go before the pod layer removes the pod cgroup.
   */
  async removePodContainers(podId: string): Promise<void> {
    const podCgroup = this.sandboxes.get(podId)?.cgroup?.path ?? null;
    const conmonCgroupLeaf = podCgroup ? conmonCgroupOf(podCgroup) : null;
    const records = this.podContainers(podId);
    await Promise.all(
      records.map((r) =>
        this.containerLocks.run(r.id, async () => {
          const current = this.containers.get(r.id);
          if (current && current.state !== 'creating') await removeContainerLocked(this, current);
        }),
      ),
    );
    const leaves = new Set(records.map((r) => r.conmonCgroup).filter((c): c is string => c !== null));
    if (conmonCgroupLeaf) leaves.add(conmonCgroupLeaf);
    // conmon exits right after writing the exit file; remove() waits for its cgroup to empty.
    for (const leaf of leaves) {
      await this.cgroups
        .remove([leaf])
        .catch((err: unknown) =>
          this.logger.warn(
            { cgroup: leaf, err: describeError(err) },
            'conmon cgroup of the pod could not be removed',
          ),
        );
    }
  }

  /** Runs an RPC body so that close() waits for it (daemon shutdown never cuts a write). */
  track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    const done = () => this.inFlight.delete(p);
    p.then(done, done);
    return p;
  }

  // ---- exits --------------------------------------------------------------------------------

  private takeExit(id: string, info: ExitInfo): void {
    if (this.closed) return;
    const before = this.containers.get(id);
    if (!before || (before.state !== 'running' && before.state !== 'created')) return;
    const p = this.containerLocks
      .run(id, async () => {
        const record = this.containers.get(id);
        if (record && (record.state === 'running' || record.state === 'created'))
          await recordExit(this, record, info);
      })
      .catch((err: unknown) =>
        this.logger.warn({ container: id, err: describeError(err) }, 'could not record an exit'),
      );
    this.exitsInFlight.add(p);
    void p.finally(() => this.exitsInFlight.delete(p));
  }

  /** Resolves once every exit delivered so far is recorded (tests, and shutdown). */
  async exitsRecorded(): Promise<void> {
    while (this.exitsInFlight.size > 0) await Promise.allSettled([...this.exitsInFlight]);
  }

  private scheduleMonitorCheck(): void {
    if (this.closed || this.monitorCheckMs <= 0) return;
    this.monitorTimer = setTimeout(async () => {
      await checkContainers(this).catch(() => undefined);
      this.scheduleMonitorCheck();
    }, this.monitorCheckMs);
    this.monitorTimer.unref();
  }

  /** For tests: one pass of the monitor check. */
  checkNow(): Promise<void> {
    return checkContainers(this);
  }

  // ---- recovery -----------------------------------------------------------------------------

  /**
   * Recovery, in order: the node (the caller has joined it), sandboxes, containers, images.
   * One bad object never stops it: it is reported (and, for unreadable records, moved aside).
   */
  async recover(): Promise<CoreRecoveryReport> {
    const started = performance.now();
    const report: CoreRecoveryReport = {
      sandboxes: null,
      containers: null,
      imagesRecovered: false,
      problems: [],
      durationMs: 0,
    };
    await this.runtime.open();
    this.stopExits = this.runtime.onExit((id, info) => this.takeExit(id, info));
    report.sandboxes = await recoverSandboxes(this, this.sandboxOs);
    for (const p of report.sandboxes.problems) report.problems.push(`sandbox record ${p.file}: ${p.message}`);
    report.containers = await recoverContainers(this);
    report.problems.push(...report.containers.problems);
    try {
      await this.images.recover();
      await this.images.retainHolders(new Set(this.containers.list().map((r) => r.id)));
      report.imagesRecovered = true;
    } catch (err) {
      report.problems.push(`images: ${describeError(err)}`);
      throw err;
    } finally {
      report.durationMs = performance.now() - started;
      this.lastRecovery = report;
      this.observer.recovered?.(report);
    }
    this.scheduleMonitorCheck();
    return report;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.monitorTimer) clearTimeout(this.monitorTimer);
    this.stopExits?.();
    await Promise.allSettled([...this.inFlight]);
    await this.exitsRecorded();
    this.events.close();
    this.runtime.close();
  }
}
