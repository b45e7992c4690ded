/**
 * ListPodSandbox with the CRI filter: id (a full id or a prefix of one), state, and a label
 * selector that every listed sandbox's labels must contain exactly. Sorted by creation time,
 * oldest first, so the output is stable.
 */
import type { CallContext } from '../api/handlers.js';
import type { PodSandbox, PodSandboxFilter__Output, RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { criState, type SandboxRecord } from '../core/sandbox-record.js';
import type { SandboxDeps } from './sandbox-deps.js';

export function matchesFilter(record: SandboxRecord, filter: PodSandboxFilter__Output | null): boolean {
  if (!filter) return true;
  if (filter.id !== '' && !record.id.startsWith(filter.id)) return false;
  if (filter.state && criState(record.state) !== filter.state.state) return false;
  for (const [key, value] of Object.entries(filter.label_selector ?? {})) {
    if (record.config.labels[key] !== value) return false;
  }
  return true;
}

export function sandboxOf(record: SandboxRecord): PodSandbox {
  const meta = record.config.metadata!;
  return {
    id: record.id,
    metadata: { name: meta.name, uid: meta.uid, namespace: meta.namespace, attempt: meta.attempt },
    state: criState(record.state),
    created_at: record.createdAt,
    labels: record.config.labels,
    annotations: record.config.annotations,
    runtime_handler: record.runtimeHandler,
  };
}

export function createListPodSandbox(deps: SandboxDeps) {
  return async function ListPodSandbox(
    request: RuntimeRequest<'ListPodSandbox'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'ListPodSandbox'>> {
    // A sandbox still `creating` is RunPodSandbox in flight (recovery turns one a crash left
    // into notready): not listed, as NRI plugins consulted meanwhile must not see it exposed.
    const items = deps.core.sandboxes
      .peekAll()
      .filter((r) => r.state !== 'creating' && matchesFilter(r, request.filter))
      .sort((a, b) => (BigInt(a.createdAt) < BigInt(b.createdAt) ? -1 : 1))
      .map(sandboxOf);
    return { items };
  };
}
