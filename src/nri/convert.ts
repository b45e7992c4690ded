/**
 * Conversions between the runtime's views (runtime-view.ts, OCI spec pieces) and NRI
 * messages. NRI's 64-bit integers are bigints; OCI JSON values here are numbers, so a value
 * beyond 2^53 is reported as a warning and left out rather than silently rounded.
 */
import {
  type Container,
  ContainerStateValue,
  type Hook,
  type Hooks,
  type LinuxDevice,
  type LinuxResources,
  type Mount,
  type PodSandbox,
} from './api.js';
import type { NriOciHook, NriOciHooks, NriOciResources, NriOciSpec } from './oci-spec.js';
import type { NriContainer, NriContainerState, NriPod } from './runtime-view.js';

const STATE_VALUES: Record<NriContainerState, number> = {
  unknown: ContainerStateValue.Unknown,
  created: ContainerStateValue.Created,
  paused: ContainerStateValue.Paused,
  running: ContainerStateValue.Running,
  stopped: ContainerStateValue.Stopped,
};

function big(n: number): bigint {
  return BigInt(Number.isFinite(n) ? Math.trunc(n) : 0);
}

/** A bigint as a number, or undefined (with a warning naming `what`) when it does not fit exactly. */
export function safeNumber(value: bigint, what: string, warnings: string[]): number | undefined {
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    warnings.push(`${what}: value ${value} does not fit in config.json as a JSON number here; left out`);
    return undefined;
  }
  return Number(value);
}

export function toNriResources(r: NriOciResources | undefined): LinuxResources | undefined {
  if (!r) return undefined;
  const out: LinuxResources = {};
  const m = r.memory;
  if (m) {
    out.memory = {
      limit: m.limit !== undefined ? { value: big(m.limit) } : undefined,
      reservation: m.reservation !== undefined ? { value: big(m.reservation) } : undefined,
      swap: m.swap !== undefined ? { value: big(m.swap) } : undefined,
      kernel: m.kernel !== undefined ? { value: big(m.kernel) } : undefined,
      kernelTcp: m.kernelTCP !== undefined ? { value: big(m.kernelTCP) } : undefined,
      swappiness: m.swappiness !== undefined ? { value: big(m.swappiness) } : undefined,
      disableOomKiller: m.disableOOMKiller !== undefined ? { value: m.disableOOMKiller } : undefined,
      useHierarchy: m.useHierarchy !== undefined ? { value: m.useHierarchy } : undefined,
    };
  }
  const c = r.cpu;
  if (c) {
    out.cpu = {
      shares: c.shares !== undefined ? { value: big(c.shares) } : undefined,
      quota: c.quota !== undefined ? { value: big(c.quota) } : undefined,
      period: c.period !== undefined ? { value: big(c.period) } : undefined,
      realtimeRuntime: c.realtimeRuntime !== undefined ? { value: big(c.realtimeRuntime) } : undefined,
      realtimePeriod: c.realtimePeriod !== undefined ? { value: big(c.realtimePeriod) } : undefined,
      cpus: c.cpus ?? '',
      mems: c.mems ?? '',
    };
  }
  if (r.hugepageLimits) {
    out.hugepageLimits = r.hugepageLimits.map((h) => ({ pageSize: h.pageSize, limit: big(h.limit) }));
  }
  if (r.unified) out.unified = { ...r.unified };
  if (r.devices) {
    out.devices = r.devices.map((d) => ({
      allow: d.allow,
      type: d.type ?? '',
      major: d.major !== undefined ? { value: big(d.major) } : undefined,
      minor: d.minor !== undefined ? { value: big(d.minor) } : undefined,
      access: d.access ?? '',
    }));
  }
  if (r.pids) out.pids = { limit: big(r.pids.limit) };
  return out;
}

