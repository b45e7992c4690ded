/**
 * The one way rootless-cri starts a process (STYLE.md: one runner, not four). Everything that
 * spawns — crun, conmon, unshare, nsenter, umount, CNI plugins, fuse-overlayfs, the native
 * helpers, rootlesskit — goes through `run` (to completion, output collected) or `start`
 * (long-lived or streaming stdio). A test in test/unit/layers.test.ts fails on a
 * `child_process` or `execa` import anywhere else in src/.
 *
 * Built on node:child_process rather than execa, the process library the project chose for
 * its tests: a pod lifecycle runs about eight helpers and execa's per-call cost (~1.5 ms on the
 * build machines, measured) was a visible share of it; nothing execa adds is needed here.
 *
 * What every run gets:
 * - a timeout (default 60 s): SIGTERM to the whole process group, SIGKILL `killGraceMs` later;
 * - an optional AbortSignal (the CRI call's): SIGKILL to the whole process group at once, and
 *   the call rejects with the signal's reason (a CancelledError or DeadlineExceededError);
 * - output caps per stream (kept from the start; the rest is read and dropped, so a chatty
 *   child never blocks on a full pipe);
 * - typed errors: ProgramNotFoundError (the binary cannot be started), ProcessTimeoutError,
 *   and from runChecked a CommandFailedError carrying the exit status and the stderr tail;
 * - its wall time reported to the helper-time accounting (helper-time.ts) and to observers
 *   (metrics: spawn latency by program).
 *
 * Each child is the leader of its own process group (detached: setsid), so a timeout or an
 * abort takes down what the child started too (crun's init while it waits, a shell's
 * children), never the daemon's own group.
 */
import { type ChildProcess, type IOType, type StdioNull, type StdioPipe, spawn } from 'node:child_process';

export type { ChildProcess, ChildProcessByStdio } from 'node:child_process';

import { constants as osConstants } from 'node:os';
import path from 'node:path';
import type { Readable, Stream, Writable } from 'node:stream';
import {
  CancelledError,
  CriError,
  DeadlineExceededError,
  type ErrorKind,
  FailedPreconditionError,
} from '../errors.js';
import { recordHelperTime } from './helper-time.js';

export interface RunOptions {
  /** The exact environment; default: the daemon's own. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Written to stdin, which is then closed; without it stdin is /dev/null. */
  input?: string | Buffer;
  /** Default 60 s. */
  timeoutMs?: number;
  /** Aborting kills the process group; the run rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Bytes kept of each of stdout and stderr; default 1 MiB. */
  maxOutputBytes?: number;
  /** Between SIGTERM and SIGKILL at the timeout; default 2 s. */
  killGraceMs?: number;
  /**
   * Settle when the process exits even if a grandchild keeps its stdout/stderr open
   * (fuse-overlayfs daemonizes with the pipes inherited). Output still arriving within a
   * short moment of the exit is kept.
   */
  settleOnExit?: boolean;
  /** Called with the pid once the program runs (ExecSync reads what its pipes are while it does). */
  onStarted?: (pid: number) => void;
}

export interface RunResult {
  /** The program as it was given (a name or a path). */
  program: string;
  /** null when the process was ended by a signal. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: Buffer;
  /** True when a stream was longer than maxOutputBytes (the rest was dropped). */
  truncated: boolean;
  /** With settleOnExit: something (a child it left) still held stdout or stderr at the end. */
  outputHeld?: boolean;
  durationMs: number;
}

/** The exit status as a shell reports it: the code, or 128 + the signal number. */
export function exitStatus(result: Pick<RunResult, 'exitCode' | 'signal'>): number {
  if (result.exitCode !== null) return result.exitCode;
  return 128 + (result.signal ? (osConstants.signals[result.signal] ?? 0) : 0);
}

/** The last `max` characters of stderr (or stdout when stderr is empty), on one line. */
export function outputTail(result: Pick<RunResult, 'stdout' | 'stderr'>, max = 500): string {
  const text = (result.stderr.toString('utf8').trim() || result.stdout.toString('utf8').trim()).replace(
    /\s+/g,
    ' ',
  );
  return text.length > max ? `...${text.slice(text.length - max)}` : text;
}

