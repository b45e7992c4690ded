/**
 * Pod user namespaces (hostUsers: false) and recursive read-only mounts without a kernel: the
 * id map arithmetic, the RunPodSandbox checks and the errors critest expects, what Status
 * advertises, and the container spec step (the user namespace joined, ids checked, volumes
 * id-mapped where the kernel allows it, submounts listed for crun).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { IDMapping__Output } from '../../src/api/generated/runtime/v1/IDMapping.js';
import type { ContainerConfig__Output, PodSandboxConfig__Output } from '../../src/api/proto.js';
import type { NodeMount } from '../../src/container/pod-user-namespace-spec.js';
import { buildOciSpec, type SpecInput } from '../../src/container/spec-builder.js';
import { NodeSpecFiles } from '../../src/container/spec-files.js';
import type { OciSpec } from '../../src/os/oci-spec.js';
import {
  contiguousIds,
  type IdMapping,
  mappingSpec,
  nestInNode,
  parseIdMap,
} from '../../src/os/pod-user-namespace.js';
import {
  MIN_NODE_IDS_FOR_POD_USERNS,
  parseVersion,
  podUserNamespacesUnavailable,
  recursiveReadOnlyUnavailable,
  versionAtLeast,
} from '../../src/os/runtime-features.js';
import { podUserNamespacePlan } from '../../src/podsandbox/pod-user-namespace.js';
import { namespaceModes } from '../../src/podsandbox/sandbox-config.js';
import {
  containerConfig,
  podConfig as containerPodConfig,
  hostFacts,
  mount,
  sandboxInfo,
} from '../fakes/container-fixtures.js';
import { podConfig } from '../fakes/pod-config-builder.js';

/** A node made by rootlesskit for a user with one range of 1,048,576 ids. */
const NODE_ONE_RANGE = parseIdMap('         0       1015          1\n         1    3180192    1048576\n');
/** The same user with the old 65,536 and a second /etc/subuid line appended (setup-host re-run). */
const NODE_TWO_RANGES = parseIdMap('0 1015 1\n1 1017504 65536\n65537 1083040 983040\n');

const m = (container_id: number, host_id: number, length: number): IDMapping__Output => ({
  container_id,
  host_id,
  length,
});

function kindOf(fn: () => unknown): { kind: string; message: string } {
  try {
    fn();
  } catch (err) {
    return { kind: (err as { kind?: string }).kind ?? 'none', message: (err as Error).message };
  }
  return { kind: 'none', message: '' };
}

function usernsPod(
  mode: string,
  uids: IDMapping__Output[],
  gids = uids,
  namespaces: Record<string, string> = {},
): PodSandboxConfig__Output {
  const config = podConfig();
  config.linux!.security_context!.namespace_options = {
    network: 'POD',
    ipc: 'POD',
    pid: 'POD',
    target_id: '',
    ...namespaces,
    userns_options: { mode, uids, gids },
  } as never;
  return config;
}

const facts = (node = NODE_ONE_RANGE, unavailable: string | null = null) => ({
  node: { uids: node, gids: node },
  unavailable,
});

function plan(config: PodSandboxConfig__Output, f = facts()) {
  return podUserNamespacePlan(config, namespaceModes(config), f);
}

