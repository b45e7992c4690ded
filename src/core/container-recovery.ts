/**
 * Container recovery (before the daemon answers anything but UNAVAILABLE) and the low-rate
 * monitor check that runs while it serves (a conmon that died without an exit file).
 *
 * For each record found on disk:
 *   creating → CreateContainer never answered: everything the record names is undone
 *              (runtime state, writable layer, image hold) and the record deleted; if that
 *              fails, the container is shown EXITED (reason CreateContainerError) for
 *              RemoveContainer to finish, never kept hidden;
 *   created / running → conmon's exit file is read first: an exit that happened while the
 *              daemon was down is recorded with its code and time. Without one, conmon must
 *              still be alive (its pid file names a live `conmon`); if it is not, nobody holds
 *              the container's stdio, log or exit code, so the container is killed and marked
 *              EXITED with reason ContainerMonitorDied. Otherwise it keeps running, untouched:
 *              same id, pid, created and started times. A record still `created` whose
 *              process the runtime reports running (the daemon died between `crun start`
 *              and saving the start) is recorded running, started when its process did;
 *   exited   → kept as it is.
 * Names are reserved again, image holds of vanished containers dropped and writable layers
 * (and image volumes) no record names removed. One bad record never stops the daemon: it is reported and skipped.
 */
import { describeError } from '../errors.js';
import { processStartedAt } from '../os/process-start.js';
import { recordExit, settleDeadMonitor } from './container-lifecycle.js';
import type { ContainerRecord } from './container-store.js';
import { statusOf } from './container-view.js';
import { type CoreContext, fromGoneNode } from './core-context.js';
import { releaseImageVolumes, removeStrayImageVolumes } from './image-volumes.js';

export interface ContainerRecoveryReport {
  loaded: number;
  running: number;
  exitedWhileDown: number;
  monitorDied: number;
  rolledBack: number;
  /** Unreadable records, moved aside as .corrupt (each also in `problems`). */
  movedAside: number;
  problems: string[];
}

const CONTAINER_ID = /^[0-9a-f]{64}$/;

async function undoCreating(core: CoreContext, record: ContainerRecord): Promise<void> {
  await core.runtime.delete(record.id, true);
  await core.runtime.cleanup(record.id);
  await core.snapshotter.remove(record.id);
  await releaseImageVolumes(core, record);
  await core.images.release(record.image.id, record.id);
  await core.containers.delete(record.id);
}

/**
 * A `creating` record that cannot be undone now (a busy mount, a runtime that does not answer)
 * must not stay hidden with its layer and image hold: it becomes a visible EXITED container
 * that says so, and RemoveContainer (kubelet's garbage collection) finishes the job.
 */
async function surfaceUnfinished(core: CoreContext, record: ContainerRecord, err: unknown): Promise<void> {
  core.containerNames.reserve(record.reservedName, record.id);
  await recordExit(
    core,
    { ...record, state: 'created' },
    {
      exitCode: 255,
      exitedAt: new Date(),
      oomKilled: false,
      reason: 'CreateContainerError',
      message: `CreateContainer did not finish before the daemon stopped, and undoing it failed (${describeError(err)}); remove the container`,
    },
  );
}

async function recoverOne(
  core: CoreContext,
  record: ContainerRecord,
): Promise<'rolledBack' | 'exitedWhileDown' | 'monitorDied' | 'running' | null> {
  if (record.state === 'creating') {
    try {
      await undoCreating(core, record);
    } catch (err) {
      core.logger.error(
        { container: record.id, err },
        'cannot undo an unfinished CreateContainer; shown as exited',
      );
      await surfaceUnfinished(core, record, err);
      return null;
    }
    return 'rolledBack';
  }
  core.containerNames.reserve(record.reservedName, record.id);
  if (record.state === 'exited') return null;
  const info = await core.runtime.exitInfo(record.id);
  if (info) {
    await recordExit(core, record, info);
    return 'exitedWhileDown';
  }
  const pod = core.sandboxes.get(record.podSandboxId);
  const settled = await settleDeadMonitor(core, record, { nodeGone: pod ? fromGoneNode(core, pod) : false });
  if (settled) return 'monitorDied';
  if (record.state === 'created') return adoptStarted(core, record);
  return 'running';
}

