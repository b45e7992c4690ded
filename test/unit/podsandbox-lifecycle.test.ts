/**
 * The sandbox lifecycle over fakes of the node, the CNI network and rootlesskit's port API:
 * states, rollback order and completeness, name reservation under concurrency, cancellation,
 * idempotent stop/remove, filters, and recovery after a simulated daemon kill.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { PodSandboxConfig__Output } from '../../src/api/proto.js';
import type { RuntimeCore } from '../../src/core/runtime-core.js';
import { silentLogger } from '../../src/log.js';
import { createPodSandboxService, type PodSandboxService } from '../../src/podsandbox/index.js';
import { SPACE_RESERVE_NAME } from '../../src/store/record-store.js';
import { FakeCgroupManager } from '../fakes/fake-cgroup-manager.js';
import { fakeCore } from '../fakes/fake-core.js';
import { FakeNetworkDriver } from '../fakes/fake-network-driver.js';
import { FakePortManager } from '../fakes/fake-port-manager.js';
import { FakeSandboxOs } from '../fakes/fake-sandbox-os.js';
import { podConfig } from '../fakes/pod-config-builder.js';
import { until } from '../harness/until.js';

interface World {
  dir: string;
  journal: string[];
  os: FakeSandboxOs;
  cgroups: FakeCgroupManager;
  network: FakeNetworkDriver;
  ports: FakePortManager;
  service: PodSandboxService;
  core: RuntimeCore;
  stopped: string[];
  removed: string[];
}

let world: World;
let clock = 1_000_000_000n;

/** A daemon over the world's disk and fakes: its core, and the pod RPCs over it. */
function makeService(
  w: Omit<World, 'service' | 'core'>,
  newId?: () => string,
  nodeId?: string,
): { service: PodSandboxService; core: RuntimeCore } {
  const { core } = fakeCore({
    ...(nodeId ? { nodeId } : {}),
    rootDir: path.join(w.dir, 'root'),
    journal: w.journal,
    sandboxOs: w.os,
    cgroups: w.cgroups,
    now: () => clock++,
  });
  // What StopPodSandbox and RemovePodSandbox ask of the pod's containers, seen by the test.
  const stopPodContainers = core.stopPodContainers.bind(core);
  core.stopPodContainers = async (id, timeout) => {
    w.stopped.push(id);
    await stopPodContainers(id, timeout);
  };
  const removePodContainers = core.removePodContainers.bind(core);
  core.removePodContainers = async (id) => {
    w.removed.push(id);
    await removePodContainers(id);
  };
  const service = createPodSandboxService({
    core,
    config: {
      rootDir: path.join(w.dir, 'root'),
      runDir: path.join(w.dir, 'run'),
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
    portManager: w.ports,
    os: w.os,
    network: w.network,
    overrides: {
      ...(newId ? { newId } : {}),
      nodeHostname: () => 'node-host',
      undoTimeoutMs: 2_000,
      paths: {
        sandboxesDir: path.join(w.dir, 'root', 'sandboxes'),
        runDir: path.join(w.dir, 'run'),
        nodeResolvConf: path.join(w.dir, 'node-resolv.conf'),
        nodeHosts: path.join(w.dir, 'node-hosts'),
      },
    },
  });
  return { service, core };
}

beforeEach(async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'rcri-sandbox-unit-'));
  const journal: string[] = [];
  const partial = {
    dir,
    journal,
    os: new FakeSandboxOs(journal),
    cgroups: new FakeCgroupManager({}, journal),
    network: new FakeNetworkDriver(journal),
    ports: new FakePortManager(journal),
    stopped: [] as string[],
    removed: [] as string[],
  };
  world = { ...partial, ...makeService(partial) };
  await world.core.recover();
});

afterEach(async () => {
  await rm(world.dir, { recursive: true, force: true });
});

function ctx(signal = new AbortController().signal) {
  return { signal, logger: silentLogger(), method: 'test', requestId: 'r', deadline: undefined };
}

