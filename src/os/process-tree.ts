/**
 * A process and everything it started, found through /proc (each process's parent pid). For
 * helpers that detach from us (conmon daemonizes, so its children are not in our process group)
 * when their work must be undone: an aborted create kills conmon and the runtime it started.
 */
import { readKernelDirectory, readKernelFile, readKernelLink } from './kernel-file.js';

/** The pids in /proc (procfs files are read like the other kernel files: kernel-file.ts). */
async function procPids(): Promise<string[]> {
  return (await readKernelDirectory('/proc')).map((e) => e.name).filter((name) => /^\d+$/.test(name));
}

/** Field `index` (0 = state) of /proc/<pid>/stat after the command name; null when gone. */
async function statField(pid: number, index: number): Promise<number | null> {
  const stat = await readKernelFile(`/proc/${pid}/stat`);
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
    const target = (await readKernelLink(`/proc/${pid}/fd/${fd}`)) ?? '';
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
  for (const entry of await procPids()) {
    if (Number(entry) === process.pid) continue;
    for (const fd of await readKernelDirectory(`/proc/${entry}/fd`)) {
      if (channels.has((await readKernelLink(`/proc/${entry}/fd/${fd.name}`)) ?? '')) {
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
  const children: number[] = [];
  for (const task of await readKernelDirectory(`/proc/${pid}/task`)) {
    const text = (await readKernelFile(`/proc/${pid}/task/${task.name}/children`)) ?? '';
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
  for (const entry of await procPids()) {
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
