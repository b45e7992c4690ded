/**
 * applyAdjustment: the merged NRI container adjustment applied to an OCI spec, as a pure
 * function (spec in, new spec and warnings out; the input is never modified).
 *
 * The semantics follow what NRI runtimes do (containerd/CRI-O through the NRI spec
 * generator): a key starting with "-" removes (annotations, env, mounts by destination,
 * devices by path, namespaces by type, sysctls, net devices); an added mount, device,
 * namespace or rlimit replaces one with the same destination/path/type/kind; env entries are
 * changed in place and new ones appended; hooks are appended; a memory limit also sets the
 * swap limit to the same value (no swap, as kubelet wants) unless swap is given; mounts end
 * up ordered parents first. Requests this runtime cannot express are left out and named in
 * a warning: CDI devices without an injector, block-I/O and RDT classes (no class
 * configuration exists here), cgroup-v1-only memory knobs, and 64-bit values a JSON number
 * cannot hold exactly. Invalid requests (unknown namespace types, empty paths) are warnings
 * too, so one bad field does not cost the container; the runtime logs the warnings.
 */
import {
  type ContainerAdjustment,
  IOPrioClass,
  LinuxSchedulerFlag,
  LinuxSchedulerPolicy,
  MpolFlag,
  MpolMode,
} from './api.js';
import { safeNumber } from './convert.js';
import {
  type NriOciDevice,
  type NriOciHook,
  type NriOciHooks,
  type NriOciResources,
  type NriOciSpec,
  OCI_NAMESPACE_TYPES,
} from './oci-spec.js';

export interface ApplyAdjustmentOptions {
  /**
   * Resolves fully qualified CDI device names into the spec (devices, mounts, env, hooks).
   * Without one, CDI device requests are left out with a warning.
   */
  injectCdiDevices?: (spec: NriOciSpec, names: string[]) => void;
}

export interface ApplyAdjustmentResult<S> {
  spec: S;
  warnings: string[];
}

function removalKey(key: string): { key: string; remove: boolean } {
  return key.startsWith('-') ? { key: key.slice(1), remove: true } : { key, remove: false };
}

function enumName(names: readonly string[], value: number | undefined, what: string, warnings: string[]) {
  const name = names[value ?? 0];
  if (name === undefined) warnings.push(`${what}: unknown value ${value}; left out`);
  return name;
}

function processOf(spec: NriOciSpec): NonNullable<NriOciSpec['process']> {
  if (!spec.process) spec.process = {};
  return spec.process;
}

function linuxOf(spec: NriOciSpec): NonNullable<NriOciSpec['linux']> {
  if (!spec.linux) spec.linux = {};
  return spec.linux;
}

function resourcesOf(spec: NriOciSpec): NriOciResources {
  const linux = linuxOf(spec);
  if (!linux.resources) linux.resources = {};
  return linux.resources;
}

/** Apply `adjustment` to a copy of `spec`. */
export function applyAdjustment<S extends NriOciSpec>(
  spec: S,
  adjustment: ContainerAdjustment | undefined,
  options: ApplyAdjustmentOptions = {},
): ApplyAdjustmentResult<S> {
  const out = structuredClone(spec) as S;
  const warnings: string[] = [];
  if (!adjustment) return { spec: out, warnings };
  const linux = adjustment.linux;

  adjustAnnotations(out, adjustment.annotations);
  adjustEnv(out, adjustment.env ?? []);
  adjustArgs(out, adjustment.args ?? []);
  adjustHooks(out, adjustment.hooks, warnings);
  adjustCdiDevices(out, adjustment.cdiDevices ?? [], options, warnings);
  adjustDevices(out, linux?.devices ?? [], warnings);
  if (linux?.cgroupsPath) linuxOf(out).cgroupsPath = linux.cgroupsPath;
  if (linux?.oomScoreAdj) {
    const value = safeNumber(linux.oomScoreAdj.value ?? 0n, 'oomScoreAdj', warnings);
    if (value !== undefined) processOf(out).oomScoreAdj = value;
  }
  if (linux?.ioPriority) {
    const ioClass = enumName(IOPrioClass, linux.ioPriority.class, 'ioPriority.class', warnings);
    if (ioClass) processOf(out).ioPriority = { class: ioClass, priority: linux.ioPriority.priority ?? 0 };
  }
  adjustScheduler(out, linux?.scheduler, warnings);
  adjustSeccomp(out, linux?.seccompPolicy, warnings);
  adjustNamespaces(out, linux?.namespaces ?? [], warnings);
  adjustStringMap(out, 'sysctl', linux?.sysctl);
  adjustNetDevices(out, linux?.netDevices);
  adjustMemoryPolicy(out, linux?.memoryPolicy, warnings);
  if (linux?.resources) adjustResources(out, linux.resources, warnings);
  adjustRdt(out, linux?.rdt);
  adjustMounts(out, adjustment.mounts ?? [], warnings);
  adjustRlimits(out, adjustment.rlimits ?? [], warnings);
  return { spec: out, warnings };
}