/** A `created` record whose process runs: StartContainer got as far as `crun start`. */
async function adoptStarted(core: CoreContext, record: ContainerRecord): Promise<'running' | null> {
  const state = await core.runtime.state(record.id);
  if (state?.status !== 'running') return null;
  const startedAt = (state.pid > 0 ? await processStartedAt(state.pid) : null) ?? core.now();
  const started: ContainerRecord = { ...record, state: 'running', startedAt: startedAt.toString() };
  await core.containers.put(started);
  core.logger.info(
    { container: record.id },
    'container was started before the daemon died: recorded running',
  );
  core.events.publish(
    'CONTAINER_STARTED_EVENT',
    record.id,
    record.podSandboxId,
    statusOf(started),
    core.now(),
  );
  return 'running';
}

export async function recoverContainers(core: CoreContext): Promise<ContainerRecoveryReport> {
  const report: ContainerRecoveryReport = {
    loaded: 0,
    running: 0,
    exitedWhileDown: 0,
    monitorDied: 0,
    rolledBack: 0,
    movedAside: 0,
    problems: [],
  };
  const loaded = await core.containers.load();
  report.movedAside = loaded.problems.length;
  for (const p of loaded.problems) {
    report.problems.push(`${p.file}: ${p.message} (moved aside as .corrupt)`);
    core.logger.error({ file: p.file, problem: p.message }, 'container record unreadable; moved aside');
  }
  report.loaded = loaded.records.length;
  for (const record of core.containers.list()) {
    try {
      // Under the container's lock: the exit watcher runs from here on, and its events for a
      // container being settled (a kill of one whose monitor died) must wait for the outcome.
      const outcome = await core.containerLocks.run(record.id, () => recoverOne(core, record));
      if (outcome) report[outcome] += 1;
    } catch (err) {
      report.problems.push(`container ${record.id}: ${describeError(err)}`);
      core.logger.error({ container: record.id, err }, 'container could not be recovered; left as it was');
    }
  }
  const live = new Set(core.containers.list().map((r) => r.id));
  if (core.snapshotter.list) {
    for (const id of await core.snapshotter.list().catch(() => [] as string[])) {
      if (!CONTAINER_ID.test(id) || live.has(id)) continue;
      await core.snapshotter
        .remove(id)
        .catch((err: unknown) => report.problems.push(`stray writable layer ${id}: ${describeError(err)}`));
    }
  }
  await removeStrayImageVolumes(core, report.problems);
  return report;
}

/**
 * One pass of the monitor check: monitors that died without recording an exit. It runs every
 * few seconds over every running container, so the common case costs no file I/O (the runtime
 * answers liveness from a cached pid); only a container whose monitor looks dead is taken under
 * its lock and settled. Exits themselves arrive as events (the exit watcher, with its rescans).
 */
export async function checkContainers(core: CoreContext): Promise<void> {
  for (const record of core.containers.peekAll()) {
    if (record.state !== 'running' && record.state !== 'created') continue;
    if ((await core.runtime.monitorAlive(record.id).catch(() => true)) === true) continue;
    await core.containerLocks
      .run(record.id, async () => {
        const current = core.containers.get(record.id);
        if (!current || (current.state !== 'running' && current.state !== 'created')) return;
        const info = await core.runtime.exitInfo(current.id);
        if (info) await recordExit(core, current, info);
        else await settleDeadMonitor(core, current);
      })
      .catch((err: unknown) => core.logger.warn({ container: record.id, err }, 'container check failed'));
  }
}
