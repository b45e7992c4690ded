/**
 * Container recovery (before the daemon answers anything but UNAVAILABLE) and the monitor
 * check that runs while it serves.
 *
 * For each record found on disk:
 *   creating → CreateContainer never answered: everything the record names is undone
 *              (runtime state, writable layer, image hold) and the record deleted;
 *   created / running → conmon's exit file is read first: an exit that happened while the
 *              daemon was down is recorded with its code and time. Without one, conmon must
 *              still be alive (its pid file names a live `conmon`); if it is not, nobody holds
 *              the container's stdio, log or exit code, so the container is killed and marked
 *              EXITED with reason ContainerMonitorDied. Otherwise it keeps running, untouched:
 *              same id, pid, created and started times;
 *   exited   → kept as it is.
 * Names are reserved again, image holds of vanished containers dropped and writable layers
 * no record names removed. One bad record never stops the daemon: it is reported and skipped.
 */
import { describeError } from '../errors.js';
import { type ContainerDeps, describeContainer } from './container-deps.js';
import { recordExit } from './container-status.js';
import type { ContainerRecord } from './container-store.js';

export interface ContainerRecoveryReport {
  loaded: number;
  running: number;
  exitedWhileDown: number;
  monitorDied: number;
  rolledBack: number;
  problems: string[];
}

const CONTAINER_ID = /^[0-9a-f]{64}$/;

/**
 * A running/created container whose conmon is gone: killed (if anything is left) and
 * recorded as exited. Caller holds the lock. Returns null when conmon is alive.
 */
export async function settleDeadMonitor(
  deps: ContainerDeps,
  record: ContainerRecord,
): Promise<ContainerRecord | null> {
  const alive = await deps.os.monitorAlive(deps.paths.conmonPidFile(record.id));
  if (alive === true) return null;
  // conmon writes the exit file before it exits: look once more, it may have just finished.
  const info = await deps.runtime.exitInfo(record.id);
  if (info) return recordExit(deps, record, info);
  const state = await deps.runtime.state(record.id).catch(() => null);
  if (state && state.status !== 'stopped') {
    await deps.runtime.kill(record.id, 'SIGKILL', true).catch(() => deps.runtime.kill(record.id, 'SIGKILL'));
  }
  deps.logger.warn(
    { container: record.id, runtimeState: state?.status ?? 'absent' },
    `the monitor (conmon) of container ${describeContainer(record)} died; marking it exited`,
  );
  return recordExit(deps, record, {
    exitCode: 137,
    exitedAt: new Date(),
    oomKilled: false,
    reason: 'ContainerMonitorDied',
    message:
      'the container monitor (conmon) died, so the exit code is unknown; the container was killed. Remove and recreate it',
  });
}

async function undoCreating(deps: ContainerDeps, record: ContainerRecord): Promise<void> {
  await deps.runtime.delete(record.id, true);
  await deps.runtime.cleanup(record.id);
  await deps.snapshotter.remove(record.id);
  await deps.images.release(record.image.id, record.id);
  await deps.store.delete(record.id);
}

export async function recoverContainers(deps: ContainerDeps): Promise<ContainerRecoveryReport> {
  const report: ContainerRecoveryReport = {
    loaded: 0,
    running: 0,
    exitedWhileDown: 0,
    monitorDied: 0,
    rolledBack: 0,
    problems: [],
  };
  const loaded = await deps.store.load();
  for (const p of loaded.problems) {
    report.problems.push(`${p.file}: ${p.message} (moved aside as .corrupt)`);
    deps.logger.error({ file: p.file, problem: p.message }, 'container record unreadable; moved aside');
  }
  report.loaded = loaded.records.length;
  for (const record of deps.store.list()) {
    try {
      if (record.state === 'creating') {
        await undoCreating(deps, record);
        report.rolledBack += 1;
        continue;
      }
      deps.names.reserve(record.reservedName, record.id);
      if (record.state === 'exited') continue;
      const info = await deps.runtime.exitInfo(record.id);
      if (info) {
        await recordExit(deps, record, info);
        report.exitedWhileDown += 1;
        continue;
      }
      const settled = await settleDeadMonitor(deps, record);
      if (settled) report.monitorDied += 1;
      else if (record.state === 'running') report.running += 1;
    } catch (err) {
      report.problems.push(`container ${record.id}: ${describeError(err)}`);
      deps.logger.error({ container: record.id, err }, 'container could not be recovered; left as it was');
    }
  }
  const live = new Set(deps.store.list().map((r) => r.id));
  if (deps.snapshotter.list) {
    for (const id of await deps.snapshotter.list().catch(() => [] as string[])) {
      if (!CONTAINER_ID.test(id) || live.has(id)) continue;
      await deps.snapshotter
        .remove(id)
        .catch((err: unknown) => report.problems.push(`stray writable layer ${id}: ${describeError(err)}`));
    }
  }
  await deps.images.retainHolders?.(live);
  return report;
}

/** One pass of the monitor: exits conmon recorded, and conmons that died, taken in. */
export async function checkContainers(deps: ContainerDeps, checkMonitors: boolean): Promise<void> {
  for (const record of deps.store.list()) {
    if (record.state !== 'running' && record.state !== 'created') continue;
    await deps.locks
      .run(record.id, async () => {
        const current = deps.store.get(record.id);
        if (!current || (current.state !== 'running' && current.state !== 'created')) return;
        const info = await deps.runtime.exitInfo(current.id);
        if (info) {
          await recordExit(deps, current, info);
          return;
        }
        if (checkMonitors) await settleDeadMonitor(deps, current);
      })
      .catch((err: unknown) => deps.logger.warn({ container: record.id, err }, 'container check failed'));
  }
}