function adjustAnnotations(spec: NriOciSpec, annotations: Record<string, string> | undefined): void {
  if (!annotations || Object.keys(annotations).length === 0) return;
  if (!spec.annotations) spec.annotations = {};
  const target = spec.annotations;
  for (const raw of Object.keys(annotations)) {
    const { key, remove } = removalKey(raw);
    if (remove) delete target[key];
  }
  for (const [raw, value] of Object.entries(annotations)) {
    if (!raw.startsWith('-')) target[raw] = value;
  }
}

function adjustEnv(spec: NriOciSpec, env: NonNullable<ContainerAdjustment['env']>): void {
  if (env.length === 0) return;
  const process = processOf(spec);
  // Last adjustment per variable wins; a removal marker drops the variable.
  const wanted = new Map<string, { value: string; remove: boolean }>();
  for (const e of env) {
    const { key, remove } = removalKey(e.key ?? '');
    if (key === '') continue;
    wanted.set(key, { value: e.value ?? '', remove });
  }
  const result: string[] = [];
  const done = new Set<string>();
  for (const entry of process.env ?? []) {
    const eq = entry.indexOf('=');
    const key = eq < 0 ? entry : entry.slice(0, eq);
    const change = wanted.get(key);
    if (!change) {
      result.push(entry);
      continue;
    }
    if (done.has(key)) continue; // a duplicate of a variable already rewritten
    done.add(key);
    if (!change.remove) result.push(`${key}=${change.value}`);
  }
  for (const [key, change] of wanted) {
    if (!done.has(key) && !change.remove) result.push(`${key}=${change.value}`);
  }
  process.env = result;
}

function adjustArgs(spec: NriOciSpec, args: string[]): void {
  // A leading "" only tells the merge step to override another plugin's args.
  const effective = args[0] === '' ? args.slice(1) : args;
  if (effective.length > 0) processOf(spec).args = [...effective];
}

function toOciHook(
  hook: NonNullable<NonNullable<ContainerAdjustment['hooks']>['prestart']>[number],
  warnings: string[],
) {
  if (!hook.path) {
    warnings.push('hook without a path; left out');
    return undefined;
  }
  const out: NriOciHook = { path: hook.path };
  if (hook.args && hook.args.length > 0) out.args = [...hook.args];
  if (hook.env && hook.env.length > 0) out.env = [...hook.env];
  if (hook.timeout) {
    const timeout = safeNumber(hook.timeout.value ?? 0n, `hook ${hook.path} timeout`, warnings);
    if (timeout !== undefined) out.timeout = timeout;
  }
  return out;
}

function adjustHooks(spec: NriOciSpec, hooks: ContainerAdjustment['hooks'], warnings: string[]): void {
  if (!hooks) return;
  const kinds: (keyof NriOciHooks)[] = [
    'prestart',
    'createRuntime',
    'createContainer',
    'startContainer',
    'poststart',
    'poststop',
  ];
  for (const kind of kinds) {
    const added = (hooks[kind] ?? []).map((h) => toOciHook(h, warnings)).filter((h) => h !== undefined);
    if (added.length === 0) continue;
    if (!spec.hooks) spec.hooks = {};
    const target = spec.hooks;
    target[kind] = [...(target[kind] ?? []), ...added];
  }
}

function adjustCdiDevices(
  spec: NriOciSpec,
  devices: NonNullable<ContainerAdjustment['cdiDevices']>,
  options: ApplyAdjustmentOptions,
  warnings: string[],
): void {
  const names = devices.map((d) => d.name ?? '').filter((n) => n !== '');
  if (names.length === 0) return;
  if (!options.injectCdiDevices) {
    warnings.push(`CDI devices ${names.join(', ')}: this runtime has no CDI registry; left out`);
    return;
  }
  options.injectCdiDevices(spec, names);
}

