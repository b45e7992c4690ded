/**
 * UpdateContainerResources: new cpu/memory/pids/unified limits for a running (or created)
 * container, applied with `crun update` in its cgroup. As at creation, limits of controllers
 * that are not delegated to the node are dropped with a warning (logged and kept for verbose
 * status), never a failure; hugetlb limits are always dropped. The record keeps the request's
 * resources, which ContainerStatus reports.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { observeExitLocked } from '../core/container-lifecycle.js';
import { criResourcesWith } from '../core/nri-runtime.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../errors.js';
import { type ContainerDeps, describeContainer } from './container-deps.js';
import { criToOciResources } from './resources.js';

export function createUpdateContainerResources(deps: ContainerDeps) {
  return async function UpdateContainerResources(
    request: RuntimeRequest<'UpdateContainerResources'>,
    ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'UpdateContainerResources'>> {
    const id = deps.core.containers.resolve(request.container_id);
    const notFound = () =>
      new NotFoundError(`container ${JSON.stringify(request.container_id)} does not exist`);
    if (id === undefined) throw notFound();
    if (!request.linux) {
      if (request.windows) throw new InvalidArgumentError('windows resources cannot be applied on Linux');
      return {};
    }
    const requested = request.linux;
    await deps.core.containerLocks.run(id, async () => {
      let record = deps.core.containers.get(id);
      if (!record || record.state === 'creating') throw notFound();
      record = await observeExitLocked(deps.core, record);
      if (record.state !== 'running' && record.state !== 'created') {
        throw new FailedPreconditionError(
          `container ${describeContainer(record)} is ${record.state}: only a created or running container can be updated`,
        );
      }
      const { resources, warnings } = criToOciResources(
        requested,
        deps.hostFacts,
        record.cgroupPath !== null,
      );
      // NRI (issue 17): plugins may adjust the resources or veto the update; the sync gate is
      // held until the record shows what was applied.
      const current = record;
      const updated = await deps.core.nri.withSyncBlocked(async () => {
        const nri = await deps.core.nri.updateContainer(current, resources);
        warnings.push(...nri.warnings);
        for (const warning of warnings) ctx.logger.warn({ container: id }, warning);
        if (Object.keys(nri.resources).length > 0) await deps.core.runtime.update(id, nri.resources);
        const kept = current.warnings.filter((w) => !/ dropped: /.test(w));
        const next = {
          ...current,
          resources: nri.resources === resources ? requested : criResourcesWith(requested, nri.resources),
          warnings: [...kept, ...warnings],
        };
        await deps.core.containers.put(next);
        return next;
      });
      await deps.core.nri.postUpdateContainer(updated);
    });
    return {};
  };
}
