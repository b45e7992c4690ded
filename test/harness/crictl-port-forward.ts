/**
 * `crictl port-forward` as the test user, in the background, for the tests that forward a host
 * port into a pod.
 *
 * The local port is always the kernel's choice (`:REMOTE`, client-go's "random local port"). A
 * port picked by the test can be taken by another test's listener on 127.0.0.1 by the time crictl
 * binds it. crictl then forwards from [::1] alone and prints only that line, and every request to
 * 127.0.0.1 reaches the other listener. A CI run failed that way after 20 s of fetching.
 * So the tests read the port from crictl's "Forwarding from 127.0.0.1:N" line.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { crictlCommand, TEST_USER } from './daemon.js';

const RUN_AS_USER = path.resolve(import.meta.dirname, '../../deploy/run-as-user.sh');
const START_TIMEOUT_MS = 20_000;
const FORWARDING_V4 = /Forwarding from 127\.0\.0\.1:(\d+) -> /;

export interface CrictlPortForward {
  /** The host port on 127.0.0.1 that crictl listens on. */
  readonly localPort: number;
  /** Everything crictl printed so far (stdout and stderr). */
  output(): string;
  exited(): boolean;
  stop(): Promise<void>;
}

export async function crictlPortForward(
  crictlConfig: string,
  pod: string,
  remotePort: number,
  options: { transport?: 'spdy' | 'websocket' } = {},
): Promise<CrictlPortForward> {
  const transport = options.transport ? ['-r', options.transport] : [];
  const child: ChildProcess = spawn(
    'bash',
    [
      RUN_AS_USER,
      TEST_USER,
      '--',
      ...crictlCommand(crictlConfig, ['port-forward', ...transport, pod, `:${remotePort}`]),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  );
  let output = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const hasExited = () => child.exitCode !== null || child.signalCode !== null;
  const stop = async () => {
    if (!hasExited()) {
      try {
        process.kill(-child.pid!, 'SIGTERM');
      } catch {
        // already gone
      }
    }
    await exited;
  };
  const localPort = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => fail(`did not report a 127.0.0.1 port in ${START_TIMEOUT_MS} ms`),
      START_TIMEOUT_MS,
    );
    const fail = (why: string) => {
      clearTimeout(timer);
      reject(new Error(`crictl port-forward ${pod} :${remotePort} ${why}: ${output}`));
    };
    const onData = (d: Buffer) => {
      output += d.toString();
      const match = FORWARDING_V4.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code, signal) => fail(`exited (${code ?? signal})`));
  }).catch(async (error: unknown) => {
    await stop();
    throw error;
  });
  return { localPort, output: () => output, exited: hasExited, stop };
}
