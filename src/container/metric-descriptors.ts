/**
 * The metrics ListPodSandboxMetrics reports, by their cadvisor names (what kubelet's
 * /metrics/cadvisor exposes, so dashboards and alerts written for cadvisor keep working when
 * kubelet takes them from the runtime with PodAndContainerStatsFromCRI). ListMetricDescriptors
 * answers this table; every sample pod-metrics.ts makes names one of these and carries exactly
 * its label values, in order.
 *
 * Labels: the six cadvisor gives every container series as kubelet exposes them — container,
 * id, image, name, namespace, pod — then the metric's own (cpu, interface, device, ...).
 * CRI values are unsigned integers, so "_seconds" figures are whole seconds.
 */
import type { MetricDescriptor } from '../api/generated/runtime/v1/MetricDescriptor.js';

export const BASE_LABELS = ['container', 'id', 'image', 'name', 'namespace', 'pod'] as const;

export type MetricKind = 'COUNTER' | 'GAUGE';

export interface MetricDefinition {
  name: string;
  help: string;
  kind: MetricKind;
  /** The metric's own labels, after BASE_LABELS. */
  labels: readonly string[];
}

function metric(
  name: string,
  kind: MetricKind,
  help: string,
  labels: readonly string[] = [],
): MetricDefinition {
  return { name, help, kind, labels };
}

const C = 'COUNTER';
const G = 'GAUGE';
const DEVICE = ['device'];
const INTERFACE = ['interface'];

