/**
 * The narrow interface between the sandbox lifecycle and the node's kernel (STYLE.md habit 4),
 * and its real implementation, which runs inside the node (the daemon is uid 0 in the node's
 * user, mount, net, pid, ipc, uts and cgroup namespaces).
 *
 * Choices, and why:
 * - Namespaces are pinned as bind mounts of their nsfs files (`unshare --net=FILE --ipc=FILE
 *   --uts=FILE`, util-linux): they outlive every process, are found again by path after a
 *   daemon restart, and are released with umount + unlink.
 * - One process chain makes a pod's namespaces (createPodNamespaces): unshare creates and pins
 *   all of them (without --fork it binds the files before it execs), then runs
 *   `sh -c SCRIPT sh ARGS...` inside them, which moves itself into the sandbox's cgroup leaf,
 *   brings `lo` up, sets the hostname, writes the sysctls it was given and, when the pod has a
 *   pid namespace, execs `unshare --pid --fork catatonit -P`. Each step is a separate process
 *   otherwise (unshare, then nsenter for the infra, then nsenter for the settings), and every
 *   spawn costs milliseconds per pod. Every key path and value is its own argv element, never
 *   joined into a string the shell parses.
 * - The hostname goes through sethostname (`hostname`), which checks CAP_SYS_ADMIN in the
 *   pod's user namespace; writing /proc/sys/kernel/hostname is refused in a user namespace.
 * - A pod pid namespace needs a PID 1: catatonit, spawned detached so it survives the daemon
 *   (it is reparented to the node's catatonit). It starts inside the sandbox's cgroup leaf, so
 *   a daemon killed before it recorded the pid still leaves it where removing the cgroup kills
 *   it. We record its pid, start time and pid-ns inode, and never signal a pid whose start time
 *   has changed.
 * - configureNamespaces (nsenter + the same script) is for what must wait until the network
 *   exists: net.* sysctls may name eth0, which CNI ADD creates.
 * - cgroups are the CgroupManager's (cgroup-manager.ts); the infra process only joins its leaf.
 * - A pod with its own user namespace (hostUsers: false) gets it from the pod-userns helper
 *   (pod-user-namespace.ts), which also makes and pins the net/ipc/uts namespaces so that the
 *   pod's user namespace owns them; the same script then runs under `nsenter --user ...`.
 *   The cgroup is joined before entering: the pod's root cannot write the node's cgroup files.
 */
