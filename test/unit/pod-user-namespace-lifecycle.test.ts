/**
 * The whole life of a pod with its own user namespace (hostUsers: false) and its containers,
 * over fakes of the node, the network, the ports, crun/conmon and the snapshotter, with the
 * real core and both RPC modules on one disk: RunPodSandbox → CreateContainer → StartContainer
 * → StopPodSandbox → RemovePodSandbox leaves nothing; every failing step of RunPodSandbox
 * releases the user namespace with the rest; a failed CreateContainer leaves the pod as it
 * was; a daemon killed midway or restarted keeps what the pod needs and cleans the rest.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ContainerConfig__Output, PodSandboxConfig__Output } from '../../src/api/proto.js';
import { type ContainerService, createContainerService } from '../../src/container/container-service.js';
import type { NodeMount } from '../../src/container/pod-user-namespace-spec.js';
import { NodeSpecFiles } from '../../src/container/spec-files.js';
import type { RuntimeCore } from '../../src/core/runtime-core.js';
import { FailedPreconditionError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import type { CreateOptions } from '../../src/os/oci-runtime.js';
import type { IdMapping } from '../../src/os/pod-user-namespace.js';
import type { PodNamespacesRequest } from '../../src/os/sandbox-os.js';
import { createPodSandboxService, type PodSandboxService } from '../../src/podsandbox/index.js';
import { SPACE_RESERVE_NAME } from '../../src/store/record-store.js';
import { containerConfig, hostFacts } from '../fakes/container-fixtures.js';
import { FakeCgroupManager } from '../fakes/fake-cgroup-manager.js';
import { FakeContainerOs, FakeImages } from '../fakes/fake-container-os.js';
import { fakeCore } from '../fakes/fake-core.js';
import { FakeNetworkDriver } from '../fakes/fake-network-driver.js';
import { FakeOciRuntime } from '../fakes/fake-oci-runtime.js';
import { FakePortManager } from '../fakes/fake-port-manager.js';
import { FakeSandboxOs } from '../fakes/fake-sandbox-os.js';
import { FakeSnapshotter } from '../fakes/fake-snapshotter.js';
import { podConfig } from '../fakes/pod-config-builder.js';

/** rootlesskit's map for a user with 1,048,576 subordinate ids (setup-host). */
const NODE: IdMapping[] = [
  { containerId: 0, hostId: 1015, length: 1 },
  { containerId: 1, hostId: 3180192, length: 1048576 },
];
const KERNEL_LINES: IdMapping[] = [{ containerId: 0, hostId: 131072, length: 65536 }];
const IMAGE_ID = `sha256:${'1'.repeat(64)}`;

interface World {
  dir: string;
  journal: string[];
  os: FakeSandboxOs;
  cgroups: FakeCgroupManager;
  network: FakeNetworkDriver;
  ports: FakePortManager;
  runtime: FakeOciRuntime;
  snapshotter: FakeSnapshotter;
  images: FakeImages;
  containerOs: FakeContainerOs;
  core: RuntimeCore;
  pods: PodSandboxService;
  containers: ContainerService;
}

type Node = Omit<World, 'core' | 'pods' | 'containers'>;

let w: World;

/** The node's mount table and id-map answers, without reading this machine's. */
class Files extends NodeSpecFiles {
  override async mountTable(): Promise<NodeMount[]> {
    return [];
  }
  override async idmapSupported(): Promise<{ supported: boolean; reason: string }> {
    return { supported: true, reason: '' };
  }
}

/** A daemon over the node's fakes and disk: the real core with both RPC modules. */
function daemon(node: Node): Pick<World, 'core' | 'pods' | 'containers'> {
  const { core } = fakeCore({
    rootDir: path.join(node.dir, 'root'),
    journal: node.journal,
    sandboxOs: node.os,
    cgroups: node.cgroups,
    runtime: node.runtime,
    snapshotter: node.snapshotter,
    images: node.images,
  });
  const pods = createPodSandboxService({
    core,
    config: {
      rootDir: path.join(node.dir, 'root'),
      runDir: path.join(node.dir, 'run'),
      network: {
        cniConfDir: '/nonexistent',
        cniBinDirs: [],
        ipamDataDir: '/nonexistent',
        podCidr: '10.88.0.0/16',
        networkName: 'fake',
        cniConfTemplate: undefined,
      },
    },
    logger: silentLogger(),
    portManager: node.ports,
    os: node.os,
    network: node.network,
    userNamespaces: { node: { uids: NODE, gids: NODE }, unavailable: null },
    overrides: {
      nodeHostname: () => 'node',
      undoTimeoutMs: 2_000,
      paths: {
        sandboxesDir: path.join(node.dir, 'root', 'sandboxes'),
        runDir: path.join(node.dir, 'run'),
        nodeResolvConf: path.join(node.dir, 'resolv.conf'),
        nodeHosts: path.join(node.dir, 'hosts'),
      },
    },
  });
  const containers = createContainerService({
    core,
    logger: silentLogger(),
    hostFacts: hostFacts({ idMapSize: 1048577 }),
    os: node.containerOs,
    files: new Files(),
    overrides: { undoTimeoutMs: 1_000 },
  });
  return { core, pods, containers };
}

