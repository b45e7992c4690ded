/**
 * The NRI API (package nri.pkg.api.v1alpha1) as this runtime speaks it: message schemas,
 * the TypeScript types inferred from them, enums and the service/method names.
 *
 * Field numbers, names and enum values are protocol facts taken from the upstream
 * definition, github.com/containerd/nri **v0.12.2** `pkg/api/api.proto` (the version
 * cri-tools v1.37.0's critest links its test plugins with). Go field names are camelCased.
 * Messages of the WASM host service are left out: a runtime never receives them.
 */
import {
  bool,
  bytes,
  defineMessage,
  enumeration,
  int32,
  int64,
  type MessageOf,
  map,
  mapOfMessages,
  message,
  repeated,
  repeatedMessage,
  string,
  uint32,
  uint64,
} from './protobuf.js';

/** The NRI module version whose API this file follows (sent as ConfigureRequest.NRI_version). */
export const NRI_API_VERSION = 'v0.12.2';

export const RUNTIME_SERVICE = 'nri.pkg.api.v1alpha1.Runtime';
export const PLUGIN_SERVICE = 'nri.pkg.api.v1alpha1.Plugin';

/** Lifecycle events; a plugin's subscription is a mask with bit (event - 1) set per event. */
export const NriEvent = {
  Unknown: 0,
  RunPodSandbox: 1,
  StopPodSandbox: 2,
  RemovePodSandbox: 3,
  CreateContainer: 4,
  PostCreateContainer: 5,
  StartContainer: 6,
  PostStartContainer: 7,
  UpdateContainer: 8,
  PostUpdateContainer: 9,
  StopContainer: 10,
  RemoveContainer: 11,
  UpdatePodSandbox: 12,
  PostUpdatePodSandbox: 13,
  ValidateContainerAdjustment: 14,
  Last: 15,
} as const;
export type NriEventName = Exclude<keyof typeof NriEvent, 'Unknown' | 'Last'>;

/** Every event a plugin may subscribe to; a ConfigureResponse with events 0 means all of them. */
export const VALID_EVENTS_MASK = (1 << (NriEvent.Last - 1)) - 1;

export function eventBit(event: number): number {
  return 1 << (event - 1);
}

export const ContainerStateValue = {
  Unknown: 0,
  Created: 1,
  Paused: 2,
  Running: 3,
  Stopped: 4,
} as const;

export const IOPrioClass = ['IOPRIO_CLASS_NONE', 'IOPRIO_CLASS_RT', 'IOPRIO_CLASS_BE', 'IOPRIO_CLASS_IDLE'];
export const LinuxSchedulerPolicy = [
  'SCHED_NONE',
  'SCHED_OTHER',
  'SCHED_FIFO',
  'SCHED_RR',
  'SCHED_BATCH',
  'SCHED_ISO',
  'SCHED_IDLE',
  'SCHED_DEADLINE',
];
export const LinuxSchedulerFlag = [
  'SCHED_FLAG_RESET_ON_FORK',
  'SCHED_FLAG_RECLAIM',
  'SCHED_FLAG_DL_OVERRUN',
  'SCHED_FLAG_KEEP_POLICY',
  'SCHED_FLAG_KEEP_PARAMS',
  'SCHED_FLAG_UTIL_CLAMP_MIN',
  'SCHED_FLAG_UTIL_CLAMP_MAX',
];
export const MpolMode = [
  'MPOL_DEFAULT',
  'MPOL_PREFERRED',
  'MPOL_BIND',
  'MPOL_INTERLEAVE',
  'MPOL_LOCAL',
  'MPOL_PREFERRED_MANY',
  'MPOL_WEIGHTED_INTERLEAVE',
];
export const MpolFlag = ['MPOL_F_STATIC_NODES', 'MPOL_F_RELATIVE_NODES', 'MPOL_F_NUMA_BALANCING'];

// ---- optional wrappers ------------------------------------------------------------------

