/**
 * NodeCounters from plain maps the test fills: pids per cgroup directory, /proc totals per pid,
 * interfaces per netns file (read only through a pid the test says is in it), filesystems per
 * directory. Every call is recorded.
 */
import {
  emptyTotals,
  type FilesystemFigures,
  type InterfaceCounters,
  type NodeCounters,
  type ProcessTotals,
} from '../../src/os/process-counters.js';

export class FakeNodeCounters implements NodeCounters {
  readonly pids = new Map<string, number[]>();
  readonly totals = new Map<number, Partial<ProcessTotals>>();
  /** netns file → the pids in it and its interfaces. */
  readonly netns = new Map<string, { pids: number[]; interfaces: InterfaceCounters[] }>();
  readonly filesystems = new Map<string, FilesystemFigures>();
  readonly calls: string[] = [];

  async pidsUnder(cgroupDir: string): Promise<number[]> {
    this.calls.push(`pidsUnder ${cgroupDir}`);
    return [...(this.pids.get(cgroupDir) ?? [])];
  }

  async processTotals(pids: readonly number[]): Promise<ProcessTotals> {
    this.calls.push(`processTotals ${pids.join(',')}`);
    const sum = emptyTotals();
    for (const pid of pids) {
      const t = this.totals.get(pid);
      if (!t) continue;
      for (const [key, value] of Object.entries(t) as [keyof ProcessTotals, number | bigint][]) {
        (sum as unknown as Record<string, number | bigint>)[key] =
          typeof value === 'bigint' ? (sum[key] as bigint) + value : (sum[key] as number) + value;
      }
    }
    return sum;
  }

  async networkInterfaces(netnsFile: string, pids: readonly number[]): Promise<InterfaceCounters[] | null> {
    this.calls.push(`networkInterfaces ${netnsFile} ${pids.join(',')}`);
    const ns = this.netns.get(netnsFile);
    if (!ns || !pids.some((p) => ns.pids.includes(p))) return null;
    return ns.interfaces.map((i) => ({ ...i }));
  }

  async filesystem(dir: string): Promise<FilesystemFigures | null> {
    return this.filesystems.get(dir) ?? null;
  }

  async blockDeviceName(majorMinor: string): Promise<string> {
    return majorMinor === '254:0' ? '/dev/vda' : majorMinor;
  }
}

export function interfaceCounters(name: string, base: number): InterfaceCounters {
  const n = (k: number) => BigInt(base + k);
  return {
    name,
    rxBytes: n(1),
    rxPackets: n(2),
    rxErrors: n(3),
    rxDropped: n(4),
    txBytes: n(5),
    txPackets: n(6),
    txErrors: n(7),
    txDropped: n(8),
  };
}
