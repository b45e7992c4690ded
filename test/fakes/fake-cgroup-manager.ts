/**
 * An in-memory CgroupManager: cgroups are a set of relative paths, their files a map the test
 * fills. Removing a cgroup that still has a child is refused (EBUSY on a real node), so the
 * order callers remove in is checked. Every call is recorded, one can be made to fail.
 */
import type { CgroupManager, CgroupStats } from '../../src/os/cgroup-manager.js';

export class FakeCgroupManager implements CgroupManager {
  readonly available: boolean;
  readonly controllers: readonly string[];
  readonly cgroups = new Set<string>();
  readonly files = new Map<string, Map<string, string>>();
  readonly joined: { cgroup: string; pid: number }[] = [];
  readonly calls: string[] = [];
  private failure: { method: string; error: Error } | null = null;

  /** `journal` (shared with other fakes) gets "cgroups.<method>" for every call, in order. */
  constructor(
    options: { available?: boolean; controllers?: string[] } = {},
    private readonly journal: string[] = [],
  ) {
    this.available = options.available ?? true;
    this.controllers = options.controllers ?? ['cpu', 'memory', 'pids'];
  }

  /** What a test sees as "left behind" (the shared /pods parent is not). */
  leftovers(): string[] {
    return [...this.cgroups].filter((c) => c !== '/pods').map((c) => `cgroup ${c}`);
  }

  failNext(method: 'create' | 'remove' | 'join', error: Error): void {
    this.failure = { method, error };
  }

  private enter(method: string, arg: string): void {
    this.calls.push(`${method} ${arg}`);
    this.journal.push(`cgroups.${method}`);
    if (this.failure?.method === method) {
      const { error } = this.failure;
      this.failure = null;
      throw error;
    }
  }

  setFile(cgroup: string, file: string, content: string): void {
    const files = this.files.get(cgroup) ?? new Map<string, string>();
    files.set(file, content);
    this.files.set(cgroup, files);
  }

  dir(relative: string): string {
    return `/sys/fs/cgroup${relative.startsWith('/') ? '' : '/'}${relative}`;
  }

  async create(relative: string): Promise<string[]> {
    this.enter('create', relative);
    const created: string[] = [];
    let current = '';
    for (const part of relative.split('/').filter(Boolean)) {
      current = `${current}/${part}`;
      if (!this.cgroups.has(current)) {
        this.cgroups.add(current);
        created.push(current);
      }
    }
    return created;
  }

  async join(relative: string, pid: number): Promise<void> {
    this.enter('join', relative);
    this.joined.push({ cgroup: relative, pid });
  }

  async readFile(relative: string, file: string): Promise<string | null> {
    return this.files.get(relative)?.get(file) ?? null;
  }

  async stats(relative: string): Promise<CgroupStats> {
    const read = (f: string) => this.files.get(relative)?.get(f) ?? null;
    const keyed = (text: string | null) =>
      new Map(
        (text ?? '')
          .split('\n')
          .map((l) => l.trim().split(/\s+/))
          .filter((f) => f.length === 2 && /^\d+$/.test(f[1]!))
          .map((f) => [f[0]!, BigInt(f[1]!)] as const),
      );
    const usage = keyed(read('cpu.stat')).get('usage_usec');
    const num = (t: string | null) => (t !== null && /^\d+$/.test(t.trim()) ? BigInt(t.trim()) : null);
    const procs = read('cgroup.procs');
    return {
      cpuUsageNs: usage === undefined ? null : usage * 1000n,
      memoryBytes: num(read('memory.current')),
      memoryStat: keyed(read('memory.stat')),
      processes:
        num(read('pids.current')) ??
        (procs === null ? null : BigInt(procs.split('\n').filter((l) => l.trim() !== '').length)),
      oomKills: keyed(read('memory.events')).get('oom_kill') ?? null,
    };
  }

  async remove(relatives: readonly string[]): Promise<void> {
    this.enter('remove', relatives.join(' '));
    for (const r of relatives) {
      const norm = r.startsWith('/') ? r : `/${r}`;
      const hasChildren = [...this.cgroups].some((c) => c.startsWith(`${norm}/`) && !relatives.includes(c));
      if (hasChildren) throw new Error(`cgroup ${r} is busy`);
      this.cgroups.delete(norm);
    }
  }
}
