/**
 * `crun exec`: one implementation for ExecSync (output collected, a deadline) and for the
 * streaming server's exec (stdio handed to the client, pipes or a pty).
 *
 *   without tty:  crun exec --process P --pid-file F <id>     stdio = pipes (the process
 *                 inherits them: crun does not sit in between)
 *   with tty:     console-relay S -- crun exec --tty --console-socket S ...
 *                 crun hands the pty master to the relay, which relays it over pipes and
 *                 applies "COLUMNS ROWS\n" resizes written to its fd 3
 *
 * The process spec is the container's own (user, env, cwd, capabilities) with the command
 * replaced. crun exec runs in the foreground and exits with the process's status.
 *
 * Where an exec session's processes are: crun forks an intermediate process that calls
 * setsid(), joins the container's namespaces, starts the exec'd process (a child of crun, whose
 * pid goes to the pid file) and exits. So the exec'd process and everything it forks are in a
 * session and process group led by a pid that no longer exists: neither the pid-file pid's
 * group nor crun's (issue 12 item 3: `sh -c 'sleep 100000 & echo started'` kept ExecSync
 * waiting for its output forever, and the sleep ran on). Hence:
 * - ExecSync answers when the exec'd process exits, with what it wrote until then (and for a
 *   200 ms drain after: run()'s settleOnExit; crun is started by the run server, so the daemon
 *   does not fork itself for a probe). Whatever still held its output pipes then (a
 *   background child) is found through /proc and killed with its process group, as a probe
 *   must not leave processes behind.
 * - At the deadline the exec'd process's group (read from /proc while crun, its parent, still
 *   runs) is killed, and whatever holds the pipes; the output collected so far is dropped and
 *   the answer is DEADLINE_EXCEEDED with the time that really passed.
 * - a streaming exec whose client goes away is killed the same way (its group, and the pid
 *   crun wrote).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CancelledError,
  CriError,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
} from '../errors.js';
import { failpoint } from '../failpoint.js';
import type { Logger } from '../log.js';
import { syncCallTurn } from './kernel-file.js';
import type { OciProcess, OciSpec } from './oci-spec.js';
import { exitStatus, type ProcessHandle, run, start } from './process-runner.js';
import { channelHolders, processGroupOf, stdioChannels } from './process-tree.js';
import type { StdioOptions, StreamSession } from './stream-session.js';

/** Upper bound of what ExecSync keeps of each stream (the CRI API's 16 MiB). */
export const EXEC_OUTPUT_CAP = 16 * 1024 * 1024;
/**
 * ExecSync's run of crun has a timeout of its own only as a backstop: the deadline is enforced
 * by killing the exec session (crun's process group is not the exec'd process's).
 */
const BACKSTOP_MS = 30_000;
/** Unix socket paths longer than this do not fit sockaddr_un. */
const MAX_SOCKET_PATH = 100;

export interface CrunExecOptions {
  crunPath: string;
  crunRoot: string;
  consoleRelayPath: string;
  logger: Logger;
}

export interface ExecResult {
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
}

/** The container's process spec with the command replaced (and a terminal when asked). */
export function execProcess(base: OciProcess, cmd: string[], tty: boolean): OciProcess {
  if (cmd.length === 0) throw new InternalError('exec without a command');
  const env = [...(base.env ?? [])];
  // A terminal program needs TERM; the container's own env may not set one (containerd does the same).
  if (tty && !env.some((e) => e.startsWith('TERM='))) env.push('TERM=xterm');
  return { ...base, args: [...cmd], terminal: tty, env };
}

/** One Readable with the data of both; ends when both have ended; destroying it destroys both. */
export function mergeOutputs(first: Readable, second: Readable): Readable {
  const merged = new PassThrough();
  let open = 2;
  for (const source of [first, second]) {
    source.pipe(merged, { end: false });
    source.once('close', () => {
      open -= 1;
      if (open === 0) merged.end();
    });
  }
  merged.once('close', () => {
    first.destroy();
    second.destroy();
  });
  return merged;
}

/** The crun of an exec session, as killSession needs it. */
interface CrunRun {
  /** crun has exited (its pid may have been reused since). */
  readonly done: boolean;
  /** SIGKILL to crun and its process group. */
  kill(): void;
  readonly exited: Promise<unknown>;
}

function crunRunOf(handle: ProcessHandle): CrunRun {
  return {
    get done() {
      return handle.done;
    },
    kill: () => handle.kill('SIGKILL'),
    exited: handle.exited,
  };
}

