/**
 * Merging several plugins' answers into one, in plugin order, the way NRI does it:
 *
 * - each adjustable field of a container (annotation key, mount destination, env name,
 *   device path, rlimit type, memory limit, cpuset, ...) is owned by the first plugin that
 *   sets it; another plugin setting it too is a conflict, which fails the request naming
 *   both plugins and the field;
 * - a plugin may take a field over by removing it first ("-key"), and removing is always
 *   allowed; hooks accumulate and never conflict;
 * - while plugins are consulted in turn, the container a later plugin sees already carries
 *   the earlier plugins' adjustments (the request is updated in place);
 * - updates of other containers are merged per container with the same ownership rules; an
 *   update marked ignoreFailure that conflicts is dropped instead of failing the request;
 *   a plugin may not "update" the container being created (it must adjust it).
 *
 * Deviations from upstream v0.12.2, on purpose: removals of env vars, devices and sysctls
 * are passed on (upstream drops them from the merged reply), a removal also drops the
 * removed entry from the merged reply, and a plugin touching the same field twice in one
 * answer is not a conflict with itself.
 */
import { FailedPreconditionError } from '../errors.js';
import type {
  Container,
  ContainerAdjustment,
  ContainerEviction,
  ContainerUpdate,
  CreateContainerResponse,
  Hooks,
  KeyValue,
  LinuxResources,
  Mount,
} from './api.js';

function marked(key: string): { key: string; remove: boolean } {
  return key.startsWith('-') ? { key: key.slice(1), remove: true } : { key, remove: false };
}

/** Who owns which field of one container. Owner "-p" = cleared (removed) by plugin p. */
class FieldOwners {
  private readonly simple = new Map<string, string>();
  private readonly compound = new Map<string, Map<string, string>>();

  private check(owner: string | undefined, plugin: string, what: string): void {
    if (owner === undefined) return;
    const { key: holder, remove } = marked(owner);
    if (holder === plugin) return;
    if (remove) {
      throw conflict(plugin, holder, `${what} (removed by ${holder})`);
    }
    throw conflict(plugin, holder, what);
  }

  claim(field: string, plugin: string): void {
    this.check(this.simple.get(field), plugin, field);
    this.simple.set(field, plugin);
  }

  claimEntry(field: string, key: string, plugin: string): void {
    const owners = this.compound.get(field) ?? new Map<string, string>();
    this.compound.set(field, owners);
    this.check(owners.get(key), plugin, `${field} ${JSON.stringify(key)}`);
    owners.set(key, plugin);
  }

  clear(field: string, plugin: string): void {
    this.simple.set(field, `-${plugin}`);
  }

  clearEntry(field: string, key: string, plugin: string): void {
    const owners = this.compound.get(field) ?? new Map<string, string>();
    this.compound.set(field, owners);
    owners.set(key, `-${plugin}`);
  }
}

function conflict(plugin: string, other: string, what: string): FailedPreconditionError {
  return new FailedPreconditionError(
    `NRI plugins ${JSON.stringify(other)} and ${JSON.stringify(plugin)} both tried to set ${what}; ` +
      'change one plugin, or have the later one remove the entry before setting it',
  );
}

class Ownership {
  private readonly byContainer = new Map<string, FieldOwners>();

  of(containerId: string): FieldOwners {
    let owners = this.byContainer.get(containerId);
    if (!owners) {
      owners = new FieldOwners();
      this.byContainer.set(containerId, owners);
    }
    return owners;
  }
}

function emptyHooks(): Required<Hooks> {
  return {
    prestart: [],
    createRuntime: [],
    createContainer: [],
    startContainer: [],
    poststart: [],
    poststop: [],
  };
}

// ---- resources (shared by adjustments and updates) -------------------------------------

type Memory = NonNullable<LinuxResources['memory']>;
type Cpu = NonNullable<LinuxResources['cpu']>;

const MEMORY_FIELDS = [
  'limit',
  'reservation',
  'swap',
  'kernel',
  'kernelTcp',
  'swappiness',
  'disableOomKiller',
  'useHierarchy',
] as const satisfies readonly (keyof Memory)[];
const CPU_OPTIONAL_FIELDS = [
  'shares',
  'quota',
  'period',
  'realtimeRuntime',
  'realtimePeriod',
] as const satisfies readonly (keyof Cpu)[];

