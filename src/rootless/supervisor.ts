/**
 * `rootless-cri serve` on the host: find or start the node, then run the daemon inside it
 * (nsenter into every node namespace) and stay as its supervisor: forward signals, record the
 * daemon's host pid for `rootless-cri stop`, and exit with the daemon's status.
 *
 * The node outlives the daemon on purpose: `kill -9` of the daemon, then `serve` again, rejoins
 * the same node (same user namespace) with every pod still running.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { FailedPreconditionError } from '../errors.js';
import type { Logger } from '../log.js';
import { DAEMON_CGROUP_NAME, ensureCgroup, moveProcess } from '../os/cgroup-delegation.js';
import { startHostDialer } from '../os/host-dialer.js';
import { start } from '../os/process-runner.js';
import { preflightSocket } from '../os/socket-file.js';
import { serveHostListeners } from './host-listeners.js';
import {
  findNode,
  isAlive,
  type NodeHandle,
  type NodeOptions,
  nsenterArgs,
  sleep,
  startNode,
  withSbin,
} from './node.js';
import { watchUplink } from './uplink.js';

export interface SupervisorOptions {
  runDir: string;
  socket: string;
  node: NodeOptions;
  /** The command that runs the daemon once inside the node, e.g. [node, cli.js, serve, --in-node, ...]. */
  daemonCommand: string[];
  nsenter?: string;
}

export function hostDialerPath(runDir: string): string {
  return path.join(runDir, 'host-dial.sock');
}

export function pidFilePath(runDir: string): string {
  return path.join(runDir, 'rootless-cri.pid');
}

export async function readPidFile(runDir: string): Promise<number | null> {
  const text = await readFile(pidFilePath(runDir), 'utf8').catch(() => null);
  const pid = text ? Number(text.trim()) : Number.NaN;
  return Number.isInteger(pid) && pid > 1 ? pid : null;
}

export async function writePidFile(runDir: string, pid: number): Promise<void> {
  const file = pidFilePath(runDir);
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${pid}\n`, { mode: 0o600 });
  await rename(tmp, file);
}

/** Finds or starts the node and returns it. */
export async function ensureNode(options: NodeOptions, logger: Logger): Promise<NodeHandle> {
  const existing = await findNode(options.stateDir, options.cgroupSubtree);
  if (existing) {
    logger.info(
      { childPid: existing.childPid, userns: existing.userNamespace },
      'joining the running rootless node',
    );
    return existing;
  }
  return startNode(options, logger);
}

/** The first child of `pid` (nsenter forks once to enter a pid namespace: its child runs the command). */
export async function childOf(pid: number): Promise<number | null> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  const first = Number(text.trim().split(/\s+/)[0]);
  return Number.isInteger(first) && first > 1 ? first : null;
}

export function supervisorPidFilePath(runDir: string): string {
  return path.join(runDir, 'supervisor.pid');
}

/**
 * A daemon left by a supervisor that died (kill -9, OOM) sees its channel close and shuts down
 * on its own; a new `serve` waits for that, and ends it if it does not go. A daemon whose
 * supervisor lives is a running rootless-cri: refused.
 */
async function settleOrphanDaemon(runDir: string, logger: Logger): Promise<void> {
  const running = await readPidFile(runDir);
  if (!running || !isAlive(running)) return;
  const supervisorText = await readFile(supervisorPidFilePath(runDir), 'utf8').catch(() => '');
  const supervisor = Number(supervisorText.trim());
  if (
    Number.isSafeInteger(supervisor) &&
    supervisor > 1 &&
    supervisor !== process.pid &&
    isAlive(supervisor)
  ) {
    throw new FailedPreconditionError(
      `rootless-cri is already running (pid ${running}, supervisor ${supervisor}); stop it first with \`rootless-cri stop\``,
    );
  }
  logger.warn({ daemon: running }, 'a daemon whose supervisor died is still running: waiting for it to exit');
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && isAlive(running)) await sleep(100);
  if (isAlive(running)) {
    logger.warn({ daemon: running }, 'the orphaned daemon did not exit: stopping it');
    await stopDaemon(runDir, 10_000);
  }
}

