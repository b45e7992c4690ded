/**
 * The daemon killed (SIGKILL) at chosen points between the side effects of a pull, a pod start,
 * a container create, start and stop, an exec and a removal (src/failpoint.ts), then started
 * again. After each: the object is working or reported with a state that says what happened,
 * everything is removable, a retry with the same name works, and nothing is left (IP leases,
 * namespace pins, host ports here; processes, mounts, cgroups and files in the harness's leak
 * check when the daemon stops).
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Failpoint } from '../../src/failpoint.js';
import { exposeInNode, type NodeBridge } from '../fixtures/hostile-registry.js';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, pushCatalogue } from '../fixtures/test-images.js';
import { mirrorConfig, TestDaemon } from '../harness/daemon.js';
import { nodeLeftovers } from '../harness/node-leftovers.js';

const BUSYBOX = 'registry.k8s.io/e2e-test-images/busybox:1.29-2';

let registry: RunningRegistry;
let daemon: TestDaemon;
let bridge: NodeBridge | undefined;

function podConfig(name: string) {
  return {
    metadata: { name, namespace: 'crash', uid: `uid-${name}`, attempt: 0 },
    log_directory: '',
    linux: {},
    port_mappings: [] as unknown[],
  };
}

function containerConfig(name: string, command = ['sleep', '3600']) {
  return { metadata: { name, attempt: 0 }, image: { image: BUSYBOX }, command, log_path: '' };
}

async function runPod(name: string) {
  const config = podConfig(name);
  const id = (await daemon.client.runtime('RunPodSandbox', { config } as never)).pod_sandbox_id!;
  return { id, config };
}

async function createContainer(pod: { id: string; config: unknown }, name: string, command?: string[]) {
  return (
    await daemon.client.runtime('CreateContainer', {
      pod_sandbox_id: pod.id,
      sandbox_config: pod.config,
      config: containerConfig(name, command),
    } as never)
  ).container_id!;
}

/**
 * Restarts the daemon with `point` armed, runs `action` (which the daemon dies in the middle
 * of: the call fails), then starts the daemon again, unarmed.
 */
async function crashAt(point: Failpoint, action: () => Promise<unknown>): Promise<void> {
  await daemon.kill9();
  await daemon.serve({ ROOTLESS_CRI_FAILPOINTS: point });
  const outcome = await action().then(
    () => 'answered',
    (err: unknown) => err,
  );
  expect(outcome, `the daemon did not die at ${point}`).not.toBe('answered');
  await daemon.supervisorExited();
  expect(await daemon.logTail(200)).toContain(`failpoint ${point}`);
  await daemon.serve();
}

/** Removes every pod and container, then checks that nothing of them is left in the node. */
async function removeEverything(): Promise<void> {
  for (const c of (await daemon.client.runtime('ListContainers', {})).containers ?? []) {
    await daemon.client.runtime('RemoveContainer', { container_id: c.id! });
  }
  for (const p of (await daemon.client.runtime('ListPodSandbox', {})).items ?? []) {
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: p.id! });
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: p.id! });
  }
  expect(await nodeLeftovers(daemon)).toEqual([]);
  const snapshots = path.join(daemon.rootDir, 'snapshots', 'fuse-overlayfs', 'snapshots');
  const layers = await readdir(snapshots).catch(() => [] as string[]);
  expect(layers, layers.length > 0 ? await daemon.logTail(60) : '').toEqual([]);
}

async function containerState(id: string) {
  return (await daemon.client.runtime('ContainerStatus', { container_id: id })).status!;
}

beforeAll(async () => {
  const built = await buildCatalogue({
    cacheDir: path.join(process.env.XDG_CACHE_HOME ?? '/root/.cache', 'rootless-cri', 'test-images'),
    names: ['busybox'],
  });
  registry = await startRegistry();
  await pushCatalogue(registry.url, built.images);
  daemon = await TestDaemon.start({ extraConfig: mirrorConfig(registry.url) });
  bridge = await exposeInNode(await daemon.nodePid(), registry.port);
  await daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 120_000 });
}, 180_000);

afterAll(async () => {
  await bridge?.close();
  await daemon?.stop();
  await registry?.stop();
});

