/**
 * ExecSync: runs a command in a running container and answers with its output and exit
 * code. The OCI runtime does the work (`crun exec`, os/crun-exec.ts): each stream is capped
 * at 16 MiB (the rest is read and discarded, so the command never blocks on a full pipe);
 * the answer comes when the command exits, and whatever it left running in the background is
 * killed with its exec session; at the timeout every process of the session is killed before
 * the RPC answers DEADLINE_EXCEEDED, so nothing of it is left when the caller looks (critest
 * runs `pgrep sleep` right after). A client that goes away kills it the same way.
 *
 * This file also holds what exec, attach and ExecSync share: the narrow view of the
 * containers they read (the core's containerView satisfies it) and the "must be running"
 * check.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../errors.js';
import type { OciRuntime } from '../os/oci-runtime.js';

/** What exec and attach need to know about a container (a subset of ContainerView). */
export interface StreamableContainer {
  id: string;
  podSandboxId: string;
  /** The CRI state, e.g. CONTAINER_RUNNING. */
  state: string;
  tty: boolean;
  stdin: boolean;
  stdinOnce: boolean;
  bundleDir: string;
  exitCode?: number;
}

/** Read access to containers by full id or unique prefix (RuntimeCore.containerView). */
export interface StreamableContainers {
  containerView(id: string): Promise<StreamableContainer | undefined>;
}

/**
 * The container with this id, which must be running. NotFound for an unknown id,
 * FailedPrecondition for one that is not (or no longer) running.
 */
export async function requireRunning(
  containers: StreamableContainers,
  id: string,
  what: string,
): Promise<StreamableContainer> {
  if (id === '') throw new InvalidArgumentError(`${what}: container_id is required`);
  const container = await containers.containerView(id);
  if (!container) {
    throw new NotFoundError(`${what}: container ${id} does not exist; list containers with \`crictl ps -a\``);
  }
  if (container.state !== 'CONTAINER_RUNNING') {
    const state = container.state.replace(/^CONTAINER_/, '').toLowerCase();
    throw new FailedPreconditionError(
      `${what}: container ${id} is ${state}, not running; start it (or create a new one) first`,
    );
  }
  return container;
}

/** setTimeout's ceiling (about 24.8 days); CRI's "0 = no timeout" maps to it. */
const NO_TIMEOUT_MS = 2 ** 31 - 1;

/** Seconds (int64 as decimal string or number) → milliseconds; 0 or absent = no timeout. */
export function execSyncTimeoutMs(timeout: string | number | undefined): number {
  const seconds = typeof timeout === 'string' ? Number(timeout) : (timeout ?? 0);
  if (!Number.isFinite(seconds) || seconds < 0 || !Number.isInteger(seconds)) {
    throw new InvalidArgumentError(
      `ExecSync: timeout ${String(timeout)} is not a whole number of seconds (0 = no timeout)`,
    );
  }
  if (seconds === 0) return NO_TIMEOUT_MS;
  return Math.min(seconds * 1000, NO_TIMEOUT_MS);
}

export interface ExecSyncDeps {
  containers: StreamableContainers;
  runtime: Pick<OciRuntime, 'exec'>;
}

export function createExecSync(deps: ExecSyncDeps) {
  return async function ExecSync(
    request: RuntimeRequest<'ExecSync'>,
    ctx: Partial<Pick<CallContext, 'signal'>> = {},
  ): Promise<RuntimeResponse<'ExecSync'>> {
    const cmd = request.cmd ?? [];
    if (cmd.length === 0 || cmd[0] === '') {
      throw new InvalidArgumentError('ExecSync: cmd is required (the command and its arguments)');
    }
    const timeoutMs = execSyncTimeoutMs(request.timeout);
    const container = await requireRunning(deps.containers, request.container_id ?? '', 'ExecSync');
    // The runtime kills the process at the timeout and throws DeadlineExceeded.
    const result = await deps.runtime.exec(
      container.id,
      { args: [...cmd] },
      { timeoutMs, ...(ctx.signal ? { signal: ctx.signal } : {}) },
    );
    return { stdout: result.stdout, stderr: result.stderr, exit_code: result.exitCode };
  };
}
