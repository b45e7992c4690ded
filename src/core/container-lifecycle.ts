/**
 * The container transitions that more than one RPC (and recovery) needs, as functions over the
 * runtime core: taking in an exit, stopping, removing. Callers hold the container's lock.
 *
 * Exits reach the core as events from the OCI runtime's exit watcher (runtime-core.ts); the
 * read paths also call observeExit so that an exit is never shown late even between events.
 */
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describeError, errorKind, InternalError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import type { ExitInfo, OciRuntime } from '../os/oci-runtime.js';
import type { ContainerRecord } from './container-store.js';
import { statusOf } from './container-view.js';
import type { CoreContext } from './core-context.js';
import { releaseImageVolumes } from './image-volumes.js';

export interface ObservedExit {
  exitCode: number;
  exitedAt: Date;
  oomKilled: boolean;
  /** Overrides the reason derived from the exit (e.g. ContainerMonitorDied). */
  reason?: string;
  message?: string;
}

/** nanoseconds since the epoch, as CRI times are. */
function dateToNanoseconds(date: Date): string {
  return (BigInt(date.getTime()) * 1_000_000n).toString();
}

export function describeContainer(record: ContainerRecord): string {
  return `${record.config.metadata?.name ?? '?'} (${record.id.slice(0, 12)})`;
}

/** Whether the container's cgroup recorded an OOM kill (only where memory is delegated). */
async function cgroupOomKilled(core: CoreContext, record: ContainerRecord): Promise<boolean> {
  if (!record.cgroupPath) return false;
  const events = await core.cgroups.readFile(record.cgroupPath, 'memory.events');
  const match = events ? /^oom_kill (\d+)$/m.exec(events) : null;
  return match !== null && Number(match[1]) > 0;
}

/** Moves a record to `exited` (caller holds the container's lock) and publishes the event. */
export async function recordExit(
  core: CoreContext,
  record: ContainerRecord,
  exit: ObservedExit,
): Promise<ContainerRecord> {
  const oom = exit.oomKilled || (exit.exitCode === 137 && (await cgroupOomKilled(core, record)));
  let reason = exit.reason ?? (oom ? 'OOMKilled' : exit.exitCode === 0 ? 'Completed' : 'Error');
  // A process that failed because its root filesystem went away (fuse-overlayfs killed) says
  // so: the exit code alone (135, SIGBUS) tells an operator nothing.
  let message = exit.message;
  if (
    message === undefined &&
    reason === 'Error' &&
    record.state === 'running' &&
    core.snapshotter.rootfsAlive
  ) {
    const alive = await core.snapshotter.rootfsAlive(record.id).catch(() => true);
    if (!alive) {
      message =
        "the container's root filesystem went away while it ran (its fuse-overlayfs process died?); the process failed on it. Remove and recreate the container";
    }
  }
  // A process that failed at execve (after `crun start`) never ran the entrypoint: say why.
  if (message === undefined && reason === 'Error' && record.state === 'running' && core.runtime.execFailure) {
    const failure = await core.runtime.execFailure(record.id, record.logPath).catch(() => null);
    if (failure) {
      reason = 'StartError';
      message = failure.message;
    }
  }
  const updated: ContainerRecord = {
    ...record,
    state: 'exited',
    pid: 0,
    exitCode: exit.exitCode,
    finishedAt: dateToNanoseconds(exit.exitedAt),
    reason,
    message: message ?? record.message,
  };
  // A container that exited before it was ever started has no start time; CRI wants
  // finished >= started, which '0' satisfies. NRI plugins learn of the first transition to
  // EXITED here, whoever caused it.
  await core.nri.withSyncBlocked(async () => {
    await core.containers.put(updated);
    await core.nri.containerStopped(updated);
  });
  core.logger.info(
    { container: record.id, exitCode: exit.exitCode, reason },
    `container ${describeContainer(record)} exited`,
  );
  core.events.publish(
    'CONTAINER_STOPPED_EVENT',
    record.id,
    record.podSandboxId,
    statusOf(updated),
    core.now(),
  );
  core.observer.containerExited?.(updated);
  await releaseExited(core, updated);
  return updated;
}

