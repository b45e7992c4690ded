/**
 * The mount table and the mount/unmount commands, as the snapshotters need them.
 *
 * The daemon runs as uid 0 inside the node's user and mount namespaces, so
 * /proc/self/mountinfo is the node's mount table, and `mount`/`umount` work there for the
 * filesystems a user namespace may mount (FUSE, and overlay on Linux >= 5.11).
 *
 * Everything that touches the OS goes through `CommandRunner` and `MountTableReader`, so
 * the retry and error logic is unit-tested with fakes.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { InternalError, UnavailableError } from '../errors.js';
import { readKernelFile } from './kernel-file.js';
import { ProcessTimeoutError, ProgramNotFoundError, run } from './process-runner.js';

// ---- mountinfo ------------------------------------------------------------------------

/** One line of /proc/<pid>/mountinfo (see proc(5)); paths are unescaped. */
export interface MountInfoEntry {
  mountId: number;
  parentId: number;
  /** "major:minor" of the filesystem's device. */
  device: string;
  /** Root of the mount within its filesystem. */
  root: string;
  mountPoint: string;
  mountOptions: string;
  /** Shared/master/propagate_from tags. */
  optionalFields: string[];
  fsType: string;
  source: string;
  superOptions: string;
}

/** The kernel escapes space, tab, newline and backslash in paths as three-digit octal. */
export function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/** A path as the kernel writes it in mountinfo (space, tab, newline and backslash in octal). */
export function escapeMountField(path: string): string {
  return path.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
}

/**
 * Parses mountinfo text; malformed lines are skipped rather than failing every caller. With
 * `containing`, only lines that hold that text are parsed (a node with a hundred pods has
 * hundreds of mounts; a caller asking about one path needs a handful).
 */
export function parseMountInfo(text: string, containing?: string): MountInfoEntry[] {
  const entries: MountInfoEntry[] = [];
  for (const line of text.split('\n')) {
    if (containing !== undefined && !line.includes(containing)) continue;
    if (line.trim() === '') continue;
    const fields = line.split(' ');
    const separator = fields.indexOf('-', 6);
    if (separator < 0 || fields.length < separator + 3) continue;
    const mountId = Number(fields[0]);
    const parentId = Number(fields[1]);
    if (!Number.isInteger(mountId) || !Number.isInteger(parentId)) continue;
    entries.push({
      mountId,
      parentId,
      device: fields[2]!,
      root: unescapeMountField(fields[3]!),
      mountPoint: unescapeMountField(fields[4]!),
      mountOptions: fields[5]!,
      optionalFields: fields.slice(6, separator),
      fsType: fields[separator + 1]!,
      source: unescapeMountField(fields[separator + 2]!),
      superOptions: fields[separator + 3] ?? '',
    });
  }
  return entries;
}

/** Returns the mountinfo text of the caller's mount namespace. */
export type MountTableReader = () => Promise<string>;

/** This process's mount table, read as the kernel pseudo-file it is (kernel-file.ts). */
export const readSelfMountInfo: MountTableReader = async () => {
  const text = await readKernelFile('/proc/self/mountinfo');
  if (text === null) throw new InternalError('cannot read /proc/self/mountinfo');
  return text;
};

/** Mounts stacked exactly at `path` (absolute, normalised), most recent last. */
export async function mountsAt(path: string, read: MountTableReader): Promise<MountInfoEntry[]> {
  return parseMountInfo(await read(), ` ${escapeMountField(path)} `).filter((m) => m.mountPoint === path);
}

/** Mounts at `dir` or anywhere below it: what must be gone before `dir` may be deleted. */
export async function mountsAtOrUnder(dir: string, read: MountTableReader): Promise<MountInfoEntry[]> {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return parseMountInfo(await read(), ` ${escapeMountField(dir)}`).filter(
    (m) => m.mountPoint === dir || m.mountPoint.startsWith(prefix),
  );
}

// ---- commands -------------------------------------------------------------------------

export interface CommandResult {
  /** null when killed by a signal, or when the binary could not be started (see `spawnError`). */
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** Set when the command could not be started at all (e.g. ENOENT: not installed). */
  spawnError?: NodeJS.ErrnoException;
}

export interface CommandOptions {
  cwd?: string;
  timeoutMs?: number;
}