describe('the daemon killed in the middle of a request, then started again', () => {
  afterEach(removeEverything);

  for (const point of ['pull.blob-verified', 'pull.layer-unpacked'] as const) {
    it(`PullImage (${point}): no partial blob or layer; the pull works again`, async () => {
      await daemon.client.image('RemoveImage', { image: { image: BUSYBOX } });
      await crashAt(point, () =>
        daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 60_000 }),
      );
      const image = path.join(daemon.rootDir, 'image');
      expect(await readdir(path.join(image, 'content', 'ingest')).catch(() => [])).toEqual([]);
      const layers = await readdir(path.join(image, 'layers')).catch(() => [] as string[]);
      expect(layers.filter((n) => n.startsWith('.'))).toEqual([]);
      await daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 60_000 });
      expect((await daemon.client.image('ImageStatus', { image: { image: BUSYBOX } })).image).toBeTruthy();
      await daemon.client.image('ImageFsInfo', {});
    });
  }

  for (const point of ['sandbox.namespaces-made', 'sandbox.network-added'] as const) {
    it(`RunPodSandbox (${point}): the half-made pod is NOTREADY and removable; the same name works again`, async () => {
      await crashAt(point, () => runPod(`pod-${point}`));
      const pods = (await daemon.client.runtime('ListPodSandbox', {})).items ?? [];
      for (const p of pods) expect(p.state).toBe('SANDBOX_NOTREADY');
      await removeEverything();
      const again = await runPod(`pod-${point}`);
      expect(
        (await daemon.client.runtime('PodSandboxStatus', { pod_sandbox_id: again.id })).status!.state,
      ).toBe('SANDBOX_READY');
    });
  }

  for (const point of ['container.rootfs-mounted', 'container.runtime-created'] as const) {
    it(`CreateContainer (${point}): no half-made container; the same name works again`, async () => {
      const pod = await runPod(`pod-${point}`);
      await crashAt(point, () => createContainer(pod, 'half'));
      // A container the runtime made but the record did not finish is not shown half-made.
      for (const c of (await daemon.client.runtime('ListContainers', {})).containers ?? []) {
        expect(c.state).not.toBe('CONTAINER_UNKNOWN');
      }
      const snapshots = path.join(daemon.rootDir, 'snapshots', 'fuse-overlayfs', 'snapshots');
      const listed = (await daemon.client.runtime('ListContainers', {})).containers ?? [];
      const layers = await readdir(snapshots).catch(() => [] as string[]);
      expect(layers.length, layers.length !== listed.length ? await daemon.logTail(80) : '').toBe(
        listed.length,
      );
      for (const c of listed) await daemon.client.runtime('RemoveContainer', { container_id: c.id! });
      const id = await createContainer(pod, 'half');
      await daemon.client.runtime('StartContainer', { container_id: id });
      expect((await containerState(id)).state).toBe('CONTAINER_RUNNING');
    });
  }

  it('StartContainer (container.runtime-started): the process runs and is reported running', async () => {
    const pod = await runPod('pod-start');
    const id = await createContainer(pod, 'started');
    await crashAt('container.runtime-started', () =>
      daemon.client.runtime('StartContainer', { container_id: id }),
    );
    expect((await containerState(id)).state).toBe('CONTAINER_RUNNING');
    const r = await daemon.client.runtime('ExecSync', { container_id: id, cmd: ['true'], timeout: '10' });
    expect(r.exit_code ?? 0).toBe(0);
  });

  it('StopContainer (container.stop-signalled): the exit is recorded with the signal', async () => {
    const pod = await runPod('pod-stop');
    const id = await createContainer(pod, 'stopped', ['top']);
    await daemon.client.runtime('StartContainer', { container_id: id });
    await crashAt('container.stop-signalled', () =>
      daemon.client.runtime('StopContainer', { container_id: id, timeout: '30' }),
    );
    const status = await containerState(id);
    if (status.state === 'CONTAINER_RUNNING') {
      // The signal may still be on its way; a second stop finishes the job either way.
      await daemon.client.runtime('StopContainer', { container_id: id, timeout: '30' });
    }
    const exited = await containerState(id);
    expect(exited.state).toBe('CONTAINER_EXITED');
    expect([143, 137]).toContain(exited.exit_code);
  });

  it('ExecSync (exec.started): the container keeps running and exec works again', async () => {
    const pod = await runPod('pod-exec');
    const id = await createContainer(pod, 'execd');
    await daemon.client.runtime('StartContainer', { container_id: id });
    await crashAt('exec.started', () =>
      daemon.client.runtime('ExecSync', { container_id: id, cmd: ['sleep', '3000'], timeout: '60' }),
    );
    expect((await containerState(id)).state).toBe('CONTAINER_RUNNING');
    const r = await daemon.client.runtime('ExecSync', {
      container_id: id,
      cmd: ['echo', 'back'],
      timeout: '10',
    });
    expect(Buffer.from(r.stdout ?? '').toString()).toBe('back\n');
  });

  it('RemoveContainer (container.runtime-deleted): the container is removable and its layer goes', async () => {
    const pod = await runPod('pod-remove');
    const id = await createContainer(pod, 'removed');
    await daemon.client.runtime('StartContainer', { container_id: id });
    await daemon.client.runtime('StopContainer', { container_id: id, timeout: '0' });
    await crashAt('container.runtime-deleted', () =>
      daemon.client.runtime('RemoveContainer', { container_id: id }),
    );
    const listed = (await daemon.client.runtime('ListContainers', {})).containers ?? [];
    for (const c of listed) expect(c.state).toBe('CONTAINER_EXITED');
    await daemon.client.runtime('RemoveContainer', { container_id: id });
  });

  it('StopPodSandbox (sandbox.network-removed): the pod is NOTREADY, stops again and goes', async () => {
    const pod = await runPod('pod-teardown');
    const id = await createContainer(pod, 'inside');
    await daemon.client.runtime('StartContainer', { container_id: id });
    await crashAt('sandbox.network-removed', () =>
      daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: pod.id }),
    );
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: pod.id });
    expect((await daemon.client.runtime('PodSandboxStatus', { pod_sandbox_id: pod.id })).status!.state).toBe(
      'SANDBOX_NOTREADY',
    );
    expect((await containerState(id)).state).toBe('CONTAINER_EXITED');
  });
});
