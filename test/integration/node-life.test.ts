/**
 * The life of a node, with real components: kill -9 of each process of the stack, the node
 * stopped or gone (`stop --all`, its holder killed, a reboot that wipes the run dir), the
 * uplink dying, a root filesystem dying, a disk full of data or out of inodes. After each: every
 * object is either working or reported gone with a reason, everything is removable, and nothing
 * is left (the harness's leak check at stop, plus leases, pins, published ports here).
 */
import { chown, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { childrenOf } from '../../src/os/process-tree.js';
import { exposeInNode, type NodeBridge } from '../fixtures/hostile-registry.js';
import { freePort, type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, pushCatalogue } from '../fixtures/test-images.js';
import { grpcCode } from '../harness/cri-client.js';
import { mirrorConfig, TestDaemon } from '../harness/daemon.js';
import { nodeLeftovers } from '../harness/node-leftovers.js';
import { until } from '../harness/until.js';

const BUSYBOX = 'registry.k8s.io/e2e-test-images/busybox:1.29-2';

let registry: RunningRegistry;

beforeAll(async () => {
  const built = await buildCatalogue({
    cacheDir: path.join(process.env.XDG_CACHE_HOME ?? '/root/.cache', 'rootless-cri', 'test-images'),
    names: ['busybox'],
  });
  registry = await startRegistry();
  await pushCatalogue(registry.url, built.images);
}, 120_000);

afterAll(async () => {
  await registry?.stop();
});

async function parentOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

function podConfig(name: string, extra: Record<string, unknown> = {}) {
  return {
    metadata: { name, namespace: 'life', uid: `uid-${name}`, attempt: 0 },
    log_directory: '',
    linux: {},
    ...extra,
  };
}

/** A pod with a host port and one running busybox container. */
async function podWithContainer(daemon: TestDaemon, name: string, command = ['sleep', '3600'], extra = {}) {
  const config = podConfig(name, extra);
  const pod = (await daemon.client.runtime('RunPodSandbox', { config } as never)).pod_sandbox_id!;
  const ctr = (
    await daemon.client.runtime('CreateContainer', {
      pod_sandbox_id: pod,
      sandbox_config: config,
      config: { metadata: { name: 'main', attempt: 0 }, image: { image: BUSYBOX }, command, log_path: '' },
    } as never)
  ).container_id!;
  await daemon.client.runtime('StartContainer', { container_id: ctr });
  return { pod, ctr, config };
}

/** Everything of the old node is reported gone, with a reason, and removable; nothing is left. */
async function expectGoneAndRemovable(
  daemon: TestDaemon,
  ids: { pod: string; ctr: string }[],
): Promise<void> {
  for (const { pod, ctr } of ids) {
    const sandbox = await daemon.client.runtime('PodSandboxStatus', { pod_sandbox_id: pod, verbose: true });
    expect(sandbox.status!.state).toBe('SANDBOX_NOTREADY');
    expect(JSON.parse(sandbox.info!.info!).notReadyReason).toMatch(/node this pod ran in is gone/);
    const container = (await daemon.client.runtime('ContainerStatus', { container_id: ctr })).status!;
    expect(container.state).toBe('CONTAINER_EXITED');
    expect(container.message).toMatch(/node this container ran in is gone/);
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await daemon.client.runtime('RemoveContainer', { container_id: ctr });
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  }
  expect((await daemon.client.runtime('ListPodSandbox', {})).items).toEqual([]);
  expect((await daemon.client.runtime('ListContainers', {})).containers).toEqual([]);
  expect(await nodeLeftovers(daemon)).toEqual([]);
}

describe('the node ends under the daemon', () => {
  let daemon: TestDaemon;
  let bridge: NodeBridge | undefined;

  beforeAll(async () => {
    daemon = await TestDaemon.start({ extraConfig: mirrorConfig(registry.url) });
    bridge = await exposeInNode(await daemon.nodePid(), registry.port);
    await daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 120_000 });
    await bridge.close();
    bridge = undefined;
  }, 180_000);

  afterAll(async () => {
    await bridge?.close();
    await daemon?.stop();
  });

  async function withHostPort(name: string) {
    const port = await freePort();
    return podWithContainer(daemon, name, ['sleep', '3600'], {
      port_mappings: [{ protocol: 'TCP', container_port: 8080, host_port: port, host_ip: '127.0.0.1' }],
    });
  }

  it('stop --all, then serve: pods and containers are gone with a reason, removable, nothing left', async () => {
    const a = await withHostPort('before-stop-all');
    // The leftover check sees a live pod's every trace (so its empty answers below mean something).
    const live = await nodeLeftovers(daemon);
    for (const kind of ['lease', 'pin', 'port', 'iptables'])
      expect(
        live.some((l) => l.startsWith(kind)),
        `${kind} in ${live.join('\n')}`,
      ).toBe(true);
    expect((await daemon.cli(['stop', '--all'])).exitCode).toBe(0);
    await daemon.supervisorExited();
    await daemon.serve();
    await expectGoneAndRemovable(daemon, [a]);
  });

  it('a reboot (the run dir wiped, the records kept): the same', async () => {
    const a = await withHostPort('before-reboot');
    expect((await daemon.cli(['stop', '--all'])).exitCode).toBe(0);
    await daemon.supervisorExited();
    for (const entry of await readdir(daemon.runDir))
      await rm(path.join(daemon.runDir, entry), { recursive: true, force: true });
    await daemon.serve();
    await expectGoneAndRemovable(daemon, [a]);
  });

  it('the node holder (catatonit) killed: the node and the daemon end; serve makes a new node; the same', async () => {
    const a = await withHostPort('before-holder-dies');
    process.kill(await daemon.nodePid(), 'SIGKILL');
    await daemon.supervisorExited();
    await daemon.serve();
    await expectGoneAndRemovable(daemon, [a]);
  });

  it('rootlesskit killed: the same', async () => {
    const a = await withHostPort('before-rootlesskit-dies');
    process.kill(await parentOf(await daemon.nodePid()), 'SIGKILL');
    await daemon.supervisorExited();
    await daemon.serve();
    await expectGoneAndRemovable(daemon, [a]);
  });
});