/** The program could not be started at all (not installed, not executable). */
export class ProgramNotFoundError extends FailedPreconditionError {
  constructor(
    readonly program: string,
    readonly errno: string,
    options?: { cause?: unknown },
  ) {
    super(
      `cannot run ${program} (${errno}): install it or fix its path in the configuration (rootless-cri doctor checks every program)`,
      options,
    );
  }
}

export class ProcessTimeoutError extends DeadlineExceededError {
  constructor(
    readonly program: string,
    readonly timeoutMs: number,
    readonly result: RunResult,
  ) {
    const tail = outputTail(result);
    super(`${path.basename(program)} did not finish within ${timeoutMs} ms${tail ? ` (${tail})` : ''}`);
  }
}

/** A program ran and failed (runChecked): its exit status and what it said. */
export class CommandFailedError extends CriError {
  readonly status: number;
  readonly stderrTail: string;

  constructor(
    readonly result: RunResult,
    readonly args: readonly string[],
    options: { kind?: ErrorKind; what?: string } = {},
  ) {
    const status = exitStatus(result);
    const tail = outputTail(result);
    const what = options.what ?? `${path.basename(result.program)} ${args.slice(0, 3).join(' ')}`.trim();
    super(options.kind ?? 'Internal', `${what} failed with exit status ${status}${tail ? `: ${tail}` : ''}`);
    this.status = status;
    this.stderrTail = tail;
  }
}

export type RunObserver = (program: string, durationMs: number, outcome: 'ok' | 'failed' | 'error') => void;

const observers = new Set<RunObserver>();

/** Adds an observer of every finished run (metrics); returns its removal. */
export function observeRuns(observer: RunObserver): () => void {
  observers.add(observer);
  return () => observers.delete(observer);
}

/** Accounts a finished run (helper time, observers); for runs started elsewhere (run-server.ts). */
export function reportRun(program: string, durationMs: number, outcome: 'ok' | 'failed' | 'error'): void {
  notify(program, durationMs, outcome);
}

function notify(program: string, durationMs: number, outcome: 'ok' | 'failed' | 'error'): void {
  recordHelperTime(durationMs);
  for (const observer of observers) {
    try {
      observer(path.basename(program), durationMs, outcome);
    } catch {
      // an observer never breaks a run
    }
  }
}

/** What a run cut by `signal` rejects with. */
export function runCancelled(signal: AbortSignal, program: string): Error {
  return abortReason(signal, program);
}

function abortReason(signal: AbortSignal, program: string): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof CriError) return reason;
  return new CancelledError(`${path.basename(program)} was cancelled`, { cause: reason });
}

/** Signals the child's whole process group (it leads one); falls back to the child alone. */
export function killGroup(child: Pick<ChildProcess, 'pid' | 'kill'>, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // already gone
    }
  }
}

class OutputCollector {
  readonly chunks: Buffer[] = [];
  size = 0;
  truncated = false;

  constructor(private readonly cap: number) {}

  add(chunk: Buffer): void {
    if (this.size >= this.cap) {
      this.truncated = true;
      return; // keep reading so the writer never blocks, but drop it
    }
    const keep = chunk.length > this.cap - this.size ? chunk.subarray(0, this.cap - this.size) : chunk;
    if (keep.length < chunk.length) this.truncated = true;
    this.chunks.push(keep);
    this.size += keep.length;
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks, this.size);
  }
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** The longest delay a Node.js timer takes (a longer one fires at once): timeouts are capped to it. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
const DEFAULT_OUTPUT_CAP = 1024 * 1024;
/** With settleOnExit: how long output written just before the exit may still arrive. */
const EXIT_DRAIN_MS = 200;

/** Something else that starts run()'s programs with run()'s semantics (run-server.ts). */
export interface RunDelegate {
  /** Whether it takes runs now; false sends them back to the daemon's own spawn. */
  available(): boolean;
  run(program: string, args: readonly string[], options: RunOptions): Promise<RunResult>;
  startDetached(program: string, args: readonly string[], options: DetachedOptions): DetachedProcess;
  startReporting(program: string, args: readonly string[], options: ReportingOptions): ReportingProcess;
}

export interface DetachedOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/**
 * A process that outlives the call that started it (a pod's infra chain), stdin and stdout
 * /dev/null-like, stderr kept (64 KiB) for the report of an early exit. It leads its own
 * process group.
 */
