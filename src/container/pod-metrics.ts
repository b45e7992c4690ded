/**
 * ListMetricDescriptors and ListPodSandboxMetrics (what kubelet's PodAndContainerStatsFromCRI
 * serves as /metrics/cadvisor, without cadvisor), and the pod network figures of
 * PodSandboxStats. Computed on request from the files as they are, no sampler, no cache
 * (Metric.timestamp 0: gathered live, as the CRI asks).
 *
 * Per ready pod: the pod cgroup's series (container="") and its network namespace's interfaces
 * (lo left out); per created or running container: its cgroup's series, its start time and its
 * writable layer. Where each figure comes from (metric-descriptors.ts names them):
 *   cpu        cpu.stat (usage/user/system always; periods and throttling only with the cpu
 *              controller, else 0: no quota is enforced);
 *   memory     memory.current/stat/peak/events/swap.current where the memory controller is
 *              delegated; otherwise the group's processes' /proc figures summed — resident
 *              (usage, working set), anonymous (rss), file-backed resident (cache, mapped file),
 *              page tables (kernel), swap, peak resident (max usage), faults — an estimate that
 *              counts shared pages once per process, and failcnt / OOM events 0 (no limit exists
 *              to be hit). On a host whose memory controller is bound to cgroup v1 this is what
 *              is reported;
 *   processes  cgroup.procs of the group and its descendants; threads, descriptors and sockets
 *              from their /proc entries; pids.max;
 *   limits     cpu.max, cpu.weight, memory.max, memory.swap.max, memory.low as in force (0 = none);
 *   disk       the writable layer's usage (du) and its filesystem's size and inodes; io.stat per
 *              device where the io controller is delegated;
 *   network    /proc/<pid>/net/dev of a process checked to be in the pod's namespace.
 */
import type { Metric } from '../api/generated/runtime/v1/Metric.js';
import type { NetworkUsage } from '../api/generated/runtime/v1/NetworkUsage.js';
import type { PodSandboxMetrics } from '../api/generated/runtime/v1/PodSandboxMetrics.js';
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import type { ContainerRecord } from '../core/container-store.js';
import type { SandboxInfo } from '../core/sandbox-info.js';
import { sandboxInfoOf } from '../core/sandbox-view.js';
import type { InterfaceCounters, ProcessTotals } from '../os/process-counters.js';
import type { ContainerDeps } from './container-deps.js';
import { METRICS, type MetricKey, metricDescriptors } from './metric-descriptors.js';

/** One value of one metric; `labels` are the metric's own, after the base labels. */
export interface Sample {
  key: MetricKey;
  value: bigint;
  labels?: string[];
}

const MICROS = 1_000_000n;
const NANOS = 1_000_000_000n;

function keyed(text: string | null): Map<string, bigint> {
  const map = new Map<string, bigint>();
  for (const line of (text ?? '').split('\n')) {
    const [key, value] = line.trim().split(/\s+/);
    if (key && value !== undefined && /^\d+$/.test(value)) map.set(key, BigInt(value));
  }
  return map;
}

/** A single-number file; null when absent or "max". */
function limit(text: string | null): bigint | null {
  const t = text?.trim();
  return t && /^\d+$/.test(t) ? BigInt(t) : null;
}

/** cpu.weight (1..10000) as the cgroup v1 shares cadvisor reports (2..262144). */
export function weightToShares(weight: bigint): bigint {
  return 2n + ((weight - 1n) * 262142n) / 9999n;
}

/** io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ..." per line. */
export function parseIoStat(text: string | null): Map<string, Map<string, bigint>> {
  const devices = new Map<string, Map<string, bigint>>();
  for (const line of (text ?? '').split('\n')) {
    const [device, ...pairs] = line.trim().split(/\s+/);
    if (!device || !/^\d+:\d+$/.test(device)) continue;
    const values = new Map<string, bigint>();
    for (const pair of pairs) {
      const [k, v] = pair.split('=');
      if (k && v && /^\d+$/.test(v)) values.set(k, BigInt(v));
    }
    devices.set(device, values);
  }
  return devices;
}

/** The files of one cgroup v2 group, read once per request. */
interface GroupFiles {
  cpuStat: string | null;
  cpuMax: string | null;
  cpuWeight: string | null;
  memoryCurrent: string | null;
  memoryStat: string | null;
  memoryPeak: string | null;
  memoryEvents: string | null;
  memoryMax: string | null;
  memoryLow: string | null;
  swapCurrent: string | null;
  swapMax: string | null;
  pidsMax: string | null;
  ioStat: string | null;
}