/** A new daemon over the same disk and node; `killed`: the old one is not closed (its RPCs never end). */
async function restart(killed = false): Promise<void> {
  if (!killed) await w.core.close();
  w = { ...w, ...daemon(w) };
  await w.core.recover();
}

beforeEach(async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'rcri-userns-life-'));
  const journal: string[] = [];
  const images = new FakeImages();
  images.add({
    id: IMAGE_ID,
    config: { config: { Cmd: ['sleep', '1000'] } },
    layerDirs: ['/layers/top', '/layers/base'],
    repoTags: ['registry.local/busybox:1'],
    repoDigests: [],
  });
  const node: Node = {
    dir,
    journal,
    os: new FakeSandboxOs(journal),
    cgroups: new FakeCgroupManager({}, journal),
    network: new FakeNetworkDriver(journal),
    ports: new FakePortManager(journal),
    runtime: new FakeOciRuntime(),
    snapshotter: new FakeSnapshotter('fuse-overlayfs', path.join(dir, 'snap')),
    images,
    containerOs: new FakeContainerOs(),
  };
  w = { ...node, ...daemon(node) };
  await w.core.recover();
});

afterEach(async () => {
  await w.core.close();
  await rm(w.dir, { recursive: true, force: true });
});

const ctx = () => ({
  signal: new AbortController().signal,
  logger: silentLogger(),
  method: 't',
  requestId: 'r',
  deadline: undefined,
});

function usernsPod(name = 'p', sysctls: Record<string, string> = {}): PodSandboxConfig__Output {
  const config = podConfig({
    metadata: { name, uid: `uid-${name}`, namespace: 'ns', attempt: 0 },
    port_mappings: [{ protocol: 'TCP', container_port: 80, host_port: 12080, host_ip: '127.0.0.1' }],
  });
  config.linux!.sysctls = sysctls;
  config.linux!.security_context!.namespace_options!.userns_options = {
    mode: 'POD',
    uids: [{ container_id: 0, host_id: 131072, length: 65536 }],
    gids: [{ container_id: 0, host_id: 131072, length: 65536 }],
  } as never;
  return config;
}

async function runPod(config = usernsPod()): Promise<string> {
  return (await w.pods.handlers.RunPodSandbox({ config, runtime_handler: '' }, ctx())).pod_sandbox_id!;
}

function appConfig(name = 'app'): ContainerConfig__Output {
  return containerConfig({
    metadata: { name, attempt: 0 },
    image: { ...containerConfig().image!, image: 'registry.local/busybox:1' },
    log_path: `${name}/0.log`,
  });
}

async function createContainer(podId: string, name = 'app'): Promise<string> {
  const r = await w.containers.handlers.CreateContainer!(
    { pod_sandbox_id: podId, config: appConfig(name), sandbox_config: null },
    ctx() as never,
  );
  return r.container_id!;
}

async function podState(id: string): Promise<string> {
  const r = await w.pods.handlers.PodSandboxStatus({ pod_sandbox_id: id, verbose: false }, ctx());
  return String(r.status!.state);
}

async function containerState(id: string): Promise<string> {
  const r = await w.containers.handlers.ContainerStatus!(
    { container_id: id, verbose: false },
    ctx() as never,
  );
  return String(r.status!.state);
}

const usernsPin = (podId: string) => path.join(w.dir, 'run', 'userns', podId);

async function records(kind: 'sandboxes' | 'containers'): Promise<string[]> {
  return (await readdir(path.join(w.dir, 'root', kind)).catch(() => [] as string[]))
    .filter((f) => f !== SPACE_RESERVE_NAME)
    .map((f) => `${kind} record ${f}`);
}

/** Everything a pod and its containers can hold, across every fake and the disk. */
async function leftovers(): Promise<string[]> {
  return [
    ...w.os.leftovers(),
    ...w.cgroups.leftovers(),
    ...[...w.network.leases.values()].map((ip) => `lease ${ip}`),
    ...[...w.ports.published.values()].map((p) => `port ${p.parentPort}`),
    ...[...w.snapshotter.snapshots.keys()].map((id) => `snapshot ${id}`),
    ...[...w.runtime.containers.keys()].map((id) => `runtime ${id}`),
    ...[...w.images.holders].flatMap(([image, holders]) => [...holders].map((h) => `hold ${image} ${h}`)),
    ...(await records('sandboxes')),
    ...(await records('containers')),
  ];
}