/** NRI resources as an OCI resources object; `what` prefixes warnings. */
export function fromNriResources(r: LinuxResources, what: string, warnings: string[]): NriOciResources {
  const out: NriOciResources = {};
  const num = (v: bigint | undefined, field: string) =>
    v === undefined ? undefined : safeNumber(v, `${what}.${field}`, warnings);
  const m = r.memory;
  if (m) {
    const memory: NonNullable<NriOciResources['memory']> = {};
    const set = <K extends keyof typeof memory>(k: K, v: (typeof memory)[K] | undefined) => {
      if (v !== undefined) memory[k] = v;
    };
    set('limit', num(m.limit?.value, 'memory.limit'));
    set('reservation', num(m.reservation?.value, 'memory.reservation'));
    set('swap', num(m.swap?.value, 'memory.swap'));
    set('kernel', num(m.kernel?.value, 'memory.kernel'));
    set('kernelTCP', num(m.kernelTcp?.value, 'memory.kernelTCP'));
    set('swappiness', num(m.swappiness?.value, 'memory.swappiness'));
    set('disableOOMKiller', m.disableOomKiller?.value);
    set('useHierarchy', m.useHierarchy?.value);
    if (Object.keys(memory).length > 0) out.memory = memory;
  }
  const c = r.cpu;
  if (c) {
    const cpu: NonNullable<NriOciResources['cpu']> = {};
    const set = <K extends keyof typeof cpu>(k: K, v: (typeof cpu)[K] | undefined) => {
      if (v !== undefined) cpu[k] = v;
    };
    set('shares', num(c.shares?.value, 'cpu.shares'));
    set('quota', num(c.quota?.value, 'cpu.quota'));
    set('period', num(c.period?.value, 'cpu.period'));
    set('realtimeRuntime', num(c.realtimeRuntime?.value, 'cpu.realtimeRuntime'));
    set('realtimePeriod', num(c.realtimePeriod?.value, 'cpu.realtimePeriod'));
    if (c.cpus) cpu.cpus = c.cpus;
    if (c.mems) cpu.mems = c.mems;
    if (Object.keys(cpu).length > 0) out.cpu = cpu;
  }
  if (r.hugepageLimits && r.hugepageLimits.length > 0) {
    out.hugepageLimits = [];
    for (const h of r.hugepageLimits) {
      const limit = num(h.limit, `hugepageLimits[${h.pageSize}]`);
      if (limit !== undefined) out.hugepageLimits.push({ pageSize: h.pageSize ?? '', limit });
    }
  }
  if (r.unified && Object.keys(r.unified).length > 0) out.unified = { ...r.unified };
  if (r.devices && r.devices.length > 0) {
    out.devices = r.devices.map((d) => {
      const rule: NonNullable<NriOciResources['devices']>[number] = { allow: d.allow ?? false };
      if (d.type) rule.type = d.type;
      const major = num(d.major?.value, 'devices.major');
      const minor = num(d.minor?.value, 'devices.minor');
      if (major !== undefined) rule.major = major;
      if (minor !== undefined) rule.minor = minor;
      if (d.access) rule.access = d.access;
      return rule;
    });
  }
  if (r.pids) {
    const limit = num(r.pids.limit, 'pids.limit');
    if (limit !== undefined) out.pids = { limit };
  }
  return out;
}

export function toNriHook(h: NriOciHook): Hook {
  return {
    path: h.path,
    args: h.args ?? [],
    env: h.env ?? [],
    timeout: h.timeout !== undefined ? { value: big(h.timeout) } : undefined,
  };
}

function toNriHooks(hooks: NriOciHooks | undefined): Hooks | undefined {
  if (!hooks) return undefined;
  return {
    prestart: (hooks.prestart ?? []).map(toNriHook),
    createRuntime: (hooks.createRuntime ?? []).map(toNriHook),
    createContainer: (hooks.createContainer ?? []).map(toNriHook),
    startContainer: (hooks.startContainer ?? []).map(toNriHook),
    poststart: (hooks.poststart ?? []).map(toNriHook),
    poststop: (hooks.poststop ?? []).map(toNriHook),
  };
}

