/**
 * Dials 127.0.0.1:<port> (then [::1]) inside a pod's network namespace through the
 * native `netns-dial` helper (Node cannot setns() a thread). The helper's stdin/stdout are
 * the connection; its stderr says, in one JSON line, whether the connect worked.
 */
import { Duplex } from 'node:stream';
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
  const { child } = start(helper, [netnsFile, String(port)], { stdio: ['pipe', 'pipe', 'pipe'] });
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
    const stdin = child.stdin!;
    const stdout = child.stdout!;
    const stderrStream = child.stderr!;
    const settle = (result: Error | Duplex): void => {
      if (settled) return;
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
    stderrStream.setEncoding('utf8');
    stderrStream.on('data', (text: string) => {
      if (settled) return;
      stderr += text;
      const newline = stderr.indexOf('\n');
      if (newline < 0) {
        if (stderr.length > 4096)
          settle(new UnavailableError(`port-forward helper said: ${stderr.slice(0, 200)}`));
        return;
      }
      const report = decodeHelperReport(stderr.slice(0, newline));
      if (!report) {
        settle(new UnavailableError(`port-forward helper said: ${stderr.slice(0, newline)}`));
        child.kill('SIGKILL');
        return;
      }
      if (report.ok) {
        settle(wrap(stdout, stdin, () => child.kill('SIGKILL')));
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
    // 'close', not 'exit': the report on stderr may still be unread when the process exits.
    child.once('close', (code) => {
      if (!settled) settle(new UnavailableError(`port-forward helper exited with ${code}: ${stderr.trim()}`));
    });
  });
}

/** One Duplex over the helper's stdout (from the pod) and stdin (to the pod). */
function wrap(
  fromPod: NodeJS.ReadableStream & { destroy(): void },
  toPod: NodeJS.WritableStream & { destroy(): void },
  kill: () => void,
): Duplex {
  const duplex = new Duplex({
    allowHalfOpen: true,
    read() {
      fromPod.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      if (toPod.write(chunk)) callback();
      else toPod.once('drain', () => callback());
    },
    final(callback) {
      toPod.end();
      callback();
    },
    destroy(error, callback) {
      kill();
      fromPod.destroy();
      toPod.destroy();
      callback(error);
    },
  });
  fromPod.on('data', (chunk: Buffer) => {
    if (!duplex.push(chunk)) fromPod.pause();
  });
  fromPod.on('end', () => duplex.push(null));
  fromPod.on('error', (error: Error) => duplex.destroy(error));
  toPod.on('error', () => {});
  return duplex;
}
