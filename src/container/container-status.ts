/**
 * ContainerStatus: the record as the CRI shows it (core/container-view.ts), answered from
 * memory: exits reach the record as events from the exit watcher, so a read never writes.
 *
 * Verbose status adds `info["info"]`: pid, bundle, rootfs, cgroup, stop signal and the
 * warnings of CreateContainer/UpdateContainerResources (limits dropped on this node, LSMs not
 * enforced), so an operator sees why a limit is not in force.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { statusOf, verboseInfo } from '../core/container-view.js';
import { NotFoundError } from '../errors.js';
import type { ContainerDeps } from './container-deps.js';

export function createContainerStatus(deps: ContainerDeps) {
  return async function ContainerStatusHandler(
    request: RuntimeRequest<'ContainerStatus'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'ContainerStatus'>> {
    const id = deps.core.containers.resolve(request.container_id);
    const record = id === undefined ? undefined : deps.core.containers.get(id);
    if (!record || record.state === 'creating') {
      throw new NotFoundError(
        `container ${JSON.stringify(request.container_id)} does not exist; list containers with crictl ps -a`,
      );
    }
    return { status: statusOf(record), info: request.verbose ? verboseInfo(record) : {} };
  };
}
