/**
 * Container log files in a directory the CRI client names (issue 12 item 4, catalogue row 50).
 *
 * The trap: `<log_directory>/<log_path>` is opened by conmon (`-l k8s-file:<path>`), which
 * follows links: open(path, O_WRONLY|O_APPEND|O_CREAT) at start, and on ReopenContainerLog
 * open(path.tmp, O_TRUNC|O_CREAT) then rename(path.tmp, path). With a log directory another
 * local user can write, that user plants `<ctr>.log -> ~/.bashrc` (or `.tmp` of it) and the
 * container's output is appended to, or truncates, a file of the runtime's user. conmon takes
 * no fd for the log and always reopens by path, so making its open safe means making the path
 * safe for as long as conmon uses it:
 *
 *  - every directory on the way to the log file is checked, resolving links component by
 *    component as the kernel does: none may be writable by group or others unless it has the
 *    sticky bit (then nobody else can rename or remove what the runtime's user put there);
 *  - the directory the file goes in must belong to the runtime's user and be writable by it
 *    alone, sticky or not: in a shared sticky directory (like /tmp) another user can still
 *    create the names the runtime creates later (the `.tmp` of a reopen), and conmon would
 *    follow them or fail and die;
 *  - missing directories are created one at a time (mkdir never follows a link at the last
 *    component), after their parent passed the check;
 *  - the daemon then creates or opens the file itself with O_NOFOLLOW (a link planted before the
 *    directory became private is refused, ELOOP) and checks it is a regular file of its own
 *    with one link; only then is the path given to conmon. Since nobody else can change that
 *    directory, conmon opens the file the daemon checked, now and at every reopen.
 *
 * Errors are FailedPrecondition naming the path and the fix. Inside the node's user namespace a
 * directory of root and one of another host user look alike (both unmapped, shown as 65534), so
 * directories above the log's own are judged by their mode alone.
 */
import { constants, type Stats } from 'node:fs';
import { lstat, mkdir, open, readlink } from 'node:fs/promises';
import path from 'node:path';
import { FailedPreconditionError } from '../errors.js';

const MAX_LINKS = 40;