export async function superviseDaemon(options: SupervisorOptions, logger: Logger): Promise<number> {
  await mkdir(options.runDir, { recursive: true, mode: 0o700 });
  await settleOrphanDaemon(options.runDir, logger);
  await writeFile(supervisorPidFilePath(options.runDir), `${process.pid}\n`, { mode: 0o600 });
  // A bad socket path or a live daemon on it must fail before a node is started or joined.
  await preflightSocket(options.socket, logger);
  const node = await ensureNode(options.node, logger);
  if (node.cgroupDir) {
    const daemonCgroup = path.join(node.cgroupDir, DAEMON_CGROUP_NAME);
    try {
      await ensureCgroup(daemonCgroup);
      await moveProcess(daemonCgroup, process.pid);
    } catch (err) {
      logger.warn({ err, cgroup: daemonCgroup }, 'could not move the daemon into its cgroup; continuing');
    }
  }

  // Registries are reached from the host's network namespace (see host-dialer.ts).
  const dialer = await startHostDialer(hostDialerPath(options.runDir), logger);

  const [cmd, ...args] = options.daemonCommand;
  // fd 3 is an IPC channel (it survives nsenter's exec): the daemon asks through it for its
  // host listeners (see host-listeners.ts).
  const handle = start(options.nsenter ?? 'nsenter', [...nsenterArgs(node.childPid), cmd!, ...args], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    ownGroup: false,
    env: {
      ...process.env,
      PATH: withSbin(process.env.PATH),
      ROOTLESSKIT_STATE_DIR: node.stateDir,
      ROOTLESS_CRI_IN_NODE: '1',
      ROOTLESS_CRI_HOST_DIALER: dialer.socketPath,
    },
  });
  const { child } = handle;
  const exited = handle.exited.then(({ exitCode, signal }) => ({ code: exitCode, signal }));
  serveHostListeners(child, logger);
  const uplink = watchUplink(
    {
      rootlesskitPid: node.rootlesskitPid,
      childPid: node.childPid,
      slirp4netns: options.node.slirp4netns,
      mtu: options.node.mtu,
      disableHostLoopback: options.node.disableHostLoopback,
    },
    logger,
  );

  // nsenter forks once to enter the pid namespace: the daemon is its child.
  let daemonPid: number | null = null;
  for (let i = 0; i < 200 && daemonPid === null && child.exitCode === null; i++) {
    daemonPid = child.pid ? await childOf(child.pid) : null;
    if (daemonPid === null) await sleep(10);
  }
  if (daemonPid !== null) await writePidFile(options.runDir, daemonPid);

  const forward = (sig: NodeJS.Signals) => {
    const target = daemonPid ?? child.pid;
    if (target) {
      try {
        process.kill(target, sig);
      } catch {
        // already gone
      }
    }
  };
  const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];
  for (const s of signals) process.on(s, forward);

  const { code, signal } = await exited;
  for (const s of signals) process.off(s, forward);
  await uplink.stop();
  await dialer.close();
  await rm(supervisorPidFilePath(options.runDir), { force: true });
  if (daemonPid !== null && (await readPidFile(options.runDir)) === daemonPid) {
    await rm(pidFilePath(options.runDir), { force: true });
  }
  if (signal) {
    logger.warn({ signal }, 'the daemon was killed by a signal; the node keeps running');
    return 128 + (osConstants.signals[signal] ?? 0);
  }
  return code ?? 1;
}

/** Stops the daemon whose pid file is in runDir; true if one was running. */
export async function stopDaemon(runDir: string, timeoutMs = 15_000): Promise<boolean> {
  const pid = await readPidFile(runDir);
  if (!pid || !isAlive(pid)) {
    await rm(pidFilePath(runDir), { force: true });
    return false;
  }
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && isAlive(pid)) await sleep(50);
  if (isAlive(pid)) process.kill(pid, 'SIGKILL');
  while (isAlive(pid)) await sleep(20);
  await rm(pidFilePath(runDir), { force: true });
  return true;
}
