/**
 * The daemon's run-to-completion programs started by native/run-server instead of by the
 * daemon itself (see run-server.c for why: a fork of the ~90 MiB daemon blocked its event
 * loop ~2 ms, a fork of the 1 MiB server costs ~0.1 ms). process-runner.ts's run() hands
 * every call here while the server is up; the semantics are run()'s own: a timeout (SIGTERM
 * to the process group, SIGKILL after the grace), an AbortSignal (SIGKILL to the group, the
 * signal's reason), output caps, settleOnExit, ProgramNotFoundError, helper-time accounting.
 * The daemon signals process groups itself: the server's children share its pid namespace.
 *
 * When the server dies (it should not), the runs in flight fail with Unavailable — a program
 * may or may not have run, so none is started again behind the caller's back — and later runs
 * start a new server (up to MAX_RESTARTS starts within RESTART_WINDOW_MS of each other; then
 * the daemon forks for itself again).
 * ROOTLESS_CRI_RUN_SERVER=0 turns it off (benchmarks compare both).
 */
import { AsyncResource } from 'node:async_hooks';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { UnavailableError } from '../errors.js';
import type { Logger } from '../log.js';
import { nativeHelperPath } from './native-helpers.js';
import {
  type DetachedOptions,
  type DetachedProcess,
  delegateRuns,
  type ExitStatus,
  MAX_TIMER_MS,
  type ProcessHandle,
  ProcessTimeoutError,
  ProgramNotFoundError,
  type ReportingOptions,
  type ReportingProcess,
  type RunOptions,
  type RunResult,
  reportRun,
  runCancelled,
  start,
} from './process-runner.js';

const DEFAULT_TIMEOUT_MS = 60_000;
const DEFAULT_OUTPUT_CAP = 1024 * 1024;
const MAX_RESTARTS = 5;
/** A server that ran this long before it ended does not count against MAX_RESTARTS. */
const RESTART_WINDOW_MS = 60_000;

interface ServerMessage {
  type?: string;
  id?: number;
  pid?: number;
  code?: number | null;
  signal?: NodeJS.Signals | null;
  out?: string;
  err?: string;
  truncated?: boolean;
  held?: boolean;
  data?: string;
  errno?: string;
}

interface Job {
  program: string;
  started: number;
  pid?: number;
  /** A signal asked for before the server said which pid the program has. */
  pendingSignal?: NodeJS.Signals;
  onStarted?(pid: number): void;
  /** Bytes the program wrote on its report pipe (fd 3). */
  onReport?(data: Buffer): void;
  onDone(message: ServerMessage): void;
  onServerGone(): void;
}

