/**
 * The OCI runtime as the container layer sees it (`OciRuntime`), and its real implementation:
 * one `conmon` per container (it holds stdio, writes the CRI log file and the exit file, and
 * outlives the daemon) with `crun` as the runtime, both run inside the node namespaces where
 * the daemon already is.
 *
 * Creation is synchronous with conmon's work: conmon gets a sync pipe (`_OCI_SYNCPIPE`, fd 3)
 * on which it reports `{"data": <pid>}` once `crun create` finished, or a negative value and
 * crun's error; and a start pipe (`_OCI_STARTPIPE`, fd 4) it waits on before forking, so the
 * caller can move it into a cgroup first. Without the sync pipe conmon returns before crun is
 * done (DESIGN.md).
 *
 * Per container, under `stateDir/<id>/`: config.json (the bundle), conmon.pid, container.pid,
 * conmon's attach socket and ctl/winsz FIFOs, `exit` and `oom` (conmon --persist-dir). Exit
 * codes also go to `exitDir/<id>`. crun keeps its own state under `crunRoot`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { DeadlineExceededError, FailedPreconditionError, InternalError, NotFoundError } from '../errors.js';
import type { OciProcess, OciResources, OciSpec } from './oci-spec.js';

export interface CreateOptions {
  id: string;
  spec: OciSpec;
  /** The CRI log file conmon writes; '' = a log in the container's state dir. */
  logPath: string;
  stdin: boolean;
  stdinOnce: boolean;
  /** A cgroup directory (absolute) conmon is moved into before it starts crun; null = stay. */
  conmonCgroup?: string | null;
}

export type RuntimeStatus = 'creating' | 'created' | 'running' | 'stopped' | 'paused' | 'unknown';

export interface RuntimeState {
  status: RuntimeStatus;
  /** The container's init pid (0 once stopped). */
  pid: number;
}

export interface ExitInfo {
  exitCode: number;
  /** When conmon wrote the exit file. */
  exitedAt: Date;
  oomKilled: boolean;
}

export interface ExecResult {
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
}

/** What the container layer asks of an OCI runtime. Ids are full container ids. */
export interface OciRuntime {
  /** Writes the bundle and creates the container (created, not started); returns its pid. */
  create(options: CreateOptions): Promise<{ pid: number }>;
  start(id: string): Promise<void>;
  /** null when the runtime does not know the container. */
  state(id: string): Promise<RuntimeState | null>;
  /** Signals the init process (`all`: every process of the container). Absent: NotFound. */
  kill(id: string, signal: string, all?: boolean): Promise<void>;
  /**
   * True when the container's init is PID 1 of its own pid namespace and does not catch
   * `signal`: the kernel then discards it, so waiting for an exit is pointless.
   * Optional: a runtime that cannot tell answers nothing and the caller waits.
   */
  initDropsSignal?(id: string, signal: string): Promise<boolean>;
  /** Removes the runtime's state (`force`: kills a running container first). Absent: OK. */
  delete(id: string, force: boolean): Promise<void>;
  /** Runs a process in the container and waits (ExecSync); kills it at the timeout. */
  exec(id: string, process: Partial<OciProcess> & { args: string[] }, timeoutMs: number): Promise<ExecResult>;
  update(id: string, resources: OciResources): Promise<void>;
  pids(id: string): Promise<number[]>;
  /** The exit recorded by conmon, or null while the container has not exited. */
  exitInfo(id: string): Promise<ExitInfo | null>;
  /** Resolves with the exit once recorded, or null at the timeout. */
  waitExit(id: string, timeoutMs: number): Promise<ExitInfo | null>;
  /** Drops the runtime's per-container files (after delete). */
  cleanup(id: string): Promise<void>;
}