export const OptionalString = defineMessage('OptionalString', { value: string(1) });
export type OptionalString = MessageOf<typeof OptionalString>;
export const OptionalRepeatedString = defineMessage('OptionalRepeatedString', {
  value: repeated(1, 'string'),
});
export type OptionalRepeatedString = MessageOf<typeof OptionalRepeatedString>;
export const OptionalInt = defineMessage('OptionalInt', { value: int64(1) });
export type OptionalInt = MessageOf<typeof OptionalInt>;
export const OptionalInt32 = defineMessage('OptionalInt32', { value: int32(1) });
export const OptionalUInt32 = defineMessage('OptionalUInt32', { value: uint32(1) });
export type OptionalUInt32 = MessageOf<typeof OptionalUInt32>;
export const OptionalInt64 = defineMessage('OptionalInt64', { value: int64(1) });
export type OptionalInt64 = MessageOf<typeof OptionalInt64>;
export const OptionalUInt64 = defineMessage('OptionalUInt64', { value: uint64(1) });
export type OptionalUInt64 = MessageOf<typeof OptionalUInt64>;
export const OptionalBool = defineMessage('OptionalBool', { value: bool(1) });
export type OptionalBool = MessageOf<typeof OptionalBool>;
export const OptionalFileMode = defineMessage('OptionalFileMode', { value: uint32(1) });

// ---- pods and containers ----------------------------------------------------------------

export const KeyValue = defineMessage('KeyValue', { key: string(1), value: string(2) });
export type KeyValue = MessageOf<typeof KeyValue>;

export const LinuxNamespace = defineMessage('LinuxNamespace', { type: string(1), path: string(2) });
export type LinuxNamespace = MessageOf<typeof LinuxNamespace>;

export const LinuxMemory = defineMessage('LinuxMemory', {
  limit: message(1, () => OptionalInt64),
  reservation: message(2, () => OptionalInt64),
  swap: message(3, () => OptionalInt64),
  kernel: message(4, () => OptionalInt64),
  kernelTcp: message(5, () => OptionalInt64),
  swappiness: message(6, () => OptionalUInt64),
  disableOomKiller: message(7, () => OptionalBool),
  useHierarchy: message(8, () => OptionalBool),
});
export type LinuxMemory = MessageOf<typeof LinuxMemory>;

export const LinuxCPU = defineMessage('LinuxCPU', {
  shares: message(1, () => OptionalUInt64),
  quota: message(2, () => OptionalInt64),
  period: message(3, () => OptionalUInt64),
  realtimeRuntime: message(4, () => OptionalInt64),
  realtimePeriod: message(5, () => OptionalUInt64),
  cpus: string(6),
  mems: string(7),
});
export type LinuxCPU = MessageOf<typeof LinuxCPU>;

export const HugepageLimit = defineMessage('HugepageLimit', { pageSize: string(1), limit: uint64(2) });
export type HugepageLimit = MessageOf<typeof HugepageLimit>;

export const LinuxDeviceCgroup = defineMessage('LinuxDeviceCgroup', {
  allow: bool(1),
  type: string(2),
  major: message(3, () => OptionalInt64),
  minor: message(4, () => OptionalInt64),
  access: string(5),
});
export type LinuxDeviceCgroup = MessageOf<typeof LinuxDeviceCgroup>;

export const LinuxPids = defineMessage('LinuxPids', { limit: int64(1) });

export const LinuxResources = defineMessage('LinuxResources', {
  memory: message(1, () => LinuxMemory),
  cpu: message(2, () => LinuxCPU),
  hugepageLimits: repeatedMessage(3, () => HugepageLimit),
  blockioClass: message(4, () => OptionalString),
  rdtClass: message(5, () => OptionalString),
  unified: map(6, 'string', 'string'),
  devices: repeatedMessage(7, () => LinuxDeviceCgroup),
  pids: message(8, () => LinuxPids),
});
export type LinuxResources = MessageOf<typeof LinuxResources>;

export const LinuxPodSandbox = defineMessage('LinuxPodSandbox', {
  podOverhead: message(1, () => LinuxResources),
  podResources: message(2, () => LinuxResources),
  cgroupParent: string(3),
  cgroupsPath: string(4),
  namespaces: repeatedMessage(5, () => LinuxNamespace),
  resources: message(6, () => LinuxResources),
});