/** Merge `from` into `into` (both NRI resources), claiming each field for `plugin`. */
function mergeResources(
  into: LinuxResources,
  from: LinuxResources,
  owners: FieldOwners,
  plugin: string,
): void {
  if (from.memory) {
    if (!into.memory) into.memory = {};
    const memory = into.memory;
    for (const field of MEMORY_FIELDS) {
      const value = from.memory[field];
      if (value === undefined) continue;
      owners.claim(`memory.${field}`, plugin);
      (memory as Record<string, unknown>)[field] = value;
    }
  }
  if (from.cpu) {
    if (!into.cpu) into.cpu = {};
    const cpu = into.cpu;
    for (const field of CPU_OPTIONAL_FIELDS) {
      const value = from.cpu[field];
      if (value === undefined) continue;
      owners.claim(`cpu.${field}`, plugin);
      (cpu as Record<string, unknown>)[field] = value;
    }
    if (from.cpu.cpus) {
      owners.claim('cpuset.cpus', plugin);
      cpu.cpus = from.cpu.cpus;
    }
    if (from.cpu.mems) {
      owners.claim('cpuset.mems', plugin);
      cpu.mems = from.cpu.mems;
    }
  }
  for (const limit of from.hugepageLimits ?? []) {
    owners.claimEntry('hugepage limit', limit.pageSize ?? '', plugin);
    into.hugepageLimits = [
      ...(into.hugepageLimits ?? []).filter((l) => l.pageSize !== limit.pageSize),
      limit,
    ];
  }
  for (const [key, value] of Object.entries(from.unified ?? {})) {
    owners.claimEntry('unified cgroup setting', key, plugin);
    into.unified = { ...(into.unified ?? {}), [key]: value };
  }
  if (from.devices && from.devices.length > 0) into.devices = [...(into.devices ?? []), ...from.devices];
  if (from.blockioClass) {
    owners.claim('block I/O class', plugin);
    into.blockioClass = from.blockioClass;
  }
  if (from.rdtClass) {
    owners.claim('RDT class', plugin);
    into.rdtClass = from.rdtClass;
  }
  if (from.pids) {
    owners.claim('pids limit', plugin);
    into.pids = from.pids;
  }
}

// ---- updates of containers ----------------------------------------------------------------

class UpdateSet {
  readonly updates = new Map<string, ContainerUpdate>();
  readonly evictions: (ContainerEviction & { plugin: string })[] = [];

  constructor(
    private readonly ownership: Ownership,
    private readonly creating: string | undefined,
  ) {}

  add(updates: ContainerUpdate[], plugin: string): void {
    for (const u of updates) {
      const id = u.containerId ?? '';
      if (id === '') continue;
      if (id === this.creating) {
        throw new FailedPreconditionError(
          `NRI plugin ${JSON.stringify(plugin)} asked to update container ${id} while it is being created; a plugin adjusts the container it is creating instead`,
        );
      }
      const existing = this.updates.get(id);
      // Work on a copy: an ignorable update that conflicts must leave nothing behind.
      const target: ContainerUpdate = {
        containerId: id,
        linux: { resources: structuredClone(existing?.linux?.resources ?? {}) },
        ignoreFailure: existing
          ? (existing.ignoreFailure ?? false) && (u.ignoreFailure ?? false)
          : (u.ignoreFailure ?? false),
      };
      try {
        if (u.linux?.resources)
          mergeResources(target.linux!.resources!, u.linux.resources, this.ownership.of(id), plugin);
      } catch (err) {
        if (u.ignoreFailure) continue;
        throw err;
      }
      this.updates.set(id, target);
    }
  }

  evict(evictions: ContainerEviction[], plugin: string): void {
    for (const e of evictions) {
      if (e.containerId) this.evictions.push({ containerId: e.containerId, reason: e.reason ?? '', plugin });
    }
  }
}

// ---- CreateContainer ----------------------------------------------------------------------