function toNriMounts(spec: NriOciSpec | undefined): Mount[] {
  return (spec?.mounts ?? []).map((m) => ({
    destination: m.destination,
    type: m.type ?? '',
    source: m.source ?? '',
    options: [...(m.options ?? [])],
  }));
}

function toNriDevices(spec: NriOciSpec | undefined): LinuxDevice[] {
  return (spec?.linux?.devices ?? []).map((d) => ({
    path: d.path,
    type: d.type,
    major: big(d.major),
    minor: big(d.minor),
    fileMode: d.fileMode !== undefined ? { value: d.fileMode } : undefined,
    uid: d.uid !== undefined ? { value: d.uid } : undefined,
    gid: d.gid !== undefined ? { value: d.gid } : undefined,
  }));
}

export function toNriPod(pod: NriPod): PodSandbox {
  return {
    id: pod.id,
    name: pod.name,
    uid: pod.uid,
    namespace: pod.namespace,
    labels: { ...(pod.labels ?? {}) },
    annotations: { ...(pod.annotations ?? {}) },
    runtimeHandler: pod.runtimeHandler ?? '',
    linux: {
      podOverhead: toNriResources(pod.overhead),
      podResources: toNriResources(pod.resources),
      cgroupParent: pod.cgroupParent ?? '',
      cgroupsPath: pod.cgroupsPath ?? '',
      namespaces: (pod.namespaces ?? []).map((n) => ({ type: n.type, path: n.path ?? '' })),
    },
    pid: pod.pid ?? 0,
    ips: [...(pod.ips ?? [])],
  };
}

export function toNriContainer(container: NriContainer): Container {
  const spec = container.spec;
  const linux = spec?.linux;
  const user = spec?.process?.user;
  return {
    id: container.id,
    podSandboxId: container.podSandboxId,
    name: container.name,
    state: STATE_VALUES[container.state] ?? ContainerStateValue.Unknown,
    labels: { ...(container.labels ?? {}) },
    annotations: { ...(spec?.annotations ?? container.annotations ?? {}) },
    args: [...(spec?.process?.args ?? [])],
    env: [...(spec?.process?.env ?? [])],
    mounts: toNriMounts(spec),
    hooks: toNriHooks(spec?.hooks),
    linux: {
      namespaces: (linux?.namespaces ?? []).map((n) => ({ type: n.type, path: n.path ?? '' })),
      devices: toNriDevices(spec),
      resources: toNriResources(linux?.resources),
      oomScoreAdj:
        spec?.process?.oomScoreAdj !== undefined ? { value: big(spec.process.oomScoreAdj) } : undefined,
      cgroupsPath: linux?.cgroupsPath ?? '',
      sysctl: { ...(linux?.sysctl ?? {}) },
      netDevices: Object.fromEntries(
        Object.entries(linux?.netDevices ?? {}).map(([k, v]) => [k, { name: v.name ?? '' }]),
      ),
    },
    pid: container.pid ?? 0,
    rlimits: (spec?.process?.rlimits ?? []).map((l) => ({
      type: l.type,
      hard: big(l.hard),
      soft: big(l.soft),
    })),
    createdAt: container.createdAt ?? 0n,
    startedAt: container.startedAt ?? 0n,
    finishedAt: container.finishedAt ?? 0n,
    exitCode: container.exitCode ?? 0,
    statusReason: container.statusReason ?? '',
    statusMessage: container.statusMessage ?? '',
    user: user
      ? { uid: user.uid, gid: user.gid, additionalGids: [...(user.additionalGids ?? [])] }
      : undefined,
    image: container.image
      ? {
          name: container.image.name,
          digest: container.image.digest ?? '',
          configDigest: container.image.configDigest ?? '',
        }
      : undefined,
  };
}
