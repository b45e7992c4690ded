/**
 * Probes, once at daemon start, the node facts the spec builder needs (HostFacts).
 * Runs inside the node: /sys/fs/cgroup is the node's cgroup v2 view, /proc/self the daemon.
 */
import { readFile } from 'node:fs/promises';
import { arch, release } from 'node:os';
import { parseStackLimit } from './exec-limits.js';

/** A device node of the node, for privileged containers. */
export interface HostDevice {
  path: string;
  type: 'c' | 'b';
  major: number;
  minor: number;
  fileMode: number;
  uid: number;
  gid: number;
}

/** Facts about the node, probed once when the daemon starts. */
export interface HostFacts {
  /** /sys/fs/cgroup inside the node is cgroup v2. */
  cgroupV2: boolean;
  /** Controllers delegated to pods (cgroup.subtree_control of the pods' parent). */
  controllers: readonly string[];
  /** /proc/sys/kernel/cap_last_cap. */
  capLastCap: number;
  /** process.arch. */
  nodeArch: string;
  /** os.release(), e.g. 6.1.0-18-amd64. */
  kernelVersion: string;
  /** The OCI runtime accepts the `rro` mount option (and the kernel has mount_setattr). */
  recursiveReadOnlyMounts: boolean;
  /** The daemon's own oom_score_adj: nobody below real root can go lower. */
  oomScoreAdjMin: number;
  /** Ids 0..idMapSize-1 are mapped in the node's user namespace. */
  idMapSize: number;
  /** The node's device nodes (privileged containers get them all). */
  devices: readonly HostDevice[];
  apparmor: boolean;
  selinux: boolean;
  /**
   * The daemon's soft RLIMIT_STACK in bytes (null: unlimited), which containers inherit: it sets
   * how much command line and environment execve accepts (exec-limits.ts). Absent: not known.
   */
  stackSoftLimit?: number | null;
}

async function text(p: string): Promise<string> {
  return readFile(p, 'utf8').catch(() => '');
}

/** Number of consecutive ids mapped from 0 in a uid_map/gid_map (0 when 0 is unmapped). */
export function mappedFromZero(map: string): number {
  const ranges = map
    .split('\n')
    .map((l) => l.trim().split(/\s+/).map(Number))
    .filter((f) => f.length === 3 && f.every(Number.isFinite))
    .map(([inside, , count]) => ({ inside: inside!, count: count! }))
    .sort((a, b) => a.inside - b.inside);
  let next = 0;
  for (const r of ranges) {
    if (r.inside > next) break;
    next = Math.max(next, r.inside + r.count);
  }
  return next;
}

/** Node facts for the spec builder; the cgroup ones come from the CgroupManager's probe. */
export async function probeHostFacts(options: {
  cgroupV2: boolean;
  controllers: readonly string[];
  recursiveReadOnlyMounts?: boolean;
}): Promise<HostFacts> {
  const { cgroupV2, controllers } = options;
  const [capLastCap, uidMap, gidMap, oom, apparmor, selinux, limits] = await Promise.all([
    text('/proc/sys/kernel/cap_last_cap'),
    text('/proc/self/uid_map'),
    text('/proc/self/gid_map'),
    text('/proc/self/oom_score_adj'),
    text('/sys/module/apparmor/parameters/enabled'),
    text('/sys/fs/selinux/enforce'),
    text('/proc/self/limits'),
  ]);
  const stackSoftLimit = parseStackLimit(limits);
  return {
    cgroupV2,
    controllers,
    capLastCap: Number.parseInt(capLastCap, 10) || 40,
    nodeArch: arch(),
    kernelVersion: release(),
    recursiveReadOnlyMounts: options.recursiveReadOnlyMounts ?? false,
    oomScoreAdjMin: Number.parseInt(oom, 10) || 0,
    idMapSize: Math.min(mappedFromZero(uidMap), mappedFromZero(gidMap)),
    devices: [],
    apparmor: apparmor.trim() === 'Y',
    selinux: selinux.trim() !== '',
    ...(stackSoftLimit !== undefined ? { stackSoftLimit } : {}),
  };
}
