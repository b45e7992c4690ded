/**
 * Exec for the streaming server (`crictl exec -i/-t`, `kubectl exec`): a process started
 * in a running container with `crun exec`, its stdio connected to the client.
 *
 *   without tty:  crun exec --process P --pid-file F <id>     stdio = pipes (the process
 *                 inherits them: crun does not sit in between)
 *   with tty:     console-relay S -- crun exec --tty --console-socket S ...
 *                 crun hands the pty master to the relay, which relays it over pipes and
 *                 applies "COLUMNS ROWS\n" resizes written to its fd 3
 *
 * The process spec is the container's own (user, env, cwd, capabilities) with the command
 * replaced. crun exec runs in the foreground and exits with the process's status. A client
 * that goes away gets its process killed: the pid crun wrote, then crun (or the relay).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { constants as osConstants, tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { FailedPreconditionError, InternalError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ExecTarget, StdioOptions, StreamSession } from '../streaming/targets.js';
import { requireRunning, type StreamableContainer, type StreamableContainers } from './exec-sync.js';
import type { OciProcess, OciSpec } from './oci-spec.js';

/** Where `npm run build` puts a native helper, from src/container/ or dist/src/container/. */
export function nativeHelperPath(name: string): string {
  const candidates = [`../../native/build/${name}`, `../../../native/build/${name}`].map((rel) =>
    fileURLToPath(new URL(rel, import.meta.url)),
  );
  return candidates.find((p) => existsSync(p)) ?? candidates[0]!;
}

/** Starts a process in a container; the seam between ExecTarget and crun (fakes in tests). */
export interface ExecLauncher {
  launch(container: StreamableContainer, cmd: string[], options: StdioOptions): Promise<StreamSession>;
}

export class ContainerExecTarget implements ExecTarget {
  constructor(
    private readonly containers: StreamableContainers,
    private readonly launcher: ExecLauncher,
  ) {}

  async validate(containerId: string): Promise<void> {
    await requireRunning(this.containers, containerId, 'Exec');
  }

  async exec(containerId: string, cmd: string[], options: StdioOptions): Promise<StreamSession> {
    // Checked again: the container may have stopped since the URL was handed out.
    const container = await requireRunning(this.containers, containerId, 'Exec');
    return this.launcher.launch(container, cmd, options);
  }
}

export interface CrunExecLauncherOptions {
  crunPath: string;
  /** crun --root (the same as the container runtime's). */
  crunRoot: string;
  /** native/build/console-relay. */
  consoleRelayPath?: string;
  /** Where console sockets go; must be short (a unix socket path has 108 bytes). */
  socketDir?: string;
  logger: Logger;
  /** How long kill() waits for crun to write the process's pid. */
  pidWaitMs?: number;
}

/** Unix socket paths longer than this do not fit sockaddr_un. */
const MAX_SOCKET_PATH = 100;

export class CrunExecLauncher implements ExecLauncher {
  private readonly relay: string;

  constructor(private readonly options: CrunExecLauncherOptions) {
    this.relay = options.consoleRelayPath ?? nativeHelperPath('console-relay');
  }

