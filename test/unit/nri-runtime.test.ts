/**
 * NRI wired into the runtime, over fakes of the node, crun/conmon, the snapshotter and images,
 * with a scriptable plugin (test/fakes/fake-nri-plugin.ts) on a real unix socket: what the pod
 * and container RPCs tell plugins and when, what a veto leaves (nothing), what a plugin may
 * change on a rootless node and what is refused, the sync gate against lifecycle changes
 * (including exits recorded while a plugin synchronizes), plugin-initiated updates and
 * evictions, and the resource filter on its own.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ContainerConfig__Output } from '../../src/api/proto.js';
import { type ContainerService, createContainerService } from '../../src/container/container-service.js';
import { applicableResources, criResourcesWith } from '../../src/core/nri-runtime.js';
import type { RuntimeCore } from '../../src/core/runtime-core.js';
import { silentLogger } from '../../src/log.js';
import { createPodSandboxService, type PodSandboxService } from '../../src/podsandbox/index.js';
import { containerConfig, hostFacts, resources } from '../fakes/container-fixtures.js';
import { FakeCgroupManager } from '../fakes/fake-cgroup-manager.js';
import { FakeContainerOs, FakeImages } from '../fakes/fake-container-os.js';
import { fakeCore } from '../fakes/fake-core.js';
import { FakeNetworkDriver } from '../fakes/fake-network-driver.js';
import { FakeNriPlugin } from '../fakes/fake-nri-plugin.js';
import { FakeOciRuntime } from '../fakes/fake-oci-runtime.js';
import { FakePortManager } from '../fakes/fake-port-manager.js';
import { FakeSandboxOs } from '../fakes/fake-sandbox-os.js';
import { FakeSnapshotter } from '../fakes/fake-snapshotter.js';
import { podConfig } from '../fakes/pod-config-builder.js';

const IMAGE_ID = `sha256:${'1'.repeat(64)}`;
const ctx = () => ({
  signal: new AbortController().signal,
  logger: silentLogger(),
  method: 'test',
  requestId: 'r',
  deadline: undefined,
});

interface World {
  dir: string;
  socket: string;
  core: RuntimeCore;
  runtime: FakeOciRuntime;
  snapshotter: FakeSnapshotter;
  pods: PodSandboxService;
  containers: ContainerService;
  plugins: FakeNriPlugin[];
}

let w: World;

beforeEach(async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nri-runtime-unit-'));
  const socket = path.join(dir, 'run', 'nri.sock');
  const images = new FakeImages();
  images.add({
    id: IMAGE_ID,
    config: { config: { Cmd: ['sleep', '1000'] } },
    layerDirs: ['/layers/base'],
    repoTags: ['registry.local/busybox:1'],
    repoDigests: [],
  });
  const runtime = new FakeOciRuntime();
  const snapshotter = new FakeSnapshotter('fuse-overlayfs', path.join(dir, 'snap'));
  const sandboxOs = new FakeSandboxOs();
  // cpu and pids reach the node, memory does not.
  const cgroups = new FakeCgroupManager({ controllers: ['cpu', 'pids'] });
  const { core } = fakeCore({
    rootDir: path.join(dir, 'root'),
    runtime,
    snapshotter,
    images,
    sandboxOs,
    cgroups,
    nri: { socketPath: socket, registrationTimeoutMs: 2000, requestTimeoutMs: 500 },
  });
  const pods = createPodSandboxService({
    core,
    config: {
      rootDir: path.join(dir, 'root'),
      runDir: path.join(dir, 'run'),
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
    portManager: new FakePortManager(),
    os: sandboxOs,
    network: new FakeNetworkDriver(),
    overrides: {
      nodeHostname: () => 'node-host',
      undoTimeoutMs: 2_000,
      paths: {
        sandboxesDir: path.join(dir, 'root', 'sandboxes'),
        runDir: path.join(dir, 'run'),
        nodeResolvConf: path.join(dir, 'node-resolv.conf'),
        nodeHosts: path.join(dir, 'node-hosts'),
      },
    },
  });
  const containers = createContainerService({
    core,
    logger: silentLogger(),
    hostFacts: hostFacts({ controllers: ['cpu', 'pids'] }),
    os: new FakeContainerOs(),
    overrides: { undoTimeoutMs: 1000 },
    adjusters: [core.nri.specAdjuster()],
  });
  await core.recover();
  await core.nri.start();
  w = { dir, socket, core, runtime, snapshotter, pods, containers, plugins: [] };
});

afterEach(async () => {
  for (const p of w.plugins) p.close();
  await w.core.nri.stop();
  await w.core.close();
  await rm(w.dir, { recursive: true, force: true });
});

/** A plugin registered and synchronized (Status lists it). */
async function plugin(name: string, idx = '10', setup?: (p: FakeNriPlugin) => void): Promise<FakeNriPlugin> {
  const p = await FakeNriPlugin.connect(w.socket);
  p.handlers.set('Configure', () => ({ events: 0 }));
  setup?.(p);
  w.plugins.push(p);
  await p.registerAs(name, idx);
  await p.waitFor('Synchronize');
  while (!w.core.nri.status().plugins.some((x) => x.name === name)) {
    await new Promise((resolve) => setImmediate(resolve));
  }
  return p;
}