/** Upper bound of what ExecSync keeps of each stream (the CRI API's 16 MiB). */
export const EXEC_OUTPUT_CAP = 16 * 1024 * 1024;

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
  /** How long create (conmon + crun create) may take. */
  createTimeoutMs?: number;
  conmonLogLevel?: 'debug' | 'info' | 'warn' | 'error';
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function collect(stream: Readable | null, cap: number): Promise<Buffer> {
  return new Promise((resolve) => {
    if (!stream) return resolve(Buffer.alloc(0));
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (chunk: Buffer) => {
      if (size >= cap) return; // keep reading (the writer must not block) but discard
      const keep = chunk.subarray(0, cap - size);
      chunks.push(keep);
      size += keep.length;
    });
    stream.on('error', () => resolve(Buffer.concat(chunks)));
    stream.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

function exited(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    child.once('error', () => resolve(127));
    child.once('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

function isAbsent(stderr: string): boolean {
  return /does not exist|not found|No such file or directory/i.test(stderr);
}

export class CrunConmonRuntime implements OciRuntime {
  constructor(private readonly options: CrunConmonOptions) {}

  private dir(id: string): string {
    if (!/^[0-9a-zA-Z][0-9a-zA-Z_.-]{0,127}$/.test(id)) throw new InternalError(`invalid container id ${id}`);
    return path.join(this.options.stateDir, id);
  }

  private async crun(args: string[], input?: string): Promise<RunResult> {
    const child = spawn(
      this.options.crunPath,
      [`--root=${this.options.crunRoot}`, '--cgroup-manager=cgroupfs', ...args],
      {
        stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      },
    );
    if (input !== undefined) child.stdin?.end(input);
    const [stdout, stderr, code] = await Promise.all([
      collect(child.stdout, 1024 * 1024),
      collect(child.stderr, 64 * 1024),
      exited(child),
    ]);
    return { code, stdout: stdout.toString('utf8'), stderr: stderr.toString('utf8').trim() };
  }

  async create(options: CreateOptions): Promise<{ pid: number }> {
    const { id } = options;
    const dir = this.dir(id);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    for (const d of [this.options.exitDir, this.options.socketDir, this.options.crunRoot]) {
      await mkdir(d, { recursive: true, mode: 0o700 });
    }
    await rm(path.join(this.options.exitDir, id), { force: true });
    await writeFile(path.join(dir, 'config.json'), JSON.stringify(options.spec));
    const logPath = options.logPath || path.join(dir, 'ctr.log');
    const args = [
      '--api-version',
      '1',
      '-c',
      id,
      '-u',
      id,
      '-n',
      id,
      '-r',
      this.options.crunPath,
      '-b',
      dir,
      '-p',
      path.join(dir, 'container.pid'),
      '-P',
      path.join(dir, 'conmon.pid'),
      '-l',
      `k8s-file:${logPath}`,
      '--exit-dir',
      this.options.exitDir,
      '--persist-dir',
      dir,
      '--socket-dir-path',
      this.options.socketDir,
      '--runtime-arg',
      `--root=${this.options.crunRoot}`,
      '--runtime-arg',
      '--cgroup-manager=cgroupfs',
      '--log-level',
      this.options.conmonLogLevel ?? 'error',
    ];
    if (options.spec.process.terminal) args.push('-t');
    if (options.stdin) args.push('-i');
    if (options.stdin && !options.stdinOnce) args.push('--leave-stdin-open');

    const conmon = spawn(this.options.conmonPath, args, {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe'],
      env: { ...process.env, _OCI_SYNCPIPE: '3', _OCI_STARTPIPE: '4' },
      detached: true,
      cwd: dir,
    });
    const syncPipe = conmon.stdio[3] as Readable;
    const startPipe = conmon.stdio[4] as import('node:stream').Writable;
    const output = Promise.all([collect(conmon.stdout, 64 * 1024), collect(conmon.stderr, 64 * 1024)]);
    const spawnError = new Promise<Error>((resolve) => conmon.once('error', resolve));
    try {
      if (options.conmonCgroup) {
        // Before conmon forks: everything it starts (crun, the container) inherits the cgroup.
        await writeFile(path.join(options.conmonCgroup, 'cgroup.procs'), String(conmon.pid));
      }
      startPipe.end('0');
      const report = await Promise.race([
        this.readSyncReport(syncPipe),
        spawnError.then((err) => {
          throw new FailedPreconditionError(
            `cannot run conmon (${this.options.conmonPath}): ${err.message}`,
            {
              cause: err,
            },
          );
        }),
        sleepReject(
          this.options.createTimeoutMs ?? 120_000,
          `conmon did not report on container ${id} in time`,
        ),
      ]);
      if (report.pid > 0) return { pid: report.pid };
      let detail = report.message;
      if (detail === '') {
        // No message on the pipe: conmon itself failed early, and said why on stderr.
        const [out, err] = await Promise.race([output, sleepValue(2000, [Buffer.alloc(0), Buffer.alloc(0)])]);
        detail =
          `${err.toString('utf8')} ${out.toString('utf8')}`.trim() || 'conmon exited without a message';
      }
      throw new FailedPreconditionError(`cannot create container ${id}: ${detail.trim()}`);
    } catch (err) {
      // conmon and crun may have left a half-created container: remove it.
      await this.crun(['delete', '--force', id]).catch(() => undefined);
      throw err;
    } finally {
      syncPipe.destroy();
      startPipe.destroy();
      conmon.stdout?.destroy();
      conmon.stderr?.destroy();
      conmon.unref();
    }
  }

  /** The first JSON line conmon writes on the sync pipe; EOF without one = failure. */
  private readSyncReport(pipe: Readable): Promise<{ pid: number; message: string }> {
    return new Promise((resolve) => {
      let text = '';
      const finish = () => {
        const line = text.split('\n')[0] ?? '';
        try {
          const parsed = JSON.parse(line) as { data?: number; message?: string };
          resolve({ pid: typeof parsed.data === 'number' ? parsed.data : -1, message: parsed.message ?? '' });
        } catch {
          resolve({ pid: -1, message: line.trim() });
        }
      };
      pipe.on('data', (chunk: Buffer) => {
        text += chunk.toString('utf8');
        if (text.includes('\n')) {
          pipe.removeAllListeners('data');
          finish();
        }
      });
      pipe.once('end', finish);
      pipe.once('close', finish);
      pipe.once('error', finish);
    });
  }

  async start(id: string): Promise<void> {
    const r = await this.crun(['start', id]);
    if (r.code !== 0) {
      if (isAbsent(r.stderr)) throw new NotFoundError(`container ${id} does not exist in the runtime`);
      throw new FailedPreconditionError(
        `cannot start container ${id}: ${r.stderr || `crun exited ${r.code}`}`,
      );
    }
  }

  async state(id: string): Promise<RuntimeState | null> {
    const r = await this.crun(['state', id]);
    if (r.code !== 0) {
      if (isAbsent(r.stderr)) return null;
      throw new InternalError(`crun state ${id} failed: ${r.stderr}`);
    }
    const parsed = JSON.parse(r.stdout) as { status?: string; pid?: number };
    const known: RuntimeStatus[] = ['creating', 'created', 'running', 'stopped', 'paused'];
    const status = known.includes(parsed.status as RuntimeStatus)
      ? (parsed.status as RuntimeStatus)
      : 'unknown';
    return { status, pid: parsed.pid ?? 0 };
  }

  async initDropsSignal(id: string, signal: string): Promise<boolean> {
    const number = signalNumber(signal);
    const state = await this.state(id);
    if (number === undefined || !state || state.pid <= 0) return false;
    return pidOneDropsSignal(await readFile(`/proc/${state.pid}/status`, 'utf8').catch(() => ''), number);
  }

  async kill(id: string, signal: string, all = false): Promise<void> {
    const r = await this.crun(['kill', ...(all ? ['--all'] : []), id, signal]);
    if (r.code !== 0) {
      if (isAbsent(r.stderr)) throw new NotFoundError(`container ${id} does not exist in the runtime`);
      // Signalling a process that just exited is not an error for a caller that wants it gone.
      if (/No such process|ESRCH|container not running|is stopped/i.test(r.stderr)) return;
      throw new FailedPreconditionError(`cannot signal container ${id}: ${r.stderr}`);
    }
  }

  async delete(id: string, force: boolean): Promise<void> {
    const r = await this.crun(['delete', ...(force ? ['--force'] : []), id]);
    if (r.code !== 0 && !isAbsent(r.stderr)) {
      throw new FailedPreconditionError(`cannot delete container ${id}: ${r.stderr}`);
    }
  }

  async exec(
    id: string,
    processSpec: Partial<OciProcess> & { args: string[] },
    timeoutMs: number,
  ): Promise<ExecResult> {
    const dir = this.dir(id);
    const base = JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as OciSpec;
    const execId = `exec-${process.hrtime.bigint().toString(36)}`;
    const processFile = path.join(dir, `${execId}.json`);
    const pidFile = path.join(dir, `${execId}.pid`);
    await writeFile(processFile, JSON.stringify({ ...base.process, terminal: false, ...processSpec }));
    try {
      const child = spawn(
        this.options.crunPath,
        [`--root=${this.options.crunRoot}`, 'exec', '--process', processFile, '--pid-file', pidFile, id],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let timedOut = false;
      const timer = setTimeout(async () => {
        timedOut = true;
        // Killing crun alone would leave the process running in the container.
        const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
        if (pid > 0) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
        child.kill('SIGKILL');
      }, timeoutMs);
      const [stdout, stderr, code] = await Promise.all([
        collect(child.stdout, EXEC_OUTPUT_CAP),
        collect(child.stderr, EXEC_OUTPUT_CAP),
        exited(child),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        throw new DeadlineExceededError(
          `command ${JSON.stringify(processSpec.args)} timed out after ${timeoutMs} ms`,
        );
      }
      return { exitCode: code, stdout, stderr };
    } finally {
      await rm(processFile, { force: true });
      await rm(pidFile, { force: true });
    }
  }

  async update(id: string, resources: OciResources): Promise<void> {
    const file = path.join(this.dir(id), 'resources.json');
    await writeFile(file, JSON.stringify(resources));
    const r = await this.crun(['update', `--resources=${file}`, id]);
    if (r.code !== 0) {
      if (isAbsent(r.stderr)) throw new NotFoundError(`container ${id} does not exist in the runtime`);
      throw new FailedPreconditionError(`cannot update container ${id}: ${r.stderr}`);
    }
  }

  async pids(id: string): Promise<number[]> {
    const r = await this.crun(['ps', '--format=json', id]);
    if (r.code !== 0) {
      if (isAbsent(r.stderr)) throw new NotFoundError(`container ${id} does not exist in the runtime`);
      throw new InternalError(`crun ps ${id} failed: ${r.stderr}`);
    }
    const parsed = JSON.parse(r.stdout || '[]') as unknown;
    return Array.isArray(parsed) ? parsed.filter((p): p is number => typeof p === 'number') : [];
  }

  async exitInfo(id: string): Promise<ExitInfo | null> {
    const file = path.join(this.options.exitDir, id);
    let text: string;
    let mtime: Date;
    try {
      [text, mtime] = await Promise.all([readFile(file, 'utf8'), stat(file).then((s) => s.mtime)]);
    } catch {
      return null;
    }
    // conmon writes the file in one go, but a reader may still see it empty for an instant.
    if (text.trim() === '') return null;
    const code = Number.parseInt(text.trim(), 10);
    const oomKilled = await stat(path.join(this.dir(id), 'oom')).then(
      () => true,
      () => false,
    );
    return { exitCode: Number.isFinite(code) ? code : 255, exitedAt: mtime, oomKilled };
  }

  async waitExit(id: string, timeoutMs: number): Promise<ExitInfo | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const info = await this.exitInfo(id);
      if (info) return info;
      if (Date.now() >= deadline) return null;
      await sleepValue(Math.min(50, Math.max(1, deadline - Date.now())), null);
    }
  }

  async cleanup(id: string): Promise<void> {
    await rm(this.dir(id), { recursive: true, force: true });
    await rm(path.join(this.options.exitDir, id), { force: true });
    await rm(path.join(this.options.socketDir, id), { recursive: true, force: true });
  }
}

/**
 * Stops a container: its stop signal, then SIGKILL when `timeoutMs` passes (StopContainer).
 * Resolves with the exit; a container that is already gone resolves with what was recorded.
 */
export async function stopContainer(
  runtime: OciRuntime,
  id: string,
  signal: string,
  timeoutMs: number,
): Promise<ExitInfo | null> {
  const recorded = await runtime.exitInfo(id);
  if (recorded) return recorded;
  if (timeoutMs > 0 && signal !== 'SIGKILL') {
    try {
      await runtime.kill(id, signal);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      return runtime.exitInfo(id);
    }
    // PID 1 of a pid namespace never dies of a signal it does not catch (e.g. `sleep` or
    // `top` as init): go straight to SIGKILL instead of sitting out the whole timeout.
    const dropped = (await runtime.initDropsSignal?.(id, signal).catch(() => false)) ?? false;
    if (!dropped) {
      const info = await runtime.waitExit(id, timeoutMs);
      if (info) return info;
    }
  }
  try {
    await runtime.kill(id, 'SIGKILL', true);
  } catch (err) {
    if (err instanceof NotFoundError) return runtime.exitInfo(id);
    // `--all` needs the container's cgroup; without one, the init process alone takes the
    // pid namespace (and everything in it) down.
    await runtime.kill(id, 'SIGKILL').catch((again: unknown) => {
      if (!(again instanceof NotFoundError)) throw again;
    });
  }
  // SIGKILL cannot be ignored; conmon records the exit promptly unless the process is stuck
  // in the kernel (D state), which the caller reports rather than waits on forever.
  return runtime.waitExit(id, 10_000);
}

function sleepValue<T>(ms: number, value: T): Promise<T> {
  return new Promise((resolve) => setTimeout(() => resolve(value), ms));
}

function sleepReject(ms: number, message: string): Promise<never> {
  return new Promise((_, reject) => setTimeout(() => reject(new DeadlineExceededError(message)), ms).unref());
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
