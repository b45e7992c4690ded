/**
 * Why a container exited before its entrypoint ran (issue 12 item 5).
 *
 * crun checks at `crun create` that the entrypoint exists and is executable (CreateContainer
 * then fails with its message), but the execve(2) itself happens after `crun start`, in the
 * container's init: when it fails (E2BIG, a script whose #! interpreter is missing or has a
 * Windows line ending, a binary of another architecture, ...) the init prints
 * "exec container process `<path>`: <strerror>" on the container's stderr and exits 1. Nothing
 * else reports it: conmon records exit code 1, and without this the status says only "Error".
 *
 * So when a started container exits with an error, its log is read (bounded, never through a
 * link): if everything in it came from stderr and its last line is crun's exec failure, the
 * entrypoint never ran, and the status gets reason StartError and a message that says what
 * failed and what to do. A process that prints exactly that line itself and exits only mislabels
 * its own status.
 */
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';

/** A log that never ran its entrypoint holds a line or two; a bigger one is not read. */
const MAX_LOG_BYTES = 64 * 1024;

/** crun 1.x's message (libcrun/container.c); ENOENT adds "(missing dynamic library?)". */
const CRUN_EXEC_FAILURE = /^exec container process (\(missing dynamic library\?\) )?`(.*)`: (.+)$/;

const CRI_LOG_LINE = /^\S+ (stdout|stderr) (P|F) (.*)$/;

const HINTS: Record<string, string> = {
  'Argument list too long':
    'its command line and environment are larger than the kernel accepts (E2BIG); use fewer or smaller environment variables',
  'Exec format error':
    'it is not a program for this machine: a binary of another architecture, or a script without a #! line',
  'No such file or directory':
    'it exists, but the interpreter on its #! line or its dynamic loader does not (a script saved with Windows line endings asks for "/bin/sh\\r")',
  'Permission denied': 'it is not executable, or its file system is mounted noexec',
  'Text file busy': 'it is open for writing',
};

export interface ExecFailure {
  /** The program crun tried to execute. */
  path: string;
  /** strerror of the execve failure. */
  error: string;
  /** The status message. */
  message: string;
}

/** The messages of a CRI log (partial lines joined); null when it is not a plain CRI log. */
function criLogMessages(text: string): { stream: string; text: string }[] | null {
  const messages: { stream: string; text: string }[] = [];
  let partial = '';
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const match = CRI_LOG_LINE.exec(line);
    if (!match) return null;
    partial += match[3];
    if (match[2] === 'F') {
      messages.push({ stream: match[1]!, text: partial });
      partial = '';
    }
  }
  return messages;
}

/** Finds crun's exec failure in a container's CRI log text; null when the entrypoint ran (or may have). */
export function execFailureInLog(text: string): ExecFailure | null {
  const messages = criLogMessages(text);
  const last = messages?.at(-1);
  if (!messages || !last || messages.some((m) => m.stream !== 'stderr')) return null;
  const match = CRUN_EXEC_FAILURE.exec(last.text);
  if (!match) return null;
  const [, , program, error] = match as unknown as [string, string | undefined, string, string];
  const hint = HINTS[error];
  return {
    path: program,
    error,
    message:
      `the container exited before its entrypoint ran: the OCI runtime could not execute ${program}: ${error}` +
      (hint ? ` (${hint})` : ''),
  };
}

/** Reads a container's log (at most 64 KiB, no link followed) and looks for crun's exec failure. */
export async function readExecFailure(logPath: string): Promise<ExecFailure | null> {
  let handle: import('node:fs/promises').FileHandle;
  try {
    handle = await open(logPath, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const st = await handle.stat();
    if (!st.isFile() || st.size > MAX_LOG_BYTES) return null;
    const buf = Buffer.alloc(MAX_LOG_BYTES);
    const { bytesRead } = await handle.read(buf, 0, MAX_LOG_BYTES, 0);
    return execFailureInLog(buf.subarray(0, bytesRead).toString('utf8'));
  } finally {
    await handle.close();
  }
}