async function runPod(name = 'pod'): Promise<string> {
  const config = podConfig({
    metadata: { name, uid: `uid-${name}`, namespace: 'default', attempt: 0 },
    log_directory: path.join(w.dir, 'logs', name),
  });
  const r = await w.pods.handlers.RunPodSandbox({ config, runtime_handler: '' }, ctx());
  return r.pod_sandbox_id!;
}

function config(name: string, overrides: Partial<ContainerConfig__Output> = {}): ContainerConfig__Output {
  return containerConfig({
    metadata: { name, attempt: 0 },
    image: { ...containerConfig().image!, image: 'registry.local/busybox:1' },
    log_path: `${name}.log`,
    ...overrides,
  });
}

async function create(pod: string, name = 'app'): Promise<string> {
  const r = await w.containers.handlers.CreateContainer!(
    { pod_sandbox_id: pod, config: config(name), sandbox_config: null },
    ctx() as never,
  );
  return r.container_id!;
}

async function listedPods(): Promise<string[]> {
  return ((await w.pods.handlers.ListPodSandbox({ filter: null }, ctx())).items ?? []).map((p) => p.id!);
}

/** The methods a plugin received about one pod or container, in order. */
function methodsFor(p: FakeNriPlugin, id: string): string[] {
  return p.calls
    .filter((c) => c.request?.pod?.id === id || c.request?.container?.id === id)
    .map((c) => c.method);
}

describe('NRI in the pod lifecycle', () => {
  it('RunPodSandbox reaches plugins while the sandbox is not listed; Stop once; Remove', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let seenWhileHeld: string[] | undefined;
    const p = await plugin('watch', '10', (x) => {
      x.handlers.set('RunPodSandbox', async () => {
        seenWhileHeld = await listedPods();
        await held;
        return {};
      });
    });
    const running = runPod();
    await p.waitFor('RunPodSandbox');
    release();
    const id = await running;
    expect(seenWhileHeld).toEqual([]);
    expect(await listedPods()).toEqual([id]);
    const run = p.calls.find((c) => c.method === 'RunPodSandbox')!.request.pod;
    expect(run).toMatchObject({ id, name: 'pod', uid: 'uid-pod', namespace: 'default' });
    expect(run.linux.namespaces.map((n: { type: string }) => n.type)).toContain('network');
    await w.pods.handlers.StopPodSandbox({ pod_sandbox_id: id }, ctx());
    await w.pods.handlers.StopPodSandbox({ pod_sandbox_id: id }, ctx());
    await w.pods.handlers.RemovePodSandbox({ pod_sandbox_id: id }, ctx());
    expect(methodsFor(p, id)).toEqual(['RunPodSandbox', 'StopPodSandbox', 'RemovePodSandbox']);
  });

  it('a veto of RunPodSandbox rolls the pod back, tells plugins it is gone, and a retry succeeds', async () => {
    let vetoes = 1;
    const p = await plugin('veto', '10', (x) => {
      x.handlers.set('RunPodSandbox', () => {
        if (vetoes-- > 0) throw new Error('not on my node');
        return {};
      });
    });
    await expect(runPod()).rejects.toMatchObject({
      kind: 'FailedPrecondition',
      message: expect.stringContaining('NRI plugin 10-veto failed RunPodSandbox'),
    });
    const attempted = p.calls.find((c) => c.method === 'RunPodSandbox')!.request.pod.id as string;
    expect(methodsFor(p, attempted)).toEqual(['RunPodSandbox', 'StopPodSandbox', 'RemovePodSandbox']);
    expect(w.core.sandboxes.list()).toEqual([]);
    // Nothing removes a log directory: a vetoed pod must not have made it.
    expect(existsSync(path.join(w.dir, 'logs', 'pod'))).toBe(false);
    const id = await runPod();
    expect(w.core.sandboxStatus(id)?.state).toBe('SANDBOX_READY');
  });

  it('StopPodSandbox reaches plugins once every container is EXITED, with the sandbox still there', async () => {
    const pod = await runPod();
    const id = await create(pod);
    await w.containers.handlers.StartContainer!({ container_id: id }, ctx() as never);
    let statesAtStop: string[] = [];
    const p = await plugin('stop', '10', (x) => {
      x.handlers.set('StopPodSandbox', () => {
        statesAtStop = w.core.podContainerStatuses(pod).map((s) => String(s.state));
        expect(w.core.sandboxStatus(pod)).not.toBeNull();
        return {};
      });
    });
    await w.pods.handlers.StopPodSandbox({ pod_sandbox_id: pod }, ctx());
    expect(statesAtStop).toEqual(['CONTAINER_EXITED']);
    expect(p.methods().filter((m) => m !== 'Configure' && m !== 'Synchronize')).toEqual([
      'StopContainer',
      'StopPodSandbox',
    ]);
    await w.pods.handlers.RemovePodSandbox({ pod_sandbox_id: pod }, ctx());
    expect(p.methods().slice(-2)).toEqual(['RemoveContainer', 'RemovePodSandbox']);
  });
});