function code(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

/** Who the runtime is: the owner its log directories must have (tests pass another). */
export interface LogFileOwner {
  uid: number;
}

function currentOwner(): LogFileOwner {
  return { uid: process.getuid?.() ?? 0 };
}

function checkDirectory(dir: string, st: Stats, isTarget: boolean, owner: LogFileOwner, what: string): void {
  const othersWrite = (st.mode & 0o022) !== 0;
  const sticky = (st.mode & 0o1000) !== 0;
  if (othersWrite && !sticky) {
    throw new FailedPreconditionError(
      `${what}: ${dir} is writable by other users (mode ${octal(st.mode)}) and has no sticky bit, so another ` +
        `local user could rename or replace what is in it, e.g. put a symbolic link where a log file goes; ` +
        `remove their write permission (chmod go-w ${dir}) or use another directory`,
    );
  }
  if (!isTarget) return;
  if (st.uid !== owner.uid) {
    throw new FailedPreconditionError(
      `${what}: ${dir} belongs to another user (uid ${st.uid} in the node); log files go only in a directory ` +
        `of the runtime's own user: use a directory of your own`,
    );
  }
  if (othersWrite) {
    throw new FailedPreconditionError(
      `${what}: ${dir} is writable by other users (mode ${octal(st.mode)}); even with the sticky bit they can ` +
        `create the names the runtime's log files take (a reopened log's .tmp); make it private ` +
        `(chmod go-w ${dir}) or use a directory of your own`,
    );
  }
}

/**
 * Resolves `dir` (absolute) component by component, checking every directory it passes
 * through; with `create`, makes the missing ones (mode 0755) as it goes. Returns the real path.
 */
export async function ensureSafeLogDirectory(
  dir: string,
  options: { create: boolean; what?: string; owner?: LogFileOwner } = { create: true },
): Promise<string> {
  const owner = options.owner ?? currentOwner();
  const what = options.what ?? `log directory ${dir}`;
  if (!path.isAbsolute(dir)) throw new FailedPreconditionError(`${what}: not an absolute path`);
  const pending = dir.split('/').filter((c) => c !== '' && c !== '.');
  let current = '/';
  let links = 0;
  const check = async (p: string, isTarget: boolean) => {
    const st = await lstat(p);
    if (!st.isDirectory()) throw new FailedPreconditionError(`${what}: ${p} is not a directory`);
    checkDirectory(p, st, isTarget, owner, what);
  };
  await check('/', pending.length === 0);
  while (pending.length > 0) {
    const name = pending.shift()!;
    if (name === '..') {
      current = path.dirname(current);
      continue;
    }
    const next = path.join(current, name);
    let st: Stats;
    try {
      st = await lstat(next);
    } catch (err) {
      if (code(err) !== 'ENOENT' || !options.create) {
        throw new FailedPreconditionError(`${what}: cannot look up ${next}: ${(err as Error).message}`, {
          cause: err,
        });
      }
      // The parent passed the check, so nobody else can put anything here meanwhile.
      await mkdir(next, { mode: 0o755 }).catch((e: unknown) => {
        if (code(e) === 'EEXIST') return;
        throw new FailedPreconditionError(`${what}: cannot create ${next}: ${(e as Error).message}`, {
          cause: e,
        });
      });
      st = await lstat(next);
    }
    if (st.isSymbolicLink()) {
      // The link itself sits in `current`, which passed the check: nobody else can swap it.
      if (++links > MAX_LINKS)
        throw new FailedPreconditionError(`${what}: too many symbolic links at ${next}`);
      const target = await readlink(next);
      pending.unshift(...target.split('/').filter((c) => c !== '' && c !== '.'));
      if (target.startsWith('/')) {
        current = '/';
        await check('/', pending.length === 0);
      }
      continue;
    }
    if (!st.isDirectory()) throw new FailedPreconditionError(`${what}: ${next} is not a directory`);
    checkDirectory(next, st, pending.length === 0, owner, what);
    current = next;
  }
  return current;
}

/**
 * Creates (or opens, to append) a container's log file for conmon: the directories checked and
 * made as ensureSafeLogDirectory does, the file opened with O_NOFOLLOW and checked to be a
 * regular file of the runtime's user with one link.
 */
export async function prepareLogFile(logPath: string, owner: LogFileOwner = currentOwner()): Promise<void> {
  const what = `log file ${logPath}`;
  await ensureSafeLogDirectory(path.dirname(logPath), { create: true, what, owner });
  let handle: import('node:fs/promises').FileHandle;
  try {
    handle = await open(
      logPath,
      constants.O_WRONLY |
        constants.O_APPEND |
        constants.O_CREAT |
        constants.O_NOFOLLOW |
        constants.O_NONBLOCK,
      0o600,
    );
  } catch (err) {
    if (code(err) === 'ELOOP') {
      throw new FailedPreconditionError(
        `${what} is a symbolic link; the runtime never writes a log through a link: remove it`,
        { cause: err },
      );
    }
    if (code(err) === 'ENXIO' || code(err) === 'EISDIR') {
      throw new FailedPreconditionError(`${what} exists and is not a regular file: remove it`, {
        cause: err,
      });
    }
    throw new FailedPreconditionError(`cannot create ${what}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile())
      throw new FailedPreconditionError(`${what} exists and is not a regular file: remove it`);
    if (st.uid !== owner.uid) {
      throw new FailedPreconditionError(
        `${what} exists and belongs to another user (uid ${st.uid} in the node): remove it`,
      );
    }
    if (st.nlink !== 1) {
      throw new FailedPreconditionError(
        `${what} has ${st.nlink} hard links; a log file must have one (another name for it may be another file's): remove it`,
      );
    }
  } finally {
    await handle.close();
  }
}

/**
 * Before conmon reopens a log (ReopenContainerLog): the directory is still private, and the
 * `.tmp` name conmon opens with O_TRUNC (following links) is free or a file of our own.
 */
export async function checkLogReopen(logPath: string, owner: LogFileOwner = currentOwner()): Promise<void> {
  const what = `log file ${logPath}`;
  await ensureSafeLogDirectory(path.dirname(logPath), { create: false, what, owner });
  const tmp = `${logPath}.tmp`;
  const st = await lstat(tmp).catch((err: unknown) => {
    if (code(err) === 'ENOENT') return null;
    throw err;
  });
  if (st && (!st.isFile() || st.uid !== owner.uid || st.nlink !== 1)) {
    throw new FailedPreconditionError(
      `${tmp} (where conmon writes a reopened log) is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a regular file of the runtime'}; ` +
        'conmon would follow it and truncate what it points to: remove it',
    );
  }
}