export interface MergedCreate {
  adjustment: ContainerAdjustment;
  updates: ContainerUpdate[];
  evictions: (ContainerEviction & { plugin: string })[];
}

/**
 * Collects CreateContainer answers. `container` is the request sent to plugins; it is updated
 * in place so each plugin sees what the ones before it did.
 */
export class CreateContainerMerge {
  private readonly ownership = new Ownership();
  private readonly owners: FieldOwners;
  private readonly updateSet: UpdateSet;
  private readonly annotations: Record<string, string> = {};
  private mounts: Mount[] = [];
  private env: KeyValue[] = [];
  private readonly hooks = emptyHooks();
  private readonly adjust: ContainerAdjustment = {};
  private readonly linux: NonNullable<ContainerAdjustment['linux']> = {};

  constructor(private readonly container: Container) {
    this.owners = this.ownership.of(container.id ?? '');
    this.updateSet = new UpdateSet(this.ownership, container.id);
    container.annotations ??= {};
    container.mounts ??= [];
    container.env ??= [];
    container.hooks ??= emptyHooks();
    container.rlimits ??= [];
    container.linux ??= {};
    container.linux.devices ??= [];
    container.linux.namespaces ??= [];
    container.linux.sysctl ??= {};
    container.linux.netDevices ??= {};
  }

  apply(response: CreateContainerResponse | undefined, plugin: string): void {
    if (!response) return;
    const a = response.adjust;
    if (a) {
      this.annotationsFrom(a.annotations ?? {}, plugin);
      this.mountsFrom(a.mounts ?? [], plugin);
      this.envFrom(a.env ?? [], plugin);
      this.argsFrom(a.args ?? [], plugin);
      this.hooksFrom(a.hooks, plugin);
      if (a.linux) this.linuxFrom(a.linux, plugin);
      for (const l of a.rlimits ?? []) {
        this.owners.claimEntry('rlimit', l.type ?? '', plugin);
        this.adjust.rlimits = [...(this.adjust.rlimits ?? []).filter((x) => x.type !== l.type), l];
        this.container.rlimits = [...this.container.rlimits!.filter((x) => x.type !== l.type), l];
      }
      for (const d of a.cdiDevices ?? []) {
        this.owners.claimEntry('CDI device', d.name ?? '', plugin);
        this.adjust.cdiDevices = [...(this.adjust.cdiDevices ?? []), d];
      }
    }
    this.updateSet.add(response.update ?? [], plugin);
    this.updateSet.evict(response.evict ?? [], plugin);
  }

  result(): MergedCreate {
    const adjustment: ContainerAdjustment = { ...this.adjust };
    if (Object.keys(this.annotations).length > 0) adjustment.annotations = { ...this.annotations };
    if (this.mounts.length > 0) adjustment.mounts = [...this.mounts];
    if (this.env.length > 0) adjustment.env = [...this.env];
    if (Object.values(this.hooks).some((list) => list.length > 0)) adjustment.hooks = this.hooks;
    if (Object.keys(this.linux).length > 0) adjustment.linux = this.linux;
    return {
      adjustment,
      updates: [...this.updateSet.updates.values()],
      evictions: this.updateSet.evictions,
    };
  }

  private annotationsFrom(annotations: Record<string, string>, plugin: string): void {
    this.mapFrom('annotation', annotations, this.annotations, this.container.annotations!, plugin);
  }

  /** annotations, sysctls, net devices: keyed maps where "-key" removes. */
  private mapFrom<V>(
    field: string,
    values: Record<string, V>,
    reply: Record<string, V | string>,
    request: Record<string, V>,
    plugin: string,
  ): void {
    for (const raw of Object.keys(values)) {
      const { key, remove } = marked(raw);
      if (!remove) continue;
      this.owners.clearEntry(field, key, plugin);
      delete request[key];
      delete reply[key];
      reply[`-${key}`] = '';
    }
    for (const [raw, value] of Object.entries(values)) {
      if (raw.startsWith('-')) continue;
      this.owners.claimEntry(field, raw, plugin);
      request[raw] = value;
      reply[raw] = value;
    }
  }