const GROUP_FILES: Record<keyof GroupFiles, string> = {
  cpuStat: 'cpu.stat',
  cpuMax: 'cpu.max',
  cpuWeight: 'cpu.weight',
  memoryCurrent: 'memory.current',
  memoryStat: 'memory.stat',
  memoryPeak: 'memory.peak',
  memoryEvents: 'memory.events',
  memoryMax: 'memory.max',
  memoryLow: 'memory.low',
  swapCurrent: 'memory.swap.current',
  swapMax: 'memory.swap.max',
  pidsMax: 'pids.max',
  ioStat: 'io.stat',
};

async function readGroup(deps: ContainerDeps, cgroup: string): Promise<GroupFiles> {
  const entries = await Promise.all(
    Object.entries(GROUP_FILES).map(async ([key, file]) => [
      key,
      await deps.core.cgroups.readFile(cgroup, file),
    ]),
  );
  return Object.fromEntries(entries) as GroupFiles;
}

function cpuSamples(files: GroupFiles): Sample[] {
  if (files.cpuStat === null) return [];
  const stat = keyed(files.cpuStat);
  const get = (k: string) => stat.get(k) ?? 0n;
  return [
    { key: 'cpuUsage', value: get('usage_usec') / MICROS, labels: ['total'] },
    { key: 'cpuUser', value: get('user_usec') / MICROS },
    { key: 'cpuSystem', value: get('system_usec') / MICROS },
    { key: 'cfsPeriods', value: get('nr_periods') },
    { key: 'cfsThrottledPeriods', value: get('nr_throttled') },
    { key: 'cfsThrottledSeconds', value: get('throttled_usec') / MICROS },
  ];
}

function memorySamples(files: GroupFiles, procs: ProcessTotals): Sample[] {
  const current = limit(files.memoryCurrent);
  const faults = (minor: bigint, major: bigint): Sample[] =>
    ['container', 'hierarchy'].flatMap((scope) => [
      { key: 'memoryFailures' as const, value: minor, labels: ['pgfault', scope] },
      { key: 'memoryFailures' as const, value: major, labels: ['pgmajfault', scope] },
    ]);
  if (current === null) {
    // No memory controller in this group: what /proc says of its processes.
    return [
      { key: 'memoryUsage', value: procs.residentBytes },
      { key: 'memoryWorkingSet', value: procs.residentBytes },
      { key: 'memoryRss', value: procs.anonBytes },
      { key: 'memoryCache', value: procs.fileBytes },
      { key: 'memoryMappedFile', value: procs.fileBytes },
      { key: 'memoryKernel', value: procs.pageTableBytes },
      { key: 'memorySwap', value: procs.swapBytes },
      { key: 'memoryMaxUsage', value: procs.peakResidentBytes },
      { key: 'memoryFailcnt', value: 0n },
      { key: 'oomEvents', value: 0n },
      // /proc counts minor and major faults apart; the cgroup's pgfault counts both.
      ...faults(procs.minorFaults + procs.majorFaults, procs.majorFaults),
    ];
  }
  const stat = keyed(files.memoryStat);
  const events = keyed(files.memoryEvents);
  const get = (k: string) => stat.get(k) ?? 0n;
  const inactiveFile = get('inactive_file');
  const kernel = stat.get('kernel') ?? get('kernel_stack') + get('pagetables') + get('slab') + get('sock');
  return [
    { key: 'memoryUsage', value: current },
    { key: 'memoryWorkingSet', value: current > inactiveFile ? current - inactiveFile : 0n },
    { key: 'memoryRss', value: get('anon') },
    { key: 'memoryCache', value: get('file') },
    { key: 'memoryMappedFile', value: get('file_mapped') },
    { key: 'memoryKernel', value: kernel },
    { key: 'memorySwap', value: limit(files.swapCurrent) ?? 0n },
    { key: 'memoryMaxUsage', value: limit(files.memoryPeak) ?? current },
    { key: 'memoryFailcnt', value: events.get('max') ?? 0n },
    { key: 'oomEvents', value: events.get('oom_kill') ?? 0n },
    ...faults(get('pgfault'), get('pgmajfault')),
  ];
}

function processSamples(files: GroupFiles, procs: ProcessTotals): Sample[] {
  return [
    { key: 'processes', value: BigInt(procs.processes) },
    { key: 'threads', value: BigInt(procs.threads) },
    { key: 'threadsMax', value: limit(files.pidsMax) ?? 0n },
    { key: 'fileDescriptors', value: BigInt(procs.fileDescriptors) },
    { key: 'sockets', value: BigInt(procs.sockets) },
  ];
}