/** The paths of each unpinNamespaces call, in order. */
const unpinned = () =>
  w.os.calls.filter((c) => c.method === 'unpinNamespaces').map((c) => c.args[0] as string[]);

describe('the life of a pod with its own user namespace', () => {
  it('run → container → start → stop → remove: containers join it, see shifted files, and nothing is left', async () => {
    const podId = await runPod(
      usernsPod('p', { 'kernel.shm_rmid_forced': '1', 'net.ipv4.ping_group_range': '0 1000' }),
    );
    const pin = usernsPin(podId);
    const request = w.os.calls.find((c) => c.method === 'createPodNamespaces')!
      .args[0] as PodNamespacesRequest;
    expect(request.userNamespace).toEqual({ mode: 'POD', path: pin, uids: KERNEL_LINES, gids: KERNEL_LINES });
    // Both kinds of namespaced sysctls are written inside the pod's user namespace: the ipc one
    // with the namespaces, the net one after CNI ADD (ping_group_range names the pod's ids).
    expect(w.os.configured.map((c) => [c.ns.user, c.settings.sysctls.map((s) => s.key)])).toEqual([
      [pin, ['kernel.shm_rmid_forced']],
      [pin, ['net.ipv4.ping_group_range']],
    ]);

    const first = await createContainer(podId);
    const second = await createContainer(podId, 'sidecar');
    // The image's files are shifted into the pod by the snapshotter, with the pod's kernel lines.
    const prepares = w.snapshotter.calls.filter((c) => c.method === 'prepare');
    expect(prepares.map((c) => [c.id, c.options?.idMapping])).toEqual([
      [first, { uids: KERNEL_LINES, gids: KERNEL_LINES }],
      [second, { uids: KERNEL_LINES, gids: KERNEL_LINES }],
    ]);
    // Both containers join the one user namespace of the pod, by its pin, without maps of their own.
    for (const id of [first, second]) {
      const { spec } = w.runtime.containers.get(id)!.options as CreateOptions;
      expect(spec.linux.namespaces[0]).toEqual({ type: 'user', path: pin });
      expect(spec.linux).not.toHaveProperty('uidMappings');
    }
    await w.containers.handlers.StartContainer!({ container_id: first }, ctx() as never);
    expect(await containerState(first)).toBe('CONTAINER_RUNNING');

    await w.pods.handlers.StopPodSandbox({ pod_sandbox_id: podId }, ctx());
    expect(await podState(podId)).toBe('SANDBOX_NOTREADY');
    expect(await containerState(first)).toBe('CONTAINER_EXITED');
    expect(await containerState(second)).toBe('CONTAINER_EXITED');
    // Stop releases the processes and the network; the pod's user namespace stays with its record.
    expect(w.os.infras.size).toBe(0);
    expect(w.network.leases.size).toBe(0);
    expect(w.ports.published.size).toBe(0);
    expect(w.os.pinned.has(pin)).toBe(true);

    await w.pods.handlers.RemovePodSandbox({ pod_sandbox_id: podId }, ctx());
    // The user namespace is unpinned after the ipc and uts namespaces it owns.
    expect(unpinned().at(-1)?.at(-1)).toBe(pin);
    expect(await leftovers()).toEqual([]);
    await expect(
      w.containers.handlers.ContainerStatus!({ container_id: first, verbose: false }, ctx() as never),
    ).rejects.toMatchObject({ kind: 'NotFound' });
    // Remove of a removed pod is a no-op, and the name is free again.
    await w.pods.handlers.RemovePodSandbox({ pod_sandbox_id: podId }, ctx());
    const again = await runPod();
    expect(again).not.toBe(podId);
    expect(w.os.pinned.has(usernsPin(again))).toBe(true);
  });

  it('RemovePodSandbox of a ready pod with a running container stops and removes everything', async () => {
    const podId = await runPod();
    const id = await createContainer(podId);
    await w.containers.handlers.StartContainer!({ container_id: id }, ctx() as never);
    await w.pods.handlers.RemovePodSandbox({ pod_sandbox_id: podId }, ctx());
    expect(await leftovers()).toEqual([]);
  });

  const steps = [
    ['cgroups.create', () => w.cgroups.failNext('create', new Error('injected cgroups.create failure'))],
    [
      'os.createPodNamespaces',
      () => w.os.failNext('createPodNamespaces', new Error('injected os.createPodNamespaces failure')),
    ],
    ['network.setUp', () => w.network.failNext('setUp', new Error('injected network.setUp failure'))],
    [
      'os.configureNamespaces',
      () => w.os.failNext('configureNamespaces', new Error('injected os.configureNamespaces failure')),
    ],
  ] as const;
  it.each(steps)(
    'rolls back the user namespace with the rest when %s fails; a retry succeeds',
    async (step, inject) => {
      inject();
      const config = usernsPod('p', { 'net.ipv4.ping_group_range': '0 1000' });
      await expect(runPod(config)).rejects.toThrow(`injected ${step} failure`);
      expect(await leftovers()).toEqual([]);
      const id = await runPod(config);
      expect(await podState(id)).toBe('SANDBOX_READY');
      expect(w.os.pinned.has(usernsPin(id))).toBe(true);
    },
  );

  it('unpins the user namespace it made when the kernel refuses a sysctl inside it', async () => {
    const config = usernsPod('p', { 'kernel.shm_rmid_forced': 'bogus' });
    await expect(runPod(config)).rejects.toMatchObject({ kind: 'InvalidArgument' });
    const request = w.os.calls.find((c) => c.method === 'createPodNamespaces')!
      .args[0] as PodNamespacesRequest;
    // It was pinned (the fake pins before it applies the settings, as the node does), then released.
    expect(unpinned().flat()).toContain(request.userNamespace!.path);
    expect(await leftovers()).toEqual([]);
  });

  it('a failed CreateContainer leaves the pod and its user namespace as they were', async () => {
    const podId = await runPod();
    w.snapshotter.failNext('prepare', new Error('fuse-overlayfs: uidmapping refused'));
    await expect(createContainer(podId)).rejects.toThrow(/uidmapping refused/);
    w.runtime.failNext('create', new FailedPreconditionError('crun: cannot join the user namespace'));
    await expect(createContainer(podId)).rejects.toThrow(/cannot join the user namespace/);
    expect(w.snapshotter.snapshots.size).toBe(0);
    expect(w.runtime.containers.size).toBe(0);
    expect(await records('containers')).toEqual([]);
    expect(await podState(podId)).toBe('SANDBOX_READY');
    expect(w.os.pinned.has(usernsPin(podId))).toBe(true);
    // The same request then succeeds in the same pod.
    const id = await createContainer(podId);
    expect(await containerState(id)).toBe('CONTAINER_CREATED');
    await w.pods.handlers.RemovePodSandbox({ pod_sandbox_id: podId }, ctx());
    expect(await leftovers()).toEqual([]);
  });

  it('keeps a ready pod and its container across a daemon restart; new containers join the same namespace', async () => {
    const podId = await runPod();
    const id = await createContainer(podId);
    await w.containers.handlers.StartContainer!({ container_id: id }, ctx() as never);
    await restart();
    expect(await podState(podId)).toBe('SANDBOX_READY');
    expect(await containerState(id)).toBe('CONTAINER_RUNNING');
    expect(w.core.sandboxInfo(podId)?.userNamespace).toEqual({
      path: usernsPin(podId),
      uids: KERNEL_LINES,
      gids: KERNEL_LINES,
    });
    const later = await createContainer(podId, 'later');
    const { spec } = w.runtime.containers.get(later)!.options as CreateOptions;
    expect(spec.linux.namespaces[0]).toEqual({ type: 'user', path: usernsPin(podId) });
    await w.pods.handlers.StopPodSandbox({ pod_sandbox_id: podId }, ctx());
    await w.pods.handlers.RemovePodSandbox({ pod_sandbox_id: podId }, ctx());
    expect(await leftovers()).toEqual([]);
  });

  it('a daemon killed in the middle of RunPodSandbox leaves a NOTREADY pod whose Stop and Remove release the user namespace', async () => {
    // Killed after CNI ADD, at the net.* sysctls: the blocked call never returns.
    w.os.blockNext('configureNamespaces');
    void runPod(usernsPod('half', { 'net.ipv4.ping_group_range': '0 1000' })).catch(() => undefined);
    await expect.poll(() => w.os.calls.some((c) => c.method === 'configureNamespaces')).toBe(true);
    const pin = (w.os.calls.find((c) => c.method === 'createPodNamespaces')!.args[0] as PodNamespacesRequest)
      .userNamespace!.path;
    expect(w.os.pinned.has(pin)).toBe(true);
    await restart(true);
    const items = (await w.pods.handlers.ListPodSandbox({ filter: null }, ctx())).items!;
    expect(items.map((i) => [i.metadata!.name, i.state])).toEqual([['half', 'SANDBOX_NOTREADY']]);
    // No container can join a pod that is not ready.
    await expect(createContainer(items[0]!.id!)).rejects.toMatchObject({ kind: 'FailedPrecondition' });
    await w.pods.handlers.StopPodSandbox({ pod_sandbox_id: items[0]!.id! }, ctx());
    await w.pods.handlers.RemovePodSandbox({ pod_sandbox_id: items[0]!.id! }, ctx());
    expect(w.os.pinned.has(pin)).toBe(false);
    expect(await leftovers()).toEqual([]);
  });
});