function adjustDevices(
  spec: NriOciSpec,
  devices: NonNullable<NonNullable<ContainerAdjustment['linux']>['devices']>,
  warnings: string[],
): void {
  for (const d of devices) {
    const { key: path, remove } = removalKey(d.path ?? '');
    if (path === '') {
      warnings.push('device without a path; left out');
      continue;
    }
    const linux = linuxOf(spec);
    linux.devices = (linux.devices ?? []).filter((existing) => existing.path !== path);
    if (remove) continue;
    const major = safeNumber(d.major ?? 0n, `device ${path} major`, warnings);
    const minor = safeNumber(d.minor ?? 0n, `device ${path} minor`, warnings);
    if (major === undefined || minor === undefined) continue;
    const type = d.type ?? '';
    if (!['c', 'b', 'u', 'p'].includes(type)) {
      warnings.push(`device ${path}: unknown type ${JSON.stringify(type)}; left out`);
      continue;
    }
    const device: NriOciDevice = { path, type, major, minor };
    if (d.fileMode) device.fileMode = d.fileMode.value ?? 0;
    if (d.uid) device.uid = d.uid.value ?? 0;
    if (d.gid) device.gid = d.gid.value ?? 0;
    linux.devices.push(device);
    const resources = resourcesOf(spec);
    resources.devices = [
      ...(resources.devices ?? []),
      { allow: true, type, major, minor, access: deviceAccess(d.fileMode?.value, type) },
    ];
  }
}

/** rw, plus m for block devices; read or write only when the file mode grants only that. */
function deviceAccess(fileMode: number | undefined, type: string): string {
  let access = 'rw';
  if (fileMode !== undefined && (fileMode & 0o777) !== 0) {
    access = `${fileMode & 0o444 ? 'r' : ''}${fileMode & 0o222 ? 'w' : ''}`;
  }
  return type === 'b' ? `${access}m` : access;
}

function adjustScheduler(
  spec: NriOciSpec,
  scheduler: NonNullable<ContainerAdjustment['linux']>['scheduler'],
  warnings: string[],
): void {
  if (!scheduler) return;
  const policy = enumName(LinuxSchedulerPolicy, scheduler.policy, 'scheduler.policy', warnings);
  if (!policy) return;
  const flags = (scheduler.flags ?? [])
    .map((f) => enumName(LinuxSchedulerFlag, f, 'scheduler.flags', warnings))
    .filter((f) => f !== undefined);
  const out: NonNullable<NonNullable<NriOciSpec['process']>['scheduler']> = { policy };
  if (scheduler.nice) out.nice = scheduler.nice;
  if (scheduler.priority) out.priority = scheduler.priority;
  if (flags.length > 0) out.flags = flags;
  for (const field of ['runtime', 'deadline', 'period'] as const) {
    const value = scheduler[field];
    if (value) {
      const n = safeNumber(value, `scheduler.${field}`, warnings);
      if (n !== undefined) out[field] = n;
    }
  }
  processOf(spec).scheduler = out;
}

function adjustSeccomp(
  spec: NriOciSpec,
  policy: NonNullable<ContainerAdjustment['linux']>['seccompPolicy'],
  warnings: string[],
): void {
  if (!policy) return;
  const seccomp: NonNullable<NonNullable<NriOciSpec['linux']>['seccomp']> = {
    defaultAction: policy.defaultAction ?? '',
  };
  if (policy.defaultErrno) seccomp.defaultErrnoRet = policy.defaultErrno.value ?? 0;
  if (policy.architectures?.length) seccomp.architectures = [...policy.architectures];
  if (policy.flags?.length) seccomp.flags = [...policy.flags];
  if (policy.listenerPath) seccomp.listenerPath = policy.listenerPath;
  if (policy.listenerMetadata) seccomp.listenerMetadata = policy.listenerMetadata;
  seccomp.syscalls = (policy.syscalls ?? []).map((s) => {
    const syscall: NonNullable<typeof seccomp.syscalls>[number] = {
      names: [...(s.names ?? [])],
      action: s.action ?? '',
    };
    if (s.errnoRet) syscall.errnoRet = s.errnoRet.value ?? 0;
    if (s.args?.length) {
      syscall.args = s.args.map((a) => {
        const arg = {
          index: a.index ?? 0,
          value: safeNumber(a.value ?? 0n, 'seccomp arg value', warnings) ?? 0,
          op: a.op ?? '',
        } as { index: number; value: number; valueTwo?: number; op: string };
        if (a.valueTwo) arg.valueTwo = safeNumber(a.valueTwo, 'seccomp arg valueTwo', warnings) ?? 0;
        return arg;
      });
    }
    return syscall;
  });
  linuxOf(spec).seccomp = seccomp;
}