describe('NRI in the container lifecycle', () => {
  it('CreateContainer applies adjustments, keeps the cgroup path, drops limits of undelegated controllers', async () => {
    const pod = await runPod();
    const p = await plugin('adjust', '10', (x) => {
      x.handlers.set('CreateContainer', () => ({
        adjust: {
          env: [{ key: 'FROM_NRI', value: '1' }],
          annotations: { 'nri.example.com/x': 'y' },
          linux: {
            cgroupsPath: '/somewhere/else',
            resources: { memory: { limit: { value: 1n << 26n } }, cpu: { shares: { value: 300n } } },
          },
        },
      }));
    });
    const id = await create(pod);
    const created = w.runtime.calls.find((c) => c.method === 'create')!.args[0] as {
      spec: {
        process: { env: string[] };
        annotations: Record<string, string>;
        linux: { cgroupsPath?: string; resources?: { memory?: unknown; cpu?: { shares?: number } } };
      };
    };
    expect(created.spec.process.env).toContain('FROM_NRI=1');
    expect(created.spec.annotations['nri.example.com/x']).toBe('y');
    expect(created.spec.linux.cgroupsPath).not.toBe('/somewhere/else');
    expect(created.spec.linux.cgroupsPath).toContain(pod);
    expect(created.spec.linux.resources?.memory).toBeUndefined();
    expect(created.spec.linux.resources?.cpu?.shares).toBe(300);
    const status = await w.containers.handlers.ContainerStatus!(
      { container_id: id, verbose: true },
      ctx() as never,
    );
    const warnings = (JSON.parse(status.info!.info!) as { warnings: string[] }).warnings;
    expect(warnings).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/cgroup path stays .*plugins cannot move it/),
        expect.stringMatching(/memory\.limit dropped: the memory cgroup controller is not delegated/),
      ]),
    );
    // What the plugin was shown: the generated spec, the record not yet listed.
    const request = p.calls.find((c) => c.method === 'CreateContainer')!.request;
    expect(request.container).toMatchObject({ id, name: 'app', podSandboxId: pod });
    expect(request.container.args).toEqual(['sleep', '1000']);
    expect(methodsFor(p, id)).toEqual(['CreateContainer', 'PostCreateContainer']);
  });

  it('a veto of CreateContainer leaves nothing and tells plugins the container is gone', async () => {
    const pod = await runPod();
    const p = await plugin('veto', '10', (x) => {
      x.handlers.set('CreateContainer', () => {
        throw new Error('no');
      });
    });
    await expect(create(pod)).rejects.toMatchObject({ kind: 'FailedPrecondition' });
    const attempted = p.calls.find((c) => c.method === 'CreateContainer')!.request.container.id as string;
    expect(methodsFor(p, attempted)).toEqual(['CreateContainer', 'StopContainer', 'RemoveContainer']);
    expect(w.core.containers.list()).toEqual([]);
    expect([...w.snapshotter.snapshots.keys()]).toEqual([]);
    expect(w.runtime.methods()).not.toContain('create');
    // The name is free again.
    p.handlers.delete('CreateContainer');
    await expect(create(pod)).resolves.toMatch(/^[0-9a-f]{64}$/);
  });

  it('a failure after the adjust stage rolls back and tells plugins the container is gone', async () => {
    const pod = await runPod();
    const p = await plugin('watch');
    w.runtime.failNext('create', new Error('crun create failed'));
    await expect(create(pod)).rejects.toThrow(/crun create failed/);
    const attempted = p.calls.find((c) => c.method === 'CreateContainer')!.request.container.id as string;
    expect(methodsFor(p, attempted)).toEqual(['CreateContainer', 'StopContainer', 'RemoveContainer']);
    expect(w.core.containers.list()).toEqual([]);
  });

  it('a veto of StartContainer keeps the container created; an exit is announced once, whoever saw it', async () => {
    const pod = await runPod();
    const id = await create(pod);
    let vetoes = 1;
    const p = await plugin('start', '10', (x) => {
      x.handlers.set('StartContainer', () => {
        if (vetoes-- > 0) throw new Error('not yet');
        return {};
      });
    });
    await expect(
      w.containers.handlers.StartContainer!({ container_id: id }, ctx() as never),
    ).rejects.toMatchObject({
      kind: 'FailedPrecondition',
    });
    expect(w.core.containers.get(id)?.state).toBe('created');
    expect(w.runtime.methods()).not.toContain('start');
    await w.containers.handlers.StartContainer!({ container_id: id }, ctx() as never);
    w.runtime.exitNow(id, 3);
    await w.core.exitsRecorded();
    const stop = p.calls.find((c) => c.method === 'StopContainer')!.request.container;
    expect(stop).toMatchObject({ id, state: 4, exitCode: 3 });
    await w.containers.handlers.StopContainer!({ container_id: id, timeout: '0' }, ctx() as never);
    await w.containers.handlers.RemoveContainer!({ container_id: id }, ctx() as never);
    expect(methodsFor(p, id)).toEqual([
      'StartContainer',
      'StartContainer',
      'PostStartContainer',
      'StopContainer',
      'RemoveContainer',
    ]);
  });

  it('UpdateContainerResources applies what plugins adjust, as far as the node can; a veto changes nothing', async () => {
    const pod = await runPod();
    const id = await create(pod);
    await w.containers.handlers.StartContainer!({ container_id: id }, ctx() as never);
    let veto = false;
    await plugin('double', '10', (x) => {
      x.handlers.set('UpdateContainer', (request) => {
        if (veto) throw new Error('refused');
        const shares = request.linuxResources.cpu.shares.value as bigint;
        return {
          update: [
            {
              containerId: id,
              linux: {
                resources: {
                  cpu: { shares: { value: shares * 2n } },
                  memory: { limit: { value: 1n << 26n } },
                },
              },
            },
          ],
        };
      });
    });
    await w.containers.handlers.UpdateContainerResources!(
      { container_id: id, linux: resources({ cpu_shares: '100' }), windows: null, annotations: {} },
      ctx() as never,
    );
    const update = w.runtime.calls.filter((c) => c.method === 'update').at(-1)!;
    expect(update.args[1]).toEqual({ cpu: { shares: 200 } });
    expect(w.core.containers.get(id)?.resources?.cpu_shares).toBe('200');
    const updates = w.runtime.calls.filter((c) => c.method === 'update').length;
    veto = true;
    await expect(
      w.containers.handlers.UpdateContainerResources!(
        { container_id: id, linux: resources({ cpu_shares: '300' }), windows: null, annotations: {} },
        ctx() as never,
      ),
    ).rejects.toMatchObject({ kind: 'FailedPrecondition' });
    expect(w.runtime.calls.filter((c) => c.method === 'update').length).toBe(updates);
    expect(w.core.containers.get(id)?.resources?.cpu_shares).toBe('200');
  });

  it('applies UpdateContainers and evictions a plugin asks for, and reports the updates that failed', async () => {
    const pod = await runPod();
    const a = await create(pod, 'a');
    const b = await create(pod, 'b');
    for (const id of [a, b])
      await w.containers.handlers.StartContainer!({ container_id: id }, ctx() as never);
    const p = await plugin('updater');
    const answer = await p.updateContainers({
      update: [
        { containerId: a, linux: { resources: { cpu: { shares: { value: 512n } } } } },
        { containerId: 'f'.repeat(64), linux: { resources: { cpu: { shares: { value: 512n } } } } },
      ],
      evict: [{ containerId: b, reason: 'too greedy' }],
    });
    expect(answer.failed?.map((f) => f.containerId)).toEqual(['f'.repeat(64)]);
    expect(w.runtime.calls.find((c) => c.method === 'update')?.args).toEqual([a, { cpu: { shares: 512 } }]);
    expect(w.core.containers.get(a)?.resources?.cpu_shares).toBe('512');
    expect(w.core.containers.get(b)?.state).toBe('exited');
    expect(methodsFor(p, b)).toEqual(['StopContainer']);
  });
});