import { closeSync, existsSync, constants as fsConstants, openSync } from 'node:fs';
import { mkdir, readFile, realpath, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { FailedPreconditionError, InternalError, InvalidArgumentError } from '../errors.js';
import { recordHelperWait } from './helper-time.js';
import { nativeHelperPath } from './native-helpers.js';
import { createPodUserNamespace, type IdMapping } from './pod-user-namespace.js';
import { type ExitStatus, run, startDetached } from './process-runner.js';
import { parentOf } from './process-tree.js';
import { SAFE_PATH } from './programs.js';

/** What a settings step said: its exit status and stderr. */
interface StepResult {
  exitCode: number;
  stderr: string;
}

async function runStep(program: string, args: string[], timeoutMs: number): Promise<StepResult> {
  const r = await run(program, args, { timeoutMs, env: { PATH: SAFE_PATH } });
  return { exitCode: r.exitCode ?? 128, stderr: r.stderr.toString('utf8') };
}

/** The pod's PID 1 (catatonit -P) when the pid namespace mode is POD. */
export interface InfraProcess {
  /** Host-visible pid in the node's pid namespace. */
  pid: number;
  /** The `unshare --fork` parent that waits for it (exits with it). */
  wrapperPid: number;
  /** /proc/<pid>/stat start time (clock ticks): a reused pid has another. */
  startTime: string;
  /** Inode of /proc/<pid>/ns/pid, for containers that join the pod pid namespace. */
  pidNamespaceInode: number;
}

export type PinnableNamespace = 'net' | 'ipc' | 'uts';

export interface NamespacePaths {
  net?: string;
  ipc?: string;
  uts?: string;
  /**
   * The pod's own user namespace, entered first: values that name ids (ping_group_range) are
   * read in the writer's user namespace.
   */
  user?: string;
}

export interface SysctlWrite {
  /** The sysctl key, for messages. */
  key: string;
  /** Absolute path under /proc/sys. */
  path: string;
  value: string;
}

export interface NamespaceSettings {
  loopbackUp: boolean;
  hostname: string | null;
  sysctls: SysctlWrite[];
}

export interface PodNamespacesRequest {
  /** Fresh namespaces of these kinds, pinned on these (new) files. */
  pins: { kind: PinnableNamespace; path: string }[];
  /** Applied inside the new namespaces; only with pins (never to the node's own namespaces). */
  settings: NamespaceSettings;
  /** Start the pod's PID 1 in a new pid namespace inside them (pid mode POD), or not (null). */
  infra: { cgroupLeaf: string | null } | null;
  /**
   * A user namespace of the pod's own, pinned on `path` (a new file), with these maps (node ids
   * as host ids, already nested in the node's lines); the pins above are then owned by it.
   */
  userNamespace?: { path: string; uids: readonly IdMapping[]; gids: readonly IdMapping[] } | null;
}

export interface SandboxOs {
  /**
   * Creates and pins the pod's namespaces, applies the settings in them and starts the infra
   * process when asked; returns it (null without one). On failure, what exists is found by
   * the pin paths and the cgroup leaf.
   */
  createPodNamespaces(request: PodNamespacesRequest): Promise<InfraProcess | null>;
  /** umount + unlink; a path that is not there (or not mounted) is fine. */
  unpinNamespaces(paths: string[]): Promise<void>;
  /** Whether a pin is still mounted. */
  isPinned(path: string): Promise<boolean>;
  infraAlive(infra: InfraProcess): Promise<boolean>;
  /** SIGKILL to the pod's PID 1 (which ends its pid namespace) and waits for it to go. */
  stopInfra(infra: InfraProcess): Promise<void>;
  configureNamespaces(ns: NamespacePaths, settings: NamespaceSettings): Promise<void>;
}

export interface NodeSandboxOsOptions {
  cgroupRoot?: string;
  catatonit?: string;
  nsenter?: string;
  unshare?: string;
  umount?: string;
  /** native/build/pod-userns (pod user namespaces); default: the built helper. */
  podUserns?: string;
  /**
   * native/build/spawn-in-cgroup: the infra chain starts inside its cgroup leaf (clone3
   * CLONE_INTO_CGROUP) instead of moving itself there, which waits for an RCU grace period
   * (~10 ms of every RunPodSandbox). Default: the built helper when it exists; null: move.
   */
  spawnInCgroup?: string | null;
  /** Per command. */
  timeoutMs?: number;
}

// $1 = cgroup.procs to join or "", $2 = 1 to bring lo up, $3 = hostname or "", $4 = unshare
// and $5 = catatonit for the infra process (both "" for none), then pairs of (path, value).
const CONFIGURE_SCRIPT = [
  'if [ -n "$1" ]; then echo $$ > "$1" || { echo "rcri-step cgroup" >&2; exit 1; }; fi',
  'if [ "$2" = 1 ]; then ip link set lo up || { echo "rcri-step loopback" >&2; exit 1; }; fi',
  'if [ -n "$3" ]; then hostname "$3" || { echo "rcri-step hostname" >&2; exit 1; }; fi',
  'unshare=$4 infra=$5',
  'shift 5',
  'while [ $# -ge 2 ]; do printf %s "$2" > "$1" || { echo "rcri-step sysctl $1" >&2; exit 1; }; shift 2; done',
  // The infra process must not hold the daemon's stderr pipe: it lives on after this call.
  'if [ -n "$infra" ]; then exec "$unshare" --pid --fork "$infra" -P </dev/null >/dev/null 2>&1; fi',
].join('\n');

export class NodeSandboxOs implements SandboxOs {
  private readonly cgroupRoot: string;
  private readonly catatonit: string;
  private readonly nsenter: string;
  private readonly unshare: string;
  private readonly umount: string;
  private readonly podUserns: string | undefined;
  private readonly spawnInCgroup: string | null;
  private readonly timeoutMs: number;

  constructor(options: NodeSandboxOsOptions = {}) {
    this.cgroupRoot = options.cgroupRoot ?? '/sys/fs/cgroup';
    this.catatonit = options.catatonit ?? 'catatonit';
    this.nsenter = options.nsenter ?? 'nsenter';
    this.unshare = options.unshare ?? 'unshare';
    this.umount = options.umount ?? 'umount';
    this.podUserns = options.podUserns;
    const builtSpawner = nativeHelperPath('spawn-in-cgroup');
    this.spawnInCgroup =
      options.spawnInCgroup === undefined
        ? existsSync(builtSpawner)
          ? builtSpawner
          : null
        : options.spawnInCgroup;
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  async createPodNamespaces(request: PodNamespacesRequest): Promise<InfraProcess | null> {
    const { pins, settings, infra } = request;
    if (request.userNamespace) return this.createInPodUserNamespace(request, request.userNamespace);
    const hasSettings = settings.loopbackUp || settings.hostname !== null || settings.sysctls.length > 0;
    if (pins.length === 0 && hasSettings) {
      throw new InternalError('pod namespace settings without pod namespaces would change the node itself');
    }
    if (pins.length === 0 && infra === null) return null;
    for (const pin of pins) {
      await mkdir(path.dirname(pin.path), { recursive: true, mode: 0o700 });
      // O_EXCL: a sandbox id is new, so an existing file means something else owns it.
      closeSync(openSync(pin.path, fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_RDONLY, 0o400));
    }
    const pinArgs = pins.map((p) => `--${p.kind}=${p.path}`);
    if (infra === null) {
      const args = hasSettings
        ? [...pinArgs, ...this.scriptArgs(settings, null, null)]
        : [...pinArgs, 'true'];
      const r = await runStep(this.unshare, args, this.timeoutMs);
      if (r.exitCode !== 0) {
        throw (
          settingsFailure(r, settings) ??
          new FailedPreconditionError(
            `cannot create pod namespaces (${this.unshare} ${pinArgs.join(' ')}): ${r.stderr.trim() || `exit ${r.exitCode}`}; is the daemon inside the rootless node?`,
          )
        );
      }
      return null;
    }
    if (infra.cgroupLeaf !== null && this.spawnInCgroup !== null) {
      return this.startInfra(
        this.spawnInCgroup,
        [
          path.join(this.cgroupRoot, infra.cgroupLeaf),
          this.unshare,
          ...pinArgs,
          ...this.scriptArgs(settings, null, true),
        ],
        settings,
        infra.cgroupLeaf,
        true,
      );
    }
    return this.startInfra(
      this.unshare,
      [...pinArgs, ...this.scriptArgs(settings, infra.cgroupLeaf, true)],
      settings,
      infra.cgroupLeaf,
    );
  }

  /** The pod-userns helper makes and pins every namespace; the script runs inside them. */
  private async createInPodUserNamespace(
    request: PodNamespacesRequest,
    userns: NonNullable<PodNamespacesRequest['userNamespace']>,
  ): Promise<InfraProcess | null> {
    const { settings, infra } = request;
    const pins = [{ kind: 'user' as const, path: userns.path }, ...request.pins];
    for (const pin of pins) {
      await mkdir(path.dirname(pin.path), { recursive: true, mode: 0o700 });
      closeSync(openSync(pin.path, fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_RDONLY, 0o400));
    }
    await createPodUserNamespace({
      uids: userns.uids,
      gids: userns.gids,
      pins,
      timeoutMs: this.timeoutMs,
      ...(this.podUserns ? { helper: this.podUserns } : {}),
    });
    const enter = [
      `--user=${userns.path}`,
      ...nsenterArgs(Object.fromEntries(request.pins.map((p) => [p.kind, p.path])) as NamespacePaths),
      '--',
    ];
    const hasSettings = settings.loopbackUp || settings.hostname !== null || settings.sysctls.length > 0;
    if (infra === null) {
      if (!hasSettings) return null;
      const r = await runStep(
        this.nsenter,
        [...enter, ...this.scriptArgs(settings, null, null)],
        this.timeoutMs,
      );
      if (r.exitCode !== 0) {
        throw (
          settingsFailure(r, settings) ??
          new InternalError(
            `cannot configure the pod namespaces (nsenter): ${stepDetail(r.stderr) || `exit ${r.exitCode}`}`,
          )
        );
      }
      return null;
    }
    // sh joins the cgroup as the node's root, then becomes nsenter, the script and the infra.
    const procs =
      infra.cgroupLeaf === null ? '' : path.join(this.cgroupRoot, infra.cgroupLeaf, 'cgroup.procs');
    const joinThenExec =
      'if [ -n "$1" ]; then echo $$ > "$1" || { echo "rcri-step cgroup" >&2; exit 1; }; fi; shift; exec "$@"';
    return this.startInfra(
      'sh',
      ['-c', joinThenExec, 'sh', procs, this.nsenter, ...enter, ...this.scriptArgs(settings, null, true)],
      settings,
      infra.cgroupLeaf,
    );
  }

  private scriptArgs(
    settings: NamespaceSettings,
    cgroupLeaf: string | null,
    infra: boolean | null,
  ): string[] {
    return [
      'sh',
      '-c',
      CONFIGURE_SCRIPT,
      'sh',
      cgroupLeaf === null ? '' : path.join(this.cgroupRoot, cgroupLeaf, 'cgroup.procs'),
      settings.loopbackUp ? '1' : '0',
      settings.hostname ?? '',
      infra ? this.unshare : '',
      infra ? this.catatonit : '',
      ...settings.sysctls.flatMap((s) => [s.path, s.value]),
    ];
  }

  async unpinNamespaces(paths: string[]): Promise<void> {
    if (paths.length === 0) return;
    const mounted = await mountedTargets();
    const toUnmount: string[] = [];
    for (const p of paths) if (mounted.has(await canonicalPath(p))) toUnmount.push(p);
    if (toUnmount.length > 0) {
      const r = await runStep(this.umount, toUnmount, this.timeoutMs);
      const still = await mountedTargets();
      const left: string[] = [];
      for (const p of toUnmount) if (still.has(await canonicalPath(p))) left.push(p);
      if (left.length > 0) {
        throw new InternalError(`cannot unmount namespace pins ${left.join(', ')}: ${r.stderr.trim()}`);
      }
    }
    for (const p of paths) {
      await unlink(p).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
  }

  async isPinned(file: string): Promise<boolean> {
    return (await mountedTargets()).has(await canonicalPath(file));
  }

  /**
   * unshare (pins) → sh (settings, cgroup) → unshare --pid --fork → catatonit, detached; or
   * that chain under spawn-in-cgroup (`nested`: started in the leaf, the helper waits for the
   * chain as its parent); or, in a pod user namespace, sh (cgroup) → nsenter → sh (settings) →
   * unshare → catatonit. The returned wrapper is the infra's parent, the chain's last unshare.
   */
  private async startInfra(
    program: string,
    args: string[],
    settings: NamespaceSettings,
    cgroupLeaf: string | null,
    nested = false,
  ): Promise<InfraProcess> {
    const spawnedAt = performance.now();
    // Started by the run server when it is up (no fork of the daemon), else by the daemon.
    const proc = startDetached(program, args, { env: { PATH: SAFE_PATH } });
    let exit: (ExitStatus & { stderr: string }) | null = null;
    void proc.exited.then((status) => {
      exit = status;
    });
    const startedPid = await proc.started;
    let wrapperPid = nested ? 0 : startedPid;
    const deadline = Date.now() + 5_000;
    let pid = 0;
    while (Date.now() < deadline) {
      const ended = exit as (ExitStatus & { stderr: string }) | null;
      if (ended !== null) {
        const { stderr } = ended;
        const exitCode = ended.exitCode ?? (ended.signal ? 128 : -1);
        const result: StepResult = { exitCode, stderr };
        const cgroupFailed = /rcri-step cgroup|spawn-in-cgroup: /.test(stderr);
        throw (
          settingsFailure(result, settings) ??
          (cgroupFailed
            ? new FailedPreconditionError(
                `cannot move the pod infra process into ${path.join(this.cgroupRoot, cgroupLeaf ?? '', 'cgroup.procs')}: ${stepDetail(stderr) || `exit ${exitCode}`}`,
              )
            : new FailedPreconditionError(
                `the pod infra process (${this.catatonit} -P in a new pid namespace) exited at once with ${exitCode}${stepDetail(stderr) ? ` (${stepDetail(stderr)})` : ''}; check that catatonit is installed and the daemon is inside the rootless node`,
              ))
        );
      }
      if (wrapperPid === 0) wrapperPid = await firstChildOf(startedPid);
      const first = wrapperPid === 0 ? 0 : await firstChildOf(wrapperPid);
      if (first > 0) {
        const comm = (await readFile(`/proc/${first}/comm`, 'utf8').catch(() => '')).trim();
        // Until exec the child still shows unshare's name (and the script's own helpers, ip
        // and hostname, are children of the wrapper too).
        if (comm === path.basename(this.catatonit)) {
          pid = first;
          break;
        }
      }
      await sleep(1);
    }
    proc.release();
    recordHelperWait(spawnedAt);
    if (pid === 0) {
      proc.kill('SIGKILL');
      throw new InternalError('the pod infra process did not start within 5s');
    }
    return {
      pid,
      wrapperPid,
      startTime: await processStartTime(pid),
      pidNamespaceInode: (await stat(`/proc/${pid}/ns/pid`)).ino,
    };
  }

  async infraAlive(infra: InfraProcess): Promise<boolean> {
    const start = await processStartTime(infra.pid).catch(() => null);
    return start === infra.startTime;
  }

  async stopInfra(infra: InfraProcess): Promise<void> {
    if (!(await this.infraAlive(infra))) return;
    // Its wrapper is the infra's parent. Known while the infra lives, not by pid alone: after a
    // node restart, or within one 10 ms tick, the pid can name another pod's wrapper.
    const wrapper = (await parentOf(infra.pid)) === infra.wrapperPid ? await this.wrapperStart(infra) : null;
    try {
      process.kill(infra.pid, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
    // The wrapper exits once its child is gone; wait for both so nothing is left behind.
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const alive =
        (await this.infraAlive(infra)) || (wrapper !== null && (await this.wrapperStart(infra)) === wrapper);
      if (!alive) return;
      await sleep(5);
    }
    throw new InternalError(`the pod infra process ${infra.pid} did not exit within 10s of SIGKILL`);
  }

  /** The start time of the live (not zombie) `unshare` at the wrapper's pid, or null. */
  private async wrapperStart(infra: InfraProcess): Promise<string | null> {
    if (!(await isLiveProcess(infra.wrapperPid, this.unshare))) return null;
    return processStartTime(infra.wrapperPid).catch(() => null);
  }

  async configureNamespaces(ns: NamespacePaths, settings: NamespaceSettings): Promise<void> {
    if (!settings.loopbackUp && settings.hostname === null && settings.sysctls.length === 0) return;
    const enter = nsenterArgs(ns);
    if (enter.length === 0) {
      throw new InternalError('pod namespace settings without pod namespaces would change the node itself');
    }
    const args = [...enter, '--', ...this.scriptArgs(settings, null, null)];
    const r = await runStep(this.nsenter, args, this.timeoutMs);
    if (r.exitCode === 0) return;
    throw (
      settingsFailure(r, settings) ??
      new InternalError(
        `cannot configure the pod namespaces (nsenter): ${stepDetail(r.stderr) || `exit ${r.exitCode}`}`,
      )
    );
  }
}

/** The first child of `pid` (0 when it has none, or is gone). */
async function firstChildOf(pid: number): Promise<number> {
  const children = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  const first = Number(children.trim().split(/\s+/)[0]);
  return Number.isSafeInteger(first) && first > 0 ? first : 0;
}

/** The error for a failed settings step of CONFIGURE_SCRIPT, or null when none failed. */
function settingsFailure(r: StepResult, settings: NamespaceSettings): Error | null {
  const step = /rcri-step (\S+)(?: (\S+))?/.exec(r.stderr);
  if (!step || step[1] === 'cgroup') return null;
  const detail = stepDetail(r.stderr);
  if (step[1] === 'sysctl') {
    const failed = settings.sysctls.find((s) => s.path === step[2]);
    return new InvalidArgumentError(
      `sysctl ${failed?.key ?? step[2]}=${JSON.stringify(failed?.value ?? '')} was refused by the kernel inside the pod (${detail}); check the value`,
    );
  }
  return new InternalError(
    `cannot configure the pod namespaces (${step[1]}): ${detail || `exit ${r.exitCode}`}`,
  );
}

/** What the failing command said, without the script's own step markers. */
function stepDetail(stderr: string): string {
  return stderr.replace(/rcri-step .*\n?/g, '').trim();
}

function nsenterArgs(ns: NamespacePaths): string[] {
  const args: string[] = ns.user ? [`--user=${ns.user}`] : [];
  if (ns.net) args.push(`--net=${ns.net}`);
  if (ns.ipc) args.push(`--ipc=${ns.ipc}`);
  if (ns.uts) args.push(`--uts=${ns.uts}`);
  return args;
}

/** Mount points in the daemon's (the node's) mount namespace. */
async function mountedTargets(): Promise<Set<string>> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const targets = new Set<string>();
  for (const line of text.split('\n')) {
    const field = line.split(' ')[4];
    if (field)
      targets.add(
        field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8))),
      );
  }
  return targets;
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot). */
export async function processStartTime(pid: number): Promise<string> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may contain spaces and parentheses: fields restart after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const start = rest[19];
  if (start === undefined) throw new InternalError(`unexpected /proc/${pid}/stat`);
  return start;
}

async function isLiveProcess(pid: number, expectedName: string): Promise<boolean> {
  const status = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  if (!status) return false;
  const state = status.slice(status.lastIndexOf(')') + 2, status.lastIndexOf(')') + 3);
  if (state === 'Z' || state === 'X') return false;
  const comm = status.slice(status.indexOf('(') + 1, status.lastIndexOf(')'));
  return comm === path.basename(expectedName) || comm === 'nsenter';
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The path mountinfo shows for `file`: its directory with symlinks resolved. The run dir is
 * often under /run/user/<uid>, which rootlesskit's --copy-up=/run turns into a symlink into
 * /run/.ro<N>/ inside the node, so a pin mounted at /run/user/... appears at /run/.ro<N>/user/...
 */
async function canonicalPath(file: string): Promise<string> {
  try {
    return path.join(await realpath(path.dirname(file)), path.basename(file));
  } catch {
    return file;
  }
}
