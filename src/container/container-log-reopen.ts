/**
 * ReopenContainerLog: after kubelet renamed a container's log file, conmon must write to a new
 * file at the original path. conmon 2.1.6 takes "2 0 0\n" on its control FIFO (<bundle>/ctl;
 * message type 2 = reopen logs, type 1 = resize) and reopens its k8s-file log. The FIFO is
 * read asynchronously by conmon, so the RPC waits until the new file exists before answering
 * (critest checks the path right after the call).
 */
import { access } from 'node:fs/promises';
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { observeExit } from '../core/container-lifecycle.js';
import { DeadlineExceededError, FailedPreconditionError, NotFoundError } from '../errors.js';
import { type ContainerDeps, describeContainer } from './container-deps.js';

export const REOPEN_WAIT_MS = 5_000;

export function createReopenContainerLog(deps: ContainerDeps, waitMs = REOPEN_WAIT_MS) {
  return async function ReopenContainerLog(
    request: RuntimeRequest<'ReopenContainerLog'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'ReopenContainerLog'>> {
    const id = deps.core.containers.resolve(request.container_id);
    const record = id === undefined ? undefined : await observeExit(deps.core, id);
    if (!record || record.state === 'creating') {
      throw new NotFoundError(`container ${JSON.stringify(request.container_id)} does not exist`);
    }
    if (record.state !== 'running') {
      throw new FailedPreconditionError(
        `container ${describeContainer(record)} is ${record.state}, not running: only a running container's log can be reopened`,
      );
    }
    if (record.logPath === '') return {};
    await deps.os.checkLogReopen?.(record.logPath);
    const written = await deps.core.runtime.control(record.id, 'reopen-log');
    if (!written) {
      throw new FailedPreconditionError(
        `the monitor (conmon) of container ${describeContainer(record)} does not answer; its log cannot be reopened`,
      );
    }
    const deadline = Date.now() + waitMs;
    while (
      !(await access(record.logPath).then(
        () => true,
        () => false,
      ))
    ) {
      if (Date.now() >= deadline) {
        throw new DeadlineExceededError(
          `conmon did not reopen the log ${record.logPath} of container ${describeContainer(record)} within ${waitMs} ms`,
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return {};
  };
}