async function run(config: PodSandboxConfig__Output = podConfig(), handler = '', signal?: AbortSignal) {
  const r = await world.service.handlers.RunPodSandbox({ config, runtime_handler: handler }, ctx(signal));
  return r.pod_sandbox_id!;
}

async function status(id: string) {
  return (await world.service.handlers.PodSandboxStatus({ pod_sandbox_id: id, verbose: true }, ctx()))
    .status!;
}

async function list(filter: Record<string, unknown> | null = null) {
  const r = await world.service.handlers.ListPodSandbox({ filter: filter as never }, ctx());
  return r.items!.map((i) => i.id);
}

async function recordFiles(): Promise<string[]> {
  // The store's space reserve is the store's, not a sandbox's.
  return (await readdir(path.join(world.dir, 'root', 'sandboxes')).catch(() => []))
    .filter((f) => f !== SPACE_RESERVE_NAME)
    .sort();
}

/** Everything a sandbox can hold, across all fakes and the disk. */
async function leftovers(): Promise<string[]> {
  return [
    ...world.os.leftovers(),
    ...world.cgroups.leftovers(),
    ...[...world.network.leases.values()].map((ip) => `lease ${ip}`),
    ...[...world.ports.published.values()].map((p) => `port ${p.parentPort}`),
    ...(await recordFiles()).map((f) => `file ${f}`),
  ];
}

/** A pod whose last step is the net.* sysctls (configureNamespaces), after its host ports. */
function withPortsAndNetSysctl(...ports: number[]): PodSandboxConfig__Output {
  const config = withPorts(...ports);
  config.linux!.sysctls = { 'net.ipv4.ip_unprivileged_port_start': '0' };
  return config;
}

function withPorts(...ports: number[]): PodSandboxConfig__Output {
  return podConfig({
    port_mappings: ports.map((p) => ({
      protocol: 'TCP',
      container_port: 80,
      host_port: p,
      host_ip: '127.0.0.1',
    })),
  });
}