interface PreparedExec {
  processFile: string;
  pidFile: string;
  cleanup(): Promise<void>;
}

/** Containers whose process spec is kept in memory; a node runs a few hundred, past this the oldest go. */
const PROCESS_CACHE_LIMIT = 1024;

export class CrunExec {
  /**
   * Each container's process spec by bundle dir: read from config.json by the first exec, as
   * the spec's process never changes after create (UpdateContainerResources changes only
   * resources). A liveness probe every few seconds read and parsed the whole spec each time
   * (four round trips to the libuv pool, a third of a millisecond of every ExecSync).
   */
  private readonly processes = new Map<string, OciProcess>();

  constructor(private readonly options: CrunExecOptions) {}

  /**
   * The exec's two small files, in the bundle dir (under the run dir, a tmpfs on a systemd
   * host; never synced). They are written, read and removed with synchronous calls taking
   * turns in kernel-file's budget: through fs.promises the six calls were a dozen round trips
   * to the libuv pool, 0.7 ms of every ExecSync (a liveness probe every few seconds, per pod).
   */
  private async prepare(bundleDir: string, id: string, process: OciProcess): Promise<PreparedExec> {
    const name = `exec-${randomBytes(6).toString('hex')}`;
    const processFile = path.join(bundleDir, `${name}.json`);
    const pidFile = path.join(bundleDir, `${name}.pid`);
    await syncCallTurn();
    try {
      writeFileSync(processFile, JSON.stringify(process), { mode: 0o600 });
    } catch (error) {
      throw new FailedPreconditionError(
        `cannot exec in container ${id}: its bundle is gone; it may have been removed`,
        {
          cause: error,
        },
      );
    }
    return {
      processFile,
      pidFile,
      cleanup: async () => {
        for (const file of [processFile, pidFile]) {
          await syncCallTurn();
          rmSync(file, { force: true });
        }
      },
    };
  }

  /**
   * The container's own process spec (from its bundle, then from memory until forget()).
   * Callers copy what they change.
   */
  async baseProcess(bundleDir: string, id: string): Promise<OciProcess> {
    const known = this.processes.get(bundleDir);
    if (known) return known;
    try {
      const spec = JSON.parse(await readFile(path.join(bundleDir, 'config.json'), 'utf8')) as OciSpec;
      this.processes.set(bundleDir, spec.process);
      if (this.processes.size > PROCESS_CACHE_LIMIT) {
        const oldest = this.processes.keys().next().value;
        if (oldest !== undefined) this.processes.delete(oldest);
      }
      return spec.process;
    } catch (error) {
      throw new FailedPreconditionError(
        `cannot exec in container ${id}: cannot read its bundle; it may have been removed`,
        { cause: error },
      );
    }
  }

  /** The bundle was made anew or the container deleted: its process spec is read again next time. */
  forget(bundleDir: string): void {
    this.processes.delete(bundleDir);
  }

  private crunArgs(prepared: PreparedExec, extra: string[], id: string): string[] {
    return [
      `--root=${this.options.crunRoot}`,
      'exec',
      ...extra,
      '--process',
      prepared.processFile,
      '--pid-file',
      prepared.pidFile,
      id,
    ];
  }

