/**
 * Runs one short-lived helper (unshare, nsenter, umount, a CNI plugin) and collects its
 * output. A pod's lifecycle runs about eight of these; execa's per-call overhead (about
 * 1.5 ms each on the build machines, measured) was a visible share of RunPodSandbox +
 * StopPodSandbox + RemovePodSandbox, and none of its features are needed here.
 *
 * Never rejects: a command that cannot be started gives exitCode -1 with the spawn error as
 * stderr, so callers report every failure through one path. The environment is exactly
 * `env` (nothing of the daemon's leaks in). On timeout the command gets SIGTERM, then SIGKILL
 * 5 s later if it is still there.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';

export interface CommandResult {
  /** The exit code; 128 + n when killed by signal n; -1 when it could not be started. */
  exitCode: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface CommandOptions {
  env: Record<string, string>;
  timeoutMs: number;
  /** Written to stdin, which is then closed; without it stdin is /dev/null. */
  input?: string;
}

const FORCE_KILL_AFTER_MS = 5_000;

export function runCommand(file: string, args: string[], options: CommandOptions): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(file, args, {
      env: options.env,
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let timedOut = false;
    let forceKill: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      forceKill = setTimeout(() => child.kill('SIGKILL'), FORCE_KILL_AFTER_MS);
    }, options.timeoutMs);
    const finish = (exitCode: number, spawnError?: Error) => {
      clearTimeout(timer);
      clearTimeout(forceKill);
      resolve({
        exitCode,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: spawnError ? spawnError.message : Buffer.concat(stderr).toString('utf8'),
        timedOut,
      });
    };
    child.stdout!.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr!.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.once('error', (err) => finish(-1, err));
    // 'close' comes after the output streams ended, so nothing written is lost.
    child.once('close', (code, signal) => {
      finish(code ?? (signal ? 128 + (constants.signals[signal] ?? 0) : -1));
    });
    if (options.input !== undefined) {
      // A command that exits without reading its stdin must not crash the daemon with EPIPE.
      child.stdin!.on('error', () => undefined);
      child.stdin!.end(options.input);
    }
  });
}
