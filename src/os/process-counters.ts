/**
 * What the CRI metrics read from the node besides cgroup files (NodeCounters): the processes of a
 * cgroup tree and their /proc figures, a pod network namespace's interface counters, and the
 * filesystem under the writable layers. All on request, no sampler; nothing is spawned.
 *
 * Pod network counters: /proc/<pid>/net/dev shows the network namespace of <pid>, so a process
 * known to be in the pod's namespace (the infra process, else a running container's init) is
 * read. "Known" means checked: its /proc/<pid>/ns/net is the same nsfs inode as the pod's pin
 * file, so a pid reused by another process never reports another namespace's traffic. A pod
 * with no such process (host pid namespace, nothing running) has no counters (null).
 *
 * Processes are the daemon's view: cgroup.procs lists pids in the reader's pid namespace (the
 * node's), and the daemon, uid 0 of the node's user namespace, may read their /proc entries.
 * A process that exits while being read is skipped.
 */
import { readFile, statfs } from 'node:fs/promises';
import path from 'node:path';
import { kernelFileIdentity, readKernelDirectory, readKernelFile, readKernelLink } from './kernel-file.js';
import { parseMountInfo, readSelfMountInfo } from './mounts.js';

/** /proc figures summed over a set of processes (bytes, counts). */
export interface ProcessTotals {
  processes: number;
  threads: number;
  /** VmRSS, RssAnon, RssFile + RssShmem, VmSwap, VmHWM, VmPTE of /proc/<pid>/status. */
  residentBytes: bigint;
  anonBytes: bigint;
  fileBytes: bigint;
  swapBytes: bigint;
  peakResidentBytes: bigint;
  pageTableBytes: bigint;
  /** minflt and majflt of /proc/<pid>/stat. */
  minorFaults: bigint;
  majorFaults: bigint;
  fileDescriptors: number;
  sockets: number;
}

/** One line of /proc/net/dev. */
export interface InterfaceCounters {
  name: string;
  rxBytes: bigint;
  rxPackets: bigint;
  rxErrors: bigint;
  rxDropped: bigint;
  txBytes: bigint;
  txPackets: bigint;
  txErrors: bigint;
  txDropped: bigint;
}

export interface FilesystemFigures {
  /** The mount's source (e.g. /dev/vda1), else its major:minor. */
  device: string;
  capacityBytes: bigint;
  inodesTotal: bigint;
  inodesFree: bigint;
}

export interface NodeCounters {
  /** Pids of every process in the cgroup at `cgroupDir` and its descendants. */
  pidsUnder(cgroupDir: string): Promise<number[]>;
  processTotals(pids: readonly number[]): Promise<ProcessTotals>;
  /** The interfaces of the network namespace pinned at `netnsFile`, read through one of `pids`. */
  networkInterfaces(netnsFile: string, pids: readonly number[]): Promise<InterfaceCounters[] | null>;
  filesystem(dir: string): Promise<FilesystemFigures | null>;
  /** A block device's name for io.stat's "major:minor" (e.g. /dev/vda), else the numbers. */
  blockDeviceName(majorMinor: string): Promise<string>;
}

export function emptyTotals(): ProcessTotals {
  return {
    processes: 0,
    threads: 0,
    residentBytes: 0n,
    anonBytes: 0n,
    fileBytes: 0n,
    swapBytes: 0n,
    peakResidentBytes: 0n,
    pageTableBytes: 0n,
    minorFaults: 0n,
    majorFaults: 0n,
    fileDescriptors: 0,
    sockets: 0,
  };
}

/** "VmRSS:     1234 kB" lines of /proc/<pid>/status, in bytes (Threads as a count). */
export function parseProcStatus(text: string): Map<string, bigint> {
  const values = new Map<string, bigint>();
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s+(\d+)(\s+kB)?\s*$/.exec(line);
    if (m) values.set(m[1]!, BigInt(m[2]!) * (m[3] ? 1024n : 1n));
  }
  return values;
}

/** minflt and majflt from /proc/<pid>/stat (fields 10 and 12; the comm may hold spaces). */
export function parseProcStatFaults(text: string): { minor: bigint; major: bigint } | null {
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  const fields = text.slice(close + 2).split(' ');
  // fields[0] is field 3 (state): minflt is field 10, majflt field 12.
  const minor = fields[7];
  const major = fields[9];
  if (!minor || !major || !/^\d+$/.test(minor) || !/^\d+$/.test(major)) return null;
  return { minor: BigInt(minor), major: BigInt(major) };
}

/** /proc/net/dev: two header lines, then "name: rx bytes packets errs drop ... tx bytes packets errs drop ...". */
export function parseNetDev(text: string): InterfaceCounters[] {
  const interfaces: InterfaceCounters[] = [];
  for (const line of text.split('\n').slice(2)) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const name = line.slice(0, colon).trim();
    const f = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/);
    if (name === '' || f.length < 16 || !f.every((v) => /^\d+$/.test(v))) continue;
    const n = (i: number) => BigInt(f[i]!);
    interfaces.push({
      name,
      rxBytes: n(0),
      rxPackets: n(1),
      rxErrors: n(2),
      rxDropped: n(3),
      txBytes: n(8),
      txPackets: n(9),
      txErrors: n(10),
      txDropped: n(11),
    });
  }
  return interfaces;
}