export interface DetachedProcess {
  /** Its pid once it runs; rejects with ProgramNotFoundError (or Unavailable) when it does not. */
  readonly started: Promise<number>;
  /** When it ended, with what it wrote on stderr (the rest of its output is dropped). */
  readonly exited: Promise<ExitStatus & { stderr: string }>;
  /** Signals its process group. */
  kill(signal: NodeJS.Signals): void;
  /** Lets go of its output: a process that lives on is not read from any more. */
  release(): void;
}

const DETACHED_STDERR_CAP = 64 * 1024;

/** Starts a detached process: through the run server when it is up, else by the daemon. */
export function startDetached(
  program: string,
  args: readonly string[],
  options: DetachedOptions = {},
): DetachedProcess {
  if (delegate?.available()) return delegate.startDetached(program, args, options);
  const handle = start(program, args, {
    daemon: true,
    stdio: ['ignore', 'ignore', 'pipe'],
    ...(options.env ? { env: options.env } : {}),
    ...(options.cwd ? { cwd: options.cwd } : {}),
  });
  let stderr = '';
  handle.stderr!.setEncoding('utf8');
  handle.stderr!.on('data', (chunk: string) => {
    if (stderr.length < DETACHED_STDERR_CAP) stderr += chunk;
  });
  const closed = new Promise<void>((resolve) => handle.stderr!.once('close', () => resolve()));
  return {
    started: handle.spawned.then(() => handle.pid!),
    // What it wrote just before it exited may still be in the pipe: wait for the end of it
    // (briefly: a child it left may hold the pipe).
    exited: handle.exited.then(async (status) => {
      await Promise.race([closed, new Promise((r) => setTimeout(r, 1_000))]);
      return { ...status, stderr };
    }),
    kill: (signal) => handle.kill(signal),
    release: () => handle.stderr?.destroy(),
  };
}

export interface ReportingOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** The program helper time is counted for (the real one, when `program` is a wrapper). */
  runs?: string;
}

/**
 * A process that reports on a pipe at its fd 3 (conmon's sync pipe), stdin /dev/null, stdout
 * and stderr kept (64 KiB each) for the report of a failure. What it reports may come from a
 * process it left behind (conmon daemonizes), after it exited.
 */
export interface ReportingProcess {
  /** Its pid once it runs; rejects with ProgramNotFoundError (or Unavailable) when it does not. */
  readonly started: Promise<number>;
  /** The bytes written to fd 3, until every writer closed it or release(). */
  readonly report: Readable;
  /** Its exit, with its stdout and stderr (up to release(), when that came first). */
  readonly exited: Promise<ExitStatus & { output: string }>;
  /** Signals its process group. */
  kill(signal: NodeJS.Signals): void;
  /** Stops reading its pipes: whatever keeps them open is no longer waited for. */
  release(): void;
}

const REPORTING_OUTPUT_CAP = 64 * 1024;

/** Starts a reporting process: through the run server when it is up, else by the daemon. */
export function startReporting(
  program: string,
  args: readonly string[],
  options: ReportingOptions = {},
): ReportingProcess {
  if (delegate?.available()) return delegate.startReporting(program, args, options);
  const handle = start(program, args, {
    daemon: true,
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    ...(options.env ? { env: options.env } : {}),
    ...(options.cwd ? { cwd: options.cwd } : {}),
    ...(options.runs ? { runs: options.runs } : {}),
  });
  const report = handle.child.stdio[3] as Readable;
  const output = Promise.all([
    collectStream(handle.stdout, REPORTING_OUTPUT_CAP),
    collectStream(handle.stderr, REPORTING_OUTPUT_CAP),
  ]);
  return {
    started: handle.spawned.then(() => handle.pid!),
    report,
    exited: handle.exited.then(async (status) => {
      const [out, err] = await output;
      return { ...status, output: `${err.toString('utf8')} ${out.toString('utf8')}`.trim() };
    }),
    kill: (signal) => handle.kill(signal),
    release: () => {
      report.destroy();
      handle.stdout?.destroy();
      handle.stderr?.destroy();
    },
  };
}

let delegate: RunDelegate | null = null;

/** Hands every later run() to `to` while it is available (null: the daemon spawns itself). */
export function delegateRuns(to: RunDelegate | null): void {
  delegate = to;
}