function adjustNamespaces(
  spec: NriOciSpec,
  namespaces: NonNullable<NonNullable<ContainerAdjustment['linux']>['namespaces']>,
  warnings: string[],
): void {
  for (const n of namespaces) {
    const { key: type, remove } = removalKey(n.type ?? '');
    if (!OCI_NAMESPACE_TYPES.includes(type)) {
      warnings.push(`namespace type ${JSON.stringify(type)} is not an OCI namespace; left out`);
      continue;
    }
    const linux = linuxOf(spec);
    const others = (linux.namespaces ?? []).filter((existing) => existing.type !== type);
    linux.namespaces = remove ? others : [...others, n.path ? { type, path: n.path } : { type }];
  }
}

function adjustStringMap(
  spec: NriOciSpec,
  field: 'sysctl',
  values: Record<string, string> | undefined,
): void {
  if (!values || Object.keys(values).length === 0) return;
  const linux = linuxOf(spec);
  if (!linux[field]) linux[field] = {};
  const target = linux[field];
  for (const raw of Object.keys(values)) {
    const { key, remove } = removalKey(raw);
    if (remove) delete target[key];
  }
  for (const [raw, value] of Object.entries(values)) {
    if (!raw.startsWith('-')) target[raw] = value;
  }
}

function adjustNetDevices(
  spec: NriOciSpec,
  devices: NonNullable<ContainerAdjustment['linux']>['netDevices'] | undefined,
): void {
  if (!devices || Object.keys(devices).length === 0) return;
  const linux = linuxOf(spec);
  if (!linux.netDevices) linux.netDevices = {};
  const target = linux.netDevices;
  for (const raw of Object.keys(devices)) {
    const { key, remove } = removalKey(raw);
    if (remove) delete target[key];
  }
  for (const [raw, device] of Object.entries(devices)) {
    if (!raw.startsWith('-')) target[raw] = device?.name ? { name: device.name } : {};
  }
}

function adjustMemoryPolicy(
  spec: NriOciSpec,
  policy: NonNullable<ContainerAdjustment['linux']>['memoryPolicy'],
  warnings: string[],
): void {
  if (!policy) return;
  const mode = enumName(MpolMode, policy.mode, 'memoryPolicy.mode', warnings);
  if (!mode) return;
  const out: NonNullable<NonNullable<NriOciSpec['linux']>['memoryPolicy']> = { mode };
  if (policy.nodes) out.nodes = policy.nodes;
  const flags = (policy.flags ?? [])
    .map((f) => enumName(MpolFlag, f, 'memoryPolicy.flags', warnings))
    .filter((f) => f !== undefined);
  if (flags.length > 0) out.flags = flags;
  linuxOf(spec).memoryPolicy = out;
}

function adjustResources(
  spec: NriOciSpec,
  r: NonNullable<NonNullable<ContainerAdjustment['linux']>['resources']>,
  warnings: string[],
): void {
  const resources = resourcesOf(spec);
  const num = (v: bigint | undefined, what: string) =>
    v === undefined ? undefined : safeNumber(v, what, warnings);

  const cpu = r.cpu;
  if (cpu) {
    if (!resources.cpu) resources.cpu = {};
    const target = resources.cpu;
    const set = (field: 'shares' | 'quota' | 'period' | 'realtimeRuntime' | 'realtimePeriod', v?: bigint) => {
      const n = num(v, `cpu.${field}`);
      if (n !== undefined) target[field] = n;
    };
    set('shares', cpu.shares?.value);
    set('quota', cpu.quota?.value);
    set('period', cpu.period?.value);
    set('realtimeRuntime', cpu.realtimeRuntime?.value);
    set('realtimePeriod', cpu.realtimePeriod?.value);
    if (cpu.cpus) target.cpus = cpu.cpus;
    if (cpu.mems) target.mems = cpu.mems;
  }

  const memory = r.memory;
  if (memory) {
    if (!resources.memory) resources.memory = {};
    const target = resources.memory;
    const limit = num(memory.limit?.value, 'memory.limit');
    if (limit !== undefined && limit !== 0) {
      target.limit = limit;
      target.swap = limit;
    }
    const reservation = num(memory.reservation?.value, 'memory.reservation');
    if (reservation !== undefined) target.reservation = reservation;
    const swap = num(memory.swap?.value, 'memory.swap');
    if (swap !== undefined) target.swap = swap;
    const swappiness = num(memory.swappiness?.value, 'memory.swappiness');
    if (swappiness !== undefined) target.swappiness = swappiness;
    const v1Only = (['kernel', 'kernelTcp', 'disableOomKiller', 'useHierarchy'] as const).filter(
      (k) => memory[k] !== undefined,
    );
    if (v1Only.length > 0) {
      warnings.push(
        `memory ${v1Only.join(', ')}: cgroup v1 settings, not available with cgroup v2; left out`,
      );
    }
  }

  for (const h of r.hugepageLimits ?? []) {
    const limit = num(h.limit, `hugepageLimits[${h.pageSize}]`);
    if (limit === undefined || !h.pageSize) continue;
    resources.hugepageLimits = [
      ...(resources.hugepageLimits ?? []).filter((existing) => existing.pageSize !== h.pageSize),
      { pageSize: h.pageSize, limit },
    ];
  }
  if (r.unified && Object.keys(r.unified).length > 0) {
    resources.unified = { ...(resources.unified ?? {}), ...r.unified };
  }
  if (r.pids) {
    const limit = num(r.pids.limit, 'pids.limit');
    if (limit !== undefined) resources.pids = { limit };
  }
  for (const d of r.devices ?? []) {
    const rule: NonNullable<NriOciResources['devices']>[number] = { allow: d.allow ?? false };
    if (d.type) rule.type = d.type;
    const major = num(d.major?.value, 'devices.major');
    const minor = num(d.minor?.value, 'devices.minor');
    if (major !== undefined) rule.major = major;
    if (minor !== undefined) rule.minor = minor;
    if (d.access) rule.access = d.access;
    resources.devices = [...(resources.devices ?? []), rule];
  }
  if (r.blockioClass?.value) {
    warnings.push(
      `block I/O class ${JSON.stringify(r.blockioClass.value)}: no block I/O classes are configured; left out`,
    );
  }
  if (r.rdtClass?.value) {
    warnings.push(`RDT class ${JSON.stringify(r.rdtClass.value)}: no RDT classes are configured; left out`);
  }
}

