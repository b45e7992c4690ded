/**
 * A process and everything it started, found through /proc (each process's parent pid). For
 * helpers that detach from us (conmon daemonizes, so its children are not in our process group)
 * when their work must be undone: an aborted create kills conmon and the runtime it started.
 */
import { readdir, readFile, readlink } from 'node:fs/promises';

/** Field `index` (0 = state) of /proc/<pid>/stat after the command name; null when gone. */
async function statField(pid: number, index: number): Promise<number | null> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  if (stat === null) return null;
  // The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
  const value = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[index]);
  return Number.isSafeInteger(value) ? value : null;
}

/** The parent pid of `pid`; null when it is gone. */
export function parentOf(pid: number): Promise<number | null> {
  return statField(pid, 1);
}

/** The process group of `pid`; null when it is gone. */
export function processGroupOf(pid: number): Promise<number | null> {
  return statField(pid, 2);
}

/**
 * What a process's stdio fds point at ("pipe:[ino]" or "socket:[ino]": Node gives a child
 * socketpairs), for finding later who else holds them. Read while the process runs.
 */
export async function stdioChannels(pid: number, fds: readonly number[]): Promise<Set<string>> {
  const channels = new Set<string>();
  for (const fd of fds) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (/^(pipe|socket):\[\d+\]$/.test(target)) channels.add(target);
  }
  return channels;
}

/**
 * The processes, other than this one, that hold an fd on one of these channels: whoever keeps a
 * child's output open after the child exited (a background process it started).
 */
export async function channelHolders(channels: ReadonlySet<string>): Promise<number[]> {
  if (channels.size === 0) return [];
  const holders: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const fds = await readdir(`/proc/${entry}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      if (channels.has(await readlink(`/proc/${entry}/fd/${fd}`).catch(() => ''))) {
        holders.push(Number(entry));
        break;
      }
    }
  }
  return holders;
}

/**
 * The children of `pid`. A multithreaded parent (rootlesskit is a Go program) forks from any of
 * its threads, and /proc lists a child under the thread that forked it: every thread is read.
 */
export async function childrenOf(pid: number): Promise<number[]> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  const children: number[] = [];
  for (const task of tasks) {
    const text = await readFile(`/proc/${pid}/task/${task}/children`, 'utf8').catch(() => '');
    for (const word of text.trim().split(/\s+/)) {
      const child = Number(word);
      if (word !== '' && Number.isSafeInteger(child) && child > 1) children.push(child);
    }
  }
  return children;
}

/** `pid` and its descendants, as they are now (parents before children). */
export async function processTree(pid: number): Promise<number[]> {
  const parents = new Map<number, number>();
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const ppid = await parentOf(Number(entry));
    if (ppid !== null) parents.set(Number(entry), ppid);
  }
  if (!parents.has(pid)) return [];
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) {
    for (const [child, parent] of parents) if (parent === tree[i]) tree.push(child);
  }
  return tree;
}

/** SIGKILL to a process and all its descendants (those that exist when it is called). */
export async function killTree(pid: number): Promise<number[]> {
  const tree = await processTree(pid);
  for (const p of tree) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  return tree;
}