/**
 * Runs a program to completion and collects its output. Resolves for any exit status;
 * rejects with ProgramNotFoundError, ProcessTimeoutError, or the abort signal's reason.
 */
export function run(program: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  if (delegate?.available()) return delegate.run(program, args, options);
  return spawnAndRun(program, args, options);
}

/** run() by the daemon's own spawn. */
export function spawnAndRun(
  program: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const started = performance.now();
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(abortReason(signal, program));
  return new Promise<RunResult>((resolve, reject) => {
    const child = spawn(program, args, {
      env: options.env ?? process.env,
      cwd: options.cwd,
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      detached: true,
    });
    const cap = options.maxOutputBytes ?? DEFAULT_OUTPUT_CAP;
    const stdout = new OutputCollector(cap);
    const stderr = new OutputCollector(cap);
    child.stdout!.on('data', (chunk: Buffer) => stdout.add(chunk));
    child.stderr!.on('data', (chunk: Buffer) => stderr.add(chunk));
    let settled = false;
    let timedOut = false;
    let forceKill: NodeJS.Timeout | undefined;
    const timeoutMs = Math.min(options.timeoutMs ?? DEFAULT_TIMEOUT_MS, MAX_TIMER_MS);
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child, 'SIGTERM');
      forceKill = setTimeout(() => killGroup(child, 'SIGKILL'), options.killGraceMs ?? 2_000);
    }, timeoutMs);
    const onAbort = () => killGroup(child, 'SIGKILL');
    signal?.addEventListener('abort', onAbort, { once: true });

    if (options.onStarted) {
      const onStarted = options.onStarted;
      child.once('spawn', () => onStarted(child.pid!));
    }
    const result = (
      exitCode: number | null,
      exitSignal: NodeJS.Signals | null,
      outputHeld = false,
    ): RunResult => ({
      program,
      exitCode,
      signal: exitSignal,
      stdout: stdout.bytes(),
      stderr: stderr.bytes(),
      truncated: stdout.truncated || stderr.truncated,
      ...(options.settleOnExit ? { outputHeld } : {}),
      durationMs: performance.now() - started,
    });
    const finish = (outcome: { result?: RunResult; error?: Error }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(forceKill);
      signal?.removeEventListener('abort', onAbort);
      child.stdout!.destroy();
      child.stderr!.destroy();
      const ms = performance.now() - started;
      if (outcome.error) {
        notify(program, ms, 'error');
        reject(outcome.error);
        return;
      }
      const r = outcome.result!;
      if (signal?.aborted) {
        notify(program, ms, 'error');
        reject(abortReason(signal, program));
      } else if (timedOut) {
        notify(program, ms, 'error');
        reject(new ProcessTimeoutError(program, timeoutMs, r));
      } else {
        notify(program, ms, r.exitCode === 0 ? 'ok' : 'failed');
        resolve(r);
      }
    };
    child.once('error', (err: NodeJS.ErrnoException) =>
      finish({ error: new ProgramNotFoundError(program, err.code ?? err.message, { cause: err }) }),
    );
    if (options.settleOnExit) {
      child.once('exit', (code, exitSignal) => {
        child.once('close', () => finish({ result: result(code, exitSignal) }));
        setTimeout(() => finish({ result: result(code, exitSignal, true) }), EXIT_DRAIN_MS).unref();
      });
    } else {
      // 'close' comes after the output streams ended, so nothing written is lost.
      child.once('close', (code, exitSignal) => finish({ result: result(code, exitSignal) }));
    }
    if (options.input !== undefined) {
      // A program that exits without reading its stdin must not crash the daemon with EPIPE.
      child.stdin!.on('error', () => undefined);
      child.stdin!.end(options.input);
    }
  });
}

/** run(), and a CommandFailedError (kind Internal unless given) for a non-zero exit. */
export async function runChecked(
  program: string,
  args: readonly string[],
  options: RunOptions & { errorKind?: ErrorKind; what?: string } = {},
): Promise<RunResult> {
  const r = await run(program, args, options);
  if (r.exitCode !== 0) {
    throw new CommandFailedError(r, args, {
      ...(options.errorKind ? { kind: options.errorKind } : {}),
      ...(options.what ? { what: options.what } : {}),
    });
  }
  return r;
}

