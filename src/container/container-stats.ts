/**
 * ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats, from the cgroup
 * v2 files of the container (or pod) cgroup and the writable layer's disk usage:
 *   cpu:     cpu.stat usage_usec (present in every v2 cgroup); usage_nano_cores from the
 *            previous sample of the same cgroup;
 *   memory:  memory.current / memory.stat (only where the memory controller is delegated;
 *            otherwise only the timestamp is set: the value is unknown, not zero);
 *   process: pids.current where pids is delegated, else cgroup.procs counted;
 *   writable layer: snapshotter.usage (allocated bytes and inodes of the upper dir).
 * Timestamps are always set (critest checks they are not zero). Pod network usage comes from
 * the pod's network namespace (pod-metrics.ts, which also answers ListPodSandboxMetrics).
 */

import type { ContainerStatsFilter__Output } from '../api/generated/runtime/v1/ContainerStatsFilter.js';
import type { PodSandboxStats } from '../api/generated/runtime/v1/PodSandboxStats.js';
import type { CallContext } from '../api/handlers.js';
import type { ContainerStats, RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import type { ContainerRecord } from '../core/container-store.js';
import type { SandboxInfo } from '../core/sandbox-info.js';
import { sandboxInfoOf } from '../core/sandbox-view.js';
import { NotFoundError } from '../errors.js';
import type { ContainerDeps } from './container-deps.js';
import { currentRecords, matchesLabels } from './container-list.js';
import { podNetworkUsage } from './pod-metrics.js';

/** Keyed by cgroup path: the previous cpu sample, for usage_nano_cores. */
export class CpuSamples {
  readonly #last = new Map<string, { usageNs: bigint; at: bigint }>();

  rate(key: string, usageNs: bigint, at: bigint): bigint | null {
    const previous = this.#last.get(key);
    this.#last.set(key, { usageNs, at });
    if (!previous || at <= previous.at || usageNs < previous.usageNs) return null;
    return ((usageNs - previous.usageNs) * 1_000_000_000n) / (at - previous.at);
  }

  forget(key: string): void {
    this.#last.delete(key);
  }
}

function value(v: bigint | null) {
  return v === null ? null : { value: v.toString() };
}

interface CgroupUsage {
  cpu: ContainerStats['cpu'];
  memory: ContainerStats['memory'];
  processes: bigint | null;
}

async function cgroupUsage(
  deps: ContainerDeps,
  samples: CpuSamples,
  cgroup: string | null,
): Promise<CgroupUsage> {
  const at = deps.core.now();
  const timestamp = at.toString();
  if (cgroup === null) {
    return { cpu: { timestamp }, memory: { timestamp }, processes: null };
  }
  const stats = await deps.core.cgroups.stats(cgroup);
  const usageNs = stats.cpuUsageNs;
  const nanoCores = usageNs === null ? null : samples.rate(cgroup, usageNs, at);
  const memoryBytes = stats.memoryBytes;
  const inactiveFile = stats.memoryStat.get('inactive_file') ?? 0n;
  const workingSet =
    memoryBytes === null ? null : memoryBytes > inactiveFile ? memoryBytes - inactiveFile : 0n;
  const processes = stats.processes;
  const memField = (key: string) => stats.memoryStat.get(key) ?? null;
  return {
    cpu: { timestamp, usage_core_nano_seconds: value(usageNs), usage_nano_cores: value(nanoCores) },
    memory: {
      timestamp,
      working_set_bytes: value(workingSet),
      usage_bytes: value(memoryBytes),
      rss_bytes: value(memField('anon')),
      page_faults: value(memField('pgfault')),
      major_page_faults: value(memField('pgmajfault')),
    },
    processes,
  };
}

export async function containerStatsOf(
  deps: ContainerDeps,
  samples: CpuSamples,
  record: Readonly<ContainerRecord>,
): Promise<ContainerStats> {
  const meta = record.config.metadata!;
  const running = record.state === 'running' || record.state === 'created';
  const usage = await cgroupUsage(deps, samples, running ? record.cgroupPath : null);
  const disk = await deps.core.snapshotter.usage(record.id).catch(() => null);
  return {
    attributes: {
      id: record.id,
      metadata: { name: meta.name, attempt: meta.attempt },
      labels: record.config.labels,
      annotations: record.config.annotations,
    },
    cpu: usage.cpu,
    memory: usage.memory,
    writable_layer: {
      timestamp: deps.core.now().toString(),
      fs_id: { mountpoint: deps.writableLayerRoot },
      used_bytes: value(disk?.bytes ?? null),
      inodes_used: value(disk?.inodes ?? null),
    },
  };
}

function matchesStatsFilter(record: ContainerRecord, filter: ContainerStatsFilter__Output | null): boolean {
  if (record.state === 'creating') return false;
  if (!filter) return true;
  if (filter.id !== '' && !record.id.startsWith(filter.id)) return false;
  if (filter.pod_sandbox_id !== '' && !record.podSandboxId.startsWith(filter.pod_sandbox_id)) return false;
  return matchesLabels(record, filter.label_selector ?? {});
}

/** What PodSandboxStats needs beyond SandboxLookup: every sandbox, for the List variant. */

/** `records`: the pod's containers but those being created (core.podContainers). */
async function podStatsOf(
  deps: ContainerDeps,
  samples: CpuSamples,
  sandbox: SandboxInfo,
  records: readonly Readonly<ContainerRecord>[],
): Promise<PodSandboxStats> {
  const meta = sandbox.config.metadata;
  const usage = await cgroupUsage(deps, samples, sandbox.ready ? sandbox.cgroupParent : null);
  const containers = await Promise.all(records.map((r) => containerStatsOf(deps, samples, r)));
  return {
    attributes: {
      id: sandbox.id,
      metadata: meta
        ? { name: meta.name, uid: meta.uid, namespace: meta.namespace, attempt: meta.attempt }
        : null,
      labels: sandbox.config.labels,
      annotations: sandbox.config.annotations,
    },
    linux: {
      cpu: usage.cpu,
      memory: usage.memory,
      network: await podNetworkUsage(deps, sandbox, records),
      process: { timestamp: deps.core.now().toString(), process_count: value(usage.processes) },
      containers,
    },
  };
}

export function createStatsHandlers(deps: ContainerDeps, samples = new CpuSamples()) {
  return {
    async ContainerStats(
      request: RuntimeRequest<'ContainerStats'>,
      _ctx: Pick<CallContext, 'logger'>,
    ): Promise<RuntimeResponse<'ContainerStats'>> {
      const id = deps.core.containers.resolve(request.container_id);
      const record = id === undefined ? undefined : deps.core.containers.peek(id);
      if (!record || record.state === 'creating') {
        throw new NotFoundError(`container ${JSON.stringify(request.container_id)} does not exist`);
      }
      return { stats: await containerStatsOf(deps, samples, record) };
    },

    async ListContainerStats(
      request: RuntimeRequest<'ListContainerStats'>,
      _ctx: Pick<CallContext, 'logger'>,
    ): Promise<RuntimeResponse<'ListContainerStats'>> {
      const records = (await currentRecords(deps))
        .filter((r) => matchesStatsFilter(r, request.filter))
        .sort((a, b) => (BigInt(a.createdAt) < BigInt(b.createdAt) ? -1 : 1));
      return { stats: await Promise.all(records.map((r) => containerStatsOf(deps, samples, r))) };
    },

    async PodSandboxStats(
      request: RuntimeRequest<'PodSandboxStats'>,
      _ctx: Pick<CallContext, 'logger'>,
    ): Promise<RuntimeResponse<'PodSandboxStats'>> {
      const sandbox = request.pod_sandbox_id === '' ? null : deps.core.sandboxInfo(request.pod_sandbox_id);
      if (!sandbox)
        throw new NotFoundError(`pod sandbox ${JSON.stringify(request.pod_sandbox_id)} does not exist`);
      return { stats: await podStatsOf(deps, samples, sandbox, deps.core.podContainers(sandbox.id)) };
    },

    async ListPodSandboxStats(
      request: RuntimeRequest<'ListPodSandboxStats'>,
      _ctx: Pick<CallContext, 'logger'>,
    ): Promise<RuntimeResponse<'ListPodSandboxStats'>> {
      const filter = request.filter;
      // The containers grouped by pod once, not scanned once per pod.
      const byPod = new Map<string, Readonly<ContainerRecord>[]>();
      for (const r of await currentRecords(deps)) {
        if (r.state === 'creating') continue;
        const list = byPod.get(r.podSandboxId);
        if (list) list.push(r);
        else byPod.set(r.podSandboxId, [r]);
      }
      const sandboxes = deps.core.sandboxes
        .peekAll()
        .map(sandboxInfoOf)
        .filter((s) => {
          if (!filter) return true;
          if (filter.id !== '' && !s.id.startsWith(filter.id)) return false;
          for (const [k, v] of Object.entries(filter.label_selector ?? {}))
            if (s.config.labels[k] !== v) return false;
          return true;
        });
      return {
        stats: await Promise.all(sandboxes.map((s) => podStatsOf(deps, samples, s, byPod.get(s.id) ?? []))),
      };
    },
  };
}
