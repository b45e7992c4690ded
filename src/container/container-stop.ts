/**
 * StopContainer(timeout): the container's stop signal (the request's, the image's
 * STOPSIGNAL, else SIGTERM), then SIGKILL to every process of the container when `timeout`
 * seconds pass (core/container-lifecycle.ts stopContainer). OK when the container does not
 * exist or has already exited (CRI idempotence); an empty id or ambiguous prefix is
 * InvalidArgument. A client that gives up (deadline, cancel) ends the grace period early: the
 * container is then killed, so it is never left half-stopped.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { stopContainerLocked } from '../core/container-lifecycle.js';
import type { ContainerDeps } from './container-deps.js';

export function createStopContainer(deps: ContainerDeps) {
  return async function StopContainer(
    request: RuntimeRequest<'StopContainer'>,
    ctx: Pick<CallContext, 'logger'> & Partial<Pick<CallContext, 'signal'>>,
  ): Promise<RuntimeResponse<'StopContainer'>> {
    const id = deps.core.containers.resolve(request.container_id);
    if (id === undefined) return {};
    const timeout = Number(request.timeout);
    await deps.core.containerLocks.run(id, async () => {
      const record = deps.core.containers.get(id);
      if (!record || record.state === 'creating') return;
      await stopContainerLocked(deps.core, record, Number.isFinite(timeout) ? timeout : 0, ctx.signal);
    });
    return {};
  };
}
