/**
 * The OCI runtime as the runtime core sees it (`OciRuntime`), and its real implementation:
 * one `conmon` per container (it holds stdio, writes the CRI log file and the exit file, and
 * outlives the daemon) with `crun` as the runtime, both run inside the node namespaces where
 * the daemon already is.
 *
 * Outcomes are classified from exit statuses and the runtime's state, never from message
 * text: when a crun command fails, whether crun still knows the container (its state file
 * `<crun root>/<id>/status` exists) and what `crun state` says decide NotFound, "already
 * exited" or FailedPrecondition; crun's stderr only goes into the message. A program that
 * cannot be started is a ProgramNotFoundError (FAILED_PRECONDITION naming it), never
 * NOT_FOUND.
 *
 * Per container, under `stateDir/<id>/`: config.json (the bundle), conmon.pid, container.pid,
 * conmon's ctl/winsz FIFOs, `oom` (conmon --persist-dir). Exit codes go to `exitDir/<id>`,
 * which the exit watcher (exit-watcher.ts) turns into events. Attach sockets live under
 * `socketDir/<id>/attach` (short paths: sun_path has 108 bytes). crun keeps its own state
 * under `crunRoot`.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { DeadlineExceededError, FailedPreconditionError, InternalError, NotFoundError } from '../errors.js';
import type { Logger } from '../log.js';
import { conmonFiles, startConmon } from './conmon.js';
import { attachToConmon, writeFifoNonBlocking } from './conmon-attach.js';
import { CrunExec, EXEC_OUTPUT_CAP, type ExecResult } from './crun-exec.js';
import { type ExecFailure, readExecFailure } from './exec-failure.js';
import { type ExitInfo, type ExitListener, ExitWatcher } from './exit-watcher.js';
import { waitingOnHelper } from './helper-time.js';
import { readKernelFile } from './kernel-file.js';
import { nativeHelperPath } from './native-helpers.js';
import type { OciProcess, OciResources, OciSpec } from './oci-spec.js';
import { withPodViews } from './pod-user-namespace.js';
import { CommandFailedError, type RunResult, run } from './process-runner.js';
import { killTree, parentOf } from './process-tree.js';
import { removeTree } from './remove-tree.js';
import type { StdioOptions, StreamSession } from './stream-session.js';

export type { ExecFailure, ExecResult, ExitInfo, ExitListener };
export { EXEC_OUTPUT_CAP };

export interface CreateOptions {
  id: string;
  spec: OciSpec;
  /** The CRI log file conmon writes; '' = a log in the container's state dir. */
  logPath: string;
  stdin: boolean;
  stdinOnce: boolean;
  /** A cgroup directory (absolute) conmon is moved into before it starts crun; null = stay. */
  conmonCgroup?: string | null;
  /** CreateContainer's signal: aborting kills conmon and crun and removes what they made. */
  signal?: AbortSignal;
}

export type RuntimeStatus = 'creating' | 'created' | 'running' | 'stopped' | 'paused' | 'unknown';

export interface RuntimeState {
  status: RuntimeStatus;
  /** The container's init pid (0 once stopped). */
  pid: number;
}

/** Where the runtime keeps one container's files (what the container layer hands to streaming). */
export interface RuntimePaths {
  bundleDir(id: string): string;
  ctlFifo(id: string): string;
  attachSocket(id: string): string;
  conmonPidFile(id: string): string;
}