function adjustRdt(spec: NriOciSpec, rdt: NonNullable<ContainerAdjustment['linux']>['rdt']): void {
  if (!rdt) return;
  const linux = linuxOf(spec);
  if (rdt.remove) delete linux.intelRdt;
  if (!rdt.closId && !rdt.schemata && !rdt.enableMonitoring) return;
  if (!linux.intelRdt) linux.intelRdt = {};
  const target = linux.intelRdt;
  if (rdt.closId) target.closID = rdt.closId.value ?? '';
  if (rdt.schemata) target.schemata = [...(rdt.schemata.value ?? [])];
  if (rdt.enableMonitoring) target.enableMonitoring = rdt.enableMonitoring.value ?? false;
}

function mountDepth(destination: string): number {
  const parts = destination.split('/').filter((p) => p !== '' && p !== '.');
  return Math.max(parts.length, 1);
}

function adjustMounts(
  spec: NriOciSpec,
  mounts: NonNullable<ContainerAdjustment['mounts']>,
  warnings: string[],
): void {
  if (mounts.length === 0) return;
  let list = [...(spec.mounts ?? [])];
  for (const m of mounts) {
    const { key: destination, remove } = removalKey(m.destination ?? '');
    if (destination === '') {
      warnings.push('mount without a destination; left out');
      continue;
    }
    list = list.filter((existing) => existing.destination !== destination);
    if (remove) continue;
    const options = [...(m.options ?? [])];
    list.push({ destination, type: m.type ?? '', source: m.source ?? '', options });
    const propagation = options.filter((o) => o === 'rprivate' || o === 'rshared' || o === 'rslave').pop();
    const linux = linuxOf(spec);
    if (propagation === 'rshared') {
      linux.rootfsPropagation = 'rshared';
    } else if (propagation === 'rslave' && linux.rootfsPropagation !== 'rshared') {
      linux.rootfsPropagation = 'rslave';
    }
  }
  // Parents before children; a stable sort keeps the runtime's order otherwise.
  spec.mounts = list
    .map((mount, index) => ({ mount, index, depth: mountDepth(mount.destination) }))
    .sort((a, b) => a.depth - b.depth || a.index - b.index)
    .map((entry) => entry.mount);
}

function adjustRlimits(
  spec: NriOciSpec,
  rlimits: NonNullable<ContainerAdjustment['rlimits']>,
  warnings: string[],
): void {
  for (const l of rlimits) {
    const type = l.type ?? '';
    if (!/^RLIMIT_[A-Z]+$/.test(type)) {
      warnings.push(`rlimit type ${JSON.stringify(type)} is not an RLIMIT_* name; left out`);
      continue;
    }
    const hard = safeNumber(l.hard ?? 0n, `rlimit ${type} hard`, warnings);
    const soft = safeNumber(l.soft ?? 0n, `rlimit ${type} soft`, warnings);
    if (hard === undefined || soft === undefined) continue;
    const process = processOf(spec);
    process.rlimits = [
      ...(process.rlimits ?? []).filter((existing) => existing.type !== type),
      { type, hard, soft },
    ];
  }
}