/** Every metric, by a short key the sample code uses. */
export const METRICS = {
  // cpu.stat (present in every cgroup v2 group, delegated cpu controller or not)
  cpuUsage: metric('container_cpu_usage_seconds_total', C, 'CPU time used, in seconds (cpu="total").', [
    'cpu',
  ]),
  cpuUser: metric('container_cpu_user_seconds_total', C, 'CPU time used in user mode, in seconds.'),
  cpuSystem: metric('container_cpu_system_seconds_total', C, 'CPU time used in kernel mode, in seconds.'),
  cfsPeriods: metric('container_cpu_cfs_periods_total', C, 'CFS enforcement periods that have elapsed.'),
  cfsThrottledPeriods: metric(
    'container_cpu_cfs_throttled_periods_total',
    C,
    'CFS enforcement periods in which the group was throttled.',
  ),
  cfsThrottledSeconds: metric(
    'container_cpu_cfs_throttled_seconds_total',
    C,
    'Time the group spent throttled by its CPU quota, in seconds.',
  ),
  // memory: the cgroup's files where the memory controller is delegated, else the processes' /proc figures
  memoryUsage: metric(
    'container_memory_usage_bytes',
    G,
    'Memory in use, in bytes, however recently accessed.',
  ),
  memoryWorkingSet: metric(
    'container_memory_working_set_bytes',
    G,
    'Memory in use minus inactive file pages, in bytes (what eviction looks at).',
  ),
  memoryRss: metric('container_memory_rss', G, 'Anonymous memory (heap, stacks), in bytes.'),
  memoryCache: metric('container_memory_cache', G, 'Page cache charged to the group, in bytes.'),
  memoryMappedFile: metric(
    'container_memory_mapped_file',
    G,
    'File pages mapped by the processes, in bytes.',
  ),
  memoryKernel: metric('container_memory_kernel_usage', G, 'Kernel memory charged to the group, in bytes.'),
  memorySwap: metric('container_memory_swap', G, 'Swap used, in bytes.'),
  memoryMaxUsage: metric('container_memory_max_usage_bytes', G, 'Highest memory use recorded, in bytes.'),
  memoryFailcnt: metric('container_memory_failcnt', C, 'Times memory use reached the limit.'),
  memoryFailures: metric('container_memory_failures_total', C, 'Page faults, by type and scope.', [
    'failure_type',
    'scope',
  ]),
  oomEvents: metric('container_oom_events_total', C, 'Out-of-memory kills in the group.'),
  // processes: cgroup.procs of the group and its descendants, their /proc entries, pids.max
  processes: metric('container_processes', G, 'Processes running in the group.'),
  threads: metric('container_threads', G, 'Threads running in the group.'),
  threadsMax: metric('container_threads_max', G, 'Most tasks the group may hold (pids.max); 0 = no limit.'),
  fileDescriptors: metric('container_file_descriptors', G, 'Open file descriptors of the processes.'),
  sockets: metric('container_sockets', G, 'Open sockets of the processes.'),
  // limits in force (the group's own files; 0 = none)
  specCpuPeriod: metric('container_spec_cpu_period', G, 'CFS period of the CPU quota, in microseconds.'),
  specCpuQuota: metric(
    'container_spec_cpu_quota',
    G,
    'CPU quota per period, in microseconds (only when set).',
  ),
  specCpuShares: metric(
    'container_spec_cpu_shares',
    G,
    'CPU shares (from cpu.weight); 0 where the cpu controller is not delegated.',
  ),
  specMemoryLimit: metric('container_spec_memory_limit_bytes', G, 'Memory limit in bytes; 0 = none.'),
  specMemorySwapLimit: metric('container_spec_memory_swap_limit_bytes', G, 'Swap limit in bytes; 0 = none.'),
  specMemoryReservation: metric(
    'container_spec_memory_reservation_limit_bytes',
    G,
    'Memory protected from reclaim (memory.low), in bytes (only when set).',
  ),
  // times
  startTime: metric(
    'container_start_time_seconds',
    G,
    'When the container started (the pod: was created), Unix seconds.',
  ),
  lastSeen: metric('container_last_seen', G, 'When the runtime last saw the container, Unix seconds.'),
  // the writable layer's filesystem
  fsUsage: metric('container_fs_usage_bytes', G, 'Bytes the writable layer occupies.', DEVICE),
  fsLimit: metric(
    'container_fs_limit_bytes',
    G,
    'Size of the filesystem holding the writable layer, in bytes.',
    DEVICE,
  ),
  fsInodesTotal: metric(
    'container_fs_inodes_total',
    G,
    'Inodes of the filesystem holding the writable layer.',
    DEVICE,
  ),
  fsInodesFree: metric('container_fs_inodes_free', G, 'Free inodes of that filesystem.', DEVICE),
  // io.stat (only where the io controller is delegated)
  fsReadsBytes: metric('container_fs_reads_bytes_total', C, 'Bytes read from the device.', DEVICE),
  fsReads: metric('container_fs_reads_total', C, 'Reads completed on the device.', DEVICE),
  fsWritesBytes: metric('container_fs_writes_bytes_total', C, 'Bytes written to the device.', DEVICE),
  fsWrites: metric('container_fs_writes_total', C, 'Writes completed on the device.', DEVICE),
  blkioDeviceUsage: metric('container_blkio_device_usage_total', C, 'Bytes moved to or from the device.', [
    'device',
    'major',
    'minor',
    'operation',
  ]),
  // the pod's network namespace (/proc/<pid>/net/dev), pod level only
  rxBytes: metric('container_network_receive_bytes_total', C, 'Bytes received.', INTERFACE),
  rxPackets: metric('container_network_receive_packets_total', C, 'Packets received.', INTERFACE),
  rxDropped: metric(
    'container_network_receive_packets_dropped_total',
    C,
    'Packets dropped on receipt.',
    INTERFACE,
  ),
  rxErrors: metric('container_network_receive_errors_total', C, 'Errors while receiving.', INTERFACE),
  txBytes: metric('container_network_transmit_bytes_total', C, 'Bytes transmitted.', INTERFACE),
  txPackets: metric('container_network_transmit_packets_total', C, 'Packets transmitted.', INTERFACE),
  txDropped: metric(
    'container_network_transmit_packets_dropped_total',
    C,
    'Packets dropped on transmission.',
    INTERFACE,
  ),
  txErrors: metric('container_network_transmit_errors_total', C, 'Errors while transmitting.', INTERFACE),
} as const satisfies Record<string, MetricDefinition>;

export type MetricKey = keyof typeof METRICS;

/** ListMetricDescriptors: every metric, its help and its label keys. */
export function metricDescriptors(): MetricDescriptor[] {
  return Object.values(METRICS).map((m) => ({
    name: m.name,
    help: m.help,
    label_keys: [...BASE_LABELS, ...m.labels],
  }));
}
