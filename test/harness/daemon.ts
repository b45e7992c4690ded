/**
 * Test harness: a real rootless-cri daemon, run as the unprivileged test user in a fresh temp
 * root, with its own rootless node. Tests (running as root) get a typed CRI client and helpers
 * to run crictl, `rootless-cri enter`, kill the daemon and restart it. `stop()` tears everything
 * down and fails when anything of the test user is left behind: a process, a mount, a cgroup or
 * a file outside the temp root.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { CriClient } from './cri-client.js';

export const TEST_USER = process.env.ROOTLESS_CRI_TEST_USER ?? 'rcri-test';
/** A second unprivileged user (run-all.sh sets it up), for nodes of two users side by side. */
export const SECOND_TEST_USER = process.env.ROOTLESS_CRI_TEST_USER2 ?? 'rcri-test2';
/** Where the built app lives; it must be readable by the test user (run-all.sh installs a copy). */
export const APP_DIR = process.env.ROOTLESS_CRI_APP ?? path.resolve(import.meta.dirname, '../..');
const RUN_AS_USER = path.join(APP_DIR, 'deploy/run-as-user.sh');
const CLI = path.join(APP_DIR, 'dist/src/cli.js');

export interface UserInfo {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

export async function testUser(name = TEST_USER): Promise<UserInfo> {
  const passwd = await readFile('/etc/passwd', 'utf8');
  const line = passwd.split('\n').find((l) => l.startsWith(`${name}:`));
  if (!line) {
    throw new Error(`test user ${name} does not exist; run \`sudo deploy/setup-host.sh --user ${name}\``);
  }
  const f = line.split(':');
  return { name, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface TestDaemonOptions {
  /** Extra TOML appended to the generated config. */
  extraConfig?: string;
  /**
   * Put the run dir under /run/user/<uid> (where the default run dir lives, and which the
   * node's --copy-up=/run turns into a symlink) instead of the temp root.
   */
  runDirInXdgRuntimeDir?: boolean;
  /** The unprivileged user the daemon runs as (default TEST_USER). */
  user?: string;
  /** Put the root dir on a tmpfs of this size (and inode count): a disk that can fill up. */
  rootTmpfs?: { sizeBytes: number; inodes?: number };
}

export class TestDaemon {
  client: CriClient;
  /** The node's user namespace (from /proc/<pid>/ns/user), to find processes left in it. */
  private nodeUserNamespace: string | null = null;
  private supervisor: ChildProcess | null = null;
  private supervisorExit: Promise<void> = Promise.resolve();

  private constructor(
    readonly tmp: string,
    readonly user: UserInfo,
    readonly configFile: string,
    readonly socket: string,
    readonly runDir: string,
    readonly rootDir: string,
    readonly cgroupSubtree: string,
    private readonly filesBefore: Set<string>,
  ) {
    this.client = new CriClient(socket);
  }

  static async start(options: TestDaemonOptions = {}): Promise<TestDaemon> {
    const user = await testUser(options.user);
    const filesBefore = await userFilesOutside(user, null);
    const tmp = await mkdtemp('/tmp/rcri-it-');
    const runDir = options.runDirInXdgRuntimeDir
      ? path.join(`/run/user/${user.uid}`, path.basename(tmp))
      : path.join(tmp, 'run');
    const rootDir = path.join(tmp, 'root');
    for (const dir of [runDir, rootDir]) await mkdir(dir, { mode: 0o700 });
    if (options.rootTmpfs) {
      const { sizeBytes, inodes } = options.rootTmpfs;
      await execa('mount', [
        '-t',
        'tmpfs',
        '-o',
        `size=${sizeBytes},uid=${user.uid},gid=${user.gid},mode=0700${inodes ? `,nr_inodes=${inodes}` : ''}`,
        'rcri-small-disk',
        rootDir,
      ]);
    }
    const cgroupSubtree = `rootless-cri-${path.basename(tmp).slice('rcri-it-'.length)}`;
    const configFile = path.join(tmp, 'config.toml');
    const socket = path.join(runDir, 'rootless-cri.sock');
    await writeFile(
      configFile,
      [
        `root_dir = "${rootDir}"`,
        `run_dir = "${runDir}"`,
        `socket = "${socket}"`,
        'log_level = "debug"',
        '',
        '[cgroup]',
        `subtree = "${cgroupSubtree}"`,
        '',
        options.extraConfig ?? '',
      ].join('\n'),
    );
    const crictlConfig = path.join(tmp, 'crictl.yaml');
    await writeFile(
      crictlConfig,
      `runtime-endpoint: unix://${socket}\nimage-endpoint: unix://${socket}\ntimeout: 30\n`,
    );
    for (const p of [tmp, runDir, rootDir, configFile, crictlConfig]) await chown(p, user.uid, user.gid);
    const daemon = new TestDaemon(tmp, user, configFile, socket, runDir, rootDir, cgroupSubtree, filesBefore);
    try {
      await daemon.serve();
    } catch (err) {
      // A daemon that never became ready may still have started a node: take it down.
      daemon.client.close();
      await daemon.cli(['stop', '--all']);
      await rm(tmp, { recursive: true, force: true });
      await rm(runDir, { recursive: true, force: true });
      throw err;
    }
    return daemon;
  }

  /** Starts `rootless-cri serve` (again) and waits until it answers Version. */
  async serve(): Promise<void> {
    const logFd = openSync(path.join(this.tmp, 'daemon.log'), 'a');
    try {
      const child = spawn(
        'bash',
        [RUN_AS_USER, this.user.name, '--', process.execPath, CLI, '--config', this.configFile, 'serve'],
        { stdio: ['ignore', logFd, logFd], detached: true },
      );
      this.supervisor = child;
      this.supervisorExit = new Promise((resolve) => child.once('exit', () => resolve()));
    } finally {
      closeSync(logFd);
    }
    const deadline = Date.now() + 60_000;
    let lastError: unknown;
    while (Date.now() < deadline) {
      if (this.supervisor?.exitCode !== null) {
        throw new Error(
          `rootless-cri serve exited early (code ${this.supervisor?.exitCode}):\n${await this.logTail()}`,
        );
      }
      try {
        this.client.close();
        this.client = new CriClient(this.socket);
        await this.client.runtime('Version', {}, { timeoutMs: 1000 });
        this.nodeUserNamespace = await readlink(`/proc/${await this.nodePid()}/ns/user`);
        return;
      } catch (err) {
        lastError = err;
        await sleep(100);
      }
    }
    throw new Error(
      `rootless-cri did not answer within 60s (${String(lastError)}):\n${await this.logTail()}`,
    );
  }

  async logTail(lines = 40): Promise<string> {
    const text = await readFile(path.join(this.tmp, 'daemon.log'), 'utf8').catch(() => '');
    return text.split('\n').slice(-lines).join('\n');
  }

  /** Runs a command as this daemon's user on the host (killed after timeoutMs, default 120 s). */
  async asUser(command: string[], input?: string, timeoutMs = 120_000): Promise<RunResult> {
    const r = await execa('bash', [RUN_AS_USER, this.user.name, '--', ...command], {
      reject: false,
      input,
      timeout: timeoutMs,
    });
    return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 };
  }

  /** Runs the rootless-cri CLI with this daemon's config, as the test user. */
  cli(args: string[]): Promise<RunResult> {
    return this.rawCli(['--config', this.configFile, ...args]);
  }

  /** Runs the rootless-cri CLI with exactly these arguments, as the test user. */
  rawCli(args: string[]): Promise<RunResult> {
    return this.asUser([process.execPath, CLI, ...args]);
  }

  /** Runs a command inside the node (`rootless-cri enter -- ...`). */
  enter(command: string[], timeoutMs?: number): Promise<RunResult> {
    return this.asUser(
      [process.execPath, CLI, '--config', this.configFile, 'enter', '--', ...command],
      undefined,
      timeoutMs,
    );
  }

  /** Runs crictl from the host against this daemon, as the test user. */
  crictl(args: string[]): Promise<RunResult> {
    return this.asUser(crictlCommand(this.crictlConfig, args));
  }

  crictlInNode(args: string[]): Promise<RunResult> {
    return this.enter(crictlCommand(this.crictlConfig, args));
  }

  get crictlConfig(): string {
    return path.join(this.tmp, 'crictl.yaml');
  }

  /** Host pid of the daemon process inside the node. */
  async daemonPid(): Promise<number> {
    return Number((await readFile(path.join(this.runDir, 'rootless-cri.pid'), 'utf8')).trim());
  }

  /** Host pid of the supervisor (`rootless-cri serve` on the host). */
  async supervisorPid(): Promise<number> {
    return Number((await readFile(path.join(this.runDir, 'supervisor.pid'), 'utf8')).trim());
  }

  /** Waits until the supervisor started by serve() has exited. */
  async supervisorExited(timeoutMs = 30_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.supervisorExit,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`the supervisor did not exit within ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Host pid of the node (rootlesskit's child, catatonit). */
  async nodePid(): Promise<number> {
    return Number((await readFile(path.join(this.runDir, 'node', 'child_pid'), 'utf8')).trim());
  }

  /** kill -9 of the daemon; the node stays. */
  async kill9(): Promise<void> {
    process.kill(await this.daemonPid(), 'SIGKILL');
    await this.supervisorExit;
    this.client.close();
  }

  /** Stops the daemon and the node, removes the temp root and checks that nothing leaked. */
  async stop(): Promise<void> {
    this.client.close();
    const r = await this.cli(['stop', '--all']);
    await Promise.race([this.supervisorExit, sleep(20_000)]);
    // A tmpfs root dir (rootTmpfs) is the test's own mount, not a leak.
    if ((await readFile('/proc/self/mountinfo', 'utf8')).includes(` ${this.rootDir} `)) {
      await execa('umount', [this.rootDir], { reject: false });
    }
    const leaks = await this.leaks();
    const log = await this.logTail(60);
    await rm(this.tmp, { recursive: true, force: true });
    if (!this.runDir.startsWith(this.tmp)) await rm(this.runDir, { recursive: true, force: true });
    if (r.exitCode !== 0) throw new Error(`rootless-cri stop --all failed: ${r.stderr}\n${log}`);
    if (leaks.length > 0)
      throw new Error(`left behind after stop:\n  ${leaks.join('\n  ')}\ndaemon log:\n${log}`);
  }

  /** Everything of the test user that outlives the daemon and node. */
  async leaks(): Promise<string[]> {
    const leaks: string[] = [];
    // Other test daemons of the same user may run at the same time (developers run suites in
    // parallel): ours are the processes in our node's user namespace or naming our temp root.
    const ps = await execa('pgrep', ['-u', String(this.user.uid), '-a'], { reject: false });
    for (const line of String(ps.stdout).split('\n').filter(Boolean)) {
      const pid = Number(line.split(' ')[0]);
      const userns = await readlink(`/proc/${pid}/ns/user`).catch(() => null);
      if (line.includes(this.tmp) || (userns !== null && userns === this.nodeUserNamespace)) {
        leaks.push(`process: ${line}`);
      }
    }
    const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
    for (const line of mountinfo.split('\n')) if (line.includes(this.tmp)) leaks.push(`mount: ${line}`);
    const cgroupMarker = `/run/user/${this.user.uid}/.rootless-cri-cgroup`;
    const delegated = (await readFile(cgroupMarker, 'utf8').catch(() => '')).trim();
    if (delegated) {
      const nodeCgroup = path.join(delegated, this.cgroupSubtree);
      if (await exists(nodeCgroup)) leaks.push(`cgroup: ${nodeCgroup}`);
    }
    for (const file of await userFilesOutside(this.user, this.tmp)) {
      // Temp roots of other test daemons running at the same time are theirs to check.
      const ours = file === this.runDir || file.startsWith(`${this.runDir}/`);
      if (!this.filesBefore.has(file) && !ours && !/^\/tmp\/rcri-it-/.test(file)) leaks.push(`file: ${file}`);
    }
    return leaks;
  }
}

/**
 * TOML mirroring every registry critest and the Kubernetes e2e images name (registry.k8s.io,
 * k8s.gcr.io, gcr.io, public.ecr.aws) to a local registry, repository path kept.
 */
export function mirrorConfig(registryUrl: string): string {
  return ['registry.k8s.io', 'k8s.gcr.io', 'gcr.io', 'public.ecr.aws']
    .map((host) => `[image.registry."${host}"]\nmirrors = ["${registryUrl}"]\n`)
    .join('\n');
}

/** crictl with a config file naming the endpoints (and no warning about /etc/crictl.yaml). */
export function crictlCommand(configFile: string, args: string[]): string[] {
  return ['crictl', '--config', configFile, ...args];
}

const SCANNED_DIRS = ['/tmp', '/var/tmp', '/dev/shm'];

/** Files owned by the test user in shared places, outside `exclude` (depth-limited scan). */
async function userFilesOutside(user: UserInfo, exclude: string | null): Promise<Set<string>> {
  const found = new Set<string>();
  const roots = [...SCANNED_DIRS, `/run/user/${user.uid}`, user.home];
  const walk = async (dir: string, depth: number): Promise<void> => {
    if (depth > 3 || (exclude && (dir === exclude || dir.startsWith(`${exclude}/`)))) return;
    let entries: import('node:fs').Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (exclude && (p === exclude || p.startsWith(`${exclude}/`))) continue;
      try {
        const st = await stat(p);
        if (st.uid === user.uid) found.add(p);
      } catch {
        continue;
      }
      if (e.isDirectory()) await walk(p, depth + 1);
    }
  };
  for (const root of roots) await walk(root, 0);
  return found;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
