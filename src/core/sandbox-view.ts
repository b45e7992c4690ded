/**
 * Pod sandboxes as the CRI and the container layer see them: the PodSandboxStatus of a record
 * (PodSandboxStatus and every sandbox event use this one conversion) and the SandboxInfo a
 * container is created from.
 */
import path from 'node:path';
import type { PodSandboxStatus } from '../api/proto.js';
import type { SandboxInfo } from './sandbox-info.js';
import { criState, type SandboxRecord } from './sandbox-record.js';

export function sandboxStatusOf(record: SandboxRecord): PodSandboxStatus {
  const meta = record.config.metadata!;
  const ns = record.namespaces;
  return {
    id: record.id,
    metadata: { name: meta.name, uid: meta.uid, namespace: meta.namespace, attempt: meta.attempt },
    state: criState(record.state),
    created_at: record.createdAt,
    network: {
      ip: record.state === 'ready' ? (record.network?.ip ?? '') : '',
      additional_ips:
        record.state === 'ready' ? (record.network?.additionalIps ?? []).map((ip) => ({ ip })) : [],
    },
    linux: {
      namespaces: {
        options: {
          network: ns.network.mode,
          ipc: ns.ipc.mode,
          pid: ns.pid.mode,
          target_id: ns.pid.targetId,
          ...(ns.user
            ? { userns_options: record.config.linux?.security_context?.namespace_options?.userns_options }
            : {}),
        },
      },
    },
    labels: record.config.labels,
    annotations: record.config.annotations,
    runtime_handler: record.runtimeHandler,
  };
}

export function sandboxInfoOf(r: SandboxRecord): SandboxInfo {
  return {
    id: r.id,
    config: r.config,
    hostname: r.hostname,
    namespaces: {
      network: r.namespaces.network.path,
      ipc: r.namespaces.ipc.path,
      uts: r.namespaces.uts.path,
    },
    userNamespace: r.namespaces.user
      ? { path: r.namespaces.user.path, uids: r.namespaces.user.uids, gids: r.namespaces.user.gids }
      : null,
    infraPid: r.namespaces.pid.infra?.pid ?? null,
    cgroupParent: r.cgroup?.path ?? null,
    files: {
      hosts: path.join(r.filesDir, 'hosts'),
      resolvConf: path.join(r.filesDir, 'resolv.conf'),
      hostname: path.join(r.filesDir, 'hostname'),
      shm: null,
    },
    ready: r.state === 'ready',
  };
}