  /** mounts, env, devices: lists keyed by destination / name / path where "-key" removes. */
  private listFrom<T>(
    field: string,
    items: T[],
    keyOf: (item: T) => string,
    reply: T[],
    request: T[],
    removalMarker: (key: string) => T,
    plugin: string,
  ): { reply: T[]; request: T[] } {
    const removed = new Set<string>();
    const added: T[] = [];
    for (const item of items) {
      const { key, remove } = marked(keyOf(item));
      if (key === '') continue;
      if (remove) removed.add(key);
      else added.push(item);
    }
    const addedKeys = new Set(added.map(keyOf));
    for (const key of removed) this.owners.clearEntry(field, key, plugin);
    let newReply = reply.filter((item) => {
      const { key } = marked(keyOf(item));
      return !removed.has(key) && !addedKeys.has(key);
    });
    const newRequest = request.filter((item) => !removed.has(keyOf(item)) && !addedKeys.has(keyOf(item)));
    for (const key of removed) newReply.push(removalMarker(key));
    for (const item of added) {
      this.owners.claimEntry(field, keyOf(item), plugin);
      newReply = newReply.filter((r) => keyOf(r) !== keyOf(item));
      newReply.push(item);
    }
    return { reply: newReply, request: [...newRequest, ...added] };
  }

  private mountsFrom(mounts: Mount[], plugin: string): void {
    if (mounts.length === 0) return;
    const { reply, request } = this.listFrom(
      'mount',
      mounts,
      (m) => m.destination ?? '',
      this.mounts,
      this.container.mounts!,
      (key) => ({ destination: `-${key}` }),
      plugin,
    );
    this.mounts = reply;
    this.container.mounts = request;
  }

  private envFrom(env: KeyValue[], plugin: string): void {
    if (env.length === 0) return;
    const requestEnv: KeyValue[] = this.container.env!.map((e) => {
      const eq = e.indexOf('=');
      return eq < 0 ? { key: e, value: '' } : { key: e.slice(0, eq), value: e.slice(eq + 1) };
    });
    const { reply, request } = this.listFrom(
      'environment variable',
      env,
      (e) => e.key ?? '',
      this.env,
      requestEnv,
      (key) => ({ key: `-${key}`, value: '' }),
      plugin,
    );
    this.env = reply;
    this.container.env = request.map((e) => `${e.key}=${e.value ?? ''}`);
  }

  private argsFrom(args: string[], plugin: string): void {
    if (args.length === 0) return;
    let effective = args;
    if (effective[0] === '') {
      this.owners.clear('args', plugin);
      effective = effective.slice(1);
    }
    this.owners.claim('args', plugin);
    this.adjust.args = [...effective];
    this.container.args = [...effective];
  }

  private hooksFrom(hooks: Hooks | undefined, plugin: string): void {
    if (!hooks) return;
    void plugin; // hooks accumulate; nobody owns them
    for (const kind of Object.keys(this.hooks) as (keyof Hooks)[]) {
      const added = hooks[kind] ?? [];
      if (added.length === 0) continue;
      this.hooks[kind] = [...this.hooks[kind]!, ...added];
      this.container.hooks![kind] = [...(this.container.hooks![kind] ?? []), ...added];
    }
  }

