/**
 * Kubernetes on a test daemon's node: the binaries deploy/kubernetes/build.sh installed, long-running
 * components started inside the node with `rootless-cri enter` as the test user, host ports published
 * through rootlesskit's port API, HTTPS to kubelet and the API server, and one line per check.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync } from 'node:fs';
import { appendFile, chown, mkdir, readFile, writeFile } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { execa } from 'execa';
import { FailedPreconditionError } from '../../src/errors.js';
import { RootlesskitPortManager } from '../../src/os/port-manager.js';
import { freePort } from '../fixtures/registry.js';
import { APP_DIR, sleep, TEST_USER, type TestDaemon } from '../harness/daemon.js';

const RUN_AS_USER = path.join(APP_DIR, 'deploy/run-as-user.sh');
export const CLI = path.join(APP_DIR, 'dist/src/cli.js');
export const KUBELET_SH = path.join(APP_DIR, 'deploy/kubelet/kubelet.sh');
const REPORT_DIR =
  process.env.ROOTLESS_CRI_REPORT_DIR ?? path.resolve(import.meta.dirname, '../../.work/reports');
export const CHECKS_FILE = path.join(REPORT_DIR, 'kubernetes-checks.txt');

/** Where build.sh put the binaries: $ROOTLESS_CRI_K8S_BIN, else the newest install. */
export function k8sBinDir(): string {
  const fromEnv = process.env.ROOTLESS_CRI_K8S_BIN;
  if (fromEnv) return fromEnv;
  const root = '/opt/rootless-cri-k8s-bin';
  const versions = existsSync(root) ? readdirSync(root).filter((d) => /^v\d/.test(d)) : [];
  versions.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const newest = versions.at(-1);
  if (!newest || !existsSync(path.join(root, newest, 'bin', 'kubelet'))) {
    throw new FailedPreconditionError(
      'no Kubernetes binaries: run `sudo deploy/kubernetes/build.sh` (or set ROOTLESS_CRI_K8S_BIN)',
    );
  }
  return path.join(root, newest, 'bin');
}

export function k8sBinary(name: string): string {
  return path.join(k8sBinDir(), name);
}

/** Prints one line per passed check and keeps it for run-all.sh's summary. */
export async function check(suite: string, what: string, detail = ''): Promise<void> {
  const line = `k8s ${suite}: ✓ ${what}${detail ? ` (${detail})` : ''}`;
  console.log(line);
  await mkdir(REPORT_DIR, { recursive: true });
  await appendFile(CHECKS_FILE, `${line}\n`);
}

/** Thrown by a waitFor probe when waiting longer cannot help (a process it waits on exited). */
export class StopWaiting extends Error {}

/**
 * Polls `probe` until it returns something other than undefined; fails naming `what` (at once
 * when the probe throws StopWaiting).
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 90_000,
  intervalMs = 250,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
      last = 'not yet';
    } catch (err) {
      if (err instanceof StopWaiting) throw new Error(`while waiting for ${what}: ${err.message}`);
      last = err;
    }
    if (Date.now() > deadline) {
      const reason = last instanceof Error ? last.message : String(last);
      throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}: ${reason}`);
    }
    await sleep(intervalMs);
  }
}

/** Writes a file the test user (uid 0 in the node) owns. */
export async function writeUserFile(daemon: TestDaemon, file: string, content: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, content);
  await chown(file, daemon.user.uid, daemon.user.gid);
}

export async function userDirs(daemon: TestDaemon, ...dirs: string[]): Promise<void> {
  for (const dir of dirs) {
    await mkdir(dir, { recursive: true });
    await execa('chown', ['-R', `${daemon.user.uid}:${daemon.user.gid}`, dir]);
  }
}

/** `rootless-cri --config <daemon's> enter -- ...command`, as an argv run as the test user. */
export function enterArgv(daemon: TestDaemon, command: string[]): string[] {
  return [process.execPath, CLI, '--config', daemon.configFile, 'enter', '--', ...command];
}