/** A promise and its settling functions; a rejection nobody awaits is not an unhandled one. */
function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (err: Error) => void } {
  let resolve: (value: T) => void = () => undefined;
  let reject: (err: Error) => void = () => undefined;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/** Signals the job's process group, or once the server says which it is. */
function signalJob(job: Job, signal: NodeJS.Signals): void {
  if (job.pid !== undefined) signalGroup(job.pid, signal);
  else job.pendingSignal = signal;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/** The request as run-server.c reads it: NUL-separated fields, then the stdin flag and bytes. */
export function encodeRunRequest(
  id: number,
  program: string,
  args: readonly string[],
  options: RunOptions,
  report = false,
): string {
  const env = options.env ?? process.env;
  const pairs = Object.entries(env)
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  const fields = [
    String(id),
    program,
    options.cwd ?? '',
    options.settleOnExit ? '1' : '0',
    report ? '1' : '0',
    String(options.maxOutputBytes ?? DEFAULT_OUTPUT_CAP),
    String(args.length),
    ...args,
    String(pairs.length),
    ...pairs,
  ];
  for (const f of fields) {
    if (f.includes('\0')) throw new UnavailableError(`cannot run ${program}: an argument holds a NUL byte`);
  }
  const head = Buffer.from(`${fields.join('\0')}\0${options.input === undefined ? '0' : '1'}`);
  const input = options.input === undefined ? Buffer.alloc(0) : Buffer.from(options.input);
  return Buffer.concat([head, input]).toString('base64');
}

export class RunServer {
  private handle: ProcessHandle | null = null;
  private nextId = 1;
  private readonly jobs = new Map<number, Job>();
  private restarts = 0;
  private lastStart = 0;

  constructor(
    private readonly logger: Logger,
    private readonly program = nativeHelperPath('run-server'),
  ) {}

  /** Starts the server (again); false when it cannot be used. */
  private ensure(): boolean {
    if (this.handle && !this.handle.done) return true;
    if (this.restarts > MAX_RESTARTS) return false;
    const now = Date.now();
    this.restarts = now - this.lastStart > RESTART_WINDOW_MS ? 1 : this.restarts + 1;
    this.lastStart = now;
    const handle = start(this.program, [], {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      daemon: true,
    });
    const { child } = handle;
    // Neither the server nor its channel keeps the daemon alive; a run's own timer does.
    child.channel?.unref();
    child.on('message', (message: ServerMessage) => this.onMessage(message));
    void handle.exited.then((status) => {
      if (this.handle === handle) this.handle = null;
      if (this.jobs.size > 0 || status.signal !== 'SIGKILL')
        this.logger.warn({ status, inFlight: this.jobs.size }, 'the run server ended');
      const orphans = [...this.jobs.values()];
      this.jobs.clear();
      for (const job of orphans) job.onServerGone();
    });
    this.handle = handle;
    return true;
  }

  private onMessage(message: ServerMessage): void {
    const job = message.id === undefined ? undefined : this.jobs.get(message.id);
    if (!job) return;
    if (message.type === 'started' && typeof message.pid === 'number') {
      job.pid = message.pid;
      if (job.pendingSignal) signalGroup(message.pid, job.pendingSignal);
      job.onStarted?.(message.pid);
    } else if (message.type === 'report' && typeof message.data === 'string') {
      job.onReport?.(Buffer.from(message.data, 'base64'));
    } else if (message.type === 'done') {
      this.jobs.delete(message.id!);
      job.onDone(message);
    }
  }

  /** The server's pid while it runs. */
  get pid(): number | undefined {
    return this.handle && !this.handle.done ? this.handle.pid : undefined;
  }

  /** Whether runs go through the server now (it is up or can be started). */
  available(): boolean {
    return this.ensure();
  }

  run(program: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const started = performance.now();
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(runCancelled(signal, program));
    if (!this.ensure() || !this.handle) {
      return Promise.reject(new UnavailableError(`cannot run ${program}: the run server is not available`));
    }
    const id = this.nextId++;
    let request: string;
    try {
      request = encodeRunRequest(id, program, args, options);
    } catch (err) {
      return Promise.reject(err);
    }
    const handle = this.handle;
    return new Promise<RunResult>((resolve, reject) => {
      let settled = false;
      let timedOut = false;
      let forceKill: NodeJS.Timeout | undefined;
      const timeoutMs = Math.min(options.timeoutMs ?? DEFAULT_TIMEOUT_MS, MAX_TIMER_MS);
      // The server's answers arrive in the channel's context: each goes back to the caller's
      // (the CRI call whose helper time this run is, os/helper-time.ts).
      const job: Job = {
        program,
        started,
        ...(options.onStarted ? { onStarted: AsyncResource.bind(options.onStarted) } : {}),
        onDone: AsyncResource.bind((message: ServerMessage) => {
          if (message.errno !== undefined) {
            finish(new ProgramNotFoundError(program, message.errno));
            return;
          }
          const result: RunResult = {
            program,
            exitCode: message.code ?? null,
            signal: message.signal ?? null,
            stdout: Buffer.from(message.out ?? '', 'base64'),
            stderr: Buffer.from(message.err ?? '', 'base64'),
            truncated: message.truncated === true,
            ...(options.settleOnExit ? { outputHeld: message.held === true } : {}),
            durationMs: performance.now() - started,
          };
          if (signal?.aborted) finish(runCancelled(signal, program));
          else if (timedOut) finish(new ProcessTimeoutError(program, timeoutMs, result));
          else finish(undefined, result);
        }),
        onServerGone: AsyncResource.bind(() =>
          finish(
            new UnavailableError(
              `${program} was started but the run server ended before it reported; it may or may not have run`,
            ),
          ),
        ),
      };
      const kill = (sig: NodeJS.Signals) => signalJob(job, sig);
      const timer = setTimeout(() => {
        timedOut = true;
        kill('SIGTERM');
        forceKill = setTimeout(() => kill('SIGKILL'), options.killGraceMs ?? 2_000);
      }, timeoutMs);
      const onAbort = () => kill('SIGKILL');
      signal?.addEventListener('abort', onAbort, { once: true });
      const finish = (error: Error | undefined, result?: RunResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearTimeout(forceKill);
        signal?.removeEventListener('abort', onAbort);
        const ms = performance.now() - started;
        if (error || !result) {
          reportRun(program, ms, 'error');
          reject(error);
        } else {
          reportRun(program, ms, result.exitCode === 0 ? 'ok' : 'failed');
          resolve(result);
        }
      };
      this.submit(handle, id, job, request, (err) =>
        finish(new UnavailableError(`cannot run ${program}: the run server did not take it: ${err.message}`)),
      );
    });
  }

  /** Sends a job's request; `failed` when the server did not take it. */
  private submit(
    handle: ProcessHandle,
    id: number,
    job: Job,
    request: string,
    failed: (err: Error) => void,
  ): void {
    this.jobs.set(id, job);
    handle.child.send({ type: 'run', req: request }, (err) => {
      if (!err) return;
      this.jobs.delete(id);
      failed(err);
    });
  }

  /**
   * Sends a job that outlives the call (detached or reporting), with 64 KiB of output kept: to
   * the server when it is up, else the job ends as if the server had gone; `failed` when its
   * request cannot be made. Its helper time is counted from its start.
   */
  private launch(
    job: Job,
    started: Promise<number>,
    program: string,
    args: readonly string[],
    options: DetachedOptions,
    report: boolean,
    failed: (err: Error) => void,
  ): { id: number; handle: ProcessHandle | null } {
    const id = this.nextId++;
    const handle = this.ensure() ? this.handle : null;
    if (!handle) {
      job.onServerGone();
    } else {
      try {
        const request = encodeRunRequest(
          id,
          program,
          args,
          { ...options, maxOutputBytes: 64 * 1024 },
          report,
        );
        this.submit(handle, id, job, request, () => job.onServerGone());
      } catch (err) {
        failed(err as Error);
      }
    }
    void started.then(
      () => reportRun(job.program, performance.now() - job.started, 'ok'),
      () => reportRun(job.program, performance.now() - job.started, 'error'),
    );
    return { id, handle };
  }

  /**
   * A process that outlives the call (see process-runner.ts's startDetached): a run without a
   * timeout whose pid is handed back as soon as it runs; its end, whenever it comes, settles
   * `exited`. The server keeps reading its stderr (64 KiB kept) until then.
   */
  startDetached(program: string, args: readonly string[], options: DetachedOptions): DetachedProcess {
    const { promise: started, resolve: resolvePid, reject: rejectPid } = deferred<number>();
    const { promise: exited, resolve: resolveExit } = deferred<ExitStatus & { stderr: string }>();
    const job: Job = {
      program,
      started: performance.now(),
      onStarted: (pid) => resolvePid(pid),
      onDone: (message) => {
        if (message.errno !== undefined) rejectPid(new ProgramNotFoundError(program, message.errno));
        resolveExit({
          exitCode: message.code ?? null,
          signal: message.signal ?? null,
          stderr: Buffer.from(message.err ?? '', 'base64').toString('utf8'),
        });
      },
      onServerGone: () => {
        rejectPid(new UnavailableError(`${program}: the run server ended before it reported`));
        resolveExit({ exitCode: null, signal: null, stderr: '' });
      },
    };
    this.launch(job, started, program, args, options, false, (err) => {
      rejectPid(err);
      resolveExit({ exitCode: null, signal: null, stderr: '' });
    });
    return {
      started,
      exited,
      kill: (signal) => signalJob(job, signal),
      release: () => undefined,
    };
  }

  /**
   * A process reporting on fd 3 (process-runner.ts's startReporting): the server passes on what
   * arrives there as it arrives, and keeps reading (stdout and stderr too, 64 KiB kept) until
   * every pipe is closed or release() says the daemon has what it wanted.
   */
  startReporting(program: string, args: readonly string[], options: ReportingOptions): ReportingProcess {
    const { promise: started, resolve: resolvePid, reject: rejectPid } = deferred<number>();
    const { promise: exited, resolve: resolveExit } = deferred<ExitStatus & { output: string }>();
    const report = new PassThrough();
    const job: Job = {
      program: options.runs ?? program,
      started: performance.now(),
      onStarted: (pid) => resolvePid(pid),
      onReport: (data) => {
        if (!report.destroyed) report.write(data);
      },
      onDone: (message) => {
        if (message.errno !== undefined) rejectPid(new ProgramNotFoundError(program, message.errno));
        report.end();
        const err = Buffer.from(message.err ?? '', 'base64').toString('utf8');
        const out = Buffer.from(message.out ?? '', 'base64').toString('utf8');
        resolveExit({
          exitCode: message.code ?? null,
          signal: message.signal ?? null,
          output: `${err} ${out}`.trim(),
        });
      },
      onServerGone: () => {
        const what = `the run server ended before ${path.basename(options.runs ?? program)} reported`;
        rejectPid(new UnavailableError(`${program}: ${what}`));
        report.end();
        resolveExit({ exitCode: null, signal: null, output: what });
      },
    };
    const { id, handle } = this.launch(job, started, program, args, options, true, (err) => {
      rejectPid(err);
      report.end();
      resolveExit({ exitCode: null, signal: null, output: '' });
    });
    let released = false;
    return {
      started,
      report,
      exited,
      kill: (signal) => signalJob(job, signal),
      release: () => {
        if (released) return;
        released = true;
        report.end();
        if (this.jobs.get(id) === job && handle && !handle.done) {
          handle.child.send({ type: 'release', id }, () => undefined);
        }
      },
    };
  }

  /** Stops the server (the daemon's shutdown); runs in flight fail. */
  async close(): Promise<void> {
    this.restarts = MAX_RESTARTS + 1;
    const handle = this.handle;
    if (!handle) return;
    handle.kill('SIGKILL', 'process');
    await handle.exited;
  }
}

/**
 * Starts the run server and makes process-runner's run() use it; null when it is turned off
 * (ROOTLESS_CRI_RUN_SERVER=0).
 */
export function useRunServer(logger: Logger, env: NodeJS.ProcessEnv = process.env): RunServer | null {
  if (env.ROOTLESS_CRI_RUN_SERVER === '0') return null;
  const server = new RunServer(logger);
  delegateRuns(server);
  return server;
}
