/**
 * RemoveContainer: kills a container that still runs, deletes it from the runtime, removes its
 * writable layer (unmount + delete) and bundle, releases its image and name and deletes its
 * record. OK when the container does not exist (CRI idempotence). The log file stays: kubelet
 * owns log files and removes them with the pod's log directory.
 *
 * Each step tolerates what an earlier, interrupted removal already did, so a RemoveContainer
 * cut short by a crash is simply repeated.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { type ContainerDeps, describeContainer } from './container-deps.js';
import { stopContainerLocked } from './container-stop.js';
import type { ContainerRecord } from './container-store.js';

/** Removes everything of a container (caller holds its lock). */
export async function removeContainerLocked(deps: ContainerDeps, record: ContainerRecord): Promise<void> {
  if (record.state === 'running' || record.state === 'created') {
    await stopContainerLocked(deps, record, 0);
  }
  await deps.runtime.delete(record.id, true);
  await deps.runtime.cleanup(record.id);
  await deps.snapshotter.remove(record.id);
  await deps.images.release(record.image.id, record.id);
  await deps.store.delete(record.id);
  deps.names.releaseByOwner(record.id);
  deps.logger.info({ container: record.id }, `container ${describeContainer(record)} removed`);
  void deps.events.publish('CONTAINER_DELETED_EVENT', record.id, record.podSandboxId, null, deps.now());
}

export function createRemoveContainer(deps: ContainerDeps) {
  return async function RemoveContainer(
    request: RuntimeRequest<'RemoveContainer'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'RemoveContainer'>> {
    const id = deps.store.resolve(request.container_id);
    if (id === undefined) return {};
    await deps.locks.run(id, async () => {
      const record = deps.store.get(id);
      // A record still `creating` belongs to a CreateContainer in flight: it ends created or
      // rolled back, and recovery cleans one a crash interrupted.
      if (record && record.state !== 'creating') await removeContainerLocked(deps, record);
    });
    return {};
  };
}