/**
 * A long-running command started as the test user on the host (typically `rootless-cri enter --
 * X`, or deploy/kubelet/kubelet.sh which ends in one), output appended to a log file.
 */
export class NodeProcess {
  private exit: Promise<number | null>;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    this.exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve(signal ? -1 : code)));
  }

  static async start(
    daemon: TestDaemon,
    name: string,
    argv: string[],
    env: Record<string, string> = {},
  ): Promise<NodeProcess> {
    const logDir = path.join(daemon.tmp, 'k8s-logs');
    await mkdir(logDir, { recursive: true });
    const logFile = path.join(logDir, `${name}.log`);
    const fd = openSync(logFile, 'a');
    try {
      const envArgs = Object.entries(env).flatMap(([k, v]) => ['--env', `${k}=${v}`]);
      const child = spawn('bash', [RUN_AS_USER, TEST_USER, ...envArgs, '--', ...argv], {
        stdio: ['ignore', fd, fd],
        detached: true,
        cwd: daemon.tmp,
      });
      return new NodeProcess(name, child, logFile);
    } finally {
      closeSync(fd);
    }
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resolves with the exit code (-1 when killed by a signal). */
  exited(): Promise<number | null> {
    return this.exit;
  }

  /** Host pid of the command inside the node (the child of nsenter, which is the CLI's child). */
  async commandHostPid(): Promise<number | null> {
    const cli = this.child.pid;
    if (cli === undefined) return null;
    const nsenter = await firstChild(cli);
    return nsenter === null ? null : firstChild(nsenter);
  }

  /**
   * SIGTERM through `rootless-cri enter` (which forwards it to the command), SIGKILL after
   * `graceMs`. True when the command ended on the SIGTERM.
   */
  async stop(graceMs = 20_000): Promise<boolean> {
    if (!this.running) return true;
    const commandPid = await this.commandHostPid();
    this.child.kill('SIGTERM');
    const stopped = await Promise.race([this.exit.then(() => true), sleep(graceMs).then(() => false)]);
    if (!stopped) {
      if (commandPid !== null) kill(commandPid, 'SIGKILL');
      this.child.kill('SIGKILL');
      await this.exit;
    }
    return stopped && (commandPid === null || !alive(commandPid));
  }

  async logTail(lines = 30): Promise<string> {
    const text = await readFile(this.logFile, 'utf8').catch(() => '');
    return text.split('\n').slice(-lines).join('\n');
  }
}

async function firstChild(pid: number): Promise<number | null> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  const first = Number(text.trim().split(/\s+/)[0]);
  return Number.isInteger(first) && first > 1 ? first : null;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function kill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/**
 * Publishes childIP:childPort of the node on the host's 127.0.0.1 at a port the kernel picked
 * (rootlesskit's builtin driver binds it). Returns the host port.
 */
export async function publishPort(daemon: TestDaemon, childIP: string, childPort: number): Promise<number> {
  const ports = new RootlesskitPortManager(path.join(daemon.runDir, 'node', 'api.sock'));
  for (let attempt = 0; ; attempt++) {
    const parentPort = await freePort();
    try {
      await ports.add({ protocol: 'tcp', parentIP: '127.0.0.1', parentPort, childIP, childPort });
      return parentPort;
    } catch (err) {
      // Another user took the port between freePort() and the bind: pick another one.
      if (!(err instanceof FailedPreconditionError) || attempt >= 3) throw err;
    }
  }
}

export interface HttpsAnswer {
  status: number;
  body: string;
}

