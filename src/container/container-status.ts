/**
 * ContainerStatus, and the one place where an exit the daemon has not seen yet is taken in
 * (observeExit): conmon's exit file is read, the reason decided (Completed, Error, OOMKilled
 * from conmon's oom file or the cgroup's memory.events where memory is delegated) and the
 * record moved to `exited`, with one CONTAINER_STOPPED event.
 *
 * Verbose status adds `info["info"]`: pid, bundle, rootfs, cgroup, stop signal and the
 * warnings of CreateContainer/UpdateContainerResources (limits dropped on this node, LSMs not
 * enforced), so an operator sees why a limit is not in force.
 */
import type { CallContext } from '../api/handlers.js';
import type { ContainerStatus, RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { NotFoundError } from '../errors.js';
import { type ContainerDeps, dateToNanoseconds, describeContainer } from './container-deps.js';
import { type ContainerRecord, criContainerState } from './container-store.js';

export interface ObservedExit {
  exitCode: number;
  exitedAt: Date;
  oomKilled: boolean;
  /** Overrides the reason derived from the exit (e.g. ContainerMonitorDied). */
  reason?: string;
  message?: string;
}

/** Whether the container's cgroup recorded an OOM kill (only where memory is delegated). */
async function cgroupOomKilled(deps: ContainerDeps, record: ContainerRecord): Promise<boolean> {
  if (!record.cgroupPath) return false;
  const events = await deps.os.readCgroupFile(record.cgroupPath, 'memory.events');
  const match = events ? /^oom_kill (\d+)$/m.exec(events) : null;
  return match !== null && Number(match[1]) > 0;
}

/** Moves a record to `exited` (caller holds the container's lock) and publishes the event. */
export async function recordExit(
  deps: ContainerDeps,
  record: ContainerRecord,
  exit: ObservedExit,
): Promise<ContainerRecord> {
  const oom = exit.oomKilled || (exit.exitCode === 137 && (await cgroupOomKilled(deps, record)));
  const reason = exit.reason ?? (oom ? 'OOMKilled' : exit.exitCode === 0 ? 'Completed' : 'Error');
  const updated: ContainerRecord = {
    ...record,
    state: 'exited',
    pid: 0,
    exitCode: exit.exitCode,
    finishedAt: dateToNanoseconds(exit.exitedAt),
    reason,
    message: exit.message ?? record.message,
  };
  // A container that exited before it was ever started has no start time; CRI wants
  // finished >= started, which '0' satisfies.
  await deps.store.put(updated);
  deps.logger.info(
    { container: record.id, exitCode: exit.exitCode, reason },
    `container ${describeContainer(record)} exited`,
  );
  void deps.events.publish(
    'CONTAINER_STOPPED_EVENT',
    record.id,
    record.podSandboxId,
    statusOf(updated),
    deps.now(),
  );
  return updated;
}

/**
 * Takes in an exit conmon recorded that the record does not show yet. Caller holds the lock.
 * Returns the current record.
 */
export async function observeExitLocked(
  deps: ContainerDeps,
  record: ContainerRecord,
): Promise<ContainerRecord> {
  if (record.state !== 'running' && record.state !== 'created') return record;
  const info = await deps.runtime.exitInfo(record.id);
  if (!info) return record;
  return recordExit(deps, record, info);
}

/** observeExitLocked under the container's lock, re-reading the record inside it. */
export async function observeExit(deps: ContainerDeps, id: string): Promise<ContainerRecord | undefined> {
  const before = deps.store.get(id);
  if (!before || (before.state !== 'running' && before.state !== 'created')) return before;
  return deps.locks.run(id, async () => {
    const record = deps.store.get(id);
    return record ? observeExitLocked(deps, record) : undefined;
  });
}

export function statusOf(record: ContainerRecord): ContainerStatus {
  const meta = record.config.metadata!;
  const imageSpec = record.config.image;
  const user = record.user;
  return {
    id: record.id,
    metadata: { name: meta.name, attempt: meta.attempt },
    state: criContainerState(record.state),
    created_at: record.createdAt,
    started_at: record.startedAt,
    finished_at: record.finishedAt,
    exit_code: record.exitCode,
    image: {
      image: record.image.repoTag || record.image.requested,
      annotations: imageSpec?.annotations ?? {},
      user_specified_image: imageSpec?.user_specified_image || record.image.requested,
      runtime_handler: imageSpec?.runtime_handler ?? '',
    },
    image_ref: record.image.repoDigest || record.image.id,
    image_id: record.image.id,
    reason: record.reason,
    message: record.message,
    labels: record.config.labels,
    annotations: record.config.annotations,
    mounts: record.config.mounts.map((m) => ({
      container_path: m.container_path,
      host_path: m.host_path,
      readonly: m.readonly,
      selinux_relabel: m.selinux_relabel,
      propagation: m.propagation,
      recursive_read_only: m.recursive_read_only,
    })),
    log_path: record.logPath,
    resources: record.resources ? { linux: record.resources } : null,
    user: {
      linux: {
        uid: String(user.uid),
        gid: String(user.gid),
        supplemental_groups: user.additionalGids.map(String),
      },
    },
  };
}

export function verboseInfo(record: ContainerRecord): Record<string, string> {
  const info = {
    sandboxID: record.podSandboxId,
    pid: record.pid,
    state: record.state,
    bundleDir: record.bundleDir,
    rootfs: record.rootfs,
    cgroupPath: record.cgroupPath,
    conmonCgroup: record.conmonCgroup,
    stopSignal: record.stopSignal,
    warnings: record.warnings,
    image: record.image,
    user: record.user,
    config: record.config,
  };
  return { info: JSON.stringify(info) };
}

export function createContainerStatus(deps: ContainerDeps) {
  return async function ContainerStatusHandler(
    request: RuntimeRequest<'ContainerStatus'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'ContainerStatus'>> {
    const id = deps.store.resolve(request.container_id);
    const record = id === undefined ? undefined : await observeExit(deps, id);
    if (!record || record.state === 'creating') {
      throw new NotFoundError(
        `container ${JSON.stringify(request.container_id)} does not exist; list containers with crictl ps -a`,
      );
    }
    return { status: statusOf(record), info: request.verbose ? verboseInfo(record) : {} };
  };
}
