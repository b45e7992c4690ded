/**
 * What the core's transition and recovery functions need of the runtime core: its stores,
 * locks, names, event bus and the adapters it was built with. RuntimeCore implements it; the
 * functions take this interface so that they and the class do not import each other.
 */
import type { Logger } from '../log.js';
import type { CgroupManager } from '../os/cgroup-manager.js';
import type { OciRuntime } from '../os/oci-runtime.js';
import type { KeyedMutex } from '../store/keyed-mutex.js';
import type { NameRegistrar } from '../store/name-registrar.js';
import type { ContainerRecord, ContainerStore } from './container-store.js';
import type { EventBus } from './event-bus.js';
import type { ContainerSnapshotter, ImageLookup } from './providers.js';
import type { SandboxStore } from './sandbox-store.js';

/** Hooks for metrics; every one optional. */
export interface CoreObserver {
  containerStarted?(record: ContainerRecord): void;
  containerExited?(record: ContainerRecord): void;
}

/**
 * What the core's own transitions tell NRI plugins (core/nri-runtime.ts implements it; every
 * method is a no-op when NRI is off).
 */
export interface NriLifecycle {
  /** Whether plugins take part (they may add OCI hooks to a container's spec). */
  readonly enabled?: boolean;
  /** Holds plugin synchronization off while `fn` changes what the stores show. */
  withSyncBlocked<T>(fn: () => Promise<T>): Promise<T>;
  /** The container's first transition to EXITED, whoever caused it. */
  containerStopped(record: ContainerRecord): Promise<void>;
  containerRemoved(record: ContainerRecord): Promise<void>;
}

export interface CoreContext {
  readonly sandboxes: SandboxStore;
  readonly sandboxNames: NameRegistrar;
  readonly sandboxLocks: KeyedMutex;
  readonly containers: ContainerStore;
  readonly containerNames: NameRegistrar;
  readonly containerLocks: KeyedMutex;
  readonly events: EventBus;
  readonly runtime: OciRuntime;
  readonly cgroups: CgroupManager;
  readonly images: ImageLookup;
  readonly snapshotter: ContainerSnapshotter;
  readonly logger: Logger;
  readonly now: () => bigint;
  readonly observer: CoreObserver;
  /** The node the daemon runs in (os/node-identity.ts); records of another node are gone. */
  readonly nodeId: string;
  /** NRI plugins (issue 17): told of exits and removals. */
  readonly nri: NriLifecycle;
}

/** A sandbox made in another node than this one: its pins, infra pid and port ids are void. */
export function fromGoneNode(core: Pick<CoreContext, 'nodeId'>, record: { nodeId: string | null }): boolean {
  return record.nodeId !== null && record.nodeId !== core.nodeId;
}
