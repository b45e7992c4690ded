/**
 * StopPodSandbox: stops the pod's containers, then releases what a running pod holds: its
 * PID 1 (and so its pid namespace), host ports, network (CNI DEL: IP lease, veth, iptables
 * rules) and network namespace. IPC/UTS namespaces, cgroup, files and the record stay until
 * RemovePodSandbox. A sandbox that does not exist, or is already stopped, is OK (CRI
 * idempotence); an empty id or an ambiguous prefix is InvalidArgument.
 *
 * Containers get a grace period of 0: kubelet has already stopped them gracefully before it
 * stops the sandbox (containerd does the same).
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import type { SandboxRecord } from '../core/sandbox-record.js';
import type { SandboxDeps } from './sandbox-deps.js';
import { releaseRunningResources } from './sandbox-teardown.js';

export async function stopSandbox(deps: SandboxDeps, id: string): Promise<void> {
  const record = deps.core.sandboxes.get(id);
  if (!record) return;
  await deps.core.stopPodContainers(id, 0);
  // NRI (issue 17): once per pod, with every container EXITED and the sandbox still readable.
  await deps.core.nri.stopPodSandbox(record);
  const released = await releaseRunningResources(deps, record);
  const alreadyStopped = record.state === 'notready' && record.stoppedAt !== null;
  const next: SandboxRecord = {
    ...released,
    state: 'notready',
    stoppedAt: alreadyStopped ? record.stoppedAt : deps.core.now().toString(),
  };
  // A second stop (RemovePodSandbox stops first) changes nothing: no write, no event.
  if (JSON.stringify(next) === JSON.stringify(record)) return;
  await deps.core.sandboxes.put(next);
  if (record.state === 'ready') deps.core.publishSandbox('CONTAINER_STOPPED_EVENT', id);
}

export function createStopPodSandbox(deps: SandboxDeps) {
  return async function StopPodSandbox(
    request: RuntimeRequest<'StopPodSandbox'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'StopPodSandbox'>> {
    const id = deps.core.sandboxes.resolve(request.pod_sandbox_id);
    if (id === undefined) return {};
    await deps.core.sandboxLocks.run(id, () => stopSandbox(deps, id));
    return {};
  };
}