describe('the sync gate', () => {
  it('a plugin synchronizing while containers are created, started and exit learns of each, and nothing deadlocks', async () => {
    const pod = await runPod();
    const other = await runPod('other');
    const before = await create(pod, 'before');
    await w.containers.handlers.StartContainer!({ container_id: before }, ctx() as never);
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const late = await FakeNriPlugin.connect(w.socket);
    w.plugins.push(late);
    late.handlers.set('Configure', () => ({ events: 0 }));
    late.handlers.set('Synchronize', async () => {
      await held;
      return {};
    });
    await late.registerAs('late', '20');
    const sync = await late.waitFor('Synchronize');
    // While the plugin synchronizes: a creation, an exit, a pod stop. Each waits for the
    // synchronization to end (within the registration timeout), none deadlocks.
    const during = create(pod, 'during');
    w.runtime.exitNow(before, 0);
    const stopOther = w.pods.handlers.StopPodSandbox({ pod_sandbox_id: other }, ctx());
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    release();
    const duringId = await during;
    await stopOther;
    await w.core.exitsRecorded();
    const synced = (sync.request.containers as { id: string; state: number }[]).map((c) => c.id);
    const createdLater = late.calls
      .filter((c) => c.method === 'CreateContainer')
      .map((c) => c.request.container.id);
    expect([...synced, ...createdLater]).toContain(duringId);
    // The exit: either the snapshot shows it stopped, or the plugin got StopContainer.
    const beforeInSync = (sync.request.containers as { id: string; state: number }[]).find(
      (c) => c.id === before,
    );
    const stopped = late.calls.some((c) => c.method === 'StopContainer' && c.request.container.id === before);
    expect(beforeInSync?.state === 4 || stopped).toBe(true);
    // The synchronization ended when the plugin answered, not at its timeout: still connected.
    expect(w.core.nri.status().plugins.map((x) => x.name)).toEqual(['late']);
  });
});

