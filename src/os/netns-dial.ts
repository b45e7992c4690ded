/**
 * Dials 127.0.0.1:<port> (then [::1]) inside a pod's network namespace through the
 * native `netns-dial` helper (Node cannot setns() a thread). The helper connects and hands
 * the socket back over an IPC channel (Node's own handle passing, so it arrives as a
 * net.Socket), then exits: the daemon reads and writes the pod's connection directly, with no
 * relay process and no extra copy in between. A failure is one JSON line on its stderr.
 */
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { FailedPreconditionError, UnavailableError } from '../errors.js';
import { decodeHelperReport, nativeHelperPath } from './native-helpers.js';
import { start } from './process-runner.js';

export interface DialInNetnsOptions {
  helperPath?: string;
  /** Milliseconds to wait for the helper's connect report. */
  timeoutMs?: number;
}

/**
 * Connects to `port` on the loopback of the network namespace pinned at `netnsFile`.
 * Resolves with a Duplex (end() half-closes towards the pod; 'end' when the pod closed);
 * rejects with UnavailableError when nothing listens, FailedPreconditionError when the
 * namespace cannot be joined.
 */
export function dialInNetns(
  netnsFile: string,
  port: number,
  options: DialInNetnsOptions = {},
): Promise<Duplex> {
  const helper = options.helperPath ?? nativeHelperPath('netns-dial');
  const { child } = start(helper, [netnsFile, String(port)], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  return new Promise<Duplex>((resolve, reject) => {
    let stderr = '';
    let settled = false;
    const timer = setTimeout(() => {
      settle(
        new UnavailableError(
          `connecting to port ${port} in ${netnsFile} timed out; is the pod still running?`,
        ),
      );
      child.kill('SIGKILL');
    }, options.timeoutMs ?? 10_000);
    const settle = (result: Error | Duplex): void => {
      if (settled) {
        if (!(result instanceof Error)) result.destroy();
        return;
      }
      settled = true;
      clearTimeout(timer);
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    child.once('error', (error) =>
      settle(
        new FailedPreconditionError(`cannot run the port-forward helper ${helper}: run \`npm run build\``, {
          cause: error,
        }),
      ),
    );
    child.on('message', (_message: unknown, handle: unknown) => {
      if (!(handle instanceof Socket)) return;
      // Node made it a plain socket; port-forward half-closes each direction on its own.
      handle.allowHalfOpen = true;
      settle(handle);
    });
    const stderrStream = child.stderr!;
    stderrStream.setEncoding('utf8');
    stderrStream.on('data', (text: string) => {
      if (settled || stderr.length > 4096) return;
      stderr += text;
    });
    // 'close', not 'exit': the report on stderr and the handle may still be unread at the exit.
    child.once('close', (code) => {
      if (settled) return;
      const report = decodeHelperReport(stderr.slice(0, 4096), 'first');
      if (!report || report.ok) {
        settle(
          new UnavailableError(`port-forward helper exited with ${code}: ${stderr.trim().slice(0, 200)}`),
        );
        return;
      }
      const message = typeof report.error === 'string' ? report.error : 'unknown error';
      settle(
        report.kind === 'connect'
          ? new UnavailableError(
              `${message} inside the pod's network namespace: is anything listening on port ${port}?`,
            )
          : new FailedPreconditionError(`port-forward helper: ${message}`),
      );
    });
  });
}
