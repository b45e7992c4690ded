/**
 * "The node": one rootlesskit (user, mount, network, pid, ipc, uts and cgroup namespaces,
 * slirp4netns uplink, builtin port driver) with `catatonit -P` as its long-lived child.
 * The daemon never owns the node: it finds a running one through the rootlesskit state dir
 * (child_pid, api.sock) and joins it with nsenter, so a daemon crash or upgrade leaves every
 * pod running. `rootless-cri stop --all` is the only thing that tears the node down.
 */
import { closeSync, openSync } from 'node:fs';
import { mkdir, readdir, readFile, readlink, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { FailedPreconditionError, UnavailableError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  ensureCgroup,
  nodeCgroupDir,
  probeCgroups,
  ROOTLESSKIT_CGROUP_NAME,
  removeCgroupTree,
} from '../os/cgroup-delegation.js';
import { start } from '../os/process-runner.js';
import { parentOf } from '../os/process-tree.js';

export interface NodeOptions {
  stateDir: string;
  rootlesskit: string;
  /** The node's long-lived child (catatonit), and the uplink rootlesskit runs. */
  catatonit: string;
  slirp4netns: string;
  mtu: number;
  portDriver: string;
  copyUp: string[];
  disableHostLoopback: boolean;
  /** Name of the node cgroup under the delegated cgroup v2 root. */
  cgroupSubtree: string;
  logFile: string;
}

export interface NodeHandle {
  stateDir: string;
  /** Host pid of catatonit, rootlesskit's child: the process whose namespaces are the node. */
  childPid: number;
  /** Host pid of the rootlesskit parent. */
  rootlesskitPid: number;
  apiSocket: string;
  /** Inode of the node's user namespace, stable for the node's lifetime. */
  userNamespace: string;
  /** Node cgroup on the host (null without cgroup delegation). */
  cgroupDir: string | null;
}

const START_TIMEOUT_MS = 30_000;

/** True when `pid` is alive (EPERM: alive, but another user's). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function userNamespaceOf(pid: number | 'self'): Promise<string> {
  return readlink(`/proc/${pid}/ns/user`);
}

/** The running node described by `stateDir`, or null when there is none (or only a stale one). */
export async function findNode(stateDir: string, cgroupSubtree: string): Promise<NodeHandle | null> {
  const childText = await readFile(path.join(stateDir, 'child_pid'), 'utf8').catch(() => null);
  if (!childText) return null;
  const childPid = Number(childText.trim());
  if (!Number.isInteger(childPid) || childPid <= 1 || !isAlive(childPid)) return null;
  const rootlesskitPid = await parentOf(childPid);
  if (!rootlesskitPid || rootlesskitPid <= 1) return null;
  let userNamespace: string;
  try {
    userNamespace = await userNamespaceOf(childPid);
  } catch {
    return null; // a pid reused by a process we cannot inspect is not our node
  }
  if (userNamespace === (await userNamespaceOf('self'))) return null; // not a rootlesskit child
  const cgroups = await probeCgroups();
  return {
    stateDir,
    childPid,
    rootlesskitPid,
    apiSocket: path.join(stateDir, 'api.sock'),
    userNamespace,
    cgroupDir: cgroups.delegatedRoot ? nodeCgroupDir(cgroups.delegatedRoot, cgroupSubtree) : null,
  };
}

export function rootlesskitArgs(options: NodeOptions): string[] {
  return [
    `--state-dir=${options.stateDir}`,
    '--net=slirp4netns',
    `--slirp4netns-binary=${options.slirp4netns}`,
    `--mtu=${options.mtu}`,
    `--port-driver=${options.portDriver}`,
    ...options.copyUp.map((d) => `--copy-up=${d}`),
    '--pidns',
    '--cgroupns',
    '--ipcns',
    '--utsns',
    // Pods must not reach services on the host's loopback through 10.0.2.2.
    ...(options.disableHostLoopback ? ['--disable-host-loopback'] : []),
    options.catatonit,
    '-P',
  ];
}

/**
 * Starts a node (rootlesskit + catatonit) detached from the caller, in the node cgroup when
 * cgroup v2 is delegated to us, and waits until it is usable.
 */
export async function startNode(options: NodeOptions, logger: Logger): Promise<NodeHandle> {
  const cgroups = await probeCgroups();
  let cgroupDir: string | null = null;
  const args = rootlesskitArgs(options);
  if (cgroups.delegatedRoot) {
    cgroupDir = nodeCgroupDir(cgroups.delegatedRoot, options.cgroupSubtree);
    // Left over from a node that died: its controllers would stop us from entering it.
    await removeCgroupTree(cgroupDir);
    await ensureCgroup(cgroupDir);
    args.splice(args.length - 2, 0, `--evacuate-cgroup2=${ROOTLESSKIT_CGROUP_NAME}`);
  } else {
    logger.warn(
      { cgroup: cgroups.ownCgroup },
      'no delegated cgroup v2 subtree: pods will run without cgroups (rootless-cri doctor explains how to delegate one)',
    );
  }
  // The rootlesskit of a node that died removes its state dir when it exits: were it still
  // exiting, that would take the new node's files (child_pid, api.sock) with it.
  await awaitOldRootlesskit(options.stateDir, logger);
  // A stale state dir (a node that died) would make rootlesskit refuse to start.
  await rm(options.stateDir, { recursive: true, force: true });
  await mkdir(path.dirname(options.stateDir), { recursive: true, mode: 0o700 });
  await mkdir(path.dirname(options.logFile), { recursive: true, mode: 0o700 });

  const logFd = openSync(options.logFile, 'a', 0o600);
  try {
    // Enter the node cgroup before exec, so the node's cgroup namespace is rooted there.
    const script = cgroupDir ? 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' : 'shift; exec "$@"';
    const child = start('/bin/sh', ['-c', script, 'sh', cgroupDir ?? '', options.rootlesskit, ...args], {
      daemon: true,
      stdio: ['ignore', logFd, logFd],
      env: { ...process.env, PATH: withSbin(process.env.PATH) },
    });
    const exited = child.exited.then((status) => status.exitCode);
    logger.info({ stateDir: options.stateDir, pid: child.pid }, 'starting the rootless node (rootlesskit)');

    const deadline = Date.now() + START_TIMEOUT_MS;
    let exitCode: number | null | undefined;
    void exited.then((code) => {
      exitCode = code;
    });
    while (Date.now() < deadline) {
      if (exitCode !== undefined) {
        const tail = await readFile(options.logFile, 'utf8').catch(() => '');
        throw new FailedPreconditionError(
          `rootlesskit exited (code ${exitCode}) before the node was ready: ${lastLines(tail, 5)}; ` +
            'run `rootless-cri doctor` to see what the host is missing',
        );
      }
      const node = await findNode(options.stateDir, options.cgroupSubtree);
      if (node && (await exists(node.apiSocket))) return { ...node, cgroupDir };
      await sleep(50);
    }
    throw new UnavailableError(`the rootless node did not become ready within ${START_TIMEOUT_MS / 1000}s`);
  } finally {
    closeSync(logFd);
  }
}

/** Our processes started with `--state-dir=<stateDir>`: a rootlesskit and its child. */
async function rootlesskitsOf(stateDir: string): Promise<number[]> {
  const arg = `--state-dir=${stateDir}`;
  const uid = process.getuid?.();
  const pids: number[] = [];
  for (const name of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const owner = await stat(`/proc/${name}`).then(
      (st) => st.uid,
      () => null,
    );
    if (owner === null || (uid !== undefined && owner !== uid)) continue;
    const cmdline = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.split('\0').includes(arg)) pids.push(Number(name));
  }
  return pids;
}

