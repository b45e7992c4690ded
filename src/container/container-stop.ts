/**
 * StopContainer(timeout): the container's stop signal (the request's, the image's
 * STOPSIGNAL, else SIGTERM), then SIGKILL to every process of the container when `timeout`
 * seconds pass (stopContainer in oci-runtime.ts). OK when the container does not exist or has
 * already exited (CRI idempotence); an empty id or ambiguous prefix is InvalidArgument.
 * A container that was created but never started gets SIGKILL at once: its process is still
 * crun's init waiting to exec, which has no handler for the stop signal.
 *
 * stopContainerLocked is also what StopPodSandbox (through PodContainers) and
 * RemoveContainer use.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { InternalError } from '../errors.js';
import { type ContainerDeps, describeContainer } from './container-deps.js';
import { observeExitLocked, recordExit } from './container-status.js';
import type { ContainerRecord } from './container-store.js';
import { stopContainer } from './oci-runtime.js';

/** Stops the container (caller holds its lock); returns the exited record. */
export async function stopContainerLocked(
  deps: ContainerDeps,
  record: ContainerRecord,
  timeoutSeconds: number,
): Promise<ContainerRecord> {
  const current = await observeExitLocked(deps, record);
  if (current.state !== 'running' && current.state !== 'created') return current;
  const timeoutMs = current.state === 'created' ? 0 : Math.max(0, timeoutSeconds) * 1000;
  deps.logger.info(
    { container: current.id, signal: current.stopSignal, timeoutSeconds },
    `stopping container ${describeContainer(current)}`,
  );
  const exit = await stopContainer(deps.runtime, current.id, current.stopSignal, timeoutMs);
  if (!exit) {
    // No exit file: either the runtime no longer knows the container (its conmon died with
    // it), or the process is stuck in the kernel. Only the first is an exit we can record.
    const state = await deps.runtime.state(current.id).catch(() => null);
    if (state === null || state.status === 'stopped') {
      return recordExit(deps, current, {
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
  return recordExit(deps, current, exit);
}

export function createStopContainer(deps: ContainerDeps) {
  return async function StopContainer(
    request: RuntimeRequest<'StopContainer'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'StopContainer'>> {
    const id = deps.store.resolve(request.container_id);
    if (id === undefined) return {};
    const timeout = Number(request.timeout);
    await deps.locks.run(id, async () => {
      const record = deps.store.get(id);
      if (!record || record.state === 'creating') return;
      await stopContainerLocked(deps, record, Number.isFinite(timeout) ? timeout : 0);
    });
    return {};
  };
}