/**
 * What an exited container no longer needs is let go at once, as containerd deletes a task
 * when it exits: crun's state and the container's cgroup (`crun delete`, which also runs
 * poststop hooks) and the mounts of its writable layer and image volumes (with fuse-overlayfs,
 * a daemon process each).
 * Kubelet keeps exited containers for their status and logs, one per crash-looping pod, long
 * after they ended; until RemoveContainer each held a fuse-overlayfs process and a mount.
 * The writable layer's files, the bundle, the exit file and the record stay: RemoveContainer
 * removes them, and repeats these two steps when they did not happen. Best effort: a failure
 * here is logged and left to RemoveContainer.
 */
async function releaseExited(core: CoreContext, record: ContainerRecord): Promise<void> {
  // Processes of the container may outlive its init: in a pod-wide pid namespace, or an exec'd
  // one still dying. crun delete cannot remove a cgroup they hold (the pod's cgroup then stays
  // busy), and unmounting under them breaks their files: release only an emptied cgroup, and
  // leave anything else to RemoveContainer, which kills what is left. No cgroup of its own, no
  // way to tell: the same.
  const cgroup = containerCgroup(record);
  if (cgroup === null) return;
  if (!(await cgroupEmptied(core, cgroup))) {
    core.logger.debug(
      { container: record.id, cgroup },
      'exited container keeps its runtime state and mount until it is removed: processes are left in its cgroup',
    );
    return;
  }
  const fromRuntime = async () => {
    await core.runtime.delete(record.id, true);
    await core.cgroups.remove([cgroup]);
  };
  // Its root filesystem, and its image volumes (each a mount of its own).
  const unmount = async () => {
    await core.snapshotter.unmount(record.id);
    for (const volume of record.imageVolumes ?? []) await core.snapshotter.unmount(volume.snapshotId);
  };
  try {
    // A poststop hook an NRI plugin added may still use the root filesystem.
    if (core.nri.enabled === true) {
      await fromRuntime();
      await unmount();
    } else {
      const results = await Promise.allSettled([fromRuntime(), unmount()]);
      for (const result of results) if (result.status === 'rejected') throw result.reason;
    }
  } catch (err) {
    core.logger.warn(
      { container: record.id, err: describeError(err) },
      `could not release the runtime state and mount of exited container ${describeContainer(record)}; RemoveContainer will`,
    );
  }
}

/**
 * The container's own cgroup (`<pod cgroup>/<container id>`), or null: a cgroup an NRI
 * plugin moved it into is not the container's to kill or remove.
 */
function containerCgroup(record: ContainerRecord): string | null {
  const cgroup = record.cgroupPath;
  return cgroup && path.posix.basename(cgroup) === record.id ? cgroup : null;
}

/** How long an exit waits for the rest of the container's processes to be gone. */
const CGROUP_EMPTY_WAIT_MS = 200;

/** Whether the cgroup has no process left (or is gone), waiting briefly for dying ones. */
async function cgroupEmptied(core: CoreContext, cgroup: string): Promise<boolean> {
  const deadline = Date.now() + CGROUP_EMPTY_WAIT_MS;
  for (;;) {
    const events = await core.cgroups.readFile(cgroup, 'cgroup.events');
    if (events === null || /^populated 0$/m.test(events)) return true;
    if (Date.now() >= deadline) return false;
    await sleep(5);
  }
}

/** Takes in an exit the monitor recorded that the record does not show yet. Caller holds the lock. */
export async function observeExitLocked(
  core: CoreContext,
  record: ContainerRecord,
): Promise<ContainerRecord> {
  if (record.state !== 'running' && record.state !== 'created') return record;
  const info = await core.runtime.exitInfo(record.id);
  if (!info) return record;
  return recordExit(core, record, info);
}

/** observeExitLocked under the container's lock, re-reading the record inside it. */
export async function observeExit(core: CoreContext, id: string): Promise<ContainerRecord | undefined> {
  const before = core.containers.get(id);
  if (!before || (before.state !== 'running' && before.state !== 'created')) return before;
  return core.containerLocks.run(id, async () => {
    const record = core.containers.get(id);
    return record ? observeExitLocked(core, record) : undefined;
  });
}

