/**
 * NRI end to end: the real daemon (unprivileged user, its rootless node, conmon + crun) with
 * `[nri] enable = true`, and NRI plugins built on the upstream Go stub (test/fixtures/nri-plugin)
 * connecting to its socket. A plugin adjusts a container's env and annotations and sees the
 * whole lifecycle in order; a plugin vetoes a pod and a container (nothing is left, the retry
 * succeeds); a plugin that hangs is disconnected at the request timeout and the request goes on
 * without it; a plugin that crashes mid-way costs nothing; a plugin connecting late is
 * synchronized with what exists; Status says NRI is on and lists the plugins. The harness fails
 * the suite on any process, mount, cgroup or file left behind.
 */
import { existsSync } from 'node:fs';
import { chown, mkdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { status as grpcStatus } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildNriTestPlugin, type PluginOptions, TestPlugin } from '../fixtures/nri-plugin/harness.js';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, pushCatalogue } from '../fixtures/test-images.js';
import { grpcCode } from '../harness/cri-client.js';
import { mirrorConfig, TestDaemon } from '../harness/daemon.js';

const BUSYBOX = 'registry.k8s.io/e2e-test-images/busybox:1.29-2';
const REQUEST_TIMEOUT_MS = 1000;

let binary: string;
let daemon: TestDaemon;
let registry: RunningRegistry;
let socket: string;
let logRoot: string;
const plugins: TestPlugin[] = [];
const pods = new Set<string>();

beforeAll(async () => {
  binary = buildNriTestPlugin();
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  const built = await buildCatalogue({ cacheDir, names: ['busybox'] });
  registry = await startRegistry();
  await pushCatalogue(registry.url, built.images);
  daemon = await TestDaemon.start({
    extraConfig: [
      mirrorConfig(registry.url),
      '[nri]',
      'enable = true',
      `plugin_request_timeout_ms = ${REQUEST_TIMEOUT_MS}`,
      '',
    ].join('\n'),
  });
  socket = path.join(daemon.runDir, 'nri.sock');
  logRoot = path.join(daemon.tmp, 'logs');
  await mkdir(logRoot);
  await chown(logRoot, daemon.user.uid, daemon.user.gid);
  await daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 120_000 });
}, 600_000);

afterEach(async () => {
  // Plugins first: a hung one must not hold up the removals.
  await Promise.all(plugins.splice(0).map((p) => p.stop()));
  for (const id of [...pods]) await removePod(id);
}, 120_000);

afterAll(async () => {
  await daemon?.stop();
  await registry?.stop();
}, 120_000);

/** Starts a plugin and waits until the daemon has synchronized it (it then gets every event). */
async function startPlugin(options: PluginOptions): Promise<TestPlugin> {
  const plugin = new TestPlugin(binary, socket, options);
  plugins.push(plugin);
  await plugin.waitForEvent('Synchronize');
  await waitForPlugins((names) => names.includes(options.name));
  return plugin;
}

interface NriStatusInfo {
  enabled: boolean;
  socket: string | null;
  requestTimeoutMs: number | null;
  plugins: { name: string; index: string; events: string[] }[];
}

async function nriStatus(): Promise<NriStatusInfo> {
  const r = await daemon.client.runtime('Status', { verbose: true });
  return JSON.parse(r.info.nri ?? 'null') as NriStatusInfo;
}

/** Status lists the connected plugins; a plugin's connect or disconnect shows there. */
async function waitForPlugins(ok: (names: string[]) => boolean): Promise<string[]> {
  for (;;) {
    const names = (await nriStatus()).plugins.map((p) => p.name);
    if (ok(names)) return names;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function podConfig(name: string) {
  return {
    metadata: { name, namespace: 'nri', uid: `uid-${name}`, attempt: 0 },
    hostname: name,
    log_directory: path.join(logRoot, name),
    linux: {},
  };
}

async function runPod(name: string) {
  const config = podConfig(name);
  const r = await daemon.client.runtime('RunPodSandbox', { config, runtime_handler: '' });
  pods.add(r.pod_sandbox_id);
  return { id: r.pod_sandbox_id, config };
}

async function removePod(id: string): Promise<void> {
  await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: id });
  await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: id });
  pods.delete(id);
}

async function createContainer(
  pod: { id: string; config: ReturnType<typeof podConfig> },
  name: string,
  command: string[] = ['sleep', '3600'],
): Promise<string> {
  const r = await daemon.client.runtime('CreateContainer', {
    pod_sandbox_id: pod.id,
    config: { metadata: { name }, image: { image: BUSYBOX }, command, linux: {} },
    sandbox_config: pod.config,
  });
  return r.container_id;
}

async function containerInfo(id: string): Promise<{ state: string; bundleDir: string }> {
  const r = await daemon.client.runtime('ContainerStatus', { container_id: id, verbose: true });
  const info = JSON.parse(r.info.info ?? '{}') as { bundleDir: string };
  return { state: String(r.status?.state), bundleDir: info.bundleDir };
}