/** What the runtime core asks of an OCI runtime. Ids are full container ids. */
export interface OciRuntime {
  readonly paths: RuntimePaths;
  /** Starts watching exits (at daemon start, before recovery reads them). */
  open(): Promise<void>;
  close(): void;
  /** Writes the bundle and creates the container (created, not started); returns its pid. */
  create(options: CreateOptions): Promise<{ pid: number }>;
  start(id: string, signal?: AbortSignal): Promise<void>;
  /** null when the runtime does not know the container. */
  state(id: string): Promise<RuntimeState | null>;
  /** Signals the init process (`all`: every process of the container). Absent: NotFound. Exited: OK. */
  kill(id: string, signal: string, all?: boolean): Promise<void>;
  /**
   * True when the container's init is PID 1 of its own pid namespace and does not catch
   * `signal`: the kernel then discards it, so waiting for an exit is pointless.
   */
  initDropsSignal(id: string, signal: string): Promise<boolean>;
  /** Removes the runtime's state (`force`: kills a running container first). Absent: OK. */
  delete(id: string, force: boolean): Promise<void>;
  /** ExecSync: runs a process in the container and waits; kills every process of it at the timeout. */
  exec(
    id: string,
    process: Partial<OciProcess> & { args: string[] },
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<ExecResult>;
  /** A streaming exec (pipes, or a pty with `tty`). */
  execStream(id: string, cmd: string[], stdio: StdioOptions): Promise<StreamSession>;
  /** Joins the main process's stdio through its monitor. */
  attach(
    id: string,
    container: { tty: boolean; stdin: boolean },
    stdio: StdioOptions,
  ): Promise<StreamSession>;
  /** Sends a resize / log-reopen message to the container's monitor; false when it is gone. */
  control(id: string, message: 'reopen-log'): Promise<boolean>;
  update(id: string, resources: OciResources): Promise<void>;
  pids(id: string): Promise<number[]>;
  /** The exit recorded by the monitor, or null while the container has not exited. */
  exitInfo(id: string): Promise<ExitInfo | null>;
  /** Resolves with the exit once recorded, or null at the timeout or abort. */
  waitExit(id: string, timeoutMs: number, signal?: AbortSignal): Promise<ExitInfo | null>;
  /** Every exit the monitors record, as it happens. */
  onExit(listener: ExitListener): () => void;
  /** Whether the container's monitor is alive; null when it never wrote a pid file. */
  monitorAlive(id: string): Promise<boolean | null>;
  /** Drops the runtime's per-container files (after delete). */
  cleanup(id: string): Promise<void>;
  /**
   * Why an exited container's process never ran its entrypoint (its execve failed after start),
   * from what the runtime left in its log (`logPath`, '' = the state dir's); null when it ran.
   */
  execFailure?(id: string, logPath: string): Promise<ExecFailure | null>;
}

export interface CrunConmonOptions {
  conmonPath: string;
  crunPath: string;
  /** crun --root: crun's state for these containers. */
  crunRoot: string;
  /** Per-container bundles and conmon files. */
  stateDir: string;
  /** conmon --exit-dir. */
  exitDir: string;
  /** conmon --socket-dir-path (attach sockets). */
  socketDir: string;
  logger: Logger;
  /** How long create (conmon + crun create) may take. */
  createTimeoutMs?: number;
  /** crun commands other than create and exec. */
  commandTimeoutMs?: number;
  conmonLogLevel?: 'debug' | 'info' | 'warn' | 'error';
  consoleRelayPath?: string;
  attachRelayPath?: string;
  /** native/build/spawn-in-cgroup by default: conmon started inside its cgroup. */
  spawnInCgroupPath?: string;
  /** The exit watcher's safety rescan period (ms). */
  exitRescanMs?: number;
}

const ID = /^[0-9a-zA-Z][0-9a-zA-Z_.-]{0,127}$/;
/** How long a conmon identified by pid and start time is trusted on a signal-0 probe alone. */
const MONITOR_REVERIFY_MS = 60_000;
/** A bundle of up to this many entries is removed in-process (removeTree). */
const SMALL_DIR_ENTRIES = 64;
/** How long a failed create waits for a conmon that outlived its report to finish `crun create`. */
const CREATE_SETTLE_MS = 10_000;

export class CrunConmonRuntime implements OciRuntime {
  readonly paths: RuntimePaths;
  private readonly exits: ExitWatcher;
  /** conmons identified by monitorAlive: pid, start time, when last verified. */
  private readonly monitors = new Map<string, { pid: number; startTime: string; verifiedAt: number }>();
  private readonly execs: CrunExec;

  constructor(private readonly options: CrunConmonOptions) {
    const { stateDir, socketDir } = options;
    this.paths = {
      bundleDir: (id) => path.join(stateDir, id),
      ctlFifo: (id) => path.join(stateDir, id, 'ctl'),
      attachSocket: (id) => path.join(socketDir, id, 'attach'),
      conmonPidFile: (id) => conmonFiles(path.join(stateDir, id)).pidFile,
    };
    this.exits = new ExitWatcher({
      exitDir: options.exitDir,
      read: (id) => this.exitInfo(id),
      ...(options.exitRescanMs !== undefined ? { rescanMs: options.exitRescanMs } : {}),
      onError: (err) => options.logger.warn({ err }, 'exit watcher'),
    });
    this.execs = new CrunExec({
      crunPath: options.crunPath,
      crunRoot: options.crunRoot,
      consoleRelayPath: options.consoleRelayPath ?? nativeHelperPath('console-relay'),
      logger: options.logger,
    });
  }

