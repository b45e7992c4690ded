/**
 * RemoveContainer: kills a container that still runs, deletes it from the runtime, removes its
 * writable layer (unmount + delete) and bundle, releases its image and name and deletes its
 * record (core/container-lifecycle.ts removeContainerLocked). OK when the container does not
 * exist (CRI idempotence). The log file stays: kubelet owns log files and removes them with
 * the pod's log directory.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { removeContainerLocked } from '../core/container-lifecycle.js';
import type { ContainerDeps } from './container-deps.js';

export function createRemoveContainer(deps: ContainerDeps) {
  return async function RemoveContainer(
    request: RuntimeRequest<'RemoveContainer'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'RemoveContainer'>> {
    const id = deps.core.containers.resolve(request.container_id);
    if (id === undefined) return {};
    await deps.core.containerLocks.run(id, async () => {
      const record = deps.core.containers.get(id);
      // A record still `creating` belongs to a CreateContainer in flight: it ends created or
      // rolled back, and recovery cleans one a crash interrupted.
      if (record && record.state !== 'creating') await removeContainerLocked(deps.core, record);
    });
    return {};
  };
}
