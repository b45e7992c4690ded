/**
 * CPU time a pull costs, per process and per daemon thread, read from /proc around each
 * PullImage. On a shared 2-core machine the wall-clock ratio to `gzip -dc` moves with the
 * neighbours' load; the CPU a pull burns does not, and says where it goes: the daemon's main
 * thread (HTTP, hashing, stream plumbing), V8's GC workers, libuv's thread pool (inflate,
 * file writes), the unpack helpers (reaped children of the daemon), the supervisor (its
 * registry dialer copies every byte) and the registry. Linux only; clock ticks of 10 ms.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { statTimes as times } from './proc-cpu.js';

function commandLine(pid: string): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return '';
  }
}

/** Thread CPU of `pid` grouped by thread name (digits dropped: libuv-worker, V8Worker...). */
function threadTimes(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    let name = '';
    try {
      name = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim().replace(/\d+$/, '');
    } catch {
      continue;
    }
    out[name] = (out[name] ?? 0) + times(`/proc/${pid}/task/${tid}/stat`).own;
  }
  return out;
}

export interface PullCpu {
  daemonMain: number;
  daemonGc: number;
  daemonThreadPool: number;
  daemonOther: number;
  helpers: number;
  supervisor: number;
  registry: number;
  total: number;
}

export class PullCpuMeter {
  private constructor(
    private readonly daemonPid: number,
    private readonly supervisorPid: number | undefined,
    private readonly registryPid: number,
  ) {}

  /** Finds the in-node daemon and its supervisor by the config file they were started with. */
  static find(configFile: string, registryPid: number): PullCpuMeter {
    let daemon: number | undefined;
    let supervisor: number | undefined;
    for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
      const cmd = commandLine(pid);
      if (!cmd.includes(configFile) || !/\bserve\b/.test(cmd)) continue;
      // nsenter and the run-as-user wrappers carry the same arguments; the daemons are node.
      if (!/^\S*node /.test(cmd)) continue;
      if (cmd.includes('--in-node')) daemon = Number(pid);
      else supervisor = Number(pid);
    }
    if (daemon === undefined) throw new Error(`no in-node daemon started with ${configFile}`);
    return new PullCpuMeter(daemon, supervisor, registryPid);
  }

  private sample() {
    const threads = threadTimes(this.daemonPid);
    const daemon = times(`/proc/${this.daemonPid}/stat`);
    return {
      main: threads.MainThread ?? 0,
      gc: threads.V8Worker ?? 0,
      pool: threads['libuv-worker'] ?? 0,
      all: daemon.own,
      helpers: daemon.children,
      supervisor: this.supervisorPid === undefined ? 0 : times(`/proc/${this.supervisorPid}/stat`).own,
      registry: times(`/proc/${this.registryPid}/stat`).own,
    };
  }

  /** Runs `task` and returns the CPU each part spent meanwhile. */
  async measure(task: () => Promise<unknown>): Promise<PullCpu> {
    const before = this.sample();
    await task();
    const after = this.sample();
    const d = (k: keyof typeof before) => after[k] - before[k];
    const cpu = {
      daemonMain: d('main'),
      daemonGc: d('gc'),
      daemonThreadPool: d('pool'),
      // Per-thread and per-process ticks round apart; a few ms below zero mean none.
      daemonOther: Math.max(0, d('all') - d('main') - d('gc') - d('pool')),
      helpers: d('helpers'),
      supervisor: d('supervisor'),
      registry: d('registry'),
    };
    return { ...cpu, total: Object.values(cpu).reduce((a, b) => a + b, 0) };
  }
}

/** CPU of this process's children reaped while `task` ran (a shell pipeline's), ms. */
export async function childrenCpu(task: () => Promise<unknown>): Promise<number> {
  const before = times('/proc/self/stat').children;
  await task();
  return times('/proc/self/stat').children - before;
}
