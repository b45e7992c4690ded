/**
 * What the kernel's execve(2) accepts, checked before a container is created (issue 12 item 5):
 * a command line and environment the kernel would refuse with E2BIG are an INVALID_ARGUMENT
 * naming the sizes, instead of a container that is created, starts and exits 1
 * before its entrypoint ran. The environment counted is the final one (the image's, then the
 * request's, then what NRI or CDI added), so a huge ENV in an image config is caught too.
 *
 * The arithmetic is the kernel's (fs/exec.c, Linux 6.x), not glibc's sysconf(_SC_ARG_MAX):
 *
 *   limit   = max(min(_STK_LIM / 4 * 3, RLIMIT_STACK soft / 4), ARG_MAX)   (6 MiB cap, 128 KiB floor)
 *   needed  = 8 × (max(argc, 1) + envc)                                    (the pointers)
 *           + strlen(filename) + 1 + Σ (strlen(arg) + 1) + Σ (strlen(env) + 1)
 *   E2BIG when needed > limit, or when one argument or variable (with its NUL) is over
 *   MAX_ARG_STRLEN (32 pages, 128 KiB).
 *
 * The stack limit is the container process's at exec: its spec's RLIMIT_STACK if it has one,
 * else the daemon's own, which conmon and crun pass down unchanged. What the runtime adds
 * after this check is counted at its smallest (crun sets HOME when the environment has none,
 * from the image's passwd, at least "HOME=/"; the filename is the path crun found, at least
 * "/<argv[0]>"): this check never refuses what the kernel accepts, and the few bytes of
 * difference are still explained after the fact by the exit message (exec-failure.ts).
 *
 * Why it matters beyond the error: crun's container init applies the environment with one
 * putenv(3) per variable, and glibc's putenv scans the whole environment each time, so
 * `crun create` is quadratic in the number of variables (150,000 took 42 s of crun's 52 s in
 * CreateContainer here; the daemon's own handling is linear). Refusing what exec would refuse
 * anyway bounds that, but not to nothing: the most variables the kernel accepts (about 100,000
 * with one-letter names, 1.5 MB) still cost about 51 s of `crun create`, spent by the container's
 * init in its own cgroup while the daemon serves other calls. Only crun can remove that.
 */
import { InvalidArgumentError } from '../errors.js';

/** Linux's _STK_LIM (8 MiB): the default stack limit, used for the 3/4 cap. */
const STK_LIM = 8 * 1024 * 1024;
/** Linux's ARG_MAX (32 pages of 4 KiB): the floor of the limit whatever the stack limit. */
export const KERNEL_ARG_MAX_FLOOR = 32 * 4096;
/** Linux's MAX_ARG_STRLEN: the longest single argument or variable, its NUL included. */
export const MAX_ARG_STRLEN = 32 * 4096;
const POINTER_BYTES = 8;

/**
 * The kernel's limit on argv + envp (strings and pointers) for a process whose soft
 * RLIMIT_STACK is `stackSoftBytes` (null = unlimited).
 */
export function execArgumentLimit(stackSoftBytes: number | null): number {
  const quarter = stackSoftBytes === null ? Number.POSITIVE_INFINITY : Math.floor(stackSoftBytes / 4);
  return Math.max(Math.min((STK_LIM / 4) * 3, quarter), KERNEL_ARG_MAX_FLOOR);
}

/** The soft "Max stack size" of a /proc/<pid>/limits text, in bytes; null = unlimited. */
export function parseStackLimit(limitsText: string): number | null | undefined {
  const match = /^Max stack size\s+(\S+)\s+(\S+)\s+bytes/m.exec(limitsText);
  if (!match) return undefined;
  if (match[1] === 'unlimited') return null;
  const n = Number(match[1]);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

export interface ExecArgumentSize {
  /** Bytes execve needs: strings with their NULs, plus pointers. */
  bytes: number;
  /** The longest single string (with its NUL), and what it is. */
  longest: { bytes: number; what: string };
}

/** What execve(filename, args, env) needs of the argument area. One pass over the strings. */
export function execArgumentSize(filename: string, args: readonly string[], env: readonly string[]) {
  let bytes =
    Buffer.byteLength(filename, 'utf8') + 1 + POINTER_BYTES * (Math.max(args.length, 1) + env.length);
  const longest = { bytes: 0, what: '' };
  const add = (s: string, what: () => string) => {
    const n = Buffer.byteLength(s, 'utf8') + 1;
    bytes += n;
    if (n > longest.bytes) {
      longest.bytes = n;
      longest.what = what();
    }
  };
  for (const [i, a] of args.entries()) add(a, () => `argument ${i}`);
  for (const e of env) add(e, () => `environment variable ${e.slice(0, Math.max(e.indexOf('='), 0)) || '?'}`);
  return { bytes, longest } satisfies ExecArgumentSize;
}

export interface ExecProcess {
  args: string[];
  env: string[];
  rlimits?: { type: string; soft: number; hard: number }[];
}

function mib(bytes: number): string {
  return bytes >= 1024 * 1024
    ? `${(bytes / 1024 / 1024).toFixed(2)} MiB`
    : `${(bytes / 1024).toFixed(1)} KiB`;
}

/**
 * Throws InvalidArgument when the container's process could never be executed: its command
 * line and environment are over the kernel's limit, or one of them is over MAX_ARG_STRLEN.
 * `daemonStackSoftBytes` is the stack limit the process inherits when its spec sets none
 * (undefined: not known, taken as the usual 8 MiB).
 */
export function checkExecLimits(process: ExecProcess, daemonStackSoftBytes: number | null | undefined): void {
  const stackRlimit = process.rlimits?.find((r) => r.type === 'RLIMIT_STACK');
  const stack = stackRlimit
    ? stackRlimit.soft
    : daemonStackSoftBytes === undefined
      ? STK_LIM
      : daemonStackSoftBytes;
  // RLIM_INFINITY in a spec is 2^64-1, which JSON numbers round.
  const limit = execArgumentLimit(stack === null || stack >= 2 ** 62 ? null : stack);
  const first = process.args[0] ?? '';
  const filename = first.startsWith('/') ? first : `/${first}`;
  const env = process.env.some((e) => e.startsWith('HOME=')) ? process.env : [...process.env, 'HOME=/'];
  const size = execArgumentSize(filename, process.args, env);
  if (size.longest.bytes > MAX_ARG_STRLEN) {
    throw new InvalidArgumentError(
      `${size.longest.what} of the container's process is ${size.longest.bytes - 1} bytes; the kernel refuses ` +
        `to execute a program with an argument or environment variable over ${MAX_ARG_STRLEN - 1} bytes ` +
        '(MAX_ARG_STRLEN, E2BIG): pass large data in a file or a volume instead',
    );
  }
  if (size.bytes > limit) {
    throw new InvalidArgumentError(
      `the container's command line and environment (${process.args.length} arguments, ${process.env.length} variables, ` +
        `image's included) take ${mib(size.bytes)} with their pointers; the kernel refuses to execute a program ` +
        `over ${mib(limit)} (E2BIG: a quarter of the stack limit${stack === null ? ', at most 6 MiB' : ` of ${mib(stack)}`}): ` +
        'use fewer or smaller variables (enableServiceLinks: false drops the per-Service ones), or put the data in a file',
    );
  }
}
