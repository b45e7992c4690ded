/** A complete decoded PodSandboxConfig (every field present, as grpc-js delivers it) for unit tests. */
import type { PodSandboxConfig__Output } from '../../src/api/proto.js';

export function podConfig(overrides: Partial<PodSandboxConfig__Output> = {}): PodSandboxConfig__Output {
  return {
    metadata: { name: 'pod', uid: 'uid-1', namespace: 'default', attempt: 0 },
    hostname: '',
    log_directory: '',
    dns_config: null,
    port_mappings: [],
    labels: {},
    annotations: {},
    linux: {
      cgroup_parent: '',
      sysctls: {},
      overhead: null,
      resources: null,
      security_context: {
        namespace_options: { network: 'POD', ipc: 'POD', pid: 'POD', target_id: '', userns_options: null },
        selinux_options: null,
        run_as_user: null,
        readonly_rootfs: false,
        supplemental_groups: [],
        privileged: false,
        seccomp_profile_path: '',
        run_as_group: null,
        seccomp: null,
        apparmor: null,
        supplemental_groups_policy: 'Merge',
      },
    },
    windows: null,
    ...overrides,
  };
}