export class ProcNodeCounters implements NodeCounters {
  readonly #proc: string;
  /** Device names by directory and by io.stat "major:minor". */
  readonly #devices = new Map<string, string>();

  /** `proc` is where procfs is mounted (tests point it at a fixture tree). */
  constructor(proc = '/proc') {
    this.#proc = proc;
  }

  async pidsUnder(cgroupDir: string): Promise<number[]> {
    const pids: number[] = [];
    const walk = async (dir: string, depth: number): Promise<void> => {
      const procs = (await readKernelFile(path.join(dir, 'cgroup.procs'))) ?? '';
      for (const line of procs.split('\n')) if (/^\d+$/.test(line.trim())) pids.push(Number(line.trim()));
      if (depth >= 8) return;
      const entries = await readKernelDirectory(dir);
      for (const e of entries) if (e.isDirectory()) await walk(path.join(dir, e.name), depth + 1);
    };
    await walk(cgroupDir, 0);
    return pids;
  }

  async processTotals(pids: readonly number[]): Promise<ProcessTotals> {
    const totals = emptyTotals();
    await Promise.all(
      pids.map(async (pid) => {
        const dir = path.join(this.#proc, String(pid));
        const [status, stat] = await Promise.all([
          readKernelFile(path.join(dir, 'status')),
          readKernelFile(path.join(dir, 'stat')),
        ]);
        if (status === null) return; // gone
        const s = parseProcStatus(status);
        const get = (key: string) => s.get(key) ?? 0n;
        totals.processes += 1;
        totals.threads += Number(get('Threads'));
        totals.residentBytes += get('VmRSS');
        totals.anonBytes += get('RssAnon');
        totals.fileBytes += get('RssFile') + get('RssShmem');
        totals.swapBytes += get('VmSwap');
        totals.peakResidentBytes += get('VmHWM');
        totals.pageTableBytes += get('VmPTE');
        const faults = stat === null ? null : parseProcStatFaults(stat);
        if (faults) {
          totals.minorFaults += faults.minor;
          totals.majorFaults += faults.major;
        }
        const fds = (await readKernelDirectory(path.join(dir, 'fd'))).map((e) => e.name);
        totals.fileDescriptors += fds.length;
        const links = await Promise.all(fds.map((fd) => readKernelLink(path.join(dir, 'fd', fd))));
        totals.sockets += links.filter((l) => l?.startsWith('socket:')).length;
      }),
    );
    return totals;
  }

  async networkInterfaces(netnsFile: string, pids: readonly number[]): Promise<InterfaceCounters[] | null> {
    const wanted = await kernelFileIdentity(netnsFile);
    if (wanted === null) return null;
    for (const pid of pids) {
      const dir = path.join(this.#proc, String(pid));
      if ((await kernelFileIdentity(path.join(dir, 'ns', 'net'))) !== wanted) continue;
      const text = await readKernelFile(path.join(dir, 'net', 'dev'));
      // Checked again after the read: the pid may have been reused in between.
      if (text !== null && (await kernelFileIdentity(path.join(dir, 'ns', 'net'))) === wanted)
        return parseNetDev(text);
    }
    return null;
  }

  async filesystem(dir: string): Promise<FilesystemFigures | null> {
    const fs = await statfs(dir, { bigint: true }).catch(() => null);
    if (fs === null) return null;
    return {
      device: await this.#deviceOf(dir),
      capacityBytes: fs.blocks * fs.bsize,
      inodesTotal: fs.files,
      inodesFree: fs.ffree,
    };
  }

  /** The source of the mount `dir` is on (looked up once per directory: it does not move). */
  async #deviceOf(dir: string): Promise<string> {
    const known = this.#devices.get(dir);
    if (known !== undefined) return known;
    const resolved = path.resolve(dir);
    const under = parseMountInfo(await readSelfMountInfo().catch(() => ''))
      .filter(
        (m) => m.mountPoint === '/' || resolved === m.mountPoint || resolved.startsWith(`${m.mountPoint}/`),
      )
      .sort((a, b) => b.mountPoint.length - a.mountPoint.length)[0];
    const device = under ? (under.source.startsWith('/') ? under.source : under.device) : 'unknown';
    this.#devices.set(dir, device);
    return device;
  }

  async blockDeviceName(majorMinor: string): Promise<string> {
    const known = this.#devices.get(majorMinor);
    if (known !== undefined) return known;
    let name = majorMinor;
    if (/^\d+:\d+$/.test(majorMinor)) {
      const uevent = await readFile(`/sys/dev/block/${majorMinor}/uevent`, 'utf8').catch(() => '');
      const devname = /^DEVNAME=(.+)$/m.exec(uevent)?.[1];
      if (devname) name = `/dev/${devname}`;
    }
    this.#devices.set(majorMinor, name);
    return name;
  }
}