  /**
   * ExecSync: runs `process` in the container and collects its output, within `timeoutMs`.
   * crun is started by run() (the run server when it is up: the daemon does not fork itself),
   * settling when crun exits; its pid comes back at once, for the pipes and the session.
   */
  async execSync(
    id: string,
    bundleDir: string,
    process: Partial<OciProcess> & { args: string[] },
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<ExecResult> {
    const base = await this.baseProcess(bundleDir, id);
    const prepared = await this.prepare(bundleDir, id, { ...base, terminal: false, ...process });
    const began = performance.now();
    let crunPid: number | undefined;
    let ended = false;
    // What crun's stdout and stderr are, read while it surely runs (it outlives the exec'd
    // process): a background child that keeps them open is found by them later.
    let channels: Promise<Set<string>> = Promise.resolve(new Set());
    let onStarted: () => void = () => undefined;
    const started = new Promise<void>((resolve) => {
      onStarted = resolve;
    });
    // Not given the abort signal, and its own timeout only a backstop: on abort or at the
    // deadline the session is killed by killSession, which needs crun alive to read the exec'd
    // pid safely (crun's group is not the exec'd process's).
    const ran = run(this.options.crunPath, this.crunArgs(prepared, [], id), {
      maxOutputBytes: EXEC_OUTPUT_CAP,
      settleOnExit: true,
      timeoutMs: options.timeoutMs + BACKSTOP_MS,
      onStarted: (pid) => {
        crunPid = pid;
        channels = stdioChannels(pid, [1, 2]).catch(() => new Set<string>());
        onStarted();
      },
    }).finally(() => {
      ended = true;
    });
    const crun: CrunRun = {
      get done() {
        return ended;
      },
      kill: () => {
        if (crunPid !== undefined && !ended) signalTree(crunPid);
      },
      exited: ran.then(
        () => undefined,
        () => undefined,
      ),
    };
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'deadline'>((resolve) => {
      timer = setTimeout(() => resolve('deadline'), options.timeoutMs);
    });
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<'aborted'>((resolve) => {
      onAbort = () => resolve('aborted');
      if (options.signal?.aborted) resolve('aborted');
      else options.signal?.addEventListener('abort', onAbort, { once: true });
    });
    try {
      await Promise.race([started, ran]);
      if (crunPid !== undefined) failpoint('exec.started');
      const outcome = await Promise.race([ran, deadline, aborted]);
      if (outcome === 'deadline' || outcome === 'aborted') {
        await this.killSession(crun, prepared.pidFile);
        await killChannelHolders(await channels);
        if (outcome === 'aborted') {
          const reason: unknown = options.signal?.reason;
          throw reason instanceof CriError ? reason : new CancelledError('ExecSync was cancelled');
        }
        const elapsed = Math.round(performance.now() - began);
        throw new DeadlineExceededError(
          `command ${JSON.stringify(process.args)} timed out after ${elapsed} ms (timeout ${options.timeoutMs} ms); every process it started was killed`,
        );
      }
      // The exec'd process exited and crun with it: what it left running in the background
      // (holding the output pipes open past the settle) goes with the rest of its session.
      await this.killLeftovers(prepared.pidFile);
      if (outcome.outputHeld) await killChannelHolders(await channels);
      return { exitCode: exitStatus(outcome), stdout: outcome.stdout, stderr: outcome.stderr };
    } finally {
      clearTimeout(timer);
      if (onAbort) options.signal?.removeEventListener('abort', onAbort);
      await crun.exited;
      await prepared.cleanup();
    }
  }

  /** A streaming exec: stdio handed to the streaming server. */
  async execStream(
    id: string,
    bundleDir: string,
    cmd: string[],
    stdio: StdioOptions,
  ): Promise<StreamSession> {
    const base = await this.baseProcess(bundleDir, id);
    const prepared = await this.prepare(bundleDir, id, execProcess(base, cmd, stdio.tty));
    let handle: ProcessHandle;
    let consoleSocket: string | null = null;
    if (stdio.tty) {
      consoleSocket = this.consoleSocketPath(bundleDir, path.basename(prepared.pidFile, '.pid'));
      handle = start(
        this.options.consoleRelayPath,
        [
          consoleSocket,
          '--',
          this.options.crunPath,
          ...this.crunArgs(prepared, ['--tty', '--console-socket', consoleSocket], id),
        ],
        { stdio: [stdio.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe', 'pipe'] },
      );
    } else {
      handle = start(this.options.crunPath, this.crunArgs(prepared, [], id), {
        stdio: [
          stdio.stdin ? 'pipe' : 'ignore',
          stdio.stdout ? 'pipe' : 'ignore',
          stdio.stderr ? 'pipe' : 'ignore',
        ],
      });
    }
    const cleanup = async (): Promise<void> => {
      await prepared.cleanup();
      if (consoleSocket) await rm(consoleSocket, { force: true });
    };
    try {
      await handle.spawned;
    } catch (err) {
      await cleanup();
      throw err;
    }
    return this.session(handle, { id, cmd, stdio, pidFile: prepared.pidFile, cleanup });
  }

  /** In the bundle dir when short enough, else under the system temp dir. */
  private consoleSocketPath(bundleDir: string, name: string): string {
    const preferred = path.join(bundleDir, `${name}.sock`);
    if (Buffer.byteLength(preferred) <= MAX_SOCKET_PATH) return preferred;
    return path.join(tmpdir(), `rcri-${name}.sock`);
  }

  private session(
    handle: ProcessHandle,
    run: { id: string; cmd: string[]; stdio: StdioOptions; pidFile: string; cleanup: () => Promise<void> },
  ): StreamSession {
    const log = this.options.logger.child({ container: run.id, exec: run.cmd[0] });
    const { child } = handle;
    // With a tty the relay's stderr carries crun's own messages ("executable file not found"):
    // they go to the terminal, as a runtime's do. Without one, crun's stderr is the process's.
    let diagnostics = '';
    let stdout: Readable | undefined = child.stdout ?? undefined;
    if (run.stdio.tty && child.stdout && child.stderr) {
      child.stderr.on('data', (chunk: Buffer) => {
        if (diagnostics.length < 4096) diagnostics += chunk.toString('utf8');
      });
      stdout = mergeOutputs(child.stdout, child.stderr);
    }
    if (stdout && !run.stdio.stdout) {
      stdout.resume(); // nobody reads it, but the terminal must not block
      stdout = undefined;
    }
    let exitCode: number | null = null;
    const exited = handle.exited.then(async ({ exitCode: code, signal }) => {
      exitCode = exitStatus({ exitCode: code, signal });
      if (diagnostics.trim() !== '' && exitCode !== 0) {
        log.info({ exitCode, crun: diagnostics.trim() }, 'exec ended with runtime messages');
      }
      await run.cleanup();
      return exitCode;
    });
    const resizeFd = run.stdio.tty ? (child.stdio[3] as Writable | null) : null;
    resizeFd?.on('error', () => {});
    child.stdin?.on('error', () => {});
    return {
      stdin: child.stdin ?? undefined,
      stdout,
      stderr: run.stdio.tty ? undefined : (child.stderr ?? undefined),
      resize(width, height) {
        if (resizeFd && !resizeFd.destroyed && width > 0 && height > 0)
          resizeFd.write(`${width} ${height}\n`);
      },
      wait: () => exited,
      kill: () => {
        if (exitCode !== null) return;
        void this.killSession(crunRunOf(handle), run.pidFile).catch((error) =>
          log.warn({ err: error }, 'could not kill the exec process'),
        );
      },
    };
  }

  /**
   * Kills an exec session while it runs: the exec'd process and its process group (crun
   * makes it the leader of a session of its own, so what it forks follows it), then crun's own
   * group. crun writes the pid just after starting the process: wait for it briefly.
   */
  private async killSession(handle: CrunRun, pidFile: string): Promise<void> {
    const deadline = Date.now() + 2_000;
    for (;;) {
      const pid = await readPid(pidFile);
      if (pid !== null) {
        // While crun runs, it is the parent of this pid, so the pid cannot have been reused.
        if (!handle.done) {
          // Its group first (the session crun's intermediate process started), then itself.
          await killGroupOf(pid);
          signalTree(pid);
        }
        break;
      }
      if (handle.done || Date.now() >= deadline) break;
      await sleep(20);
    }
    handle.kill();
    await handle.exited;
  }

  /**
   * After the exec'd process exited: what it left in its process group (background children
   * holding the output pipes) and crun's group. The group outlives its leader while members
   * remain, so it is still addressed by the leader's pid.
   */
  private async killLeftovers(pidFile: string): Promise<void> {
    const pid = await readPid(pidFile);
    if (pid !== null) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // nobody left in it
      }
    }
  }
}

/** SIGKILL to the process group `pid` is in, unless that is this process's own group. */
async function killGroupOf(pid: number): Promise<void> {
  const group = await processGroupOf(pid);
  if (group === null || group <= 1 || group === (await processGroupOf(process.pid))) return;
  try {
    process.kill(-group, 'SIGKILL');
  } catch {
    // the group is gone
  }
}

/** Kills whatever (else) holds these pipes or sockets, with the process groups they are in. */
async function killChannelHolders(channels: ReadonlySet<string>): Promise<void> {
  for (const holder of await channelHolders(channels)) {
    await killGroupOf(holder);
    try {
      process.kill(holder, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

async function readPid(pidFile: string): Promise<number | null> {
  await syncCallTurn();
  let text = '';
  try {
    text = readFileSync(pidFile, 'utf8');
  } catch {
    // not written (yet)
  }
  const pid = Number(text.trim());
  return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
}

/** SIGKILL to a process and to the process group it leads (if it leads one). */
function signalTree(pid: number): void {
  for (const target of [-pid, pid]) {
    try {
      process.kill(target, 'SIGKILL');
    } catch {
      // gone, or not a group leader
    }
  }
}