describe('the node id map', () => {
  it('parses uid_map text and counts the ids mapped from 0 without a gap', () => {
    expect(NODE_TWO_RANGES).toEqual([
      { containerId: 0, hostId: 1015, length: 1 },
      { containerId: 1, hostId: 1017504, length: 65536 },
      { containerId: 65537, hostId: 1083040, length: 983040 },
    ]);
    expect(contiguousIds(NODE_ONE_RANGE)).toBe(1048577);
    expect(contiguousIds(NODE_TWO_RANGES)).toBe(1048577);
    expect(contiguousIds(parseIdMap('0 1000 1\n5 100000 10\n'))).toBe(1);
    expect(parseIdMap('garbage\n1 2\n0 1000 0\n')).toEqual([]);
  });

  it('nests a pod range in the node, cutting it where the node lines meet', () => {
    expect(nestInNode([{ containerId: 0, hostId: 1000, length: 100000 }], NODE_ONE_RANGE)).toEqual({
      lines: [{ containerId: 0, hostId: 1000, length: 100000 }],
    });
    // Node ids 1..65536 and 65537.. are two lines of the node's map: the kernel wants two here.
    expect(nestInNode([{ containerId: 0, hostId: 1000, length: 100000 }], NODE_TWO_RANGES)).toEqual({
      lines: [
        { containerId: 0, hostId: 1000, length: 64537 },
        { containerId: 64537, hostId: 65537, length: 35463 },
      ],
    });
    expect(nestInNode([{ containerId: 0, hostId: 1048000, length: 65536 }], NODE_ONE_RANGE)).toEqual({
      unmapped: { from: 1048577, to: 1113535 },
    });
    expect(
      mappingSpec([
        { containerId: 0, hostId: 1, length: 2 },
        { containerId: 2, hostId: 9, length: 1 },
      ]),
    ).toBe('0:1:2,2:9:1');
  });
});

describe('RunPodSandbox with userns_options', () => {
  it('uses the node user namespace for mode NODE or no options', () => {
    expect(plan(podConfig())).toBeNull();
    expect(plan(usernsPod('NODE', []))).toBeNull();
    // Even on a node that cannot offer pod user namespaces.
    expect(plan(usernsPod('NODE', []), facts(NODE_ONE_RANGE, 'no'))).toBeNull();
  });

  it('plans the kernel lines of a POD user namespace, nested in the node', () => {
    expect(plan(usernsPod('POD', [m(0, 1000, 100000)]))).toEqual({
      uids: [{ containerId: 0, hostId: 1000, length: 100000 }],
      gids: [{ containerId: 0, hostId: 1000, length: 100000 }],
    });
    expect(plan(usernsPod('POD', [m(0, 1000, 100000)]), facts(NODE_TWO_RANGES))?.uids).toHaveLength(2);
    // pid CONTAINER is fine: the containers make their pid namespaces inside the pod's.
    expect(plan(usernsPod('POD', [m(0, 131072, 65536)], undefined, { pid: 'CONTAINER' }))).not.toBeNull();
  });

  it('answers INVALID_ARGUMENT for what critest expects refused, naming the field', () => {
    const cases: [PodSandboxConfig__Output, RegExp][] = [
      [usernsPod('POD', [m(0, 1000, 100000), m(0, 2000, 100000)]), /uids has 2 mappings.*exactly one/],
      [usernsPod('POD', []), /uids has 0 mappings/],
      [usernsPod('POD', [m(0, 1000, 1000)], [m(0, 1000, 1000), m(1000, 5000, 1)]), /gids has 2 mappings/],
      [usernsPod('POD', [m(1, 1000, 100000)]), /uids 1:1000:100000 does not map container id 0/],
      [usernsPod('CONTAINER', []), /mode CONTAINER is not valid for a pod: use POD or NODE/],
      [usernsPod('TARGET', []), /mode TARGET is not valid for a pod/],
      [usernsPod('POD', [m(0, 1000, 0)]), /has length 0/],
      [usernsPod('POD', [m(0, 0, 65536)]), /node id 0, the node user itself/],
      [
        usernsPod('POD', [m(0, 1048000, 65536)]),
        /maps node ids 1048577-1113535, which the rootless node does not have \(its ids: 0-0, 1-1048576\)/,
      ],
      [
        usernsPod('POD', [m(0, 131072, 65536)], undefined, { network: 'NODE' }),
        /network NODE cannot be combined/,
      ],
      [usernsPod('POD', [m(0, 131072, 65536)], undefined, { ipc: 'NODE' }), /ipc NODE cannot be combined/],
      [usernsPod('POD', [m(0, 131072, 65536)], undefined, { pid: 'NODE' }), /pid NODE cannot be combined/],
    ];
    for (const [config, message] of cases) {
      const err = kindOf(() => plan(config));
      expect(err.kind, err.message).toBe('InvalidArgument');
      expect(err.message).toMatch(message);
    }
  });

  it('answers FAILED_PRECONDITION with the reason on a node that cannot offer them', () => {
    const err = kindOf(() =>
      plan(usernsPod('POD', [m(0, 131072, 65536)]), facts(NODE_ONE_RANGE, 'too few ids')),
    );
    expect(err).toEqual({
      kind: 'FailedPrecondition',
      message: expect.stringMatching(/not available on this node: too few ids/),
    });
    // Bad mappings are still the request's fault, whatever the node.
    expect(kindOf(() => plan(usernsPod('POD', [m(1, 1, 1)]), facts(NODE_ONE_RANGE, 'x'))).kind).toBe(
      'InvalidArgument',
    );
  });
});