export const PodSandbox = defineMessage('PodSandbox', {
  id: string(1),
  name: string(2),
  uid: string(3),
  namespace: string(4),
  labels: map(5, 'string', 'string'),
  annotations: map(6, 'string', 'string'),
  runtimeHandler: string(7),
  linux: message(8, () => LinuxPodSandbox),
  pid: uint32(9),
  ips: repeated(10, 'string'),
});
export type PodSandbox = MessageOf<typeof PodSandbox>;

export const Mount = defineMessage('Mount', {
  destination: string(1),
  type: string(2),
  source: string(3),
  options: repeated(4, 'string'),
});
export type Mount = MessageOf<typeof Mount>;

export const Hook = defineMessage('Hook', {
  path: string(1),
  args: repeated(2, 'string'),
  env: repeated(3, 'string'),
  timeout: message(4, () => OptionalInt),
});
export type Hook = MessageOf<typeof Hook>;

export const Hooks = defineMessage('Hooks', {
  prestart: repeatedMessage(1, () => Hook),
  createRuntime: repeatedMessage(2, () => Hook),
  createContainer: repeatedMessage(3, () => Hook),
  startContainer: repeatedMessage(4, () => Hook),
  poststart: repeatedMessage(5, () => Hook),
  poststop: repeatedMessage(6, () => Hook),
});
export type Hooks = MessageOf<typeof Hooks>;

export const LinuxDevice = defineMessage('LinuxDevice', {
  path: string(1),
  type: string(2),
  major: int64(3),
  minor: int64(4),
  fileMode: message(5, () => OptionalFileMode),
  uid: message(6, () => OptionalUInt32),
  gid: message(7, () => OptionalUInt32),
});
export type LinuxDevice = MessageOf<typeof LinuxDevice>;

export const LinuxIOPriority = defineMessage('LinuxIOPriority', {
  class: enumeration(1),
  priority: int32(2),
});
export type LinuxIOPriority = MessageOf<typeof LinuxIOPriority>;

export const SecurityProfile = defineMessage('SecurityProfile', {
  profileType: enumeration(1),
  localhostRef: string(2),
});

export const LinuxSeccompArg = defineMessage('LinuxSeccompArg', {
  index: uint32(1),
  value: uint64(2),
  valueTwo: uint64(3),
  op: string(4),
});

export const LinuxSyscall = defineMessage('LinuxSyscall', {
  names: repeated(1, 'string'),
  action: string(2),
  errnoRet: message(3, () => OptionalUInt32),
  args: repeatedMessage(4, () => LinuxSeccompArg),
});

export const LinuxSeccomp = defineMessage('LinuxSeccomp', {
  defaultAction: string(1),
  defaultErrno: message(2, () => OptionalUInt32),
  architectures: repeated(3, 'string'),
  flags: repeated(4, 'string'),
  listenerPath: string(5),
  listenerMetadata: string(6),
  syscalls: repeatedMessage(7, () => LinuxSyscall),
});
export type LinuxSeccomp = MessageOf<typeof LinuxSeccomp>;

export const LinuxNetDevice = defineMessage('LinuxNetDevice', { name: string(1) });
export type LinuxNetDevice = MessageOf<typeof LinuxNetDevice>;

export const LinuxScheduler = defineMessage('LinuxScheduler', {
  policy: enumeration(1),
  nice: int32(2),
  priority: int32(3),
  flags: repeated(4, 'enum'),
  runtime: uint64(5),
  deadline: uint64(6),
  period: uint64(7),
});
export type LinuxScheduler = MessageOf<typeof LinuxScheduler>;

export const LinuxRdt = defineMessage('LinuxRdt', {
  closId: message(1, () => OptionalString),
  schemata: message(2, () => OptionalRepeatedString),
  enableMonitoring: message(3, () => OptionalBool),
  remove: bool(4),
});
export type LinuxRdt = MessageOf<typeof LinuxRdt>;

