/**
 * rootless-cri's NRI endpoint against real plugins: a Go plugin built from the upstream NRI
 * stub (github.com/containerd/nri v0.12.2 pkg/stub, via the Go module proxy), so framing,
 * multiplexing, ttrpc, message encoding, registration and the event contract are checked
 * against the implementation every NRI plugin uses. The runtime side is the adapter with an
 * in-memory pod/container state; wiring into the daemon is tested with the daemon.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import {
  NriAdapter,
  type NriContainer,
  type NriContainerUpdate,
  type NriOciSpec,
  type NriPluginInfo,
  type NriPod,
} from '../../src/nri/index.js';
import { buildNriTestPlugin, type PluginOptions, TestPlugin } from '../fixtures/nri-plugin/harness.js';

let binary: string;
let scratch: string;

beforeAll(() => {
  binary = buildNriTestPlugin();
  scratch = mkdtempSync(join(tmpdir(), 'nri-plugin-'));
}, 300_000);

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

const existingPod: NriPod = {
  id: 'a'.repeat(64),
  name: 'existing',
  uid: 'uid-existing',
  namespace: 'default',
  labels: { app: 'existing' },
};

const existingContainer: NriContainer = {
  id: 'b'.repeat(64),
  podSandboxId: existingPod.id,
  name: 'existing-ctr',
  state: 'running',
  pid: 4242,
  spec: { process: { args: ['sleep', 'inf'], env: ['PATH=/bin'] } },
};

/** A container the fake runtime cannot update (it exited meanwhile, say). */
const unupdatableContainer: NriContainer = {
  id: '9'.repeat(64),
  podSandboxId: existingPod.id,
  name: 'exited-ctr',
  state: 'stopped',
};

const pod: NriPod = {
  id: 'c'.repeat(64),
  name: 'web',
  uid: 'uid-web',
  namespace: 'team-a',
  labels: { app: 'web' },
  annotations: { 'example.com/owner': 'a' },
  cgroupParent: '/kubepods',
  namespaces: [{ type: 'network', path: '/run/netns/web' }],
  ips: ['10.88.0.5'],
};

const container: NriContainer = {
  id: 'd'.repeat(64),
  podSandboxId: pod.id,
  name: 'app',
  state: 'created',
  labels: { tier: 'front' },
};

function baseSpec(): NriOciSpec {
  return {
    process: { args: ['/bin/app'], env: ['PATH=/usr/bin:/bin', 'KEEP=1'], user: { uid: 0, gid: 0 } },
    annotations: { 'io.kubernetes.cri.container-type': 'container' },
    mounts: [{ destination: '/proc', type: 'proc', source: 'proc', options: [] }],
    linux: { namespaces: [{ type: 'mount' }], resources: { cpu: { shares: 2 } } },
  };
}

interface Harness {
  adapter: NriAdapter;
  socket: string;
  plugins: TestPlugin[];
  updates: NriContainerUpdate[][];
  /** Resolves when a plugin named `name` is ready (synchronized), or has disconnected. */
  ready(name: string): Promise<NriPluginInfo>;
  disconnected(name: string): Promise<NriPluginInfo>;
  start(options: PluginOptions): TestPlugin;
}

let current: Harness | undefined;