describe('RunPodSandbox', () => {
  it('creates a ready sandbox with an IP, pins, infra, cgroup, ports and files', async () => {
    const config = withPorts(12000);
    config.hostname = 'web';
    config.labels = { app: 'web' };
    config.annotations = { a: 'b' };
    config.dns_config = { servers: ['10.10.10.10'], searches: ['google.com'], options: ['ndots:8'] };
    config.linux!.sysctls = { 'kernel.shm_rmid_forced': '1' };
    const id = await run(config);
    expect(id).toMatch(/^[0-9a-f]{64}$/);
    const s = await status(id);
    expect(s.state).toBe('SANDBOX_READY');
    expect(s.network?.ip).toBe('10.88.0.2');
    expect(s.metadata).toEqual({ name: 'pod', uid: 'uid-1', namespace: 'default', attempt: 0 });
    expect(s.labels).toEqual({ app: 'web' });
    expect(s.annotations).toEqual({ a: 'b' });
    expect(BigInt(String(s.created_at))).toBeGreaterThan(0n);
    expect(s.linux?.namespaces?.options).toMatchObject({ network: 'POD', ipc: 'POD', pid: 'POD' });
    expect([...world.os.pinned].map((p) => path.basename(path.dirname(p))).sort()).toEqual([
      'ipcns',
      'netns',
      'utsns',
    ]);
    expect(world.os.infras.size).toBe(1);
    expect(world.cgroups.cgroups.has(`/pods/${id}`)).toBe(true);
    expect([...world.ports.published.values()]).toMatchObject([
      { parentIP: '127.0.0.1', parentPort: 12000, childIP: '10.88.0.2', childPort: 80 },
    ]);
    expect(world.os.configured[0]?.settings).toMatchObject({
      loopbackUp: true,
      hostname: 'web',
      sysctls: [{ key: 'kernel.shm_rmid_forced', value: '1' }],
    });
    const files = path.join(world.dir, 'root', 'sandboxes', id);
    expect(await readFile(path.join(files, 'resolv.conf'), 'utf8')).toContain('options ndots:8');
    expect(await readFile(path.join(files, 'hosts'), 'utf8')).toMatch(/^10\.88\.0\.2\tweb$/m);
    expect(await readFile(path.join(files, 'hostname'), 'utf8')).toBe('web\n');
  });

  it('writes IPC sysctls with the namespaces and net.* sysctls after CNI ADD, each on its own', async () => {
    const config = podConfig();
    config.linux!.sysctls = { 'kernel.shm_rmid_forced': '1', 'net.ipv4.ip_unprivileged_port_start': '0' };
    await run(config);
    expect(world.os.configured.map((c) => c.settings.sysctls.map((s) => [s.key, s.value]))).toEqual([
      [['kernel.shm_rmid_forced', '1']],
      [['net.ipv4.ip_unprivileged_port_start', '0']],
    ]);
    expect(world.os.configured[1]?.settings).toMatchObject({ loopbackUp: false, hostname: null });
    expect(world.journal.indexOf('os.configureNamespaces')).toBeGreaterThan(
      world.journal.indexOf('network.setUp'),
    );
  });

  it('uses the node network, IPC and hostname for a host-network pod and pins nothing for them', async () => {
    const config = podConfig();
    config.linux!.security_context!.namespace_options = {
      network: 'NODE',
      ipc: 'NODE',
      pid: 'NODE',
      target_id: '',
      userns_options: null,
    };
    const id = await run(config);
    const s = await status(id);
    expect(s.state).toBe('SANDBOX_READY');
    expect(s.network?.ip).toBe('');
    expect(world.os.pinned.size).toBe(0);
    expect(world.os.infras.size).toBe(0);
    expect(world.network.calls.filter((c) => c.method === 'setUp')).toHaveLength(0);
    expect(await readFile(path.join(world.dir, 'root', 'sandboxes', id, 'hostname'), 'utf8')).toBe(
      'node-host\n',
    );
  });

  it('starts no infra process unless the pid namespace is POD', async () => {
    const config = podConfig();
    config.linux!.security_context!.namespace_options!.pid = 'CONTAINER';
    await run(config);
    expect(world.os.infras.size).toBe(0);
    expect(world.os.pinned.size).toBe(3);
  });

  it('refuses an unknown runtime handler before doing anything', async () => {
    await expect(run(podConfig(), 'kata')).rejects.toThrow(/runtime handler "kata"/);
    expect(await leftovers()).toEqual([]);
    expect(world.os.calls).toEqual([]);
  });

  it('refuses hostile sysctls before doing anything', async () => {
    const config = podConfig();
    config.linux!.sysctls = { 'kernel.shm_rmid_forced': '1 2+kernel.core_pattern=|/x' };
    await expect(run(config)).rejects.toMatchObject({ kind: 'InvalidArgument' });
    config.linux!.sysctls = { 'kernel.core_pattern': '|/x' };
    await expect(run(config)).rejects.toThrow(/kernel\.core_pattern/);
    expect(world.os.calls).toEqual([]);
    // The name was released: the same pod can be created once the request is fixed.
    config.linux!.sysctls = {};
    await run(config);
  });

  const steps = [
    ['create', 'cgroups'],
    ['createPodNamespaces', 'os'],
    ['loadConfig', 'network'],
    ['setUp', 'network'],
    ['configureNamespaces', 'os'],
  ] as const;
  it.each(steps)('rolls back everything when %s fails, and a retry succeeds', async (method, where) => {
    const failure = new Error(`injected ${method} failure`);
    if (where === 'os') world.os.failNext(method as Parameters<FakeSandboxOs['failNext']>[0], failure);
    else if (where === 'cgroups') world.cgroups.failNext('create', failure);
    else world.network.failNext(method as Parameters<FakeNetworkDriver['failNext']>[0], failure);
    await expect(run(withPortsAndNetSysctl(12000))).rejects.toThrow(`injected ${method} failure`);
    expect(await leftovers()).toEqual([]);
    expect(await list()).toEqual([]);
    const id = await run(withPortsAndNetSysctl(12000));
    expect((await status(id)).state).toBe('SANDBOX_READY');
  });

  it('rolls back a taken host port with FailedPrecondition naming it, leaking nothing', async () => {
    world.ports.taken.add(12001);
    const err = await run(withPorts(12000, 12001)).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'FailedPrecondition' });
    expect(String(err)).toMatch(/12001/);
    expect(await leftovers()).toEqual([]);
  });

  it('undoes in reverse order of the steps', async () => {
    world.os.failNext('configureNamespaces', new Error('late failure'));
    await expect(run(withPortsAndNetSysctl(12000))).rejects.toThrow('late failure');
    const failedAt = world.journal.indexOf('os.configureNamespaces');
    expect(world.journal.slice(0, failedAt)).toEqual([
      'network.loadConfig',
      'cgroups.create',
      'os.createPodNamespaces',
      'network.setUp',
      'ports.add',
    ]);
    expect(world.journal.slice(failedAt + 1)).toEqual([
      'ports.remove',
      'network.tearDown',
      'os.stopInfra',
      'os.unpinNamespaces',
      'os.unpinNamespaces',
      'cgroups.remove',
    ]);
  });

  it('keeps a visible NOTREADY sandbox when the rollback itself fails, and Remove then cleans it', async () => {
    world.os.failNext('configureNamespaces', new Error('network setup failed once'));
    world.network.failNext('tearDown', new Error('CNI DEL failed'));
    const config = podConfig();
    config.linux!.sysctls = { 'net.ipv4.ip_unprivileged_port_start': '0' };
    await expect(run(config)).rejects.toThrow('network setup failed once');
    const ids = await list();
    expect(ids).toHaveLength(1);
    const s = await world.service.handlers.PodSandboxStatus(
      { pod_sandbox_id: ids[0]!, verbose: true },
      ctx(),
    );
    expect(s.status?.state).toBe('SANDBOX_NOTREADY');
    expect(JSON.parse(s.info!.info!).notReadyReason).toMatch(/CNI DEL failed/);
    // The name is free again: a retry is not blocked by the broken one.
    const retry = await run();
    expect(retry).not.toBe(ids[0]);
    await world.service.handlers.RemovePodSandbox({ pod_sandbox_id: ids[0]! }, ctx());
    await world.service.handlers.RemovePodSandbox({ pod_sandbox_id: retry }, ctx());
    expect(await leftovers()).toEqual([]);
  });

  it('gives exactly one sandbox for 10 concurrent identical requests; the rest name the owner', async () => {
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => run()));
    const ok = results.filter((r) => r.status === 'fulfilled');
    expect(ok).toHaveLength(1);
    const owner = (ok[0] as PromiseFulfilledResult<string>).value;
    for (const r of results.filter((x) => x.status === 'rejected')) {
      const reason = (r as PromiseRejectedResult).reason as { kind: string; message: string };
      expect(reason.kind).toBe('AlreadyExists');
      expect(reason.message).toContain(owner);
      expect(reason.message).toContain('pod_default_uid-1_0');
    }
    expect(await list()).toEqual([owner]);
    // Another attempt is another name.
    const next = podConfig();
    next.metadata!.attempt = 1;
    await run(next);
    expect(await list()).toHaveLength(2);
  });

  it('rolls back when the request is cancelled midway, and a retry gets a clean new sandbox', async () => {
    const controller = new AbortController();
    const release = world.os.blockNext('createPodNamespaces');
    const pending = run(podConfig(), '', controller.signal);
    await new Promise((r) => setTimeout(r, 20));
    controller.abort(new Error('client went away'));
    release();
    await expect(pending).rejects.toMatchObject({ kind: 'Cancelled' });
    expect(await leftovers()).toEqual([]);
    const id = await run();
    expect((await status(id)).state).toBe('SANDBOX_READY');
  });
});