describe('what the runtime handler advertises', () => {
  it('recursive read-only mounts: crun >= 1.4 and Linux >= 5.12', () => {
    expect(parseVersion('crun version 1.8.1')).toEqual([1, 8, 1]);
    expect(parseVersion('6.1.0-18-amd64')).toEqual([6, 1, 0]);
    expect(versionAtLeast([1, 8, 1], [1, 4])).toBe(true);
    expect(versionAtLeast([1, 3, 9], [1, 4])).toBe(false);
    expect(versionAtLeast(null, [1])).toBe(false);
    expect(recursiveReadOnlyUnavailable('1.8.1', '6.18.0')).toBeNull();
    expect(recursiveReadOnlyUnavailable('1.3', '6.1.0')).toMatch(/crun 1.3 has no rro/);
    expect(recursiveReadOnlyUnavailable('', '6.1.0')).toMatch(/version unknown/);
    expect(recursiveReadOnlyUnavailable('1.8.1', '5.10.0-28-amd64')).toMatch(/no mount_setattr/);
  });

  it('pod user namespaces: ids beyond the node own 65,536, fuse-overlayfs, the helper and the views dir', () => {
    const ok = {
      node: { uids: NODE_ONE_RANGE, gids: NODE_ONE_RANGE },
      snapshotter: 'fuse-overlayfs',
      helperBuilt: true,
      viewsProblem: null,
    };
    expect(podUserNamespacesUnavailable(ok)).toBeNull();
    const small = parseIdMap('0 1015 1\n1 100000 65536\n');
    expect(podUserNamespacesUnavailable({ ...ok, node: { uids: small, gids: NODE_ONE_RANGE } })).toMatch(
      new RegExp(`maps 65537 ids.*at least ${MIN_NODE_IDS_FOR_POD_USERNS}.*setup-host`),
    );
    expect(podUserNamespacesUnavailable({ ...ok, snapshotter: 'overlay' })).toMatch(
      /overlay snapshotter cannot shift/,
    );
    expect(podUserNamespacesUnavailable({ ...ok, helperBuilt: false })).toMatch(/npm run build/);
    expect(podUserNamespacesUnavailable({ ...ok, viewsProblem: '/run is not searchable' })).toMatch(
      /\/run is not searchable/,
    );
  });
});