async function startAdapter(options: { requestTimeoutMs?: number } = {}): Promise<Harness> {
  const socket = join(mkdtempSync(join(scratch, 'run-')), 'nri.sock');
  const readyWaiters = new Map<string, ((p: NriPluginInfo) => void)[]>();
  const goneWaiters = new Map<string, ((p: NriPluginInfo) => void)[]>();
  const seenReady = new Map<string, NriPluginInfo>();
  const seenGone = new Map<string, NriPluginInfo>();
  const updates: NriContainerUpdate[][] = [];
  const adapter = new NriAdapter({
    socketPath: socket,
    runtimeName: 'rootless-cri',
    runtimeVersion: '0.1.0-test',
    registrationTimeoutMs: 5000,
    requestTimeoutMs: options.requestTimeoutMs ?? 2000,
    logger: createLogger({ level: process.env.NRI_TEST_LOG ?? 'silent' }),
    state: {
      listPodsAndContainers: async () => ({
        pods: [existingPod],
        containers: [existingContainer, unupdatableContainer],
      }),
    },
    updateContainers: async (list) => {
      updates.push(list);
      return list.filter((u) => u.containerId === unupdatableContainer.id);
    },
    onPluginChange: (change, plugin) => {
      const seen = change === 'ready' ? seenReady : seenGone;
      const waiters = change === 'ready' ? readyWaiters : goneWaiters;
      seen.set(plugin.name, plugin);
      for (const resolve of waiters.get(plugin.name) ?? []) resolve(plugin);
      waiters.delete(plugin.name);
    },
  });
  await adapter.start();
  const wait = (seen: Map<string, NriPluginInfo>, waiters: typeof readyWaiters, name: string) =>
    seen.has(name)
      ? Promise.resolve(seen.get(name)!)
      : new Promise<NriPluginInfo>((resolve) => waiters.set(name, [...(waiters.get(name) ?? []), resolve]));
  const harness: Harness = {
    adapter,
    socket,
    plugins: [],
    updates,
    ready: (name) => wait(seenReady, readyWaiters, name),
    disconnected: (name) => wait(seenGone, goneWaiters, name),
    start: (pluginOptions) => {
      const plugin = new TestPlugin(binary, socket, pluginOptions);
      harness.plugins.push(plugin);
      return plugin;
    },
  };
  current = harness;
  return harness;
}

afterEach(async () => {
  const h = current;
  current = undefined;
  if (!h) return;
  await h.adapter.stop();
  await Promise.all(h.plugins.map((p) => p.stop()));
});

