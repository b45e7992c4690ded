/**
 * src/nri/api.ts must be the NRI API of the pinned upstream version, field by field, or
 * plugins would see fields where they do not expect them. The upstream api.proto is fetched
 * with `go mod download` (Go module proxy); if that fails every test fails with the reason.
 *
 * protobufjs, loading that upstream file, also serves as an independent codec: messages it
 * encodes must decode with ours to the same values, and the other way round.
 */
import { join } from 'node:path';
import { execa } from 'execa';
import protobuf from 'protobufjs';
import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import * as api from '../../src/nri/api.js';
import { decodeMessage, encodeMessage, type Field, type MessageSchema } from '../../src/nri/protobuf.js';

const NRI_VERSION = 'v0.12.2';
const PACKAGE = 'nri.pkg.api.v1alpha1';

let upstream: protobuf.Root;
let fetchFailure: Error | undefined;

beforeAll(async () => {
  const result = await execa('go', ['mod', 'download', '-json', `github.com/containerd/nri@${NRI_VERSION}`], {
    reject: false,
    timeout: 110_000,
    env: { GOFLAGS: '-mod=mod' },
  });
  if (result.exitCode !== 0) {
    fetchFailure = new Error(
      `go mod download github.com/containerd/nri@${NRI_VERSION} failed: ${result.stderr}`,
    );
    return;
  }
  const dir = (JSON.parse(result.stdout) as { Dir: string }).Dir;
  upstream = new protobuf.Root().loadSync(join(dir, 'pkg', 'api', 'api.proto'), { keepCase: true });
  upstream.resolveAll();
}, 120_000);

beforeEach(() => {
  if (fetchFailure) throw fetchFailure;
});

function isSchema(value: unknown): value is MessageSchema<unknown> {
  return typeof value === 'object' && value !== null && 'byNumber' in value && 'fields' in value;
}

/** Our schemas by name, and which upstream messages each stands for. */
const SHARED: Record<string, string[]> = {
  PodSandboxRequest: [
    'RunPodSandboxRequest',
    'StopPodSandboxRequest',
    'RemovePodSandboxRequest',
    'PostUpdatePodSandboxRequest',
  ],
  ContainerRequest: [
    'CreateContainerRequest',
    'PostCreateContainerRequest',
    'StartContainerRequest',
    'PostStartContainerRequest',
    'PostUpdateContainerRequest',
    'StopContainerRequest',
    'RemoveContainerRequest',
  ],
  Empty: [
    'Empty',
    'RunPodSandboxResponse',
    'UpdatePodSandboxResponse',
    'PostUpdatePodSandboxResponse',
    'StopPodSandboxResponse',
    'RemovePodSandboxResponse',
    'PostCreateContainerResponse',
    'StartContainerResponse',
    'PostStartContainerResponse',
    'PostUpdateContainerResponse',
    'RemoveContainerResponse',
  ],
};

/** Upstream messages we do not speak, and why. */
const NOT_USED: Record<string, string> = {
  LogRequest: 'host function of WASM plugins; this runtime loads no WASM',
  ValidateContainerAdjustmentRequest: 'adjustment validator plugins are not supported yet',
  ValidateContainerAdjustmentResponse: 'adjustment validator plugins are not supported yet',
  PluginInstance: 'part of ValidateContainerAdjustmentRequest',
  CompoundFieldOwners: 'part of ValidateContainerAdjustmentRequest',
  FieldOwners: 'part of ValidateContainerAdjustmentRequest',
  OwningPlugins: 'part of ValidateContainerAdjustmentRequest',
};

const ours = new Map<string, MessageSchema<unknown>>(
  Object.values(api as Record<string, unknown>)
    .filter(isSchema)
    .filter((s) => s.name !== 'Any')
    .map((s) => [s.name, s]),
);

function upstreamType(name: string): protobuf.Type {
  return upstream.lookupType(`${PACKAGE}.${name}`);
}

function normalize(name: string): string {
  return name.replace(/_/g, '').toLowerCase();
}

function ourType(field: Field<unknown>): string {
  if (field.kind === 'message') return `message ${field.message!().name}`;
  if (field.kind === 'map') {
    const value = typeof field.mapValue === 'string' ? field.mapValue : `message ${field.mapValue!().name}`;
    return `map<${field.mapKey}, ${value}>`;
  }
  return field.scalar!;
}

function theirType(field: protobuf.Field): string {
  const resolved = field.resolvedType;
  const base =
    resolved instanceof protobuf.Enum
      ? 'enum'
      : resolved instanceof protobuf.Type
        ? `message ${resolved.name}`
        : field.type;
  if (field instanceof protobuf.MapField) return `map<${field.keyType}, ${base}>`;
  return base;
}