describe('StopPodSandbox and RemovePodSandbox', () => {
  it('stop releases processes, ports, network and netns; remove the rest; both idempotent', async () => {
    const id = await run(withPorts(12000));
    await world.service.handlers.StopPodSandbox({ pod_sandbox_id: id }, ctx());
    const s = await status(id);
    expect(s.state).toBe('SANDBOX_NOTREADY');
    expect(s.network?.ip).toBe('');
    expect(world.stopped).toEqual([id]);
    expect(world.os.infras.size).toBe(0);
    expect(world.network.leases.size).toBe(0);
    expect(world.ports.published.size).toBe(0);
    expect([...world.os.pinned].some((p) => p.includes('/netns/'))).toBe(false);
    await world.service.handlers.StopPodSandbox({ pod_sandbox_id: id }, ctx());
    await world.service.handlers.RemovePodSandbox({ pod_sandbox_id: id }, ctx());
    expect(world.removed).toEqual([id]);
    expect(await leftovers()).toEqual([]);
    expect(existsSync(path.join(world.dir, 'root', 'sandboxes', id))).toBe(false);
    await world.service.handlers.RemovePodSandbox({ pod_sandbox_id: id }, ctx());
    await world.service.handlers.StopPodSandbox({ pod_sandbox_id: id }, ctx());
    await expect(status(id)).rejects.toMatchObject({ kind: 'NotFound' });
    // The name is free again.
    await run(withPorts(12000));
  });

  it('remove of a ready sandbox stops it first', async () => {
    const id = await run(withPorts(12000));
    await world.service.handlers.RemovePodSandbox({ pod_sandbox_id: id }, ctx());
    expect(await leftovers()).toEqual([]);
  });

  it('accepts unknown ids, refuses an empty id and an ambiguous prefix', async () => {
    const unknown = 'f'.repeat(64);
    await world.service.handlers.StopPodSandbox({ pod_sandbox_id: unknown }, ctx());
    await world.service.handlers.StopPodSandbox({ pod_sandbox_id: unknown }, ctx());
    await world.service.handlers.RemovePodSandbox({ pod_sandbox_id: unknown }, ctx());
    await world.service.handlers.RemovePodSandbox({ pod_sandbox_id: unknown }, ctx());
    await expect(world.service.handlers.StopPodSandbox({ pod_sandbox_id: '' }, ctx())).rejects.toMatchObject({
      kind: 'InvalidArgument',
    });
    await expect(
      world.service.handlers.RemovePodSandbox({ pod_sandbox_id: '' }, ctx()),
    ).rejects.toMatchObject({
      kind: 'InvalidArgument',
    });
    const ids = [`ab1${'0'.repeat(61)}`, `ab2${'0'.repeat(61)}`];
    world = { ...world, ...makeService(world, () => ids.shift()!) };
    await world.core.recover();
    const first = podConfig();
    first.metadata!.name = 'first';
    const a = await run(first);
    const b = await run();
    await expect(world.service.handlers.StopPodSandbox({ pod_sandbox_id: 'ab' }, ctx())).rejects.toThrow(
      /matches 2 sandboxes/,
    );
    await expect(
      world.service.handlers.RemovePodSandbox({ pod_sandbox_id: 'ab' }, ctx()),
    ).rejects.toMatchObject({
      kind: 'InvalidArgument',
    });
    expect(await list()).toEqual([a, b]);
    await world.service.handlers.StopPodSandbox({ pod_sandbox_id: 'ab2' }, ctx());
    expect((await status(a)).state).toBe('SANDBOX_READY');
    expect((await status('ab2')).state).toBe('SANDBOX_NOTREADY');
  });
});