describe('NRI with a plugin on the upstream Go stub', () => {
  it('registers, synchronizes, adjusts env and annotations, and sees the whole lifecycle in order', async () => {
    const h = await startAdapter();
    const plugin = h.start({
      name: 'adjuster',
      idx: '10',
      env: { NRI_INJECTED: 'yes' },
      annotations: { 'nri.example.com/seen': 'true' },
    });
    const info = await h.ready('adjuster');
    expect(info.index).toBe('10');
    expect(info.events).toContain('CreateContainer');
    const configure = await plugin.waitForEvent('Configure');
    expect(configure.runtime).toBe('rootless-cri/0.1.0-test');
    const sync = await plugin.waitForEvent('Synchronize');
    expect(sync.pods).toEqual([existingPod.id]);
    expect(sync.containers).toEqual([existingContainer.id, unupdatableContainer.id]);

    await h.adapter.runPodSandbox(pod);
    const created = await h.adapter.createContainer(pod, container, baseSpec());
    expect(created.warnings).toEqual([]);
    expect(created.spec.process?.env).toEqual(['PATH=/usr/bin:/bin', 'KEEP=1', 'NRI_INJECTED=yes']);
    expect(created.spec.annotations).toEqual({
      'io.kubernetes.cri.container-type': 'container',
      'nri.example.com/seen': 'true',
    });
    expect(created.spec.process?.args).toEqual(['/bin/app']);
    expect(created.updates).toEqual([]);

    const running: NriContainer = { ...container, state: 'running', pid: 1234, spec: created.spec };
    await h.adapter.postCreateContainer(pod, { ...container, spec: created.spec });
    await h.adapter.startContainer(pod, running);
    await h.adapter.postStartContainer(pod, running);
    const updated = await h.adapter.updateContainer(pod, running, { cpu: { shares: 100 } });
    expect(updated.resources.cpu?.shares).toBe(200);
    await h.adapter.postUpdateContainer(pod, running);
    const stopped: NriContainer = { ...running, state: 'stopped', exitCode: 0 };
    await h.adapter.stopContainer(pod, stopped);
    await h.adapter.stopContainer(pod, stopped); // once per container
    await h.adapter.removeContainer(pod, stopped);
    await h.adapter.stopPodSandbox(pod);
    await h.adapter.stopPodSandbox(pod); // once per pod
    await h.adapter.removePodSandbox(pod);
    await plugin.waitForEvent('RemovePodSandbox');

    expect(plugin.names()).toEqual([
      'Configure',
      'Synchronize',
      'RunPodSandbox',
      'CreateContainer',
      'PostCreateContainer',
      'StartContainer',
      'PostStartContainer',
      'UpdateContainer',
      'PostUpdateContainer',
      'StopContainer',
      'RemoveContainer',
      'StopPodSandbox',
      'RemovePodSandbox',
    ]);
    const run = plugin.events.find((e) => e.event === 'RunPodSandbox')!;
    expect(run).toMatchObject({ pod: pod.id, podName: 'web', podUid: 'uid-web', namespace: 'team-a' });
    const create = plugin.events.find((e) => e.event === 'CreateContainer')!;
    expect(create).toMatchObject({ container: container.id, name: 'app', pod: pod.id, args: ['/bin/app'] });
    expect(create.env).toEqual(['PATH=/usr/bin:/bin', 'KEEP=1']);
    const start = plugin.events.find((e) => e.event === 'StartContainer')!;
    expect(start.state).toBe('CONTAINER_RUNNING');
    const update = plugin.events.find((e) => e.event === 'UpdateContainer')!;
    expect(update.shares).toBe(100);
    const stop = plugin.events.find((e) => e.event === 'StopContainer')!;
    expect(stop).toMatchObject({ container: container.id, state: 'CONTAINER_STOPPED' });
  });

  it('runs plugins in index order, shows later plugins the earlier adjustments, and refuses conflicts', async () => {
    const h = await startAdapter();
    const late = h.start({ name: 'late', idx: '20', env: { FROM_LATE: '2' } });
    const early = h.start({ name: 'early', idx: '05', env: { FROM_EARLY: '1' } });
    await Promise.all([h.ready('late'), h.ready('early')]);
    expect(h.adapter.listPlugins().map((p) => `${p.index}-${p.name}`)).toEqual(['05-early', '20-late']);

    const created = await h.adapter.createContainer(pod, container, baseSpec());
    expect(created.spec.process?.env).toEqual([
      'PATH=/usr/bin:/bin',
      'KEEP=1',
      'FROM_EARLY=1',
      'FROM_LATE=2',
    ]);
    const seenByEarly = await early.waitForEvent('CreateContainer');
    const seenByLate = await late.waitForEvent('CreateContainer');
    expect(seenByEarly.env).toEqual(['PATH=/usr/bin:/bin', 'KEEP=1']);
    expect(seenByLate.env).toEqual(['PATH=/usr/bin:/bin', 'KEEP=1', 'FROM_EARLY=1']);

    const rival = h.start({ name: 'rival', idx: '30', env: { FROM_EARLY: 'other' } });
    await h.ready('rival');
    const other = { ...container, id: 'e'.repeat(64), name: 'other' };
    await expect(h.adapter.createContainer(pod, other, baseSpec())).rejects.toMatchObject({
      kind: 'FailedPrecondition',
      message: expect.stringMatching(
        /"05-early" and "30-rival" both tried to set environment variable "FROM_EARLY"/,
      ),
    });
    await rival.waitForEvent('CreateContainer', (e) => e.container === other.id);
  });

  it('lets a plugin veto RunPodSandbox and CreateContainer, and keeps it connected', async () => {
    const h = await startAdapter();
    const vetoPod = h.start({ name: 'veto-pod', idx: '10', mode: 'fail', on: 'RunPodSandbox' });
    await h.ready('veto-pod');
    await expect(h.adapter.runPodSandbox(pod)).rejects.toMatchObject({
      kind: 'FailedPrecondition',
      message: expect.stringContaining(
        'NRI plugin 10-veto-pod failed RunPodSandbox: induced failure in RunPodSandbox',
      ),
    });
    // Still connected: the next event reaches it, and it does not veto that one.
    const created = await h.adapter.createContainer(pod, container, baseSpec());
    expect(created.warnings).toEqual([]);
    await vetoPod.waitForEvent('CreateContainer');
    expect(h.adapter.listPlugins()).toHaveLength(1);

    const vetoCreate = h.start({ name: 'veto-create', idx: '20', mode: 'fail', on: 'CreateContainer' });
    await h.ready('veto-create');
    await expect(
      h.adapter.createContainer(pod, { ...container, id: 'f'.repeat(64) }, baseSpec()),
    ).rejects.toThrow(/NRI plugin 20-veto-create failed CreateContainer: induced failure in CreateContainer/);
    await vetoCreate.waitForEvent('CreateContainer', (e) => e.container === 'f'.repeat(64));
    // Errors on stop and remove are warnings: tearing down never depends on a plugin.
    const stopVeto = h.start({ name: 'veto-stop', idx: '30', mode: 'fail', on: 'StopContainer' });
    await h.ready('veto-stop');
    const stop = await h.adapter.stopContainer(pod, { ...container, state: 'stopped' });
    expect(stop.warnings).toEqual([
      'NRI plugin 30-veto-stop failed StopContainer: induced failure in StopContainer (Unknown)',
    ]);
    await stopVeto.waitForEvent('StopContainer');
  });

  it('disconnects a plugin that does not answer in time and goes on without it', async () => {
    const h = await startAdapter({ requestTimeoutMs: 500 });
    const hung = h.start({ name: 'hung', idx: '10', mode: 'hang', on: 'CreateContainer' });
    const healthy = h.start({ name: 'healthy', idx: '20', env: { HEALTHY: '1' } });
    await Promise.all([h.ready('hung'), h.ready('healthy')]);

    const started = Date.now();
    const created = await h.adapter.createContainer(pod, container, baseSpec());
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(450);
    expect(took).toBeLessThan(5000);
    expect(created.spec.process?.env).toContain('HEALTHY=1');
    expect(created.warnings).toEqual([
      expect.stringMatching(
        /NRI plugin 10-hung disconnected during CreateContainer: .*no answer within 500 ms/,
      ),
    ]);
    await h.disconnected('hung');
    expect(h.adapter.listPlugins().map((p) => p.name)).toEqual(['healthy']);

    // Later events skip it; the plugin process sees its connection gone and exits.
    await h.adapter.startContainer(pod, { ...container, state: 'running' });
    await healthy.waitForEvent('StartContainer');
    expect(hung.names()).not.toContain('StartContainer');
    const exit = await hung.exited;
    expect(exit.code).toBe(2);
  });

  it('goes on without a plugin that crashes while handling an event', async () => {
    const h = await startAdapter();
    const crashing = h.start({ name: 'crashing', idx: '10', mode: 'crash', on: 'CreateContainer' });
    await h.ready('crashing');
    const created = await h.adapter.createContainer(pod, container, baseSpec());
    expect(created.spec.process?.env).toEqual(['PATH=/usr/bin:/bin', 'KEEP=1']);
    expect(created.warnings).toEqual([
      expect.stringMatching(/NRI plugin 10-crashing disconnected during CreateContainer/),
    ]);
    expect((await crashing.exited).code).toBe(3);
    await h.disconnected('crashing');
    expect(h.adapter.listPlugins()).toEqual([]);
    // The runtime carries on.
    await expect(h.adapter.startContainer(pod, { ...container, state: 'running' })).resolves.toEqual([]);
  });

  it('subscribes a plugin to the events it asks for only', async () => {
    const h = await startAdapter();
    const picky = h.start({ name: 'picky', idx: '10', events: ['StopContainer', 'RemovePodSandbox'] });
    const info = await h.ready('picky');
    expect(info.events).toEqual(['RemovePodSandbox', 'StopContainer']);
    await h.adapter.runPodSandbox(pod);
    await h.adapter.createContainer(pod, container, baseSpec());
    await h.adapter.stopContainer(pod, { ...container, state: 'stopped' });
    await h.adapter.removePodSandbox(pod);
    await picky.waitForEvent('RemovePodSandbox');
    expect(picky.names()).toEqual(['Configure', 'Synchronize', 'StopContainer', 'RemovePodSandbox']);
  });

  it('applies UpdateContainers requested by a plugin and reports the ones that failed', async () => {
    const h = await startAdapter();
    const updater = h.start({ name: 'updater', idx: '10', updateSynced: true });
    await h.ready('updater');
    const result = await updater.waitForEvent('UpdateContainersResult');
    const update = (containerId: string) => ({
      containerId,
      resources: { cpu: { shares: 512 } },
      ignoreFailure: false,
      warnings: [],
    });
    expect(h.updates).toEqual([[update(existingContainer.id), update(unupdatableContainer.id)]]);
    expect(result.failed).toEqual([unupdatableContainer.id]);
    expect(result.error).toBeUndefined();
  });

  it('tells plugins when the runtime shuts down, and removes the socket', async () => {
    const h = await startAdapter();
    const plugin = h.start({ name: 'watcher', idx: '10' });
    await h.ready('watcher');
    await h.adapter.stop();
    await plugin.waitForEvent('Shutdown');
    await plugin.exited;
    const { existsSync } = await import('node:fs');
    expect(existsSync(h.socket)).toBe(false);
  });
});