function limitSamples(files: GroupFiles): Sample[] {
  const [quota, period] = (files.cpuMax ?? '').trim().split(/\s+/);
  const weight = limit(files.cpuWeight);
  const samples: Sample[] = [
    { key: 'specCpuPeriod', value: period && /^\d+$/.test(period) ? BigInt(period) : 100_000n },
    { key: 'specCpuShares', value: weight === null ? 0n : weightToShares(weight) },
    { key: 'specMemoryLimit', value: limit(files.memoryMax) ?? 0n },
    { key: 'specMemorySwapLimit', value: limit(files.swapMax) ?? 0n },
  ];
  if (quota && /^\d+$/.test(quota)) samples.push({ key: 'specCpuQuota', value: BigInt(quota) });
  const low = limit(files.memoryLow);
  if (low !== null && low > 0n) samples.push({ key: 'specMemoryReservation', value: low });
  return samples;
}

async function ioSamples(deps: ContainerDeps, files: GroupFiles): Promise<Sample[]> {
  const samples: Sample[] = [];
  for (const [majorMinor, values] of parseIoStat(files.ioStat)) {
    const device = await deps.counters.blockDeviceName(majorMinor);
    const [major, minor] = majorMinor.split(':') as [string, string];
    const get = (k: string) => values.get(k) ?? 0n;
    samples.push(
      { key: 'fsReadsBytes', value: get('rbytes'), labels: [device] },
      { key: 'fsReads', value: get('rios'), labels: [device] },
      { key: 'fsWritesBytes', value: get('wbytes'), labels: [device] },
      { key: 'fsWrites', value: get('wios'), labels: [device] },
      { key: 'blkioDeviceUsage', value: get('rbytes'), labels: [device, major, minor, 'Read'] },
      { key: 'blkioDeviceUsage', value: get('wbytes'), labels: [device, major, minor, 'Write'] },
    );
  }
  return samples;
}

/** Every series one cgroup gives (a container's, or the pod's). */
async function groupSamples(deps: ContainerDeps, cgroup: string): Promise<Sample[]> {
  const [files, pids] = await Promise.all([
    readGroup(deps, cgroup),
    deps.counters.pidsUnder(deps.core.cgroups.dir(cgroup)),
  ]);
  const procs = await deps.counters.processTotals(pids);
  return [
    ...cpuSamples(files),
    ...memorySamples(files, procs),
    ...processSamples(files, procs),
    ...limitSamples(files),
    ...(await ioSamples(deps, files)),
  ];
}

async function writableLayerSamples(deps: ContainerDeps, id: string): Promise<Sample[]> {
  if (deps.writableLayerRoot === '') return [];
  const [usage, fs] = await Promise.all([
    deps.core.snapshotter.usage(id).catch(() => null),
    deps.counters.filesystem(deps.writableLayerRoot),
  ]);
  if (fs === null) return [];
  const samples: Sample[] = [
    { key: 'fsLimit', value: fs.capacityBytes, labels: [fs.device] },
    { key: 'fsInodesTotal', value: fs.inodesTotal, labels: [fs.device] },
    { key: 'fsInodesFree', value: fs.inodesFree, labels: [fs.device] },
  ];
  if (usage) samples.push({ key: 'fsUsage', value: usage.bytes, labels: [fs.device] });
  return samples;
}

function networkSamples(interfaces: readonly InterfaceCounters[]): Sample[] {
  return interfaces.flatMap((i) => {
    const labels = [i.name];
    return [
      { key: 'rxBytes' as const, value: i.rxBytes, labels },
      { key: 'rxPackets' as const, value: i.rxPackets, labels },
      { key: 'rxDropped' as const, value: i.rxDropped, labels },
      { key: 'rxErrors' as const, value: i.rxErrors, labels },
      { key: 'txBytes' as const, value: i.txBytes, labels },
      { key: 'txPackets' as const, value: i.txPackets, labels },
      { key: 'txDropped' as const, value: i.txDropped, labels },
      { key: 'txErrors' as const, value: i.txErrors, labels },
    ];
  });
}