/** HTTPS to a self-signed endpoint (kubelet's serving cert), optionally with a client cert. */
export function httpsRequest(
  url: string,
  options: { method?: string; ca?: string; cert?: string; key?: string; timeoutMs?: number } = {},
): Promise<HttpsAnswer> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: options.method ?? 'GET',
        rejectUnauthorized: options.ca !== undefined,
        ...(options.ca ? { ca: options.ca } : {}),
        ...(options.cert ? { cert: options.cert, key: options.key } : {}),
        timeout: options.timeoutMs ?? 15_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${url}: timed out`)));
    req.on('error', reject);
    req.end();
  });
}

// --- what kubelet's /pods answers (the parts the tests read) -----------------------------------

export interface ContainerStatus {
  name: string;
  ready: boolean;
  restartCount: number;
  containerID?: string;
  state: {
    running?: { startedAt: string };
    waiting?: { reason?: string };
    terminated?: { exitCode: number; reason?: string };
  };
  lastState: { terminated?: { exitCode: number; reason?: string; containerID?: string } };
}

export interface PodStatus {
  metadata: { name: string; namespace: string; uid: string };
  status: {
    phase?: string;
    podIP?: string;
    conditions?: { type: string; status: string }[];
    containerStatuses?: ContainerStatus[];
    initContainerStatuses?: ContainerStatus[];
  };
}

export function containerStatus(pod: PodStatus, name: string): ContainerStatus | undefined {
  return (pod.status.containerStatuses ?? []).find((c) => c.name === name);
}

/** The pod is Running and each of its containers runs (and is ready, unless `notReady` names it). */
export function podRunning(pod: PodStatus | undefined, notReady: string[] = []): boolean {
  if (pod?.status.phase !== 'Running') return false;
  const statuses = pod.status.containerStatuses ?? [];
  return (
    statuses.length > 0 &&
    statuses.every((c) => c.state.running !== undefined && (c.ready || notReady.includes(c.name)))
  );
}

/**
 * The pod IPs kube-proxy (iptables mode) in `daemon`'s node sends a Service's cluster IP to, read
 * from the node's nat table: KUBE-SERVICES' "<ns>/<name>[:port] cluster IP" rule names the
 * Service's KUBE-SVC chain, that chain jumps to one KUBE-SEP chain per endpoint, each DNATs.
 */
export async function kubeProxyBackends(daemon: TestDaemon, service: string): Promise<string[]> {
  const rules = (await daemon.enter(['iptables-save', '-t', 'nat'])).stdout.split('\n');
  const svcChains = new Set<string>();
  for (const rule of rules) {
    const m = /^-A KUBE-SERVICES .*--comment "?([^" ]+) cluster IP"? .*-j (KUBE-SVC-\S+)/.exec(rule);
    if (m && (m[1] === service || m[1]!.startsWith(`${service}:`))) svcChains.add(m[2]!);
  }
  const sepChains = new Set<string>();
  for (const rule of rules) {
    const m = /^-A (KUBE-SVC-\S+) .*-j (KUBE-SEP-\S+)/.exec(rule);
    if (m && svcChains.has(m[1]!)) sepChains.add(m[2]!);
  }
  const backends: string[] = [];
  for (const rule of rules) {
    const m = /^-A (KUBE-SEP-\S+) .*-j DNAT .*--to-destination ([\d.]+):\d+/.exec(rule);
    if (m && sepChains.has(m[1]!)) backends.push(m[2]!);
  }
  return backends.sort();
}

/**
 * Waits until kube-proxy in `daemon`'s node sends `service` to exactly `podIPs`. A Deployment's
 * rollout or a drain is over for the API server before kube-proxy has applied the new
 * EndpointSlice (it syncs at most once a second); until then the Service's rules may still
 * DNAT to a replaced pod's released IP and a client gets "No route to host".
 */
export async function waitForKubeProxy(daemon: TestDaemon, service: string, podIPs: string[]): Promise<void> {
  const want = [...podIPs].sort().join(' ');
  let seen = '';
  await waitFor(`kube-proxy to send ${service} to ${want}`, async () => {
    seen = (await kubeProxyBackends(daemon, service)).join(' ');
    return seen === want ? true : undefined;
  }).catch((err: Error) => {
    throw new Error(`${err.message} (its rules send it to: ${seen || 'nothing'})`);
  });
}