/**
 * Waits for the rootlesskit of a node that is gone (findNode found none) to finish exiting; one
 * still there after 10 s is killed, as the new node replaces it.
 */
async function awaitOldRootlesskit(stateDir: string, logger: Logger): Promise<void> {
  let pids = await rootlesskitsOf(stateDir);
  if (pids.length === 0) return;
  logger.info({ pids, stateDir }, 'waiting for the rootlesskit of the previous node to exit');
  const deadline = Date.now() + 10_000;
  while (pids.length > 0 && Date.now() < deadline) {
    await sleep(50);
    pids = (await rootlesskitsOf(stateDir)).filter((p) => isAlive(p));
  }
  if (pids.length === 0) return;
  logger.warn({ pids, stateDir }, "the previous node's rootlesskit did not exit within 10 s: killing it");
  for (const pid of pids) signal(pid, 'SIGKILL');
  const killDeadline = Date.now() + 5_000;
  while (pids.some((p) => isAlive(p)) && Date.now() < killDeadline) await sleep(50);
}

/** Stops the node: every process inside it dies with it (rootlesskit --pidns). */
export async function stopNode(node: NodeHandle, logger: Logger): Promise<void> {
  logger.info({ pid: node.rootlesskitPid }, 'stopping the rootless node');
  signal(node.rootlesskitPid, 'SIGTERM');
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && (isAlive(node.rootlesskitPid) || isAlive(node.childPid))) await sleep(50);
  if (isAlive(node.rootlesskitPid)) signal(node.rootlesskitPid, 'SIGKILL');
  if (isAlive(node.childPid)) signal(node.childPid, 'SIGKILL');
  while (isAlive(node.rootlesskitPid) || isAlive(node.childPid)) await sleep(50);
  await rm(node.stateDir, { recursive: true, force: true });
  if (node.cgroupDir) await removeCgroupTree(node.cgroupDir);
}

/** nsenter arguments that join every namespace of the node as uid 0 inside it. */
export function nsenterArgs(childPid: number, options: { workdir?: string } = {}): string[] {
  return [
    '--user',
    '--mount',
    '--net',
    '--pid',
    '--cgroup',
    '--ipc',
    '--uts',
    `--target=${childPid}`,
    '--preserve-credentials',
    ...(options.workdir ? [`--wd=${options.workdir}`] : []),
    '--',
  ];
}

export function withSbin(pathEnv: string | undefined): string {
  const parts = (pathEnv ?? '/usr/local/bin:/usr/bin:/bin').split(':');
  for (const dir of ['/usr/local/sbin', '/usr/sbin', '/sbin']) if (!parts.includes(dir)) parts.push(dir);
  return parts.join(':');
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

function lastLines(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' | ') || 'no output';
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** True when this process already runs inside a user namespace (e.g. a node someone else made). */
export async function inUserNamespace(): Promise<boolean> {
  const map = await readFile('/proc/self/uid_map', 'utf8').catch(() => '');
  const fields = map.trim().split(/\s+/);
  return !(fields.length === 3 && fields[0] === '0' && fields[1] === '0' && fields[2] === '4294967295');
}