/** Runs a command to completion and never throws: callers turn the result into an error kind. */
export type CommandRunner = (
  command: string,
  args: readonly string[],
  options?: CommandOptions,
) => Promise<CommandResult>;

const OUTPUT_CAP = 64 * 1024;

/**
 * The process runner behind CommandRunner. Settles when the process exits, not when its stdio
 * closes: fuse-overlayfs forks a daemon that could keep an inherited pipe open for its whole life.
 */
export const spawnCommand: CommandRunner = async (command, args, options = {}) => {
  try {
    const r = await run(command, args, {
      ...(options.cwd ? { cwd: options.cwd } : {}),
      timeoutMs: options.timeoutMs ?? 30_000,
      killGraceMs: 0,
      maxOutputBytes: OUTPUT_CAP,
      settleOnExit: true,
    });
    return { exitCode: r.exitCode, stdout: r.stdout.toString('utf8'), stderr: r.stderr.toString('utf8') };
  } catch (err) {
    if (err instanceof ProgramNotFoundError) {
      const spawnError = Object.assign(new Error(err.message), { code: err.errno }) as NodeJS.ErrnoException;
      return { exitCode: null, stdout: '', stderr: '', spawnError };
    }
    if (err instanceof ProcessTimeoutError) {
      return {
        exitCode: null,
        stdout: err.result.stdout.toString('utf8'),
        stderr: `${err.result.stderr.toString('utf8')}\n${err.message}`,
      };
    }
    throw err;
  }
};

/** The command's stderr (or start error), trimmed, for error messages. */
export function commandOutput(result: CommandResult): string {
  if (result.spawnError !== undefined) return result.spawnError.message;
  const text = (result.stderr.trim() || result.stdout.trim()).replace(/\s+/g, ' ');
  return text.length > 500 ? `${text.slice(0, 500)}...` : text;
}

// ---- unmount --------------------------------------------------------------------------

export interface UnmountOptions {
  run: CommandRunner;
  readMountTable: MountTableReader;
  /**
   * Commands to try in order, each followed by the path; the next one is used when a
   * command is missing or fails for a reason other than "busy" (e.g.
   * `[['fusermount3', '-u'], ['umount']]`).
   */
  commands: readonly (readonly string[])[];
  /** Rounds of attempts while the mount is busy. Default 10. */
  attempts?: number;
  /** Delay between rounds, doubled each round up to 1 s. Default 50 ms. */
  delayMs?: number;
  sleep?: (ms: number) => Promise<unknown>;
}

const BUSY = /busy|EBUSY/i;

/**
 * Unmounts every mount stacked at `path`; a no-op when nothing is mounted there.
 * "Busy" (a process has a file open or its cwd inside) is retried briefly, since it is
 * usually a process that is just exiting; other failures are reported at once.
 */
export async function unmountWithRetries(path: string, options: UnmountOptions): Promise<void> {
  const attempts = options.attempts ?? 10;
  const pause = options.sleep ?? sleep;
  let delay = options.delayMs ?? 50;
  let lastError = '';
  for (let round = 0; round < attempts; round++) {
    if ((await mountsAt(path, options.readMountTable)).length === 0) return;
    let busy = false;
    let unmounted = false;
    const failures: string[] = [];
    for (const command of options.commands) {
      const result = await options.run(command[0]!, [...command.slice(1), path], { timeoutMs: 30_000 });
      if (result.exitCode === 0) {
        unmounted = true;
        break;
      }
      const output = commandOutput(result);
      failures.push(`${command.join(' ')}: ${output || `exit code ${result.exitCode}`}`);
      if (result.spawnError === undefined && BUSY.test(output)) {
        busy = true;
        break;
      }
    }
    lastError = failures.join('; ');
    if (unmounted) continue; // one layer of a stacked mount is gone; check the table again
    if (!busy) {
      // A command may fail because someone else unmounted it meanwhile.
      if ((await mountsAt(path, options.readMountTable)).length === 0) return;
      throw new UnavailableError(`cannot unmount ${path}: ${lastError}`);
    }
    if (round + 1 < attempts) {
      await pause(delay);
      delay = Math.min(delay * 2, 1000);
    }
  }
  if ((await mountsAt(path, options.readMountTable)).length === 0) return;
  throw new UnavailableError(
    `cannot unmount ${path}: still busy after ${attempts} attempts (${lastError}); a process still has a ` +
      'file open or its working directory in it: stop that container process and retry',
  );
}