function differences(schema: MessageSchema<unknown>, type: protobuf.Type): string[] {
  const out: string[] = [];
  for (const [key, field] of Object.entries(schema.fields)) {
    const theirs = type.fieldsById[field.no];
    if (!theirs) {
      out.push(`${schema.name}.${key} (${field.no}): not in upstream ${type.name}`);
      continue;
    }
    if (normalize(theirs.name) !== normalize(key)) {
      out.push(`${schema.name}.${key} (${field.no}): upstream calls it ${theirs.name}`);
    }
    if (ourType(field) !== theirType(theirs)) {
      out.push(`${schema.name}.${key}: type ${ourType(field)}, upstream ${theirType(theirs)}`);
    }
    if (field.repeated !== theirs.repeated) {
      out.push(`${schema.name}.${key}: repeated ${field.repeated}, upstream ${theirs.repeated}`);
    }
  }
  for (const theirs of type.fieldsArray) {
    if (!schema.byNumber.has(theirs.id)) out.push(`${type.name}.${theirs.name} (${theirs.id}): missing here`);
  }
  return out;
}

describe(`src/nri/api.ts against github.com/containerd/nri ${NRI_VERSION} pkg/api/api.proto`, () => {
  it('has every message field with the upstream number, name, type and cardinality', () => {
    const found: string[] = [];
    for (const [name, schema] of ours) {
      for (const upstreamName of SHARED[name] ?? [name]) {
        found.push(...differences(schema, upstreamType(upstreamName)));
      }
    }
    expect(found.join('\n')).toBe('');
  });

  it('covers every upstream message but the ones listed as unused', () => {
    const covered = new Set([...ours.keys()].flatMap((name) => SHARED[name] ?? [name]));
    const upstreamMessages = (upstream.lookup(PACKAGE) as protobuf.Namespace).nestedArray
      .filter((n) => n instanceof protobuf.Type)
      .map((n) => n.name);
    const missing = upstreamMessages.filter((name) => !covered.has(name) && !(name in NOT_USED));
    expect(missing).toEqual([]);
    expect(upstreamMessages.length).toBeGreaterThan(60);
  });

  it('uses the upstream service and method names', () => {
    const plugin = upstream.lookupService(`${PACKAGE}.Plugin`);
    const runtime = upstream.lookupService(`${PACKAGE}.Runtime`);
    expect(`${PACKAGE}.Plugin`).toBe(api.PLUGIN_SERVICE);
    expect(`${PACKAGE}.Runtime`).toBe(api.RUNTIME_SERVICE);
    const events = Object.keys(api.NriEvent).filter(
      (e) => !['Unknown', 'Last', 'ValidateContainerAdjustment'].includes(e),
    );
    for (const method of [...events, 'Configure', 'Synchronize', 'Shutdown', 'StateChange']) {
      expect(plugin.methods[method], method).toBeDefined();
    }
    expect(Object.keys(runtime.methods).sort()).toEqual(['RegisterPlugin', 'UpdateContainers']);
  });

  it('has the upstream enum values', () => {
    const event = upstream.lookupEnum(`${PACKAGE}.Event`).values;
    for (const [name, value] of Object.entries(api.NriEvent)) {
      const upstreamName = name.replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase();
      expect(event[upstreamName], upstreamName).toBe(value);
    }
    const state = upstream.lookupEnum(`${PACKAGE}.ContainerState`).values;
    for (const [name, value] of Object.entries(api.ContainerStateValue)) {
      expect(state[`CONTAINER_${name.toUpperCase()}`]).toBe(value);
    }
    const order = (enumName: string) =>
      Object.entries(upstream.lookupEnum(`${PACKAGE}.${enumName}`).values)
        .sort((a, b) => a[1] - b[1])
        .map(([n]) => n);
    expect(api.IOPrioClass).toEqual(order('IOPrioClass'));
    expect(api.LinuxSchedulerPolicy).toEqual(order('LinuxSchedulerPolicy'));
    expect(api.LinuxSchedulerFlag).toEqual(order('LinuxSchedulerFlag'));
    expect(api.MpolMode).toEqual(order('MpolMode'));
    expect(api.MpolFlag).toEqual(order('MpolFlag'));
  });
});

// ---- protobufjs as an independent codec ------------------------------------------------------

/** Our value (camelCase, bigint) as a protobufjs plain object (upstream names, 64-bit as strings). */
function toTheirs(
  schema: MessageSchema<unknown>,
  value: Record<string, unknown>,
  type: protobuf.Type,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(schema.fields)) {
    const v = value[key];
    if (v === undefined) continue;
    const theirs = type.fieldsById[field.no]!;
    const convert = (item: unknown, sub?: MessageSchema<unknown>, subType?: protobuf.Type): unknown =>
      sub
        ? toTheirs(sub, item as Record<string, unknown>, subType!)
        : typeof item === 'bigint'
          ? item.toString()
          : item;
    if (field.kind === 'message') {
      const sub = field.message!();
      const subType = theirs.resolvedType as protobuf.Type;
      out[theirs.name] = field.repeated
        ? (v as unknown[]).map((i) => convert(i, sub, subType))
        : convert(v, sub, subType);
    } else if (field.kind === 'map' && typeof field.mapValue !== 'string') {
      const sub = field.mapValue!();
      const subType = theirs.resolvedType as protobuf.Type;
      out[theirs.name] = Object.fromEntries(
        Object.entries(v as Record<string, unknown>).map(([k, i]) => [k, convert(i, sub, subType)]),
      );
    } else {
      out[theirs.name] = Array.isArray(v) ? v.map((i) => convert(i)) : convert(v);
    }
  }
  return out;
}