describe('the container spec in a pod with its own user namespace', () => {
  let dir: string;
  let rootfs: string;
  let hostDir: string;
  let table: NodeMount[];
  let idmapChecks: string[];
  let idmapAnswer: { supported: boolean; reason: string };

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'pod-userns-spec-'));
    rootfs = join(dir, 'rootfs');
    mkdirSync(join(rootfs, 'etc'), { recursive: true });
    writeFileSync(join(rootfs, 'etc/passwd'), 'root:x:0:0::/:/bin/sh\n');
    hostDir = join(dir, 'vol');
    mkdirSync(hostDir);
    table = [];
    idmapChecks = [];
    idmapAnswer = { supported: true, reason: '' };
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  const POD_MAPPING = [m(0, 131072, 65536)];
  const KERNEL_LINES: IdMapping[] = [{ containerId: 0, hostId: 131072, length: 65536 }];

  function usernsSandbox() {
    const pod = containerPodConfig();
    pod.linux!.security_context!.namespace_options!.userns_options = {
      mode: 'POD',
      uids: POD_MAPPING,
      gids: POD_MAPPING,
    } as never;
    return sandboxInfo({
      config: pod,
      userNamespace: { path: '/run/userns/p1', uids: KERNEL_LINES, gids: KERNEL_LINES },
    });
  }

  class Files extends NodeSpecFiles {
    override async mountTable() {
      return table;
    }
    override async idmapSupported(usernsPin: string, source: string) {
      idmapChecks.push(`${usernsPin} ${source}`);
      return idmapAnswer;
    }
  }

  function input(config: ContainerConfig__Output, sandbox = usernsSandbox()): SpecInput {
    return {
      containerId: 'c'.repeat(64),
      config,
      sandbox,
      image: { config: { config: { Cmd: ['sh'] } }, rootfs, name: 'busybox' },
      hostFacts: hostFacts({ recursiveReadOnlyMounts: true, idMapSize: 1048577 }),
      files: new Files(),
    };
  }

  const spec = async (config: ContainerConfig__Output, sandbox?: ReturnType<typeof sandboxInfo>) =>
    buildOciSpec(input(config, sandbox));

  async function rejects(
    config: ContainerConfig__Output,
    kind: string,
    message: RegExp,
    sandbox?: ReturnType<typeof sandboxInfo>,
  ) {
    const err = await spec(config, sandbox).then(
      () => ({ kind: 'none', message: '' }),
      (e: { kind?: string; message: string }) => ({ kind: e.kind ?? 'none', message: e.message }),
    );
    expect(err.kind, err.message).toBe(kind);
    expect(err.message).toMatch(message);
  }

  const find = (s: OciSpec, destination: string) => s.mounts.filter((x) => x.destination === destination);

  it('joins the pod user namespace first, without maps of its own (crun would id-map with them too early)', async () => {
    const { spec: s } = await spec(containerConfig());
    expect(s.linux.namespaces[0]).toEqual({ type: 'user', path: '/run/userns/p1' });
    expect(s.linux.namespaces.filter((n) => n.type === 'user')).toHaveLength(1);
    expect(s.linux).not.toHaveProperty('uidMappings');
    // Without a pod user namespace nothing changes.
    const plain = await spec(containerConfig(), sandboxInfo());
    expect(plain.spec.linux.namespaces.some((n) => n.type === 'user')).toBe(false);
  });

  it('refuses ids the pod does not map, and a user namespace mode other than the pod own', async () => {
    await rejects(
      containerConfig({}, { run_as_user: { value: '70000' } }),
      'InvalidArgument',
      /uid 70000 is not mapped in the pod's user namespace \(ids 0\.\.65535\)/,
    );
    await rejects(
      containerConfig({}, { run_as_user: { value: '0' }, supplemental_groups: ['65536'] }),
      'InvalidArgument',
      /supplementary gid 65536 is not mapped/,
    );
    const mode = (value: string) =>
      containerConfig(
        {},
        {
          namespace_options: {
            network: 'POD',
            pid: 'CONTAINER',
            ipc: 'POD',
            target_id: '',
            userns_options: { mode: value, uids: [], gids: [] },
          } as never,
        },
      );
    await rejects(mode('NODE'), 'InvalidArgument', /all its containers share \(mode POD\)/);
    await expect(spec(mode('POD'))).resolves.toBeDefined();
    await rejects(mode('POD'), 'InvalidArgument', /its pod uses the node's user namespace/, sandboxInfo());
    const hostNet = containerConfig(
      {},
      {
        namespace_options: {
          network: 'NODE',
          pid: 'CONTAINER',
          ipc: 'POD',
          target_id: '',
          userns_options: null,
        } as never,
      },
    );
    await rejects(hostNet, 'InvalidArgument', /cannot use the node's network namespace/);
  });

  it('id-maps a volume where the kernel allows it, with the pod mapping; else mounts it as it is with a warning', async () => {
    const mapped = containerConfig({
      mounts: [
        mount({
          container_path: '/vol',
          host_path: hostDir,
          uidMappings: POD_MAPPING,
          gidMappings: POD_MAPPING,
        }),
      ],
    });
    let built = await spec(mapped);
    expect(find(built.spec, '/vol')[0]).toEqual({
      destination: '/vol',
      type: 'bind',
      source: hostDir,
      options: ['rbind', 'rprivate', 'rw', 'idmap'],
      uidMappings: [{ containerID: 0, hostID: 131072, size: 65536 }],
      gidMappings: [{ containerID: 0, hostID: 131072, size: 65536 }],
    });
    expect(idmapChecks).toEqual([`/run/userns/p1 ${hostDir}`]);
    idmapAnswer = { supported: false, reason: 'EPERM (Operation not permitted)' };
    built = await spec(mapped);
    expect(find(built.spec, '/vol')[0]!.options).toEqual(['rbind', 'rprivate', 'rw']);
    expect(built.warnings.join('\n')).toMatch(
      /mount \/vol: the kernel refuses to id-map .*EPERM.*keep their node owners/,
    );
    // Mappings other than the pod's, and mappings in a pod of the node user namespace, are refused.
    await rejects(
      containerConfig({
        mounts: [mount({ host_path: hostDir, uidMappings: [m(0, 200000, 10)], gidMappings: POD_MAPPING })],
      }),
      'InvalidArgument',
      /differ from the pod's user namespace/,
    );
    await rejects(
      mapped,
      'InvalidArgument',
      /id-mapped mounts are for pods with their own user namespace/,
      sandboxInfo(),
    );
  });

  it('lists the submounts of a bind for crun, read-only under rro and with their own flag otherwise', async () => {
    table = [
      { mountPoint: '/', readonly: false },
      { mountPoint: `${hostDir}/tmpfs`, readonly: false },
      { mountPoint: `${hostDir}/tmpfs/deeper`, readonly: false },
      { mountPoint: `${hostDir}/ro-already`, readonly: true },
      { mountPoint: `${hostDir}-sibling`, readonly: false },
    ];
    const rro = await spec(
      containerConfig({
        mounts: [
          mount({ container_path: '/mnt', host_path: hostDir, readonly: true, recursive_read_only: true }),
        ],
      }),
    );
    const under = rro.spec.mounts.filter((x) => x.destination.startsWith('/mnt'));
    expect(under).toEqual([
      { destination: '/mnt', type: 'bind', source: hostDir, options: ['rbind', 'rprivate', 'ro', 'rro'] },
      {
        destination: '/mnt/tmpfs',
        type: 'bind',
        source: `${hostDir}/tmpfs`,
        options: ['rbind', 'rprivate', 'ro'],
      },
      {
        destination: '/mnt/tmpfs/deeper',
        type: 'bind',
        source: `${hostDir}/tmpfs/deeper`,
        options: ['rbind', 'rprivate', 'ro'],
      },
      {
        destination: '/mnt/ro-already',
        type: 'bind',
        source: `${hostDir}/ro-already`,
        options: ['rbind', 'rprivate', 'ro'],
      },
    ]);
    const ro = await spec(
      containerConfig({ mounts: [mount({ container_path: '/mnt', host_path: hostDir, readonly: true })] }),
    );
    expect(ro.spec.mounts.filter((x) => x.destination.startsWith('/mnt')).map((x) => x.options[2])).toEqual([
      'ro',
      'rw',
      'rw',
      'ro',
    ]);
    // In a pod of the node user namespace crun keeps the submounts of an rbind itself.
    const plain = await spec(
      containerConfig({
        mounts: [
          mount({ container_path: '/mnt', host_path: hostDir, readonly: true, recursive_read_only: true }),
        ],
      }),
      sandboxInfo(),
    );
    expect(plain.spec.mounts.filter((x) => x.destination.startsWith('/mnt'))).toHaveLength(1);
  });
});