  async launch(container: StreamableContainer, cmd: string[], options: StdioOptions): Promise<StreamSession> {
    const { id, bundleDir } = container;
    const name = `exec-${randomBytes(6).toString('hex')}`;
    const processFile = path.join(bundleDir, `${name}.json`);
    const pidFile = path.join(bundleDir, `${name}.pid`);
    let base: OciSpec;
    try {
      base = JSON.parse(await readFile(path.join(bundleDir, 'config.json'), 'utf8')) as OciSpec;
    } catch (error) {
      throw new FailedPreconditionError(
        `Exec: cannot read the bundle of container ${id}; it may have been removed`,
        { cause: error },
      );
    }
    await writeFile(processFile, JSON.stringify(execProcess(base.process, cmd, options.tty)), {
      mode: 0o600,
    });
    const crunArgs = [
      `--root=${this.options.crunRoot}`,
      'exec',
      '--process',
      processFile,
      '--pid-file',
      pidFile,
    ];
    let child: ChildProcess;
    let consoleSocket: string | null = null;
    if (options.tty) {
      consoleSocket = this.consoleSocketPath(bundleDir, name);
      child = spawn(
        this.relay,
        [
          consoleSocket,
          '--',
          this.options.crunPath,
          ...crunArgs.slice(0, 2),
          '--tty',
          '--console-socket',
          consoleSocket,
          ...crunArgs.slice(2),
          id,
        ],
        { stdio: [options.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe', 'pipe'] },
      );
    } else {
      child = spawn(this.options.crunPath, [...crunArgs, id], {
        stdio: [
          options.stdin ? 'pipe' : 'ignore',
          options.stdout ? 'pipe' : 'ignore',
          options.stderr ? 'pipe' : 'ignore',
        ],
      });
    }
    const cleanup = async (): Promise<void> => {
      await rm(processFile, { force: true });
      await rm(pidFile, { force: true });
      if (consoleSocket) await rm(consoleSocket, { force: true });
    };
    return this.wrap(child, { id, cmd, options, pidFile, cleanup });
  }

  /** In the bundle dir when short enough, else under the system temp dir. */
  private consoleSocketPath(bundleDir: string, name: string): string {
    const dir = this.options.socketDir ?? bundleDir;
    const preferred = path.join(dir, `${name}.sock`);
    if (Buffer.byteLength(preferred) <= MAX_SOCKET_PATH) return preferred;
    return path.join(tmpdir(), `rcri-${name}.sock`);
  }

  private wrap(
    child: ChildProcess,
    run: { id: string; cmd: string[]; options: StdioOptions; pidFile: string; cleanup: () => Promise<void> },
  ): StreamSession {
    const { logger } = this.options;
    const log = logger.child({ container: run.id, exec: run.cmd[0] });
    // With a tty the relay's stderr carries crun's own messages ("executable file not found"):
    // they go to the terminal, as a runtime's do. Without one, crun's stderr is the process's.
    let diagnostics = '';
    let stdout: Readable | undefined = child.stdout ?? undefined;
    if (run.options.tty && child.stdout && child.stderr) {
      child.stderr.on('data', (chunk: Buffer) => {
        if (diagnostics.length < 4096) diagnostics += chunk.toString('utf8');
      });
      stdout = mergeOutputs(child.stdout, child.stderr);
    }
    if (stdout && !run.options.stdout) {
      stdout.resume(); // nobody reads it, but the terminal must not block
      stdout = undefined;
    }
    let exitCode: number | null = null;
    const exited = new Promise<number>((resolve, reject) => {
      child.once('error', (error) => {
        void run.cleanup();
        reject(
          new FailedPreconditionError(
            `Exec: cannot run ${run.options.tty ? this.relay : this.options.crunPath}: ${error.message}`,
            { cause: error },
          ),
        );
      });
      child.once('exit', (code, signal) => {
        exitCode = code ?? 128 + signalNumber(signal);
        if (diagnostics.trim() !== '' && exitCode !== 0) {
          log.info({ exitCode, crun: diagnostics.trim() }, 'exec ended with runtime messages');
        }
        void run.cleanup().finally(() => resolve(exitCode!));
      });
    });
    const resizeFd = run.options.tty ? (child.stdio[3] as Writable | null) : null;
    resizeFd?.on('error', () => {});
    child.stdin?.on('error', () => {});
    return {
      stdin: child.stdin ?? undefined,
      stdout,
      stderr: run.options.tty ? undefined : (child.stderr ?? undefined),
      resize(width, height) {
        if (resizeFd && !resizeFd.destroyed && width > 0 && height > 0)
          resizeFd.write(`${width} ${height}\n`);
      },
      wait: () => exited,
      kill: () => {
        if (exitCode !== null) return;
        void killExec(child, run.pidFile, this.options.pidWaitMs ?? 2_000).catch((error) =>
          log.warn({ err: error }, 'could not kill the exec process'),
        );
      },
    };
  }
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

/**
 * Kills the exec'd process (killing crun alone would leave it running in the container),
 * then crun or the relay. crun writes the pid just after starting it: wait for it briefly.
 */
async function killExec(child: ChildProcess, pidFile: string, pidWaitMs: number): Promise<void> {
  const deadline = Date.now() + pidWaitMs;
  for (;;) {
    const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
    if (Number.isSafeInteger(pid) && pid > 0) {
      // While crun runs, it is the parent of this pid, so the pid cannot have been reused.
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      break;
    }
    if (child.exitCode !== null || child.signalCode !== null || Date.now() >= deadline) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill('SIGKILL');
}

function signalNumber(signal: NodeJS.Signals | null): number {
  return signal ? (osConstants.signals[signal] ?? 1) : 0;
}