describe('ListPodSandbox', () => {
  it('filters by id prefix, state and label selector', async () => {
    const a = podConfig({ labels: { app: 'a', tier: 'web' } });
    const b = podConfig({ labels: { app: 'b', tier: 'web' } });
    b.metadata!.name = 'b';
    const idA = await run(a);
    const idB = await run(b);
    await world.service.handlers.StopPodSandbox({ pod_sandbox_id: idB }, ctx());
    expect(await list()).toEqual([idA, idB]);
    expect(await list({ id: idA.slice(0, 8), state: null, label_selector: {} })).toEqual([idA]);
    expect(await list({ id: '', state: { state: 'SANDBOX_READY' }, label_selector: {} })).toEqual([idA]);
    expect(await list({ id: '', state: { state: 'SANDBOX_NOTREADY' }, label_selector: {} })).toEqual([idB]);
    expect(await list({ id: '', state: null, label_selector: { tier: 'web' } })).toEqual([idA, idB]);
    expect(await list({ id: '', state: null, label_selector: { tier: 'web', app: 'b' } })).toEqual([idB]);
    expect(await list({ id: '', state: null, label_selector: { app: 'c' } })).toEqual([]);
  });
});

describe('recovery', () => {
  it('keeps ready sandboxes ready with the same IP; marks dead ones and half-created ones NOTREADY', async () => {
    const alive = await run();
    const deadConfig = podConfig();
    deadConfig.metadata!.name = 'dead';
    const dead = await run(deadConfig);
    const deadInfra = [...world.os.infras.values()].at(-1)!;
    // A "daemon kill" in the middle of the next RunPodSandbox: block it after ADD (at its
    // net.* sysctls) and never release.
    const halfConfig = podConfig();
    halfConfig.metadata!.name = 'half';
    halfConfig.linux!.sysctls = { 'net.ipv4.ip_unprivileged_port_start': '0' };
    const configured = () => world.os.calls.filter((c) => c.method === 'configureNamespaces').length;
    const before = configured();
    world.os.blockNext('configureNamespaces');
    void run(halfConfig).catch(() => undefined);
    await until(
      'the half-created pod at its net.* sysctls',
      async () => configured(),
      (n) => n > before,
    );
    world.os.killInfra(deadInfra.pid);

    // A new daemon over the same disk and node.
    const restarted = makeService(world);
    await restarted.core.recover();
    expect(restarted.core.recovery?.sandboxes).toMatchObject({ loaded: 3, ready: 1, notReady: 2 });
    world = { ...world, ...restarted };
    const all = await world.service.handlers.ListPodSandbox({ filter: null }, ctx());
    const byName = Object.fromEntries(all.items!.map((i) => [i.metadata!.name, i]));
    expect(byName.pod?.state).toBe('SANDBOX_READY');
    expect(byName.dead?.state).toBe('SANDBOX_NOTREADY');
    expect(byName.half?.state).toBe('SANDBOX_NOTREADY');
    expect((await status(alive)).network?.ip).toBe('10.88.0.2');
    expect(dead).toBe(byName.dead?.id);
    // The names are held again by the recovered records.
    await expect(run()).rejects.toMatchObject({ kind: 'AlreadyExists' });
    // Stop and Remove clean the half-created one completely.
    for (const item of all.items!) {
      await world.service.handlers.StopPodSandbox({ pod_sandbox_id: item.id! }, ctx());
      await world.service.handlers.RemovePodSandbox({ pod_sandbox_id: item.id! }, ctx());
    }
    expect(await leftovers()).toEqual([]);
  });

  it('signals nothing by the pids of a pod from a node that is gone: they name processes of the new node', async () => {
    const id = await run();
    const stops = () => world.os.calls.filter((c) => c.method === 'stopInfra').length;
    const restarted = makeService(world, undefined, 'a-new-node');
    await restarted.core.recover();
    world = { ...world, ...restarted };
    await world.service.handlers.StopPodSandbox({ pod_sandbox_id: id }, ctx());
    expect((await status(id)).state).toBe('SANDBOX_NOTREADY');
    await world.service.handlers.RemovePodSandbox({ pod_sandbox_id: id }, ctx());
    expect(stops()).toBe(0);
    await expect(status(id)).rejects.toMatchObject({ kind: 'NotFound' });
  });

  it('moves an unreadable record aside and still starts', async () => {
    await run();
    const dir = path.join(world.dir, 'root', 'sandboxes');
    const { writeFile } = await import('node:fs/promises');
    await writeFile(path.join(dir, `${'e'.repeat(64)}.json`), '{"version":1,"id":"trunc');
    const restarted = makeService(world);
    await restarted.core.recover();
    expect(restarted.core.recovery?.sandboxes?.problems).toHaveLength(1);
    expect(restarted.core.recovery?.sandboxes?.loaded).toBe(1);
    expect((await readdir(dir)).some((f) => f.endsWith('.json.corrupt'))).toBe(true);
  });
});
