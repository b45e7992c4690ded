/**
 * RemovePodSandbox: removes the pod's containers, stops the sandbox if it still runs (as
 * containerd does, so a forced removal never leaves a running pod behind), then unpins the
 * remaining namespaces and removes the pod cgroup, the sandbox files, the record and the name
 * reservation. The record goes last: if anything before fails, the sandbox is still listed
 * and a retry finishes the job. A sandbox that does not exist is OK.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { sandboxStatusOf } from '../core/sandbox-view.js';
import type { SandboxDeps } from './sandbox-deps.js';
import { stopSandbox } from './sandbox-stop.js';
import { removeCgroups, removeFiles, unpinOthers } from './sandbox-teardown.js';

export function createRemovePodSandbox(deps: SandboxDeps) {
  return async function RemovePodSandbox(
    request: RuntimeRequest<'RemovePodSandbox'>,
    ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'RemovePodSandbox'>> {
    const id = deps.core.sandboxes.resolve(request.pod_sandbox_id);
    if (id === undefined) return {};
    await deps.core.sandboxLocks.run(id, async () => {
      if (!deps.core.sandboxes.get(id)) return;
      await deps.core.removePodContainers(id);
      await stopSandbox(deps, id);
      const record = deps.core.sandboxes.get(id)!;
      const lastStatus = sandboxStatusOf(record);
      // Independent of each other; all are tried, and the first failure keeps the record.
      const settled = await Promise.allSettled([
        unpinOthers(deps, record),
        removeCgroups(deps, record),
        removeFiles(deps, record),
      ]);
      for (const outcome of settled) if (outcome.status === 'rejected') throw outcome.reason;
      // NRI (issue 17): plugins learn of the removal as the record goes.
      await deps.core.nri.withSyncBlocked(async () => {
        await deps.core.sandboxes.delete(id);
        await deps.core.nri.removePodSandbox(record);
      });
      deps.core.sandboxNames.releaseByOwner(id);
      deps.core.publishSandbox('CONTAINER_DELETED_EVENT', id, lastStatus);
      ctx.logger.info({ sandbox: id }, 'pod sandbox removed');
    });
    return {};
  };
}
