/**
 * The parts of an OCI runtime spec (config.json) that NRI reads and adjusts, with the
 * spec's JSON field names. Every field is optional and the types are structural, so the
 * runtime's own spec type (src/container/oci-spec.ts) is accepted as it is; fields it does
 * not model yet (hooks, rlimits, scheduler, ...) appear in the adjusted spec only when a
 * plugin asks for them, and JSON.stringify writes them like any other.
 */

export interface NriOciHook {
  path: string;
  args?: string[];
  env?: string[];
  timeout?: number;
}

export interface NriOciHooks {
  prestart?: NriOciHook[];
  createRuntime?: NriOciHook[];
  createContainer?: NriOciHook[];
  startContainer?: NriOciHook[];
  poststart?: NriOciHook[];
  poststop?: NriOciHook[];
}

export interface NriOciRlimit {
  type: string;
  hard: number;
  soft: number;
}

export interface NriOciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

export interface NriOciDevice {
  type: string;
  path: string;
  major: number;
  minor: number;
  fileMode?: number;
  uid?: number;
  gid?: number;
}

export interface NriOciDeviceRule {
  allow: boolean;
  type?: string;
  major?: number;
  minor?: number;
  access?: string;
}

export interface NriOciResources {
  devices?: NriOciDeviceRule[];
  memory?: {
    limit?: number;
    reservation?: number;
    swap?: number;
    kernel?: number;
    kernelTCP?: number;
    swappiness?: number;
    disableOOMKiller?: boolean;
    useHierarchy?: boolean;
  };
  cpu?: {
    shares?: number;
    quota?: number;
    period?: number;
    realtimeRuntime?: number;
    realtimePeriod?: number;
    cpus?: string;
    mems?: string;
  };
  pids?: { limit: number };
  hugepageLimits?: { pageSize: string; limit: number }[];
  unified?: Record<string, string>;
}

export interface NriOciSeccomp {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures?: string[];
  flags?: string[];
  listenerPath?: string;
  listenerMetadata?: string;
  syscalls?: {
    names: string[];
    action: string;
    errnoRet?: number;
    args?: { index: number; value: number; valueTwo?: number; op: string }[];
  }[];
}

export interface NriOciScheduler {
  policy: string;
  nice?: number;
  priority?: number;
  flags?: string[];
  runtime?: number;
  deadline?: number;
  period?: number;
}

export interface NriOciSpec {
  process?: {
    args?: string[];
    env?: string[];
    oomScoreAdj?: number;
    rlimits?: NriOciRlimit[];
    ioPriority?: { class: string; priority?: number };
    scheduler?: NriOciScheduler;
    user?: { uid: number; gid: number; additionalGids?: number[] };
  };
  mounts?: NriOciMount[];
  hooks?: NriOciHooks;
  annotations?: Record<string, string>;
  linux?: {
    namespaces?: { type: string; path?: string }[];
    devices?: NriOciDevice[];
    resources?: NriOciResources;
    cgroupsPath?: string;
    sysctl?: Record<string, string>;
    seccomp?: NriOciSeccomp;
    rootfsPropagation?: string;
    intelRdt?: { closID?: string; schemata?: string[]; enableMonitoring?: boolean };
    netDevices?: Record<string, { name?: string }>;
    memoryPolicy?: { mode: string; nodes?: string; flags?: string[] };
  };
}

/** Namespace types an OCI runtime knows. */
export const OCI_NAMESPACE_TYPES = ['pid', 'network', 'mount', 'ipc', 'uts', 'user', 'cgroup', 'time'];
