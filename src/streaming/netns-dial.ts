/**
 * Dials 127.0.0.1:<port> (then [::1]) inside a pod's network namespace through the
 * native `netns-dial` helper (Node cannot setns() a thread). The helper's stdin/stdout are
 * the connection; its stderr says, in one JSON line, whether the connect worked.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { FailedPreconditionError, UnavailableError } from '../errors.js';

/**
 * Where `npm run build` puts the helper: <repo>/native/build/netns-dial, reached from
 * src/streaming/ when run from source and from dist/src/streaming/ when built.
 */
export const DEFAULT_NETNS_DIAL_HELPER = ((): string => {
  const candidates = ['../../native/build/netns-dial', '../../../native/build/netns-dial'].map((rel) =>
    fileURLToPath(new URL(rel, import.meta.url)),
  );
  return candidates.find((path) => existsSync(path)) ?? candidates[0]!;
})();

export interface DialInNetnsOptions {
  helperPath?: string;
  /** Milliseconds to wait for the helper's connect report. */
  timeoutMs?: number;
}

interface HelperReport {
  ok: boolean;
  kind?: string;
  errno?: string;
  error?: string;
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
  const helper = options.helperPath ?? DEFAULT_NETNS_DIAL_HELPER;
  const child = spawn(helper, [netnsFile, String(port)], { stdio: ['pipe', 'pipe', 'pipe'] });
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
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => {
      if (settled) return;
      stderr += text;
      const newline = stderr.indexOf('\n');
      if (newline < 0) {
        if (stderr.length > 4096)
          settle(new UnavailableError(`port-forward helper said: ${stderr.slice(0, 200)}`));
        return;
      }
      let report: HelperReport;
      try {
        report = JSON.parse(stderr.slice(0, newline)) as HelperReport;
      } catch (error) {
        settle(
          new UnavailableError(`port-forward helper said: ${stderr.slice(0, newline)}`, { cause: error }),
        );
        child.kill('SIGKILL');
        return;
      }
      if (report.ok) {
        settle(wrap(child.stdout, child.stdin, () => child.kill('SIGKILL')));
        return;
      }
      const message = report.error ?? 'unknown error';
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
