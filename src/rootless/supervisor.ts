/**
 * `rootless-cri serve` on the host: find or start the node, then become the native supervisor
 * (native/node-supervisor.c), which runs the daemon inside the node (nsenter into every node
 * namespace) and stays on the host side: host dialer, host listeners, uplink, signals, the
 * daemon's pid file for `rootless-cri stop`, and the daemon's exit status as its own.
 *
 * The node outlives the daemon on purpose: `kill -9` of the daemon, then `serve` again, rejoins
 * the same node (same user namespace) with every pod still running.
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { FailedPreconditionError } from '../errors.js';
import type { Logger } from '../log.js';
import { DAEMON_CGROUP_NAME, ensureCgroup, moveProcess } from '../os/cgroup-delegation.js';
import { nativeHelperPath } from '../os/native-helpers.js';
import { preflightSocket } from '../os/socket-file.js';
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

  // The rest of the supervisor's life is a small native program (native/node-supervisor.c):
  // it replaces this process (same pid, so supervisor.pid stays true) and a node costs one
  // Node.js process, the daemon's. On the daemon's fd 3 it hands over host listeners and
  // connections to host addresses (host-listeners.ts); it serves the dialer socket for host
  // names (host-dialer.ts), restarts the uplink (slirp4netns, when rootlesskit's dies),
  // forwards signals, writes the daemon's pid file and exits as the daemon did.
  const [cmd, ...args] = options.daemonCommand;
  const argv = [
    '--run-dir',
    options.runDir,
    '--dial-socket',
    hostDialerPath(options.runDir),
    '--rootlesskit-pid',
    String(node.rootlesskitPid),
    '--child-pid',
    String(node.childPid),
    '--slirp4netns',
    options.node.slirp4netns,
    '--mtu',
    String(options.node.mtu),
    ...(options.node.disableHostLoopback ? ['--disable-host-loopback'] : []),
    '--',
    options.nsenter ?? 'nsenter',
    ...nsenterArgs(node.childPid),
    cmd!,
    ...args,
  ];
  const env = {
    ...process.env,
    PATH: withSbin(process.env.PATH),
    ROOTLESSKIT_STATE_DIR: node.stateDir,
    ROOTLESS_CRI_IN_NODE: '1',
    ROOTLESS_CRI_HOST_DIALER: hostDialerPath(options.runDir),
  };
  const program = nativeHelperPath('node-supervisor');
  if (typeof process.execve !== 'function') {
    throw new FailedPreconditionError(
      `Node.js ${process.version} has no process.execve (24 LTS has): install the pinned Node.js with deploy/install-node.sh`,
    );
  }
  logger.debug({ program }, 'handing the host side over to the native supervisor');
  await new Promise<void>((resolve) => logger.flush(() => resolve()));
  process.execve(program, [program, ...argv], env);
  throw new Error('unreachable: process.execve returned');
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
