/**
 * cgroup v2 delegation, seen from the host side (before joining the node) and from inside the
 * node (where /sys/fs/cgroup is the node's cgroup namespace root).
 *
 * Layout under the delegated root R (the highest ancestor of our cgroup that we own):
 *
 *   R/rootless-cri/                 the node cgroup N (config cgroup.subtree); root of the node's cgroup namespace
 *   R/rootless-cri/rootlesskit/     rootlesskit, slirp4netns, catatonit (rootlesskit evacuates them here)
 *   R/rootless-cri/daemon/          the rootless-cri daemon
 *   R/rootless-cri/enter/           what `rootless-cri enter` runs (kubelet, a shell, ...)
 *   R/rootless-cri/pods/<pod>/...   pods and containers (later issues)
 *
 * No process lives in an inner node of this tree, so controllers can be enabled anywhere.
 */
import { constants } from 'node:fs';
import { access, mkdir, readdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

export const DAEMON_CGROUP_NAME = 'daemon';
export const ROOTLESSKIT_CGROUP_NAME = 'rootlesskit';
export const ENTER_CGROUP_NAME = 'enter';

export interface CgroupFacts {
  /** Mount point of the cgroup v2 hierarchy, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified. */
  mountPoint: string | null;
  /** Our cgroup path relative to that hierarchy's root, e.g. /user.slice/... */
  ownCgroup: string | null;
  /** Absolute path of the highest ancestor of our cgroup that we own and can write; null if none. */
  delegatedRoot: string | null;
  /** Controllers available in the delegated root (cgroup.controllers). */
  controllers: string[];
}

/** The cgroup v2 mount point from /proc/self/mountinfo, preferring the one that shows our cgroup. */
export function findCgroup2Mount(mountinfo: string): string | null {
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const fsType = line.slice(sep + 3).split(' ')[0];
    if (fsType !== 'cgroup2') continue;
    const fields = line.slice(0, sep).split(' ');
    const mountPoint = fields[4];
    if (mountPoint) return unescapeMountPath(mountPoint);
  }
  return null;
}

/** Our cgroup v2 path ("0::/path") from /proc/self/cgroup. */
export function ownCgroupV2Path(procSelfCgroup: string): string | null {
  for (const line of procSelfCgroup.split('\n')) {
    if (line.startsWith('0::')) return line.slice(3).trim() || '/';
  }
  return null;
}

function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

async function isOwnedAndWritable(dir: string, uid: number): Promise<boolean> {
  try {
    const st = await stat(dir);
    if (st.uid !== uid) return false;
    await access(path.join(dir, 'cgroup.procs'), constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export async function probeCgroups(uid = process.getuid?.() ?? 0): Promise<CgroupFacts> {
  const [mountinfo, selfCgroup] = await Promise.all([
    readFile('/proc/self/mountinfo', 'utf8').catch(() => ''),
    readFile('/proc/self/cgroup', 'utf8').catch(() => ''),
  ]);
  const mountPoint = findCgroup2Mount(mountinfo);
  const ownCgroup = ownCgroupV2Path(selfCgroup);
  if (!mountPoint || !ownCgroup || ownCgroup.startsWith('/..')) {
    return { mountPoint, ownCgroup, delegatedRoot: null, controllers: [] };
  }
  let delegatedRoot: string | null = null;
  let current = path.join(mountPoint, ownCgroup);
  while (current.startsWith(mountPoint) && current !== mountPoint) {
    if (!(await isOwnedAndWritable(current, uid))) break;
    delegatedRoot = current;
    current = path.dirname(current);
  }
  const controllers = delegatedRoot ? await readControllers(delegatedRoot) : [];
  return { mountPoint, ownCgroup, delegatedRoot, controllers };
}

export async function readControllers(dir: string): Promise<string[]> {
  const text = await readFile(path.join(dir, 'cgroup.controllers'), 'utf8').catch(() => '');
  return text.split(/\s+/).filter(Boolean);
}

/**
 * Enables every available controller for the children of `dir`. Best effort: a controller that
 * cannot be enabled (e.g. because `dir` holds processes) is left out and reported.
 */
export async function enableSubtreeControllers(
  dir: string,
): Promise<{ enabled: string[]; failed: string[] }> {
  const available = await readControllers(dir);
  const enabled: string[] = [];
  const failed: string[] = [];
  for (const c of available) {
    try {
      await writeFile(path.join(dir, 'cgroup.subtree_control'), `+${c}`);
      enabled.push(c);
    } catch {
      failed.push(c);
    }
  }
  return { enabled, failed };
}

export async function ensureCgroup(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
}

/** Moves a process (by pid, as seen from the writer's pid namespace) into the cgroup `dir`. */
export async function moveProcess(dir: string, pid: number): Promise<void> {
  await writeFile(path.join(dir, 'cgroup.procs'), String(pid));
}

/** The node cgroup under a delegated root (config `cgroup.subtree`, default "rootless-cri"). */
export function nodeCgroupDir(delegatedRoot: string, subtree: string): string {
  return path.join(delegatedRoot, subtree);
}

/**
 * Removes a cgroup and every child cgroup, bottom-up. Cgroups that still hold processes stay
 * (rmdir fails with EBUSY); the result says whether `dir` itself is gone.
 */
export async function removeCgroupTree(dir: string): Promise<boolean> {
  let entries: string[];
  try {
    entries = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return true; // already gone
  }
  for (const name of entries) await removeCgroupTree(path.join(dir, name));
  try {
    await rmdir(dir);
    return true;
  } catch {
    return false;
  }
}