async function env(id: string): Promise<string[]> {
  const r = await daemon.client.runtime('ExecSync', { container_id: id, cmd: ['env'], timeout: '10' });
  expect(r.exit_code).toBe(0);
  return Buffer.from(r.stdout).toString().split('\n');
}

function eventsFor(plugin: TestPlugin, podId: string): string[] {
  return plugin.events.filter((e) => e.pod === podId).map((e) => e.event);
}

describe('NRI with the daemon', () => {
  it('Status says NRI is on, where its socket is, and lists no plugin yet', async () => {
    const nri = await nriStatus();
    expect(nri).toMatchObject({ enabled: true, socket, requestTimeoutMs: REQUEST_TIMEOUT_MS, plugins: [] });
    expect(existsSync(socket)).toBe(true);
  });

  it('a plugin adjusts the env and annotations of a container and sees its lifecycle in order', async () => {
    const plugin = await startPlugin({
      name: 'adjuster',
      idx: '10',
      env: { NRI_INJECTED: 'yes' },
      annotations: { 'nri.example.com/seen': 'true' },
    });
    expect((await nriStatus()).plugins).toEqual([
      expect.objectContaining({
        name: 'adjuster',
        index: '10',
        events: expect.arrayContaining(['CreateContainer']),
      }),
    ]);
    const pod = await runPod('adjusted');
    const id = await createContainer(pod, 'app');
    await daemon.client.runtime('StartContainer', { container_id: id });

    expect(await env(id)).toContain('NRI_INJECTED=yes');
    const { bundleDir } = await containerInfo(id);
    const spec = JSON.parse(await readFile(path.join(bundleDir, 'config.json'), 'utf8')) as {
      annotations: Record<string, string>;
      process: { env: string[] };
    };
    expect(spec.annotations['nri.example.com/seen']).toBe('true');
    expect(spec.process.env).toContain('NRI_INJECTED=yes');
    // What the plugin saw at CreateContainer: the generated spec, before its own adjustment.
    const create = await plugin.waitForEvent('CreateContainer', (e) => e.container === id);
    expect(create).toMatchObject({ name: 'app', pod: pod.id, podName: 'adjusted', namespace: 'nri' });
    expect(create.args).toEqual(['sleep', '3600']);
    expect(create.env).not.toContain('NRI_INJECTED=yes');

    await daemon.client.runtime('StopContainer', { container_id: id, timeout: '0' });
    await daemon.client.runtime('RemoveContainer', { container_id: id });
    await removePod(pod.id);
    await plugin.waitForEvent('RemovePodSandbox', (e) => e.pod === pod.id);
    expect(eventsFor(plugin, pod.id)).toEqual([
      'RunPodSandbox',
      'CreateContainer',
      'PostCreateContainer',
      'StartContainer',
      'PostStartContainer',
      'StopContainer',
      'RemoveContainer',
      'StopPodSandbox',
      'RemovePodSandbox',
    ]);
    expect(plugin.events.find((e) => e.event === 'StopContainer')?.state).toBe('CONTAINER_STOPPED');
  });

  it('a container that exits by itself reaches plugins as StopContainer once, before any RemoveContainer', async () => {
    const plugin = await startPlugin({ name: 'watcher', idx: '10' });
    const pod = await runPod('exits');
    const id = await createContainer(pod, 'short', ['sh', '-c', 'exit 3']);
    await daemon.client.runtime('StartContainer', { container_id: id });
    const stop = await plugin.waitForEvent('StopContainer', (e) => e.container === id);
    expect(stop.state).toBe('CONTAINER_STOPPED');
    expect((await containerInfo(id)).state).toBe('CONTAINER_EXITED');
    // A later StopContainer (kubelet's, or the pod's) is not announced again.
    await daemon.client.runtime('StopContainer', { container_id: id, timeout: '0' });
    await daemon.client.runtime('RemoveContainer', { container_id: id });
    await plugin.waitForEvent('RemoveContainer', (e) => e.container === id);
    expect(plugin.events.filter((e) => e.container === id).map((e) => e.event)).toEqual([
      'CreateContainer',
      'PostCreateContainer',
      'StartContainer',
      'PostStartContainer',
      'StopContainer',
      'RemoveContainer',
    ]);
  });

  it('a plugin that vetoes RunPodSandbox fails it with nothing left, and the retry succeeds once it is gone', async () => {
    const veto = await startPlugin({ name: 'veto-pod', idx: '10', mode: 'fail', on: 'RunPodSandbox' });
    const config = podConfig('vetoed-pod');
    const err = await daemon.client.runtime('RunPodSandbox', { config, runtime_handler: '' }).catch((e) => e);
    expect(grpcCode(err)).toBe(grpcStatus.FAILED_PRECONDITION);
    expect(String(err.details)).toContain('NRI plugin 10-veto-pod failed RunPodSandbox: induced failure');
    const attempted = (await veto.waitForEvent('RunPodSandbox')).pod!;
    // The plugin is told the pod went away; the runtime kept nothing of it.
    await veto.waitForEvent('RemovePodSandbox', (e) => e.pod === attempted);
    expect(eventsFor(veto, attempted)).toEqual(['RunPodSandbox', 'StopPodSandbox', 'RemovePodSandbox']);
    expect((await daemon.client.runtime('ListPodSandbox', {})).items).toEqual([]);
    expect(existsSync(path.join(daemon.runDir, 'netns', attempted))).toBe(false);
    expect(existsSync(path.join(daemon.rootDir, 'sandboxes', `${attempted}.json`))).toBe(false);

    await veto.stop();
    await waitForPlugins((names) => !names.includes('veto-pod'));
    const r = await daemon.client.runtime('RunPodSandbox', { config, runtime_handler: '' });
    pods.add(r.pod_sandbox_id);
    const s = await daemon.client.runtime('PodSandboxStatus', { pod_sandbox_id: r.pod_sandbox_id });
    expect(s.status?.state).toBe('SANDBOX_READY');
  });

  it('a plugin that vetoes CreateContainer fails it with nothing left, and the retry succeeds once it is gone', async () => {
    const pod = await runPod('vetoed-ctr');
    const veto = await startPlugin({ name: 'veto-ctr', idx: '10', mode: 'fail', on: 'CreateContainer' });
    const err = await createContainer(pod, 'app').catch((e) => e);
    expect(grpcCode(err)).toBe(grpcStatus.FAILED_PRECONDITION);
    expect(String(err.details)).toContain('NRI plugin 10-veto-ctr failed CreateContainer: induced failure');
    const attempted = (await veto.waitForEvent('CreateContainer')).container!;
    await veto.waitForEvent('RemoveContainer', (e) => e.container === attempted);
    expect(veto.events.filter((e) => e.container === attempted).map((e) => e.event)).toEqual([
      'CreateContainer',
      'StopContainer',
      'RemoveContainer',
    ]);
    expect((await daemon.client.runtime('ListContainers', {})).containers).toEqual([]);
    const statusErr = await containerInfo(attempted).catch((e) => e);
    expect(grpcCode(statusErr)).toBe(grpcStatus.NOT_FOUND);
    expect(existsSync(path.join(daemon.runDir, 'containers', attempted))).toBe(false);
    expect(existsSync(path.join(daemon.rootDir, 'containers', `${attempted}.json`))).toBe(false);

    await veto.stop();
    await waitForPlugins((names) => !names.includes('veto-ctr'));
    const id = await createContainer(pod, 'app');
    expect((await containerInfo(id)).state).toBe('CONTAINER_CREATED');
  });

  it('a plugin that does not answer is disconnected at the request timeout; the container is created without it', async () => {
    const hung = await startPlugin({ name: 'hung', idx: '10', mode: 'hang', on: 'CreateContainer' });
    const healthy = await startPlugin({ name: 'healthy', idx: '20', env: { HEALTHY: '1' } });
    const pod = await runPod('hung');
    const started = Date.now();
    const id = await createContainer(pod, 'app');
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50);
    expect(took).toBeLessThan(REQUEST_TIMEOUT_MS + 10_000);
    await daemon.client.runtime('StartContainer', { container_id: id });
    expect(await env(id)).toContain('HEALTHY=1');
    // The daemon hung up on it: its stub sees the connection gone and exits.
    expect((await hung.exited).code).toBe(2);
    expect(await waitForPlugins((names) => !names.includes('hung'))).toEqual(['healthy']);
    await healthy.waitForEvent('StartContainer', (e) => e.container === id);
    expect(hung.names()).not.toContain('StartContainer');
  });

  it('a plugin that crashes mid-way costs nothing: the start goes on and later events reach the others', async () => {
    const crashing = await startPlugin({ name: 'crashing', idx: '10', mode: 'crash', on: 'StartContainer' });
    const other = await startPlugin({ name: 'other', idx: '20' });
    const pod = await runPod('crash');
    const id = await createContainer(pod, 'app');
    await daemon.client.runtime('StartContainer', { container_id: id });
    expect((await crashing.exited).code).toBe(3);
    expect((await containerInfo(id)).state).toBe('CONTAINER_RUNNING');
    await waitForPlugins((names) => !names.includes('crashing'));
    await daemon.client.runtime('StopContainer', { container_id: id, timeout: '0' });
    await other.waitForEvent('StopContainer', (e) => e.container === id);
    expect(other.events.filter((e) => e.container === id).map((e) => e.event)).toEqual([
      'CreateContainer',
      'PostCreateContainer',
      'StartContainer',
      'PostStartContainer',
      'StopContainer',
    ]);
  });

  it('a plugin connecting late is synchronized with the pods and containers that exist', async () => {
    const pod = await runPod('existing');
    const running = await createContainer(pod, 'running');
    await daemon.client.runtime('StartContainer', { container_id: running });
    const created = await createContainer(pod, 'created');
    const late = await startPlugin({ name: 'late', idx: '30' });
    const sync = await late.waitForEvent('Synchronize');
    expect(sync.pods).toEqual([pod.id]);
    expect([...(sync.containers ?? [])].sort()).toEqual([running, created].sort());
  });
});