/**
 * A running/created container whose monitor (conmon) is gone: killed (if anything is left)
 * and recorded as exited. Caller holds the lock. Returns null when the monitor is alive.
 */
export async function settleDeadMonitor(
  core: CoreContext,
  record: ContainerRecord,
  options: { nodeGone?: boolean } = {},
): Promise<ContainerRecord | null> {
  const alive = await core.runtime.monitorAlive(record.id);
  if (alive === true) return null;
  // conmon writes the exit file before it exits: look once more, it may have just finished.
  const info = await core.runtime.exitInfo(record.id);
  if (info) return recordExit(core, record, info);
  const state = await core.runtime.state(record.id).catch(() => null);
  if (state && state.status !== 'stopped') {
    await core.runtime.kill(record.id, 'SIGKILL', true).catch(() => core.runtime.kill(record.id, 'SIGKILL'));
  }
  if (options.nodeGone) {
    // As containerd reports a container whose task vanished with the machine: 255, Unknown.
    core.logger.warn({ container: record.id }, `container ${describeContainer(record)} ended with its node`);
    return recordExit(core, record, {
      exitCode: 255,
      exitedAt: new Date(),
      oomKilled: false,
      reason: 'Unknown',
      message:
        'the node this container ran in is gone (stopped with `rootless-cri stop --all`, its holder died, or the host rebooted); the container ended with it',
    });
  }
  core.logger.warn(
    { container: record.id, runtimeState: state?.status ?? 'absent' },
    `the monitor (conmon) of container ${describeContainer(record)} died; marking it exited`,
  );
  return recordExit(core, record, {
    exitCode: 137,
    exitedAt: new Date(),
    oomKilled: false,
    reason: 'ContainerMonitorDied',
    message:
      'the container monitor (conmon) died, so the exit code is unknown; the container was killed. Remove and recreate it',
  });
}

/**
 * Stops a container: its stop signal, then SIGKILL when `timeoutMs` passes (StopContainer).
 * Resolves with the exit; a container that is already gone resolves with what was recorded.
 *
 * PID 1 of a pid namespace never dies of a signal it does not catch: the kernel discards
 * it at send time. A container started a moment ago may install its handler just after the
 * signal was sent (and dropped); so the disposition is read before and after sending, and a
 * signal sent while there was no handler is sent again once there is one. With no handler at
 * all, waiting is pointless: SIGKILL at once.
 */
export async function stopContainer(
  runtime: OciRuntime,
  id: string,
  signal: string,
  timeoutMs: number,
  abort?: AbortSignal,
): Promise<ExitInfo | null> {
  const recorded = await runtime.exitInfo(id);
  if (recorded) return recorded;
  if (timeoutMs > 0 && signal !== 'SIGKILL') {
    const droppedBefore = await runtime.initDropsSignal(id, signal).catch(() => false);
    try {
      await runtime.kill(id, signal);
    } catch (err) {
      if ((err as { kind?: string }).kind !== 'NotFound') throw err;
      return runtime.exitInfo(id);
    }
    failpoint('container.stop-signalled');
    let dropped = await runtime.initDropsSignal(id, signal).catch(() => false);
    if (droppedBefore && !dropped) {
      // The handler arrived after our signal was discarded: deliver it again.
      await runtime.kill(id, signal).catch(() => undefined);
      dropped = false;
    }
    if (!dropped) {
      const info = await runtime.waitExit(id, timeoutMs, abort);
      if (info) return info;
    }
  }
  try {
    await runtime.kill(id, 'SIGKILL', true);
  } catch (err) {
    if ((err as { kind?: string }).kind === 'NotFound') return runtime.exitInfo(id);
    // `--all` needs the container's cgroup; without one, the init process alone takes the
    // pid namespace (and everything in it) down.
    await runtime.kill(id, 'SIGKILL').catch((again: unknown) => {
      if ((again as { kind?: string }).kind !== 'NotFound') throw again;
    });
  }
  // SIGKILL cannot be ignored; conmon records the exit promptly unless the process is stuck
  // in the kernel (D state), which the caller reports rather than waits on forever.
  return runtime.waitExit(id, 10_000);
}

