/**
 * PodSandboxStatus: state, metadata, labels, annotations, created_at (ns), the pod IP and
 * the namespace options; with verbose, `info["info"]` is a JSON document with what an
 * operator debugging the pod needs (pins, infra pid, cgroup, ports, why it is not ready).
 * A sandbox that does not exist is NotFound.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import type { SandboxRecord } from '../core/sandbox-record.js';
import { sandboxStatusOf } from '../core/sandbox-view.js';
import { NotFoundError } from '../errors.js';
import type { SandboxDeps } from './sandbox-deps.js';

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
    const id = deps.core.sandboxes.resolve(request.pod_sandbox_id);
    const record = id === undefined ? undefined : deps.core.sandboxes.get(id);
    if (!record) {
      throw new NotFoundError(
        `pod sandbox ${JSON.stringify(request.pod_sandbox_id)} does not exist; list sandboxes with crictl pods`,
      );
    }
    return {
      status: sandboxStatusOf(record),
      info: request.verbose ? verboseInfo(record) : {},
      containers_statuses: request.verbose ? deps.core.podContainerStatuses(record.id) : [],
      timestamp: deps.core.now().toString(),
    };
  };
}