  private dir(id: string): string {
    if (!ID.test(id)) throw new InternalError(`invalid container id ${id}`);
    return path.join(this.options.stateDir, id);
  }

  /** Whether crun has state for the container: its classification of every failure. */
  private known(id: string): boolean {
    return existsSync(path.join(this.options.crunRoot, id, 'status'));
  }

  private crun(args: string[], timeoutMs?: number): Promise<RunResult> {
    return run(
      this.options.crunPath,
      [`--root=${this.options.crunRoot}`, '--cgroup-manager=cgroupfs', ...args],
      {
        timeoutMs: timeoutMs ?? this.options.commandTimeoutMs ?? 30_000,
        maxOutputBytes: 1024 * 1024,
      },
    );
  }

  private absent(id: string): NotFoundError {
    return new NotFoundError(`container ${id} does not exist in the runtime`);
  }

  async open(): Promise<void> {
    for (const d of [
      this.options.stateDir,
      this.options.exitDir,
      this.options.socketDir,
      this.options.crunRoot,
    ]) {
      await mkdir(d, { recursive: true, mode: 0o700 });
    }
    await this.exits.start();
  }

  close(): void {
    this.exits.close();
  }

  async create(options: CreateOptions): Promise<{ pid: number }> {
    // In a pod user namespace crun resolves paths as the pod's root (pod-user-namespace.ts).
    return withPodViews(options.id, options.spec, (spec) => this.#create({ ...options, spec }));
  }

  async #create(options: CreateOptions): Promise<{ pid: number }> {
    const { id, signal } = options;
    const dir = this.dir(id);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    for (const d of [this.options.exitDir, this.options.socketDir, this.options.crunRoot]) {
      await mkdir(d, { recursive: true, mode: 0o700 });
    }
    await rm(path.join(this.options.exitDir, id), { force: true });
    this.exits.forget(id);
    this.execs.forget(dir);
    await writeFile(path.join(dir, 'config.json'), JSON.stringify(options.spec));
    signal?.throwIfAborted();
    const conmon = startConmon(
      {
        conmonPath: this.options.conmonPath,
        crunPath: this.options.crunPath,
        crunRoot: this.options.crunRoot,
        exitDir: this.options.exitDir,
        socketDir: this.options.socketDir,
        logLevel: this.options.conmonLogLevel ?? 'error',
      },
      {
        id,
        bundleDir: dir,
        logPath: options.logPath || path.join(dir, 'ctr.log'),
        terminal: options.spec.process.terminal === true,
        stdin: options.stdin,
        stdinOnce: options.stdinOnce,
      },
      // Started in its cgroup, so everything it starts (crun, the container) inherits it.
      options.conmonCgroup
        ? {
            dir: options.conmonCgroup,
            helperPath: this.options.spawnInCgroupPath ?? nativeHelperPath('spawn-in-cgroup'),
          }
        : undefined,
    );
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () =>
        reject(signal?.reason instanceof Error ? signal.reason : new DeadlineExceededError('cancelled'));
      signal?.addEventListener('abort', onAbort, { once: true });
    });
    aborted.catch(() => undefined);
    try {
      await conmon.spawned;
      const timeoutMs = this.options.createTimeoutMs ?? 120_000;
      const report = await waitingOnHelper(
        Promise.race([
          conmon.report,
          aborted,
          new Promise<never>((_, reject) => {
            timer = setTimeout(
              () =>
                reject(
                  new DeadlineExceededError(
                    `conmon did not report on container ${id} within ${timeoutMs} ms`,
                  ),
                ),
              timeoutMs,
            );
          }),
        ]),
      );
      signal?.throwIfAborted();
      if (report.pid > 0) return { pid: report.pid };
      // No message on the pipe: conmon itself failed early, and said why on its output.
      const detail =
        report.message ||
        (await Promise.race([conmon.output(), new Promise<string>((r) => setTimeout(() => r(''), 2000))])) ||
        'conmon exited without a message';
      throw new FailedPreconditionError(`cannot create container ${id}: ${detail.trim()}`);
    } catch (err) {
      // conmon daemonized (its children are not in our process group): kill it and the runtime
      // it started by its pid file, then remove what crun may have made. A conmon that outlived
      // its report (the run server ended under it, the client went away while it started) may
      // still be on its way to `crun create`: let that finish first, or `crun delete` below
      // would find nothing and the container made just after would be left in the pod's cgroup.
      conmon.kill();
      if (options.conmonCgroup) await this.#creationSettled(options.conmonCgroup, id, dir);
      const conmonPid = Number((await readFile(conmonFiles(dir).pidFile, 'utf8').catch(() => '')).trim());
      if (Number.isSafeInteger(conmonPid) && conmonPid > 0) await killTree(conmonPid);
      await this.crun(['delete', '--force', id]).catch(() => undefined);
      throw err;
    } finally {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      conmon.detach();
    }
  }

  /**
   * Waits (up to CREATE_SETTLE_MS) until no process in conmon's cgroup still works on container
   * `id`, or crun has written the container's pid file (creation done; conmon stays as its
   * monitor). conmon and `crun create` name the id in their arguments.
   */
  async #creationSettled(conmonCgroupDir: string, id: string, bundleDir: string): Promise<void> {
    const containerPid = conmonFiles(bundleDir).containerPidFile;
    const deadline = Date.now() + CREATE_SETTLE_MS;
    while (Date.now() < deadline && !existsSync(containerPid)) {
      const procs = (await readKernelFile(path.join(conmonCgroupDir, 'cgroup.procs'))) ?? '';
      let working = false;
      for (const pid of procs.split('\n').filter(Boolean)) {
        const argv = (await readKernelFile(`/proc/${pid}/cmdline`)) ?? '';
        if (argv.split('\0').includes(id)) {
          working = true;
          break;
        }
      }
      if (!working) return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  async start(id: string, signal?: AbortSignal): Promise<void> {
    const r = await run(this.options.crunPath, [`--root=${this.options.crunRoot}`, 'start', id], {
      timeoutMs: this.options.commandTimeoutMs ?? 30_000,
      ...(signal ? { signal } : {}),
    });
    if (r.exitCode === 0) return;
    if (!this.known(id)) throw this.absent(id);
    throw new CommandFailedError(r, ['start', id], {
      kind: 'FailedPrecondition',
      what: `cannot start container ${id}: crun start`,
    });
  }

  async state(id: string): Promise<RuntimeState | null> {
    const r = await this.crun(['state', id]);
    if (r.exitCode !== 0) {
      if (!this.known(id)) return null;
      throw new CommandFailedError(r, ['state', id], { what: `crun state ${id}` });
    }
    let parsed: { status?: string; pid?: number };
    try {
      parsed = JSON.parse(r.stdout.toString('utf8')) as typeof parsed;
    } catch (err) {
      throw new InternalError(`crun state ${id} printed something that is not JSON`, { cause: err });
    }
    const known: RuntimeStatus[] = ['creating', 'created', 'running', 'stopped', 'paused'];
    const status = known.includes(parsed.status as RuntimeStatus)
      ? (parsed.status as RuntimeStatus)
      : 'unknown';
    return { status, pid: parsed.pid ?? 0 };
  }

  async initDropsSignal(id: string, signal: string): Promise<boolean> {
    const number = signalNumber(signal);
    if (number === undefined) return false;
    let pid = await this.#initPid(id);
    if (pid === null) {
      const state = await this.state(id).catch(() => null);
      if (!state || state.pid <= 0) return false;
      pid = state.pid;
    }
    return pidOneDropsSignal((await readKernelFile(`/proc/${pid}/status`)) ?? '', number);
  }

  /**
   * The container's init pid without running crun (StopContainer asks twice, around its
   * signal; each `crun state` was a few milliseconds): the pid conmon wrote, trusted only while
   * that process's parent is the container's conmon as monitorAlive identified it. conmon is the
   * init's subreaper and reaps it, so a pid reused since has another parent. Null when that
   * cannot be shown.
   */
  async #initPid(id: string): Promise<number | null> {
    if ((await this.monitorAlive(id)) !== true) return null;
    const conmon = this.monitors.get(id)?.pid;
    const text = await readFile(conmonFiles(this.dir(id)).containerPidFile, 'utf8').catch(() => '');
    const init = Number.parseInt(text.trim(), 10);
    if (conmon === undefined || !Number.isSafeInteger(init) || init <= 0) return null;
    return (await parentOf(init)) === conmon ? init : null;
  }

  async kill(id: string, signal: string, all = false): Promise<void> {
    const r = await this.crun(['kill', ...(all ? ['--all'] : []), id, signal]);
    if (r.exitCode === 0) return;
    if (!this.known(id)) throw this.absent(id);
    // Signalling a process that just exited is not an error for a caller that wants it gone.
    const state = await this.state(id).catch(() => null);
    if (state === null) throw this.absent(id);
    if (state.status === 'stopped') return;
    throw new CommandFailedError(r, ['kill', id, signal], {
      kind: 'FailedPrecondition',
      what: `cannot signal container ${id} (${state.status}): crun kill`,
    });
  }

  async delete(id: string, force: boolean): Promise<void> {
    this.execs.forget(this.dir(id));
    // Deleted already (when it exited): crun would only say it does not exist.
    if (!this.known(id)) return;
    const r = await this.crun(['delete', ...(force ? ['--force'] : []), id]);
    if (r.exitCode === 0 || !this.known(id)) return;
    throw new CommandFailedError(r, ['delete', id], {
      kind: 'FailedPrecondition',
      what: `cannot delete container ${id}: crun delete`,
    });
  }

  exec(
    id: string,
    process: Partial<OciProcess> & { args: string[] },
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<ExecResult> {
    return this.execs.execSync(id, this.dir(id), process, options);
  }

  execStream(id: string, cmd: string[], stdio: StdioOptions): Promise<StreamSession> {
    return this.execs.execStream(id, this.dir(id), cmd, stdio);
  }

  async attach(
    id: string,
    container: { tty: boolean; stdin: boolean },
    stdio: StdioOptions,
  ): Promise<StreamSession> {
    return attachToConmon({
      id,
      relayPath: this.options.attachRelayPath ?? nativeHelperPath('attach-relay'),
      attachSocketPath: this.paths.attachSocket(id),
      ctlFifoPath: this.paths.ctlFifo(id),
      tty: container.tty,
      containerStdin: container.stdin,
      stdio,
      logger: this.options.logger,
    });
  }

  control(id: string, message: 'reopen-log'): Promise<boolean> {
    // conmon's control FIFO: "<type> <a> <b>\n"; type 2 reopens the log file.
    const text = message === 'reopen-log' ? '2 0 0\n' : '';
    return writeFifoNonBlocking(this.paths.ctlFifo(id), text);
  }

  async update(id: string, resources: OciResources): Promise<void> {
    if (!this.known(id)) throw this.absent(id);
    const file = path.join(this.dir(id), 'resources.json');
    await writeFile(file, JSON.stringify(resources));
    const r = await this.crun(['update', `--resources=${file}`, id]);
    if (r.exitCode === 0) return;
    if (!this.known(id)) throw this.absent(id);
    throw new CommandFailedError(r, ['update', id], {
      kind: 'FailedPrecondition',
      what: `cannot update container ${id}: crun update`,
    });
  }

  async pids(id: string): Promise<number[]> {
    const r = await this.crun(['ps', '--format=json', id]);
    if (r.exitCode !== 0) {
      if (!this.known(id)) throw this.absent(id);
      throw new CommandFailedError(r, ['ps', id], { what: `crun ps ${id}` });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(r.stdout.toString('utf8') || '[]');
    } catch {
      parsed = [];
    }
    return Array.isArray(parsed) ? parsed.filter((p): p is number => typeof p === 'number') : [];
  }

  async exitInfo(id: string): Promise<ExitInfo | null> {
    if (!ID.test(id)) return null;
    const file = path.join(this.options.exitDir, id);
    let text: string;
    let mtime: Date;
    try {
      [text, mtime] = await Promise.all([readFile(file, 'utf8'), stat(file).then((s) => s.mtime)]);
    } catch {
      return null;
    }
    // conmon writes the file aside and renames it, but be safe with an empty one.
    if (text.trim() === '') return null;
    const code = Number.parseInt(text.trim(), 10);
    const oomKilled = await stat(path.join(this.dir(id), 'oom')).then(
      () => true,
      () => false,
    );
    return { exitCode: Number.isFinite(code) ? code : 255, exitedAt: mtime, oomKilled };
  }

  waitExit(id: string, timeoutMs: number, signal?: AbortSignal): Promise<ExitInfo | null> {
    // The container's exit and conmon's exit file: time the daemon waits on other processes.
    return waitingOnHelper(this.exits.wait(id, timeoutMs, signal));
  }

  onExit(listener: ExitListener): () => void {
    return this.exits.onExit(listener);
  }

  async monitorAlive(id: string): Promise<boolean | null> {
    // The monitor check asks this every few seconds for every running container: once a conmon
    // was identified (pid file, then /proc/<pid>/stat), a signal-0 probe answers; its identity
    // (start time, so a reused pid is not mistaken for it) is checked again once a minute.
    const known = this.monitors.get(id);
    if (known && Date.now() - known.verifiedAt < MONITOR_REVERIFY_MS) {
      try {
        process.kill(known.pid, 0);
        return true;
      } catch {
        this.monitors.delete(id);
        return false;
      }
    }
    const text = await readFile(this.paths.conmonPidFile(id), 'utf8').catch(() => null);
    if (text === null) return null;
    const pid = Number.parseInt(text.trim(), 10);
    if (!Number.isSafeInteger(pid) || pid <= 0) return false;
    const stat = await readKernelFile(`/proc/${pid}/stat`);
    // A reused pid belongs to another program: conmon's comm is "conmon".
    if (stat === null || stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')) !== 'conmon') {
      this.monitors.delete(id);
      return false;
    }
    const startTime = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
    if (known && known.pid === pid && known.startTime !== startTime) {
      this.monitors.delete(id);
      return false;
    }
    this.monitors.set(id, { pid, startTime, verifiedAt: Date.now() });
    return true;
  }

  async cleanup(id: string): Promise<void> {
    // The bundle (a few files the daemon, conmon and crun wrote, nothing of the container's)
    // and conmon's link to it in the socket dir: removed in-process, where fs.rm made a pool
    // round trip for each call (about a millisecond of RemoveContainer).
    await removeTree(this.dir(id), { inProcessUpTo: SMALL_DIR_ENTRIES });
    await rm(path.join(this.options.exitDir, id), { force: true });
    await removeTree(path.join(this.options.socketDir, id), { inProcessUpTo: SMALL_DIR_ENTRIES });
    this.exits.forget(id);
    this.monitors.delete(id);
  }

  execFailure(id: string, logPath: string): Promise<ExecFailure | null> {
    if (!ID.test(id)) return Promise.resolve(null);
    return readExecFailure(logPath || path.join(this.dir(id), 'ctr.log'));
  }
}

/** Signal number for a name like "SIGTERM", "TERM" or "15"; undefined when unknown. */
export function signalNumber(signal: string): number | undefined {
  if (/^\d+$/.test(signal)) return Number(signal);
  const name = (signal.startsWith('SIG') ? signal : `SIG${signal}`) as keyof typeof osConstants.signals;
  return osConstants.signals[name];
}

/**
 * From /proc/<pid>/status: is the process PID 1 of its pid namespace (last NSpid field 1)
 * without a handler for `signal` (SigCgt)? The kernel discards, at send time, a signal whose
 * disposition is the default for a namespace init. SIGKILL and SIGSTOP are never dropped.
 */
export function pidOneDropsSignal(status: string, signal: number): boolean {
  if (signal === osConstants.signals.SIGKILL || signal === osConstants.signals.SIGSTOP) return false;
  const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim();
  const nspid = field('NSpid')?.split(/\s+/);
  if (!nspid || nspid.length < 2 || nspid[nspid.length - 1] !== '1') return false;
  const bit = 1n << BigInt(signal - 1);
  const mask = (name: string) => BigInt(`0x${field(name) ?? '0'}`);
  return (mask('SigCgt') & bit) === 0n;
}
