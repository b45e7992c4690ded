/**
 * The memory of everything a user runs: every process whose real uid is the user's or one of
 * its subordinate ids (containers in a pod user namespace), summed from
 * /proc/<pid>/smaps_rollup. RSS counts a page shared by N processes N times; PSS counts 1/N of
 * it in each, so the PSS sum is what the processes together hold. Needs root (smaps_rollup of
 * another user's processes).
 */
import { readdir, readFile } from 'node:fs/promises';

export interface UserMemory {
  rssBytes: number;
  pssBytes: number;
  processes: number;
  /** PSS bytes by process name (comm). */
  pssByName: Map<string, number>;
}

/** The user's subordinate uid ranges from /etc/subuid (by name or by uid). */
export async function subordinateUids(user: { name: string; uid: number }): Promise<[number, number][]> {
  const text = await readFile('/etc/subuid', 'utf8').catch(() => '');
  const ranges: [number, number][] = [];
  for (const line of text.split('\n')) {
    const [owner, start, count] = line.trim().split(':');
    if ((owner === user.name || owner === String(user.uid)) && start && count)
      ranges.push([Number(start), Number(count)]);
  }
  return ranges;
}

function field(text: string, name: string): number {
  return Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
}

export async function userMemory(uid: number, subordinate: [number, number][]): Promise<UserMemory> {
  const owned = (u: number) =>
    u === uid || subordinate.some(([start, count]) => u >= start && u < start + count);
  const total: UserMemory = { rssBytes: 0, pssBytes: 0, processes: 0, pssByName: new Map() };
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = await readFile(`/proc/${entry}/status`, 'utf8');
      const realUid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1] ?? -1);
      if (!owned(realUid)) continue;
      const rollup = await readFile(`/proc/${entry}/smaps_rollup`, 'utf8');
      const name = /^Name:\s+(.*)$/m.exec(status)?.[1] ?? '?';
      const pss = field(rollup, 'Pss');
      total.rssBytes += field(rollup, 'Rss');
      total.pssBytes += pss;
      total.processes += 1;
      total.pssByName.set(name, (total.pssByName.get(name) ?? 0) + pss);
    } catch {
      // exited while we looked (or a kernel thread without smaps)
    }
  }
  return total;
}

/** `after` minus `before` by process name, largest first, per `n`: "name +x.y" in MiB. */
export function pssGrowthByName(before: UserMemory, after: UserMemory, n: number): string {
  const names = new Set([...before.pssByName.keys(), ...after.pssByName.keys()]);
  return [...names]
    .map(
      (name) => [name, ((after.pssByName.get(name) ?? 0) - (before.pssByName.get(name) ?? 0)) / n] as const,
    )
    .filter(([, d]) => Math.abs(d) >= 0.05 * 1048576)
    .sort((a, b) => b[1] - a[1])
    .map(([name, d]) => `${name} ${d >= 0 ? '+' : ''}${(d / 1048576).toFixed(2)}`)
    .join(', ');
}
