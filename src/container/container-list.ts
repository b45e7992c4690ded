/**
 * ListContainers with the CRI filter: id (a full id or a prefix), pod sandbox id (full or
 * prefix), state, and a label selector every listed container's labels must contain exactly.
 * Answered from memory: exits reach the records as events (the runtime core's exit watcher),
 * so a read never writes (and keeps working on a full disk).
 * Containers still being created are not listed. Sorted by creation time, oldest first.
 */
import type { CallContext } from '../api/handlers.js';
import type { Container, ContainerFilter__Output, RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { type ContainerRecord, criContainerState } from '../core/container-store.js';
import type { ContainerDeps } from './container-deps.js';

export function matchesContainerFilter(
  record: ContainerRecord,
  filter: ContainerFilter__Output | null,
): boolean {
  if (record.state === 'creating') return false;
  if (!filter) return true;
  if (filter.id !== '' && !record.id.startsWith(filter.id)) return false;
  if (filter.pod_sandbox_id !== '' && !record.podSandboxId.startsWith(filter.pod_sandbox_id)) return false;
  if (filter.state && criContainerState(record.state) !== filter.state.state) return false;
  return matchesLabels(record, filter.label_selector ?? {});
}

export function matchesLabels(record: ContainerRecord, selector: Record<string, string>): boolean {
  for (const [key, value] of Object.entries(selector)) {
    if (record.config.labels[key] !== value) return false;
  }
  return true;
}

export function containerOf(record: ContainerRecord): Container {
  const meta = record.config.metadata!;
  return {
    id: record.id,
    pod_sandbox_id: record.podSandboxId,
    metadata: { name: meta.name, attempt: meta.attempt },
    image: {
      image: record.image.repoTag || record.image.requested,
      annotations: record.config.image?.annotations ?? {},
      user_specified_image: record.config.image?.user_specified_image || record.image.requested,
    },
    image_ref: record.image.repoDigest || record.image.id,
    image_id: record.image.id,
    state: criContainerState(record.state),
    created_at: record.createdAt,
    labels: record.config.labels,
    annotations: record.config.annotations,
  };
}

/** Every record, as the core holds it (frozen, not copies: read them, never change them). */
export async function currentRecords(deps: ContainerDeps): Promise<Readonly<ContainerRecord>[]> {
  return deps.core.containers.peekAll();
}

export function createListContainers(deps: ContainerDeps) {
  return async function ListContainers(
    request: RuntimeRequest<'ListContainers'>,
    _ctx: Pick<CallContext, 'logger'>,
  ): Promise<RuntimeResponse<'ListContainers'>> {
    const containers = (await currentRecords(deps))
      .filter((r) => matchesContainerFilter(r, request.filter))
      .sort((a, b) => (BigInt(a.createdAt) < BigInt(b.createdAt) ? -1 : 1))
      .map(containerOf);
    return { containers };
  };
}