export const LinuxContainer = defineMessage('LinuxContainer', {
  namespaces: repeatedMessage(1, () => LinuxNamespace),
  devices: repeatedMessage(2, () => LinuxDevice),
  resources: message(3, () => LinuxResources),
  oomScoreAdj: message(4, () => OptionalInt),
  cgroupsPath: string(5),
  ioPriority: message(6, () => LinuxIOPriority),
  seccompProfile: message(7, () => SecurityProfile),
  seccompPolicy: message(8, () => LinuxSeccomp),
  sysctl: map(9, 'string', 'string'),
  netDevices: mapOfMessages(10, 'string', () => LinuxNetDevice),
  scheduler: message(11, () => LinuxScheduler),
  rdt: message(12, () => LinuxRdt),
});
export type LinuxContainer = MessageOf<typeof LinuxContainer>;

export const POSIXRlimit = defineMessage('POSIXRlimit', {
  type: string(1),
  hard: uint64(2),
  soft: uint64(3),
});
export type POSIXRlimit = MessageOf<typeof POSIXRlimit>;

export const CDIDevice = defineMessage('CDIDevice', { name: string(1) });
export type CDIDevice = MessageOf<typeof CDIDevice>;

export const User = defineMessage('User', {
  uid: uint32(1),
  gid: uint32(2),
  additionalGids: repeated(3, 'uint32'),
});

export const Image = defineMessage('Image', { name: string(1), digest: string(2), configDigest: string(3) });

export const Container = defineMessage('Container', {
  id: string(1),
  podSandboxId: string(2),
  name: string(3),
  state: enumeration(4),
  labels: map(5, 'string', 'string'),
  annotations: map(6, 'string', 'string'),
  args: repeated(7, 'string'),
  env: repeated(8, 'string'),
  mounts: repeatedMessage(9, () => Mount),
  hooks: message(10, () => Hooks),
  linux: message(11, () => LinuxContainer),
  pid: uint32(12),
  rlimits: repeatedMessage(13, () => POSIXRlimit),
  createdAt: int64(14),
  startedAt: int64(15),
  finishedAt: int64(16),
  exitCode: int32(17),
  statusReason: string(18),
  statusMessage: string(19),
  cdiDevices: repeatedMessage(20, () => CDIDevice),
  user: message(21, () => User),
  image: message(22, () => Image),
});
export type Container = MessageOf<typeof Container>;

// ---- adjustments and updates ------------------------------------------------------------

export const LinuxMemoryPolicy = defineMessage('LinuxMemoryPolicy', {
  mode: enumeration(1),
  nodes: string(2),
  flags: repeated(3, 'enum'),
});
export type LinuxMemoryPolicy = MessageOf<typeof LinuxMemoryPolicy>;

export const LinuxContainerAdjustment = defineMessage('LinuxContainerAdjustment', {
  devices: repeatedMessage(1, () => LinuxDevice),
  resources: message(2, () => LinuxResources),
  cgroupsPath: string(3),
  oomScoreAdj: message(4, () => OptionalInt),
  ioPriority: message(5, () => LinuxIOPriority),
  seccompPolicy: message(6, () => LinuxSeccomp),
  namespaces: repeatedMessage(7, () => LinuxNamespace),
  sysctl: map(8, 'string', 'string'),
  netDevices: mapOfMessages(9, 'string', () => LinuxNetDevice),
  scheduler: message(10, () => LinuxScheduler),
  rdt: message(11, () => LinuxRdt),
  memoryPolicy: message(12, () => LinuxMemoryPolicy),
});
export type LinuxContainerAdjustment = MessageOf<typeof LinuxContainerAdjustment>;

export const ContainerAdjustment = defineMessage('ContainerAdjustment', {
  annotations: map(2, 'string', 'string'),
  mounts: repeatedMessage(3, () => Mount),
  env: repeatedMessage(4, () => KeyValue),
  hooks: message(5, () => Hooks),
  linux: message(6, () => LinuxContainerAdjustment),
  rlimits: repeatedMessage(7, () => POSIXRlimit),
  cdiDevices: repeatedMessage(8, () => CDIDevice),
  args: repeated(9, 'string'),
});
export type ContainerAdjustment = MessageOf<typeof ContainerAdjustment>;

export const LinuxContainerUpdate = defineMessage('LinuxContainerUpdate', {
  resources: message(1, () => LinuxResources),
});

export const ContainerUpdate = defineMessage('ContainerUpdate', {
  containerId: string(1),
  linux: message(2, () => LinuxContainerUpdate),
  ignoreFailure: bool(3),
});
export type ContainerUpdate = MessageOf<typeof ContainerUpdate>;

