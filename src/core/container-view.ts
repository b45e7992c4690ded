/**
 * Containers as the CRI shows them: the ContainerStatus of a record (ContainerStatus,
 * ListContainers' cousins, and every container event use this one conversion) and the verbose
 * info an operator reads to see why a limit is not in force.
 */
import type { ContainerStatus } from '../api/proto.js';
import { type ContainerRecord, criContainerState } from './container-store.js';
import { imageVolumeStatus } from './image-volumes.js';

export function statusOf(record: ContainerRecord): ContainerStatus {
  const meta = record.config.metadata!;
  const imageSpec = record.config.image;
  const user = record.user;
  return {
    id: record.id,
    metadata: { name: meta.name, attempt: meta.attempt },
    state: criContainerState(record.state),
    created_at: record.createdAt,
    started_at: record.startedAt,
    finished_at: record.finishedAt,
    exit_code: record.exitCode,
    image: {
      image: record.image.repoTag || record.image.requested,
      annotations: imageSpec?.annotations ?? {},
      user_specified_image: imageSpec?.user_specified_image || record.image.requested,
      runtime_handler: imageSpec?.runtime_handler ?? '',
    },
    image_ref: record.image.repoDigest || record.image.id,
    image_id: record.image.id,
    reason: record.reason,
    message: record.message,
    labels: record.config.labels,
    annotations: record.config.annotations,
    mounts: record.config.mounts.map((m, index) => ({
      container_path: m.container_path,
      host_path: m.host_path,
      readonly: m.readonly,
      selinux_relabel: m.selinux_relabel,
      propagation: m.propagation,
      recursive_read_only: m.recursive_read_only,
      image: imageVolumeStatus(record, index),
      image_sub_path: m.image_sub_path,
    })),
    log_path: record.logPath,
    resources: record.resources ? { linux: record.resources } : null,
    user: {
      linux: {
        uid: String(user.uid),
        gid: String(user.gid),
        supplemental_groups: user.additionalGids.map(String),
      },
    },
  };
}

/** An env value as a record holds it (bytes, or their JSON form after a reload) as text. */
function envText(value: unknown): string {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('utf8');
  if (typeof value === 'string') return value;
  const data = (value as { data?: unknown } | null)?.data;
  return Array.isArray(data) ? Buffer.from(data as number[]).toString('utf8') : '';
}

export function verboseInfo(record: ContainerRecord): Record<string, string> {
  const info = {
    sandboxID: record.podSandboxId,
    pid: record.pid,
    state: record.state,
    bundleDir: record.bundleDir,
    rootfs: record.rootfs,
    cgroupPath: record.cgroupPath,
    conmonCgroup: record.conmonCgroup,
    stopSignal: record.stopSignal,
    warnings: record.warnings,
    image: record.image,
    user: record.user,
    // Values as text: a Buffer would show as {"type":"Buffer","data":[...]}, several times
    // larger (a 2 MiB environment made a verbose status kubelet cannot receive).
    config: {
      ...record.config,
      envs: (record.config.envs ?? []).map((e) => ({ key: e.key, value: envText(e.value) })),
    },
  };
  return { info: JSON.stringify(info) };
}
