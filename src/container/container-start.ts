/**
 * StartContainer: lets conmon's container run (`crun start`). Only a `created` container can
 * start; one that exited meanwhile (killed, or its process failed at exec) is reported with
 * what conmon recorded. A start that fails leaves the container EXITED with reason StartError
 * and crun's message, so kubelet sees why and RemoveContainer cleans it.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { observeExitLocked, recordExit } from '../core/container-lifecycle.js';
import { statusOf } from '../core/container-view.js';
import { describeError, FailedPreconditionError, NotFoundError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import { type ContainerDeps, describeContainer } from './container-deps.js';

export function createStartContainer(deps: ContainerDeps) {
  return async function StartContainer(
    request: RuntimeRequest<'StartContainer'>,
    ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'StartContainer'>> {
    const id = deps.core.containers.resolve(request.container_id);
    const notFound = () =>
      new NotFoundError(
        `container ${JSON.stringify(request.container_id)} does not exist; create it with CreateContainer first`,
      );
    if (id === undefined) throw notFound();
    await deps.core.containerLocks.run(id, async () => {
      let record = deps.core.containers.get(id);
      if (!record || record.state === 'creating') throw notFound();
      record = await observeExitLocked(deps.core, record);
      if (record.state !== 'created') {
        throw new FailedPreconditionError(
          `container ${describeContainer(record)} is ${record.state}, not created: only a created container can be started`,
        );
      }
      const created = record;
      // NRI (issue 17): a plugin may veto the start; the sync gate is held until the record
      // says running (or the start failed), PostStartContainer follows.
      const started = await deps.core.nri.withSyncBlocked(async () => {
        await deps.core.nri.startContainer(created);
        try {
          await deps.core.runtime.start(id);
        } catch (err) {
          const info = await deps.core.runtime.exitInfo(id).catch(() => null);
          await recordExit(deps.core, created, {
            exitCode: info?.exitCode ?? 128,
            exitedAt: info?.exitedAt ?? new Date(),
            oomKilled: false,
            reason: 'StartError',
            message: describeError(err),
          });
          throw err;
        }
        failpoint('container.runtime-started');
        const running = { ...created, state: 'running' as const, startedAt: deps.core.now().toString() };
        await deps.core.containers.put(running);
        return running;
      });
      ctx.logger.info({ container: id }, `container ${describeContainer(record)} started`);
      deps.core.observer.containerStarted?.(started);
      void deps.core.events.publish(
        'CONTAINER_STARTED_EVENT',
        id,
        record.podSandboxId,
        statusOf(started),
        deps.core.now(),
      );
      await deps.core.nri
        .postStartContainer(started)
        .catch((err: unknown) =>
          ctx.logger.warn({ container: id, err: describeError(err) }, 'NRI PostStartContainer failed'),
        );
    });
    return {};
  };
}