/** protobufjs's defaults include null for absent messages; ours leave them out. */
function withoutNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutNulls);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([, v]) => v !== null)
        .map(([k, v]) => [k, withoutNulls(v)]),
    );
  }
  return value;
}

const container: api.Container = {
  id: 'c'.repeat(64),
  podSandboxId: 'p'.repeat(64),
  name: 'app',
  state: api.ContainerStateValue.Running,
  labels: { a: '1', b: '2' },
  annotations: { 'x/y': 'z' },
  args: ['/bin/sh', '-c', 'true'],
  env: ['A=1'],
  mounts: [{ destination: '/data', type: 'bind', source: '/srv', options: ['rbind', 'ro'] }],
  hooks: { prestart: [{ path: '/hook', args: ['hook'], env: [], timeout: { value: 5n } }] },
  linux: {
    namespaces: [{ type: 'network', path: '/run/netns/x' }],
    devices: [{ path: '/dev/fuse', type: 'c', major: 10n, minor: 229n, fileMode: { value: 0o666 } }],
    resources: {
      memory: { limit: { value: 1n << 33n }, swappiness: { value: 0n } },
      cpu: { shares: { value: 1024n }, quota: { value: -1n }, cpus: '0-1' },
      hugepageLimits: [{ pageSize: '2MB', limit: 0n }],
      unified: { 'memory.high': '1G' },
      devices: [{ allow: false, access: 'rwm' }],
      pids: { limit: 100n },
    },
    oomScoreAdj: { value: -998n },
    cgroupsPath: '/kubepods/x',
    sysctl: { 'net.ipv4.ip_forward': '1' },
    netDevices: { eth1: { name: 'net1' } },
    scheduler: { policy: 2, flags: [0, 6], runtime: 1n },
  },
  pid: 4242,
  rlimits: [{ type: 'RLIMIT_NOFILE', hard: (1n << 64n) - 1n, soft: 1024n }],
  createdAt: 1_733_000_000_123_456_789n,
  exitCode: -1,
  user: { uid: 1000, gid: 1000, additionalGids: [4, 24, 100000] },
  image: { name: 'busybox', digest: 'sha256:00' },
};

const adjustment: api.ContainerAdjustment = {
  annotations: { added: 'yes', '-removed': '' },
  mounts: [{ destination: '-/old' }, { destination: '/new', source: '/x', type: 'bind', options: ['bind'] }],
  env: [{ key: 'A', value: 'b' }],
  hooks: { poststop: [{ path: '/cleanup' }] },
  linux: {
    resources: { cpu: { cpus: '3' } },
    seccompPolicy: {
      defaultAction: 'SCMP_ACT_ERRNO',
      defaultErrno: { value: 1 },
      syscalls: [
        {
          names: ['read'],
          action: 'SCMP_ACT_ALLOW',
          args: [{ index: 0, value: 1n, valueTwo: 0n, op: 'SCMP_CMP_EQ' }],
        },
      ],
    },
    rdt: { closId: { value: 'gold' }, schemata: { value: ['L3:0=f'] }, remove: false },
    memoryPolicy: { mode: 2, nodes: '0', flags: [1] },
  },
  rlimits: [{ type: 'RLIMIT_CORE', hard: 0n, soft: 0n }],
  cdiDevices: [{ name: 'vendor.com/gpu=0' }],
  args: ['', 'new'],
};

describe('codec against protobufjs on the upstream schema', () => {
  it.each([
    ['Container', api.Container, container],
    ['ContainerAdjustment', api.ContainerAdjustment, adjustment],
  ] as const)('%s: protobufjs bytes decode with ours, ours decode with protobufjs', (name, schema, value) => {
    const type = upstreamType(name);
    const theirObject = toTheirs(schema as MessageSchema<unknown>, value as Record<string, unknown>, type);
    const theirBytes = type.encode(type.fromObject(theirObject)).finish();
    const decodedByUs = decodeMessage(schema as MessageSchema<unknown>, theirBytes);
    expect(toTheirs(schema as MessageSchema<unknown>, decodedByUs as Record<string, unknown>, type)).toEqual(
      withoutNulls(
        type.toObject(type.decode(theirBytes), {
          longs: String,
          enums: Number,
          bytes: Array,
          defaults: true,
        }),
      ),
    );
    const ourBytes = encodeMessage(schema as MessageSchema<unknown>, value);
    const asTheyRead = (bytes: Uint8Array) =>
      withoutNulls(
        type.toObject(type.decode(bytes), { longs: String, enums: Number, bytes: Array, defaults: true }),
      );
    expect(asTheyRead(ourBytes)).toEqual(asTheyRead(theirBytes));
  });
});
