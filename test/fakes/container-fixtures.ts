/**
 * Decoded CRI messages (the `__Output` shapes, every field present as proto-loader fills
 * defaults) and node facts for container tests.
 */

import type { LinuxContainerResources__Output } from '../../src/api/generated/runtime/v1/LinuxContainerResources.js';
import type { LinuxContainerSecurityContext__Output } from '../../src/api/generated/runtime/v1/LinuxContainerSecurityContext.js';
import type { Mount__Output } from '../../src/api/generated/runtime/v1/Mount.js';
import type { ContainerConfig__Output, PodSandboxConfig__Output } from '../../src/api/proto.js';
import type { HostFacts } from '../../src/container/spec-builder.js';
import type { SandboxInfo } from '../../src/core/sandbox-info.js';
import { SANDBOX_RECORD_VERSION, type SandboxRecord } from '../../src/core/sandbox-record.js';
import type { InfraProcess } from '../../src/os/sandbox-os.js';

export function securityContext(
  overrides: Partial<LinuxContainerSecurityContext__Output> = {},
): LinuxContainerSecurityContext__Output {
  return {
    capabilities: null,
    privileged: false,
    namespace_options: null,
    selinux_options: null,
    run_as_user: null,
    run_as_username: '',
    readonly_rootfs: false,
    supplemental_groups: [],
    apparmor_profile: '',
    seccomp_profile_path: '',
    no_new_privs: false,
    run_as_group: null,
    masked_paths: [],
    readonly_paths: [],
    seccomp: null,
    apparmor: null,
    supplemental_groups_policy: 'Merge',
    ...overrides,
  };
}

export function resources(
  overrides: Partial<LinuxContainerResources__Output> = {},
): LinuxContainerResources__Output {
  return {
    cpu_period: '0',
    cpu_quota: '0',
    cpu_shares: '0',
    memory_limit_in_bytes: '0',
    oom_score_adj: '0',
    cpuset_cpus: '',
    cpuset_mems: '',
    hugepage_limits: [],
    unified: {},
    memory_swap_limit_in_bytes: '0',
    ...overrides,
  };
}

export function mount(overrides: Partial<Mount__Output> = {}): Mount__Output {
  return {
    container_path: '/data',
    host_path: '/tmp',
    readonly: false,
    selinux_relabel: false,
    propagation: 'PROPAGATION_PRIVATE',
    uidMappings: [],
    gidMappings: [],
    recursive_read_only: false,
    image: null,
    image_sub_path: '',
    mount_options: [],
    ...overrides,
  };
}

export function containerConfig(
  overrides: Partial<ContainerConfig__Output> = {},
  sc: Partial<LinuxContainerSecurityContext__Output> | null = {},
): ContainerConfig__Output {
  return {
    metadata: { name: 'app', attempt: 0 },
    image: {
      image: 'busybox',
      annotations: {},
      user_specified_image: '',
      runtime_handler: '',
      image_ref: '',
    },
    command: [],
    args: [],
    working_dir: '',
    envs: [],
    mounts: [],
    devices: [],
    labels: {},
    annotations: {},
    log_path: 'app/0.log',
    stdin: false,
    stdin_once: false,
    tty: false,
    linux: { resources: null, security_context: sc === null ? null : securityContext(sc) },
    windows: null,
    CDI_devices: [],
    stop_signal: 'SIGNAL_RUNTIME_DEFAULT',
    ...overrides,
  };
}

export function podConfig(privileged = false): PodSandboxConfig__Output {
  return {
    metadata: { name: 'pod', uid: 'uid-1', namespace: 'default', attempt: 0 },
    hostname: 'pod-host',
    log_directory: '/var/log/pods/x',
    dns_config: null,
    port_mappings: [],
    labels: {},
    annotations: {},
    linux: {
      cgroup_parent: '',
      security_context: {
        namespace_options: {
          network: 'POD',
          pid: 'CONTAINER',
          ipc: 'POD',
          target_id: '',
          userns_options: null,
        },
        selinux_options: null,
        run_as_user: null,
        readonly_rootfs: false,
        supplemental_groups: [],
        privileged,
        seccomp_profile_path: '',
        run_as_group: null,
        seccomp: null,
        apparmor: null,
        supplemental_groups_policy: 'Merge',
      },
      sysctls: {},
      overhead: null,
      resources: null,
    },
    windows: null,
  };
}

export function sandboxInfo(overrides: Partial<SandboxInfo> = {}): SandboxInfo {
  return {
    id: 'a'.repeat(64),
    config: podConfig(),
    hostname: 'pod-host',
    namespaces: { network: '/run/netns/n1', ipc: '/run/ipc/i1', uts: '/run/uts/u1' },
    infraPid: 4242,
    cgroupParent: '/pods/pod1',
    files: {
      hosts: '/pods/pod1/hosts',
      resolvConf: '/pods/pod1/resolv.conf',
      hostname: '/pods/pod1/hostname',
      shm: '/pods/pod1/shm',
    },
    ready: true,
    ...overrides,
  };
}

export function hostFacts(overrides: Partial<HostFacts> = {}): HostFacts {
  return {
    cgroupV2: true,
    controllers: ['cpu', 'memory', 'pids'],
    capLastCap: 40,
    nodeArch: 'x64',
    kernelVersion: '6.1.0',
    recursiveReadOnlyMounts: false,
    oomScoreAdjMin: 0,
    idMapSize: 65537,
    devices: [{ path: '/dev/fuse', type: 'c', major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 }],
    apparmor: false,
    selinux: false,
    ...overrides,
  };
}

/**
 * A ready sandbox record whose container view (sandboxInfoOf) is sandboxInfo(): what the
 * container tests put in the core's sandbox store. `seedSandbox` also makes the fake node
 * show its netns pin and infra process, so recovery keeps it ready.
 */
export function sandboxRecord(overrides: { id?: string; cgroupParent?: string } = {}): SandboxRecord {
  const info = sandboxInfo();
  const id = overrides.id ?? info.id;
  const cgroupPath = overrides.cgroupParent ?? info.cgroupParent!;
  return {
    version: SANDBOX_RECORD_VERSION,
    id,
    state: 'ready',
    createdAt: '1',
    runtimeHandler: '',
    config: info.config,
    hostname: info.hostname,
    namespaces: {
      network: { mode: 'POD', path: overrides.id ? `/run/netns/${id}` : info.namespaces.network },
      ipc: { mode: 'POD', path: info.namespaces.ipc },
      uts: { mode: 'POD', path: info.namespaces.uts },
      pid: {
        mode: 'POD',
        targetId: '',
        infra: { pid: info.infraPid!, wrapperPid: 1, startTime: 'fixture', pidNamespaceInode: 1 },
      },
    },
    network: { ip: '10.88.0.9', additionalIps: [], gateway: '10.88.0.1', result: {} },
    networkConfig: null,
    ports: [],
    cgroup: { path: cgroupPath, leaf: `${cgroupPath}/sandbox`, created: [] },
    filesDir: cgroupPath,
    stoppedAt: null,
    notReadyReason: null,
    nodeId: 'fake-node',
  };
}

export async function seedSandbox(
  store: { put(record: SandboxRecord): Promise<void> },
  node: { pinned: Set<string>; infras: Map<number, InfraProcess> },
  record: SandboxRecord,
): Promise<void> {
  if (record.namespaces.network.path) node.pinned.add(record.namespaces.network.path);
  const infra = record.namespaces.pid.infra;
  if (infra) node.infras.set(infra.pid, infra);
  await store.put(record);
}