describe('deaths the node survives', () => {
  let daemon: TestDaemon;
  let bridge: NodeBridge | undefined;

  beforeAll(async () => {
    daemon = await TestDaemon.start({ extraConfig: mirrorConfig(registry.url) });
    bridge = await exposeInNode(await daemon.nodePid(), registry.port);
    await daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 120_000 });
  }, 180_000);

  afterAll(async () => {
    await bridge?.close();
    await daemon?.stop();
  });

  async function running(ids: { pod: string; ctr: string }) {
    expect((await daemon.client.runtime('PodSandboxStatus', { pod_sandbox_id: ids.pod })).status!.state).toBe(
      'SANDBOX_READY',
    );
    expect((await daemon.client.runtime('ContainerStatus', { container_id: ids.ctr })).status!.state).toBe(
      'CONTAINER_RUNNING',
    );
  }

  async function cleanup(ids: { pod: string; ctr: string }) {
    await daemon.client.runtime('RemoveContainer', { container_id: ids.ctr });
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: ids.pod });
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: ids.pod });
    const left = await nodeLeftovers(daemon);
    expect(left, left.length > 0 ? await daemon.logTail(60) : '').toEqual([]);
  }

  it('the supervisor killed: the daemon follows (no orphan), serve works at once, pods keep running', async () => {
    const a = await podWithContainer(daemon, 'supervisor-dies');
    const daemonPid = await daemon.daemonPid();
    process.kill(await daemon.supervisorPid(), 'SIGKILL');
    await daemon.supervisorExited();
    await until(
      'the orphaned daemon',
      async () => {
        try {
          process.kill(daemonPid, 0);
          return 'alive';
        } catch {
          return 'gone';
        }
      },
      (v) => v === 'gone',
    );
    await daemon.serve();
    await running(a);
    await cleanup(a);
  });

  it("the supervisor's nsenter child killed: the same", async () => {
    const a = await podWithContainer(daemon, 'nsenter-dies');
    const nsenter: number[] = [];
    for (const c of await childrenOf(await daemon.supervisorPid())) {
      if ((await readFile(`/proc/${c}/comm`, 'utf8').catch(() => '')).trim() === 'nsenter') nsenter.push(c);
    }
    expect(nsenter).toHaveLength(1);
    process.kill(nsenter[0]!, 'SIGKILL');
    await daemon.supervisorExited();
    await daemon.serve();
    await running(a);
    await cleanup(a);
  });

  it('the uplink (slirp4netns) killed: NetworkReady says so, a new uplink comes, pods keep running', async () => {
    const a = await podWithContainer(daemon, 'uplink-dies');
    const rootlesskit = await parentOf(await daemon.nodePid());
    const mine: number[] = [];
    for (const pid of await childrenOf(rootlesskit)) {
      if ((await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim() === 'slirp4netns')
        mine.push(pid);
    }
    const tree = async () =>
      (await execa('ps', ['-o', 'pid,ppid,comm,args', '-u', String(daemon.user.uid)], { reject: false }))
        .stdout;
    expect(mine, `rootlesskit ${rootlesskit}:\n${await tree()}`).toHaveLength(1);
    for (const pid of mine) process.kill(pid, 'SIGKILL');
    const networkReady = async () => {
      const s = await daemon.client.runtime('Status', {});
      const network = s.status!.conditions!.find((c) => c.type === 'NetworkReady')!;
      return network.status ? 'ready' : network.reason!;
    };
    // Seen down (the daemon's check), then up again (the supervisor's new slirp4netns).
    await until(
      'NetworkReady after the uplink died',
      networkReady,
      (v) => v === 'UplinkDown' || v === 'ready',
      10_000,
    );
    await until('NetworkReady once the uplink is back', networkReady, (v) => v === 'ready', 30_000);
    const addr = await daemon.enter(['ip', '-4', 'addr', 'show', 'tap0']);
    expect(addr.stdout).toMatch(/10\.0\.2\.100\/24/);
    const route = await daemon.enter(['ip', 'route']);
    expect(route.stdout).toMatch(/default via 10\.0\.2\.2 dev tap0/);
    await running(a);
    await cleanup(a);
  });

  it("a container's fuse-overlayfs killed: the container fails and says why; it is removable", async () => {
    const a = await podWithContainer(daemon, 'rootfs-dies', [
      'sh',
      '-c',
      'while cat /etc/passwd >/dev/null; do usleep 100000; done; exit 9',
    ]);
    const ps = await daemon.enter(['pgrep', '-a', 'fuse-overlayfs']);
    const line = ps.stdout.split('\n').find((l) => l.includes(a.ctr));
    expect(line, ps.stdout).toBeDefined();
    await daemon.enter(['kill', '-9', line!.split(' ')[0]!]);
    const status = await until(
      'the container',
      async () => (await daemon.client.runtime('ContainerStatus', { container_id: a.ctr })).status!,
      (s) => s.state === 'CONTAINER_EXITED',
    );
    expect(status.exit_code).not.toBe(0);
    expect(status.message).toMatch(/root filesystem went away/);
    await cleanup(a);
  });
});

