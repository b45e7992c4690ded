/**
 * A process and everything it started, found through /proc (each process's parent pid). For
 * helpers that detach from us (conmon daemonizes, so its children are not in our process group)
 * when their work must be undone: an aborted create kills conmon and the runtime it started.
 */
import { readdir, readFile } from 'node:fs/promises';

async function parentOf(pid: number): Promise<number | null> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  if (stat === null) return null;
  // The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
  const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  return Number.isSafeInteger(ppid) ? ppid : null;
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