/** The pod's interfaces but lo, or null when its namespace cannot be read (host network, nothing running). */
export async function podInterfaces(
  deps: ContainerDeps,
  sandbox: SandboxInfo,
  containers: readonly ContainerRecord[],
): Promise<InterfaceCounters[] | null> {
  const netns = sandbox.namespaces.network;
  if (!sandbox.ready || netns === null) return null;
  const pids = [
    ...(sandbox.infraPid !== null ? [sandbox.infraPid] : []),
    ...containers.filter((c) => c.state === 'running' && c.pid > 0).map((c) => c.pid),
  ];
  if (pids.length === 0) return null;
  const interfaces = await deps.counters.networkInterfaces(netns, pids);
  return interfaces === null ? null : interfaces.filter((i) => i.name !== 'lo');
}

/** PodSandboxStats.linux.network: eth0 (else the first interface) as the default, all of them listed. */
export async function podNetworkUsage(
  deps: ContainerDeps,
  sandbox: SandboxInfo,
  containers: readonly Readonly<ContainerRecord>[],
): Promise<NetworkUsage | null> {
  const interfaces = await podInterfaces(deps, sandbox, containers);
  if (interfaces === null || interfaces.length === 0) return null;
  const usage = (i: InterfaceCounters) => ({
    name: i.name,
    rx_bytes: { value: i.rxBytes.toString() },
    rx_errors: { value: i.rxErrors.toString() },
    tx_bytes: { value: i.txBytes.toString() },
    tx_errors: { value: i.txErrors.toString() },
  });
  const main = interfaces.find((i) => i.name === 'eth0') ?? interfaces[0]!;
  return {
    timestamp: deps.core.now().toString(),
    default_interface: usage(main),
    interfaces: interfaces.map(usage),
  };
}

function toMetrics(samples: readonly Sample[], base: readonly string[]): Metric[] {
  return samples.map((s) => {
    const definition = METRICS[s.key];
    return {
      name: definition.name,
      timestamp: '0',
      metric_type: definition.kind,
      label_values: [...base, ...(s.labels ?? [])],
      value: { value: s.value.toString() },
    };
  });
}

function seconds(nanoseconds: string | bigint): bigint {
  return BigInt(nanoseconds) / NANOS;
}

export async function podMetricsOf(deps: ContainerDeps, sandbox: SandboxInfo): Promise<PodSandboxMetrics> {
  const meta = sandbox.config.metadata;
  const namespace = meta?.namespace ?? '';
  const podName = meta?.name ?? '';
  const now = seconds(deps.core.now());
  const records = deps.core.podContainers(sandbox.id);
  const live = records.filter((r) => r.state === 'running' || r.state === 'created');

  const podSamples: Sample[] = [
    { key: 'lastSeen', value: now },
    ...(sandbox.cgroupParent !== null ? await groupSamples(deps, sandbox.cgroupParent) : []),
    ...networkSamples((await podInterfaces(deps, sandbox, records)) ?? []),
  ];
  const record = deps.core.sandboxes.peek(sandbox.id);
  if (record) podSamples.push({ key: 'startTime', value: seconds(record.createdAt) });

  const containerMetrics = await Promise.all(
    live.map(async (c) => {
      const samples: Sample[] = [
        { key: 'lastSeen', value: now },
        { key: 'startTime', value: seconds(c.startedAt !== '0' ? c.startedAt : c.createdAt) },
        ...(c.cgroupPath !== null ? await groupSamples(deps, c.cgroupPath) : []),
        ...(await writableLayerSamples(deps, c.id)),
      ];
      const base = [
        c.config.metadata?.name ?? '',
        c.id,
        c.image.repoTag || c.image.requested,
        c.reservedName,
        namespace,
        podName,
      ];
      return { container_id: c.id, metrics: toMetrics(samples, base) };
    }),
  );
  return {
    pod_sandbox_id: sandbox.id,
    metrics: toMetrics(podSamples, ['', sandbox.id, '', '', namespace, podName]),
    container_metrics: containerMetrics,
  };
}

export function createMetricsHandlers(deps: ContainerDeps) {
  return {
    async ListMetricDescriptors(
      _request: RuntimeRequest<'ListMetricDescriptors'>,
      _ctx: Pick<CallContext, 'logger'>,
    ): Promise<RuntimeResponse<'ListMetricDescriptors'>> {
      return { descriptors: metricDescriptors() };
    },

    async ListPodSandboxMetrics(
      _request: RuntimeRequest<'ListPodSandboxMetrics'>,
      _ctx: Pick<CallContext, 'logger'>,
    ): Promise<RuntimeResponse<'ListPodSandboxMetrics'>> {
      const sandboxes = deps.core.sandboxes
        .peekAll()
        .map(sandboxInfoOf)
        .filter((s) => s.ready);
      return { pod_metrics: await Promise.all(sandboxes.map((s) => podMetricsOf(deps, s))) };
    },
  };
}