describe('a disk that fills up', () => {
  let daemon: TestDaemon;
  let bridge: NodeBridge | undefined;
  let logs: string;

  beforeAll(async () => {
    daemon = await TestDaemon.start({
      extraConfig: mirrorConfig(registry.url),
      rootTmpfs: { sizeBytes: 48 * 1024 * 1024, inodes: 4096 },
    });
    bridge = await exposeInNode(await daemon.nodePid(), registry.port);
    await daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 120_000 });
    logs = path.join(daemon.rootDir, 'logs');
  }, 180_000);

  afterAll(async () => {
    await bridge?.close();
    await daemon?.stop();
  });

  it('a container writing logs fills it: stop, list, status and removal still work, also after a restart', async () => {
    const name = 'filler';
    const logDir = path.join(logs, name);
    await mkdir(logDir, { recursive: true });
    await chown(logs, daemon.user.uid, daemon.user.gid);
    await chown(logDir, daemon.user.uid, daemon.user.gid);
    const config = podConfig(name, { log_directory: logDir });
    const pod = (await daemon.client.runtime('RunPodSandbox', { config } as never)).pod_sandbox_id!;
    const ctr = (
      await daemon.client.runtime('CreateContainer', {
        pod_sandbox_id: pod,
        sandbox_config: config,
        config: {
          metadata: { name: 'writer', attempt: 0 },
          image: { image: BUSYBOX },
          command: [
            'sh',
            '-c',
            'while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done',
          ],
          log_path: 'writer.log',
        },
      } as never)
    ).container_id!;
    await daemon.client.runtime('StartContainer', { container_id: ctr });
    const df = async () =>
      Number((await execa('df', ['--output=avail', '-B1', daemon.rootDir])).stdout.split('\n')[1]);
    await until('the disk to fill', df, (avail) => avail < 64 * 1024, 60_000);
    // New work fails with RESOURCE_EXHAUSTED naming the place; nothing of it is left.
    const err = await daemon.client
      .runtime('RunPodSandbox', { config: podConfig('no-room') } as never)
      .catch((e: unknown) => e);
    expect(grpcCode(err), String(err)).toBe(status.RESOURCE_EXHAUSTED);
    // Stopping the writer is recorded (the store's space reserve), and reads never write.
    await daemon.client.runtime('StopContainer', { container_id: ctr, timeout: '0' });
    expect((await daemon.client.runtime('ContainerStatus', { container_id: ctr })).status!.state).toBe(
      'CONTAINER_EXITED',
    );
    expect((await daemon.client.runtime('ListContainers', {})).containers).toHaveLength(1);
    // A restart on the full disk: everything still answers.
    await daemon.kill9();
    await daemon.serve();
    expect((await daemon.client.runtime('ListContainers', {})).containers).toHaveLength(1);
    expect((await daemon.client.runtime('ContainerStatus', { container_id: ctr })).status!.state).toBe(
      'CONTAINER_EXITED',
    );
    await daemon.client.runtime('RemoveContainer', { container_id: ctr });
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
    expect(await nodeLeftovers(daemon)).toEqual([]);
    // kubelet removes the log directory; then new pods work again.
    await rm(logDir, { recursive: true, force: true });
    const again = (await daemon.client.runtime('RunPodSandbox', { config: podConfig('room-again') } as never))
      .pod_sandbox_id!;
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: again });
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: again });
  });

  it('a pull onto a full disk fails RESOURCE_EXHAUSTED and leaves no partial blob or layer', async () => {
    const filler = path.join(logs, 'ballast');
    await mkdir(logs, { recursive: true });
    // The image goes first (that frees its space), then zeros until the disk is full.
    await daemon.client.image('RemoveImage', { image: { image: BUSYBOX } });
    await execa('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], { reject: false });
    const err = await daemon.client
      .image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 60_000 })
      .catch((e: unknown) => e);
    expect(grpcCode(err), String(err)).toBe(status.RESOURCE_EXHAUSTED);
    const image = path.join(daemon.rootDir, 'image');
    expect(await readdir(path.join(image, 'content', 'ingest')).catch(() => [])).toEqual([]);
    expect(
      (await readdir(path.join(image, 'layers')).catch(() => [] as string[])).filter((n) =>
        n.startsWith('.'),
      ),
    ).toEqual([]);
    await rm(filler, { force: true });
    await daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 60_000 });
  });

  it('the inode table full: new pods fail RESOURCE_EXHAUSTED; what exists stops and goes', async () => {
    const a = await podWithContainer(daemon, 'before-inodes-run-out');
    const many = path.join(logs, 'inodes');
    await mkdir(many, { recursive: true });
    // Empty files until the filesystem has no inode left (the tmpfs has a few thousand); the
    // shell creates them itself, no process per file.
    await execa('sh', ['-c', `i=0; while : >"${many}/f$i"; do i=$((i+1)); done 2>/dev/null`], {
      reject: false,
    });
    const err = await daemon.client
      .runtime('RunPodSandbox', { config: podConfig('no-inodes') } as never)
      .catch((e: unknown) => e);
    expect(grpcCode(err), String(err)).toBe(status.RESOURCE_EXHAUSTED);
    await daemon.client.runtime('StopContainer', { container_id: a.ctr, timeout: '0' });
    await daemon.client.runtime('RemoveContainer', { container_id: a.ctr });
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: a.pod });
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: a.pod });
    await rm(many, { recursive: true, force: true });
    expect(await nodeLeftovers(daemon)).toEqual([]);
  });
});
