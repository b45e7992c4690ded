/**
 * The node's cgroup v2 tree as the runtime uses it (STYLE.md: CgroupManager). Inside the node
 * /sys/fs/cgroup is a cgroup2 mount rooted at the node's delegated subtree (the daemon mounts
 * it so in its cgroup namespace), so every path here is relative to that root:
 *
 *   pods/<pod>/                     a pod (or the request's cgroup_parent)
 *   pods/<pod>/sandbox-<id12>       the pod's infra process
 *   pods/<pod>/conmon               the pod's conmon processes
 *   pods/<pod>/<container id>       a container (crun creates and fills it)
 *
 * One place creates (enabling the parent's controllers for children on the way down), joins,
 * reads stats and removes (killing what is left first). Which controllers are delegated is
 * probed once; limits for the others are dropped with a warning by the callers that build
 * limits (container/resources.ts), never a failure.
 *
 * Cgroup paths come from records and pod configs: a `..` component or NUL is refused, never
 * clamped.
 */
import { mkdir, readdir, readFile, rmdir, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FailedPreconditionError, InternalError } from '../errors.js';
import { readKernelFile } from './kernel-file.js';

const CGROUP2_SUPER_MAGIC = 0x63677270;

/** What a cgroup's files say about its use; absent files (undelegated controllers) are null. */
export interface CgroupStats {
  /** cpu.stat usage_usec, in nanoseconds. */
  cpuUsageNs: bigint | null;
  /** memory.current. */
  memoryBytes: bigint | null;
  /** memory.stat, by key (anon, file, inactive_file, pgfault, ...). */
  memoryStat: Map<string, bigint>;
  /** pids.current, else the number of pids in cgroup.procs. */
  processes: bigint | null;
  /** memory.events oom_kill. */
  oomKills: bigint | null;
}

export interface CgroupManager {
  /** The cgroup root is a cgroup v2 hierarchy (else the runtime runs without cgroups). */
  readonly available: boolean;
  /** Controllers children of the root may use (its cgroup.subtree_control). */
  readonly controllers: readonly string[];
  /** The absolute directory of a relative cgroup path. */
  dir(relative: string): string;
  /** mkdir -p; returns the cgroups it created (relative), outermost first. */
  create(relative: string): Promise<string[]>;
  /** Moves a process into the cgroup. */
  join(relative: string, pid: number): Promise<void>;
  /** A cgroup file's text; null when the cgroup or the file is absent. */
  readFile(relative: string, file: string): Promise<string | null>;
  stats(relative: string): Promise<CgroupStats>;
  /**
   * Kills what is left in each cgroup (cgroup.kill) and removes it with any cgroups below it;
   * missing ones are fine. Give the deepest first.
   */
  remove(relatives: readonly string[]): Promise<void>;
}

function parseKeyed(text: string | null): Map<string, bigint> {
  const map = new Map<string, bigint>();
  for (const line of (text ?? '').split('\n')) {
    const [key, value] = line.trim().split(/\s+/);
    if (key && value !== undefined && /^\d+$/.test(value)) map.set(key, BigInt(value));
  }
  return map;
}

function parseNumber(text: string | null): bigint | null {
  const t = text?.trim();
  return t && /^\d+$/.test(t) ? BigInt(t) : null;
}

/** Controllers whose interface files appear only where the controller is enabled. */
const CONTROLLERS = new Set(['cpu', 'cpuset', 'memory', 'io', 'pids', 'hugetlb', 'rdma', 'misc']);

/**
 * Whether `file` can exist below a root whose subtree_control lists `controllers`: a
 * controller's files exist only where it is enabled, and nothing below the root can enable one
 * the root does not pass down. cpu.stat and the pressure files are there without their controller.
 */
export function mayExistBelow(file: string, controllers: readonly string[]): boolean {
  const controller = file.slice(0, file.indexOf('.'));
  if (!CONTROLLERS.has(controller) || controllers.includes(controller)) return true;
  return file === 'cpu.stat' || file === 'cpu.stat.local' || file.endsWith('.pressure');
}

export class NodeCgroupManager implements CgroupManager {
  private constructor(
    private readonly root: string,
    readonly available: boolean,
    readonly controllers: readonly string[],
    /**
     * `controllers` was probed from the root (open()), so a file of another controller is not
     * read at all: the stats RPCs read thousands of cgroup files, and on a host with, say, no
     * memory controller delegated most reads would fail. (A controller delegated while the
     * daemon runs is used from its next start, as for limits.)
     */
    private readonly skipUndelegated = false,
  ) {}

  /** Probes the root once: is it cgroup v2, which controllers reach children. */
  static async open(root = '/sys/fs/cgroup'): Promise<NodeCgroupManager> {
    const available = await statfs(root).then(
      (s) => Number(s.type) === CGROUP2_SUPER_MAGIC,
      () => false,
    );
    const controllers = available
      ? ((await readFile(path.join(root, 'cgroup.subtree_control'), 'utf8').catch(() => ''))
          .split(/\s+/)
          .filter(Boolean) as string[])
      : [];
    return new NodeCgroupManager(root, available, controllers, true);
  }