/** Stops the container (caller holds its lock); returns the exited record. */
export async function stopContainerLocked(
  core: CoreContext,
  record: ContainerRecord,
  timeoutSeconds: number,
  abort?: AbortSignal,
): Promise<ContainerRecord> {
  const current = await observeExitLocked(core, record);
  if (current.state !== 'running' && current.state !== 'created') return current;
  // A container that was created but never started gets SIGKILL at once: its process is still
  // crun's init waiting to exec, which has no handler for the stop signal.
  const timeoutMs = current.state === 'created' ? 0 : Math.max(0, timeoutSeconds) * 1000;
  core.logger.info(
    { container: current.id, signal: current.stopSignal, timeoutSeconds },
    `stopping container ${describeContainer(current)}`,
  );
  const exit = await stopContainer(core.runtime, current.id, current.stopSignal, timeoutMs, abort);
  // The exit event may have recorded it meanwhile (it waits for this lock, then finds it exited).
  const latest = core.containers.get(current.id) ?? current;
  if (latest.state === 'exited') return latest;
  if (!exit) {
    // No exit file: either the runtime no longer knows the container (its conmon died with
    // it), or the process is stuck in the kernel. Only the first is an exit we can record.
    const state = await core.runtime.state(current.id).catch(() => null);
    if (state === null || state.status === 'stopped') {
      return recordExit(core, current, {
        exitCode: 137,
        exitedAt: new Date(),
        oomKilled: false,
        reason: 'Error',
        message: 'the container was killed; its monitor (conmon) recorded no exit code',
      });
    }
    throw new InternalError(
      `container ${describeContainer(current)} did not exit after SIGKILL (process stuck in the kernel?); retry StopContainer`,
    );
  }
  return recordExit(core, current, exit);
}

/**
 * Removes everything of a container (caller holds its lock): kills it if it still runs,
 * deletes it from the runtime, removes its writable layer and bundle, releases its image and
 * name and deletes its record. Each step tolerates what an interrupted removal already did.
 */
export async function removeContainerLocked(core: CoreContext, record: ContainerRecord): Promise<void> {
  if (record.state === 'running' || record.state === 'created') {
    await stopContainerLocked(core, record, 0);
  }
  const cgroup = containerCgroup(record);
  const fromRuntime = async () => {
    await core.runtime.delete(record.id, true);
    failpoint('container.runtime-deleted');
    // crun delete removes the cgroup, but forgets the container even when processes still in
    // it kept it from doing so; a cgroup left behind would keep the pod's cgroup busy for good.
    if (cgroup !== null) await core.cgroups.remove([cgroup]);
    await core.runtime.cleanup(record.id);
  };
  if (core.nri.enabled === true) {
    // A plugin may have added a poststop hook, which crun delete runs: the rootfs stays until then.
    await fromRuntime();
    await core.snapshotter.remove(record.id);
  } else {
    // The process has exited. crun's state and cgroup, and the writable layer's mount and
    // dirs, are different things, each removal idempotent: side by side, not one after the
    // other (RemoveContainer's two slowest steps, ~5 and ~8 ms). Both settle before an error
    // is reported, so a retry never races a removal still under way.
    const results = await Promise.allSettled([fromRuntime(), core.snapshotter.remove(record.id)]);
    for (const result of results) if (result.status === 'rejected') throw result.reason;
  }
  await releaseImageVolumes(core, record);
  // The image's hold is bookkeeping: a full disk that cannot record its release must not keep a
  // container from being removed (recovery drops holds of containers that are gone).
  await core.images.release(record.image.id, record.id).catch((err: unknown) => {
    if (errorKind(err) !== 'ResourceExhausted') throw err;
    core.logger.warn(
      { container: record.id, err },
      'could not record the image release (disk full); it is dropped at the next start',
    );
  });
  await core.nri.withSyncBlocked(async () => {
    await core.containers.delete(record.id);
    await core.nri.containerRemoved(record);
  });
  core.containerNames.releaseByOwner(record.id);
  core.logger.info({ container: record.id }, `container ${describeContainer(record)} removed`);
  core.events.publish('CONTAINER_DELETED_EVENT', record.id, record.podSandboxId, null, core.now());
}