export const ContainerEviction = defineMessage('ContainerEviction', {
  containerId: string(1),
  reason: string(2),
});
export type ContainerEviction = MessageOf<typeof ContainerEviction>;

// ---- Runtime service (the plugin calls these) -------------------------------------------

export const Empty = defineMessage('Empty', {});
export type Empty = MessageOf<typeof Empty>;

export const RegisterPluginRequest = defineMessage('RegisterPluginRequest', {
  pluginName: string(1),
  pluginIdx: string(2),
  nriVersion: string(3),
});
export type RegisterPluginRequest = MessageOf<typeof RegisterPluginRequest>;

export const UpdateContainersRequest = defineMessage('UpdateContainersRequest', {
  update: repeatedMessage(1, () => ContainerUpdate),
  evict: repeatedMessage(2, () => ContainerEviction),
});
export type UpdateContainersRequest = MessageOf<typeof UpdateContainersRequest>;

export const UpdateContainersResponse = defineMessage('UpdateContainersResponse', {
  failed: repeatedMessage(1, () => ContainerUpdate),
});
export type UpdateContainersResponse = MessageOf<typeof UpdateContainersResponse>;

// ---- Plugin service (the runtime calls these) -------------------------------------------

export const ConfigureRequest = defineMessage('ConfigureRequest', {
  config: string(1),
  runtimeName: string(2),
  runtimeVersion: string(3),
  registrationTimeout: int64(4),
  requestTimeout: int64(5),
  nriVersion: string(6),
});

export const ConfigureResponse = defineMessage('ConfigureResponse', { events: int32(2) });

export const SynchronizeRequest = defineMessage('SynchronizeRequest', {
  pods: repeatedMessage(1, () => PodSandbox),
  containers: repeatedMessage(2, () => Container),
  more: bool(3),
});

export const SynchronizeResponse = defineMessage('SynchronizeResponse', {
  update: repeatedMessage(1, () => ContainerUpdate),
  more: bool(2),
});

export const PodRequest = defineMessage('PodSandboxRequest', { pod: message(1, () => PodSandbox) });
export type PodRequest = MessageOf<typeof PodRequest>;

export const UpdatePodSandboxRequest = defineMessage('UpdatePodSandboxRequest', {
  pod: message(1, () => PodSandbox),
  overheadLinuxResources: message(2, () => LinuxResources),
  linuxResources: message(3, () => LinuxResources),
});

export const ContainerRequest = defineMessage('ContainerRequest', {
  pod: message(1, () => PodSandbox),
  container: message(2, () => Container),
});
export type ContainerRequest = MessageOf<typeof ContainerRequest>;

export const CreateContainerResponse = defineMessage('CreateContainerResponse', {
  adjust: message(1, () => ContainerAdjustment),
  update: repeatedMessage(2, () => ContainerUpdate),
  evict: repeatedMessage(3, () => ContainerEviction),
});
export type CreateContainerResponse = MessageOf<typeof CreateContainerResponse>;

export const UpdateContainerRequest = defineMessage('UpdateContainerRequest', {
  pod: message(1, () => PodSandbox),
  container: message(2, () => Container),
  linuxResources: message(3, () => LinuxResources),
});

export const UpdateContainerResponse = defineMessage('UpdateContainerResponse', {
  update: repeatedMessage(1, () => ContainerUpdate),
  evict: repeatedMessage(2, () => ContainerEviction),
});
export type UpdateContainerResponse = MessageOf<typeof UpdateContainerResponse>;

export const StopContainerResponse = defineMessage('StopContainerResponse', {
  update: repeatedMessage(1, () => ContainerUpdate),
});
export type StopContainerResponse = MessageOf<typeof StopContainerResponse>;

export const StateChangeEvent = defineMessage('StateChangeEvent', {
  event: enumeration(1),
  pod: message(2, () => PodSandbox),
  container: message(3, () => Container),
});

// google.protobuf.Any, as it appears in a ttrpc status's details.
export const Any = defineMessage('Any', { typeUrl: string(1), value: bytes(2) });