  private linuxFrom(l: NonNullable<ContainerAdjustment['linux']>, plugin: string): void {
    const reply = this.linux;
    const request = this.container.linux!;
    if (l.devices && l.devices.length > 0) {
      const { reply: devices, request: requested } = this.listFrom(
        'device',
        l.devices,
        (d) => d.path ?? '',
        reply.devices ?? [],
        request.devices!,
        (key) => ({ path: `-${key}` }),
        plugin,
      );
      reply.devices = devices;
      request.devices = requested;
    }
    if (l.resources) {
      reply.resources ??= {};
      mergeResources(reply.resources, l.resources, this.owners, plugin);
      request.resources ??= {};
      mergeResources(request.resources, l.resources, new FieldOwners(), plugin);
    }
    const simple = [
      ['cgroupsPath', 'cgroups path'],
      ['oomScoreAdj', 'OOM score adjustment'],
      ['ioPriority', 'I/O priority'],
      ['seccompPolicy', 'seccomp policy'],
      ['scheduler', 'scheduling policy'],
      ['memoryPolicy', 'memory policy'],
    ] as const;
    for (const [field, what] of simple) {
      const value = l[field];
      if (value === undefined || value === '') continue;
      this.owners.claim(what, plugin);
      (reply as Record<string, unknown>)[field] = value;
      if (field !== 'memoryPolicy') (request as Record<string, unknown>)[field] = value;
    }
    for (const n of l.namespaces ?? []) {
      const { key: type, remove } = marked(n.type ?? '');
      this.owners.claimEntry('namespace', type, plugin);
      reply.namespaces = [...(reply.namespaces ?? []).filter((x) => marked(x.type ?? '').key !== type), n];
      request.namespaces = request.namespaces!.filter((x) => x.type !== type);
      if (!remove) request.namespaces.push(n);
    }
    if (l.sysctl && Object.keys(l.sysctl).length > 0) {
      reply.sysctl ??= {};
      this.mapFrom('sysctl', l.sysctl, reply.sysctl, request.sysctl!, plugin);
    }
    if (l.netDevices && Object.keys(l.netDevices).length > 0) {
      reply.netDevices ??= {};
      const values = l.netDevices;
      for (const raw of Object.keys(values)) {
        const { key, remove } = marked(raw);
        if (!remove) continue;
        this.owners.clearEntry('net device', key, plugin);
        delete request.netDevices![key];
        delete reply.netDevices[key];
        reply.netDevices[`-${key}`] = {};
      }
      for (const [raw, device] of Object.entries(values)) {
        if (raw.startsWith('-')) continue;
        this.owners.claimEntry('net device', raw, plugin);
        request.netDevices![raw] = device;
        reply.netDevices[raw] = device;
      }
    }
    if (l.rdt) {
      if (!reply.rdt) reply.rdt = {};
      const rdt = reply.rdt;
      if (l.rdt.remove) {
        this.owners.clear('RDT', plugin);
        rdt.remove = true;
      }
      for (const field of ['closId', 'schemata', 'enableMonitoring'] as const) {
        if (l.rdt[field] === undefined) continue;
        this.owners.claim(`RDT ${field}`, plugin);
        (rdt as Record<string, unknown>)[field] = l.rdt[field];
        rdt.remove = false;
      }
    }
  }
}

// ---- UpdateContainer / StopContainer ----------------------------------------------------

export interface MergedUpdate {
  /** The resources the updated container ends up with (undefined for StopContainer). */
  resources: LinuxResources | undefined;
  /** Updates of other containers. */
  updates: ContainerUpdate[];
  evictions: (ContainerEviction & { plugin: string })[];
}

/**
 * Collects UpdateContainer (target = the container being updated and its requested
 * resources) or StopContainer (no target) answers.
 */
export class UpdateMerge {
  private readonly ownership = new Ownership();
  private readonly updateSet: UpdateSet;
  private readonly resources: LinuxResources | undefined;

  constructor(private readonly target?: { containerId: string; resources: LinuxResources }) {
    this.updateSet = new UpdateSet(this.ownership, undefined);
    this.resources = target ? structuredClone(target.resources) : undefined;
  }

  apply(
    response: { update?: ContainerUpdate[]; evict?: ContainerEviction[] } | undefined,
    plugin: string,
  ): void {
    if (!response) return;
    const others: ContainerUpdate[] = [];
    for (const u of response.update ?? []) {
      if (this.target && u.containerId === this.target.containerId && this.resources) {
        try {
          if (u.linux?.resources) {
            const copy = structuredClone(this.resources);
            mergeResources(copy, u.linux.resources, this.ownership.of(this.target.containerId), plugin);
            Object.assign(this.resources, copy);
          }
        } catch (err) {
          if (!u.ignoreFailure) throw err;
        }
      } else {
        others.push(u);
      }
    }
    this.updateSet.add(others, plugin);
    this.updateSet.evict(response.evict ?? [], plugin);
  }

  result(): MergedUpdate {
    return {
      resources: this.resources,
      updates: [...this.updateSet.updates.values()],
      evictions: this.updateSet.evictions,
    };
  }
}