  /** A manager over a fixed root (tests, and the supervisor's host-side tree). */
  static at(root: string, controllers: readonly string[] = []): NodeCgroupManager {
    return new NodeCgroupManager(root, true, controllers);
  }

  dir(relative: string): string {
    if (relative.split('/').includes('..') || relative.includes('\0')) {
      throw new InternalError(`bad cgroup path ${JSON.stringify(relative)}`);
    }
    return path.join(this.root, path.posix.normalize(`/${relative}`));
  }

  async create(relative: string): Promise<string[]> {
    this.dir(relative); // refuses a bad path before anything is made
    const created: string[] = [];
    const parts = relative.split('/').filter(Boolean);
    let current = '';
    for (const part of parts) {
      const parent = current;
      current = `${current}/${part}`;
      const dir = this.dir(current);
      try {
        await mkdir(dir);
        created.push(current);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new FailedPreconditionError(
            `cannot create cgroup ${dir}: ${(err as Error).message}; is the node's cgroup v2 subtree delegated (rootless-cri doctor)?`,
            { cause: err },
          );
        }
      }
      // Children can only use controllers their parent enables; best effort, like the node root.
      await enableControllers(this.dir(parent));
    }
    return created;
  }

  async join(relative: string, pid: number): Promise<void> {
    await writeFile(path.join(this.dir(relative), 'cgroup.procs'), String(pid));
  }

  async readFile(relative: string, file: string): Promise<string | null> {
    const dir = this.dir(relative);
    if (this.skipUndelegated && !mayExistBelow(file, this.controllers)) return null;
    return readKernelFile(path.join(dir, file));
  }

  async stats(relative: string): Promise<CgroupStats> {
    const [cpu, memory, memoryStat, pids, procs, events] = await Promise.all([
      this.readFile(relative, 'cpu.stat'),
      this.readFile(relative, 'memory.current'),
      this.readFile(relative, 'memory.stat'),
      this.readFile(relative, 'pids.current'),
      this.readFile(relative, 'cgroup.procs'),
      this.readFile(relative, 'memory.events'),
    ]);
    const usageUsec = parseKeyed(cpu).get('usage_usec');
    const pidCount = parseNumber(pids);
    return {
      cpuUsageNs: usageUsec === undefined ? null : usageUsec * 1000n,
      memoryBytes: parseNumber(memory),
      memoryStat: parseKeyed(memoryStat),
      processes:
        pidCount ?? (procs === null ? null : BigInt(procs.split('\n').filter((l) => l.trim() !== '').length)),
      oomKills: parseKeyed(events).get('oom_kill') ?? null,
    };
  }

  async remove(relatives: readonly string[]): Promise<void> {
    for (const relative of relatives) await this.#removeCgroup(this.dir(relative), 0);
  }

  /**
   * rmdir, which a cgroup refuses (EBUSY) while processes or child cgroups are in it: kill
   * what is in the subtree once (cgroup.kill), remove the children (a container's cgroup an
   * interrupted removal left, ones a container made for itself), then wait for the kernel to
   * empty it.
   */
  async #removeCgroup(dir: string, depth: number): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await rmdir(dir);
        return;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return;
        // ENOTEMPTY is a plain directory's answer (a root given to at()): children are tried once.
        const busy = code === 'EBUSY' || (code === 'ENOTEMPTY' && attempt === 0);
        if (!busy || attempt >= 200) {
          throw new InternalError(`cannot remove cgroup ${dir}: ${(err as Error).message}`, { cause: err });
        }
      }
      if (attempt === 0) {
        // r+: a kernel without cgroup.kill (before 5.14) must not get a file of that name.
        await writeFile(path.join(dir, 'cgroup.kill'), '1', { flag: 'r+' }).catch(() => undefined);
        const children =
          depth < MAX_CGROUP_DEPTH
            ? (await readdir(dir, { withFileTypes: true }).catch(() => [])).filter((e) => e.isDirectory())
            : [];
        for (const child of children) await this.#removeCgroup(path.join(dir, child.name), depth + 1);
        if (children.length > 0) continue;
      }
      await sleep(10);
    }
  }
}

/** How deep remove() follows child cgroups (cgroup.max.depth bounds a delegated tree anyway). */
const MAX_CGROUP_DEPTH = 32;

async function enableControllers(dir: string): Promise<void> {
  const available = (await readFile(path.join(dir, 'cgroup.controllers'), 'utf8').catch(() => '')).trim();
  if (!available) return;
  const enabled = (await readFile(path.join(dir, 'cgroup.subtree_control'), 'utf8').catch(() => '')).trim();
  const missing = available.split(/\s+/).filter((c) => !enabled.split(/\s+/).includes(c));
  for (const controller of missing) {
    await writeFile(path.join(dir, 'cgroup.subtree_control'), `+${controller}`).catch(() => undefined);
  }
}