describe('the resource filter', () => {
  it('keeps what delegated controllers can apply and names everything it drops', () => {
    const r = applicableResources(
      {
        cpu: { shares: 10, quota: 5000, cpus: '0-1', realtimeRuntime: 1 },
        memory: { limit: 100, swappiness: 10 },
        pids: { limit: 50 },
        hugepageLimits: [{ pageSize: '2MB', limit: 1 }],
        unified: { 'cpu.weight': '50', 'memory.high': '10', 'cgroup.freeze': '0' },
        devices: [{ allow: false, access: 'rwm' }],
      },
      ['cpu', 'pids'],
      true,
      'NRI',
    );
    expect(r.resources).toEqual({
      devices: [{ allow: false, access: 'rwm', type: 'a' }],
      cpu: { shares: 10, quota: 5000 },
      pids: { limit: 50 },
      unified: { 'cpu.weight': '50', 'cgroup.freeze': '0' },
    });
    expect(r.warnings).toEqual([
      expect.stringContaining('cpu.cpus dropped: the cpuset cgroup controller is not delegated'),
      expect.stringContaining('cpu.realtime* dropped'),
      expect.stringContaining('memory.limit dropped: the memory cgroup controller'),
      expect.stringContaining('memory.swappiness dropped'),
      expect.stringContaining('hugepage limits dropped'),
      expect.stringContaining('unified memory.high dropped'),
    ]);
    const none = applicableResources(
      { cpu: { shares: 1 }, unified: { 'cgroup.freeze': '0' } },
      ['cpu'],
      false,
      'NRI',
    );
    expect(none.resources).toEqual({});
    expect(none.warnings).toHaveLength(2);
  });

  it('writes applied OCI resources back as the CRI resources ContainerStatus reports', () => {
    expect(
      criResourcesWith(resources({ cpu_shares: '2', memory_limit_in_bytes: '7' }), {
        cpu: { shares: 4, cpus: '1' },
        unified: { 'cpu.weight': '9' },
      }),
    ).toEqual(
      resources({
        cpu_shares: '4',
        cpuset_cpus: '1',
        memory_limit_in_bytes: '7',
        unified: { 'cpu.weight': '9' },
      }),
    );
  });
});