// ---- long-lived and streaming processes ----------------------------------------------

export type StdioSlot = IOType | StdioNull | StdioPipe | 'ipc' | Stream | number | null | undefined;

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** stdio[0..2] and any extra fds (conmon's sync and start pipes, a resize pipe). Default all pipes. */
  stdio?: StdioSlot[];
  /**
   * The process outlives the daemon (conmon, a pod's infra, the node): it is not waited on by
   * the event loop. It still leads its own process group either way.
   */
  daemon?: boolean;
  /** Aborting kills the process group (a client that went away). */
  signal?: AbortSignal;
  /**
   * Lead a process group of its own (default). false keeps the caller's session and
   * terminal: `rootless-cri enter -- sh` and the supervisor's daemon must stay in the foreground
   * of the user's terminal.
   */
  ownGroup?: boolean;
  /** The name helper metrics give it, when `program` only wraps it (spawn-in-cgroup runs conmon). */
  runs?: string;
}

export interface ExitStatus {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

/** A started process. `spawned` rejects with ProgramNotFoundError when it could not start. */
export interface ProcessHandle {
  readonly pid: number | undefined;
  readonly child: ChildProcess;
  readonly stdin: Writable | null;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  /** Resolves once the process started; rejects when it could not. */
  readonly spawned: Promise<void>;
  /** Resolves when the process exited (or could not start: exitCode null, signal null). */
  readonly exited: Promise<ExitStatus>;
  /** Whether the process has exited (or never started). */
  readonly done: boolean;
  /** Signals the process group (default; also after the leader exited) or the process alone. */
  kill(signal?: NodeJS.Signals, scope?: 'group' | 'process'): void;
}

/** Starts a process and hands back its stdio; the caller owns its lifetime. */
export function start(program: string, args: readonly string[], options: StartOptions = {}): ProcessHandle {
  const started = performance.now();
  const child = spawn(program, args, {
    env: options.env ?? process.env,
    cwd: options.cwd,
    stdio: (options.stdio ?? ['pipe', 'pipe', 'pipe']) as never,
    detached: options.ownGroup ?? true,
  });
  let done = false;
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', () => {
      notify(options.runs ?? program, performance.now() - started, 'ok');
      resolve();
    });
    child.once('error', (err: NodeJS.ErrnoException) => {
      if (child.pid === undefined)
        reject(new ProgramNotFoundError(program, err.code ?? err.message, { cause: err }));
    });
  });
  spawned.catch(() => undefined); // observed through `exited` too
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('exit', (exitCode, signal) => {
      done = true;
      resolve({ exitCode, signal });
    });
    child.once('error', () => {
      if (child.pid === undefined) {
        done = true;
        resolve({ exitCode: null, signal: null });
      }
    });
  });
  if (options.daemon) child.unref();
  const onAbort = () => killGroup(child, 'SIGKILL');
  if (options.signal) {
    if (options.signal.aborted) onAbort();
    else {
      options.signal.addEventListener('abort', onAbort, { once: true });
      void exited.then(() => options.signal!.removeEventListener('abort', onAbort));
    }
  }
  return {
    get pid() {
      return child.pid;
    },
    child,
    stdin: child.stdin,
    stdout: child.stdout,
    stderr: child.stderr,
    spawned,
    exited,
    get done() {
      return done;
    },
    kill(signal: NodeJS.Signals = 'SIGKILL', scope: 'group' | 'process' = 'group') {
      // The group may outlive its leader (a background child of an exec): signal it anyway.
      if (scope === 'group') {
        if (child.pid !== undefined) {
          try {
            process.kill(-child.pid, signal);
          } catch {
            // nobody left in the group
          }
        }
      } else if (!done) {
        try {
          child.kill(signal);
        } catch {
          // already gone
        }
      }
    },
  };
}

/** Collects a readable's bytes up to `cap` (the rest is read and dropped). */
export function collectStream(stream: Readable | null, cap: number): Promise<Buffer> {
  return new Promise((resolve) => {
    if (!stream) return resolve(Buffer.alloc(0));
    const collector = new OutputCollector(cap);
    stream.on('data', (chunk: Buffer) => collector.add(chunk));
    stream.once('error', () => resolve(collector.bytes()));
    stream.once('close', () => resolve(collector.bytes()));
  });
}
