/**
 * PodSandboxStatus: state, metadata, labels, annotations, created_at (ns), the pod IP and
 * the namespace options; with verbose, `info["info"]` is a JSON document with what an
 * operator debugging the pod needs (pins, infra pid, cgroup, ports, why it is not ready).
 * A sandbox that does not exist is NotFound.
 */
import type { CallContext } from '../api/handlers.js';
import type { PodSandboxStatus, RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { NotFoundError } from '../errors.js';
import type { SandboxDeps } from './sandbox-deps.js';
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
        options: { network: ns.network.mode, ipc: ns.ipc.mode, pid: ns.pid.mode, target_id: ns.pid.targetId },
      },
    },
    labels: record.config.labels,
    annotations: record.config.annotations,
    runtime_handler: record.runtimeHandler,
  };
}

export function verboseInfo(record: SandboxRecord): Record<string, string> {
  const info = {
    state: record.state,
    notReadyReason: record.notReadyReason,
    hostname: record.hostname,
    namespaces: record.namespaces,
    cgroup: record.cgroup,
    network: record.network && {
      ip: record.network.ip,
      gateway: record.network.gateway,
      cni: record.network.result,
    },
    ports: record.ports,
    filesDir: record.filesDir,
    stoppedAt: record.stoppedAt,
    config: record.config,
  };
  return { info: JSON.stringify(info) };
}

export function createPodSandboxStatus(deps: SandboxDeps) {
  return async function PodSandboxStatusHandler(
    request: RuntimeRequest<'PodSandboxStatus'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'PodSandboxStatus'>> {
    const id = deps.store.resolve(request.pod_sandbox_id);
    const record = id === undefined ? undefined : deps.store.get(id);
    if (!record) {
      throw new NotFoundError(
        `pod sandbox ${JSON.stringify(request.pod_sandbox_id)} does not exist; list sandboxes with crictl pods`,
      );
    }
    return {
      status: sandboxStatusOf(record),
      info: request.verbose ? verboseInfo(record) : {},
      containers_statuses: [],
      timestamp: deps.now().toString(),
    };
  };
}
