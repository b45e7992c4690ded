/**
 * A client that gives up (its deadline passes) mid-way through each long RPC: RunPodSandbox
 * (a CNI plugin that hangs), CreateContainer (an OCI runtime that hangs in create), StopContainer
 * (a container that ignores its stop signal for the whole grace period), ExecSync (a command
 * that never ends, no ExecSync timeout) and PullImage (a registry that stops sending a blob).
 * After each: the helper processes the RPC started are gone, and the object is in a defined
 * state (rolled back, or stopped), with nothing left behind (the harness's leak check at the end).
 *
 * The hang is conditional, so everything else works normally: the CNI plugin and the crun
 * wrapper hang only for requests carrying a marker.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeRegistry, sha256 } from '../fakes/fake-registry.js';
import { exposeInNode, type NodeBridge } from '../fixtures/hostile-registry.js';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, pushCatalogue } from '../fixtures/test-images.js';
import { grpcCode } from '../harness/cri-client.js';
import { mirrorConfig, TestDaemon } from '../harness/daemon.js';
import { until } from '../harness/until.js';

const BUSYBOX = 'registry.k8s.io/e2e-test-images/busybox:1.29-2';
/** A duration nobody else sleeps for: finds the helper processes of this test. */
const HANG = `${3000 + Math.floor(Math.random() * 1000)}.5`;

let daemon: TestDaemon;
let registry: RunningRegistry;
let stalling: FakeRegistry;
let bridges: NodeBridge[] = [];
let scripts: string;

async function writeScript(name: string, text: string): Promise<string> {
  const file = path.join(scripts, name);
  await writeFile(file, text);
  await chmod(file, 0o755);
  return file;
}

/** The test user's processes whose command line contains `pattern` (host view). */
async function processes(pattern: string): Promise<string[]> {
  const r = await daemon.asUser(['pgrep', '-u', String(daemon.user.uid), '-af', pattern]);
  return r.stdout.split('\n').filter((l) => l.trim() !== '' && !l.includes('pgrep'));
}

function pod(name: string) {
  return {
    metadata: { name, namespace: 'cancel', uid: `uid-${name}`, attempt: 0 },
    hostname: name,
    log_directory: '',
    linux: {},
  };
}

beforeAll(async () => {
  scripts = await mkdtemp('/tmp/rcri-cancel-');
  await chmod(scripts, 0o755);
  // A CNI plugin that hangs in ADD for pods named "hang-me", and is the bridge plugin otherwise.
  await writeScript(
    'slow-bridge',
    `#!/bin/sh\ncase "$CNI_COMMAND:$CNI_ARGS" in ADD:*K8S_POD_NAME=hang-me*) sleep ${HANG};; esac\nexec /usr/lib/cni/bridge "$@"\n`,
  );
  const confDir = path.join(scripts, 'cni');
  await mkdir(confDir);
  await writeFile(
    path.join(confDir, '10-slow.conflist'),
    JSON.stringify({
      cniVersion: '1.0.0',
      name: 'slow',
      plugins: [
        {
          type: 'slow-bridge',
          bridge: 'cni-slow',
          isGateway: true,
          ipMasq: false,
          ipam: { type: 'host-local', ranges: [[{ subnet: '10.91.0.0/24' }]] },
        },
      ],
    }),
  );
  // An OCI runtime that hangs in create for containers whose spec carries the marker.
  const crun = await writeScript(
    'slow-crun',
    [
      '#!/bin/sh',
      'prev=; bundle=',
      'for a in "$@"; do if [ "$prev" = --bundle ] || [ "$prev" = -b ]; then bundle=$a; fi; prev=$a; done',
      `if [ -n "$bundle" ] && grep -q RCRI_SLOW_CREATE "$bundle/config.json"; then sleep ${HANG}; fi`,
      'exec /usr/bin/crun "$@"',
      '',
    ].join('\n'),
  );
  const built = await buildCatalogue({
    cacheDir: path.join(process.env.XDG_CACHE_HOME ?? '/root/.cache', 'rootless-cri', 'test-images'),
    names: ['busybox'],
  });
  registry = await startRegistry();
  await pushCatalogue(registry.url, built.images);
  stalling = await FakeRegistry.start('127.0.0.1');
  daemon = await TestDaemon.start({
    extraConfig: [
      '[runtime]',
      `crun = "${crun}"`,
      '[network]',
      `cni_conf_dir = "${confDir}"`,
      `cni_bin_dirs = ["${scripts}", "/usr/lib/cni"]`,
      mirrorConfig(registry.url),
    ].join('\n'),
  });
  bridges = [
    await exposeInNode(await daemon.nodePid(), registry.port),
    await exposeInNode(await daemon.nodePid(), Number(stalling.host.split(':')[1])),
  ];
  await daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 120_000 });
}, 240_000);

afterAll(async () => {
  for (const b of bridges) await b.close();
  await daemon?.stop();
  await registry?.stop();
  await stalling?.close();
  await rm(scripts, { recursive: true, force: true });
});

describe('a client deadline mid-way through a long RPC', () => {
  it('RunPodSandbox: the hanging CNI plugin is killed and the sandbox rolled back', async () => {
    const err = await daemon.client
      .runtime('RunPodSandbox', { config: pod('hang-me') } as never, { timeoutMs: 3_000 })
      .catch((e: unknown) => e);
    expect(grpcCode(err), String(err)).toBe(status.DEADLINE_EXCEEDED);
    await until(
      'the plugin',
      () => processes(`sleep ${HANG}`),
      (p) => p.length === 0,
    );
    await until(
      'the sandbox',
      async () => (await daemon.client.runtime('ListPodSandbox', {})).items?.length ?? -1,
      (n) => n === 0,
    );
    expect(await readdir(path.join(daemon.runDir, 'netns')).catch(() => [])).toEqual([]);
    // The same pod can be made at once, and is removable.
    const ok = await daemon.client.runtime('RunPodSandbox', { config: pod('after-hang') } as never);
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: ok.pod_sandbox_id });
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: ok.pod_sandbox_id });
  });

  describe('in a pod', () => {
    let podId = '';
    const sandboxConfig = pod('workload');

    beforeAll(async () => {
      podId = (await daemon.client.runtime('RunPodSandbox', { config: sandboxConfig } as never))
        .pod_sandbox_id!;
    });
    afterAll(async () => {
      await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: podId });
      await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: podId });
    });

    const container = (name: string, command: string[], env: { key: string; value: Buffer }[] = []) => ({
      pod_sandbox_id: podId,
      config: { metadata: { name, attempt: 0 }, image: { image: BUSYBOX }, command, envs: env },
      sandbox_config: sandboxConfig,
    });

    it('CreateContainer: the hanging runtime (conmon, crun) is killed and the container rolled back', async () => {
      const err = await daemon.client
        .runtime(
          'CreateContainer',
          container('slow', ['sleep', '60'], [{ key: 'RCRI_SLOW_CREATE', value: Buffer.from('1') }]) as never,
          {
            timeoutMs: 3_000,
          },
        )
        .catch((e: unknown) => e);
      expect(grpcCode(err), String(err)).toBe(status.DEADLINE_EXCEEDED);
      await until(
        'the runtime',
        () => processes(`sleep ${HANG}`),
        (p) => p.length === 0,
      );
      await until(
        'the container',
        async () => (await daemon.client.runtime('ListContainers', {})).containers?.length ?? -1,
        (n) => n === 0,
      );
      expect(await processes('conmon')).toEqual([]);
    });

    it('StopContainer: the grace period ends with the client, and the container is killed', async () => {
      const id = (
        await daemon.client.runtime(
          'CreateContainer',
          container('stubborn', [
            'sh',
            '-c',
            'trap "echo TERM ignored" TERM; while :; do sleep 1; done',
          ]) as never,
        )
      ).container_id!;
      await daemon.client.runtime('StartContainer', { container_id: id });
      // The trap must be in place before the signal, or PID 1 drops it and dies of SIGKILL at once.
      const caught = async () => {
        const r = await daemon.client.runtime('ExecSync', {
          container_id: id,
          cmd: ['sh', '-c', 'grep SigCgt /proc/1/status'],
          timeout: '5',
        });
        const mask = /SigCgt:\s*([0-9a-f]+)/.exec(r.stdout!.toString())?.[1] ?? '0';
        return (BigInt(`0x${mask}`) & (1n << 14n)) !== 0n; // SIGTERM is signal 15
      };
      await until('the trap', caught, (yes) => yes);
      const started = Date.now();
      const err = await daemon.client
        .runtime('StopContainer', { container_id: id, timeout: '120' }, { timeoutMs: 2_000 })
        .catch((e: unknown) => e);
      expect(grpcCode(err), String(err)).toBe(status.DEADLINE_EXCEEDED);
      const exited = await until(
        'the container',
        async () => (await daemon.client.runtime('ContainerStatus', { container_id: id })).status!,
        (s) => s.state === 'CONTAINER_EXITED',
      );
      expect(Date.now() - started).toBeLessThan(20_000);
      expect(exited.exit_code).toBe(137);
      await daemon.client.runtime('RemoveContainer', { container_id: id });
    });

    it('ExecSync: a command without a timeout is killed when the client goes', async () => {
      const id = (
        await daemon.client.runtime('CreateContainer', container('execs', ['sleep', '600']) as never)
      ).container_id!;
      await daemon.client.runtime('StartContainer', { container_id: id });
      const err = await daemon.client
        .runtime('ExecSync', { container_id: id, cmd: ['sleep', HANG], timeout: '0' }, { timeoutMs: 2_000 })
        .catch((e: unknown) => e);
      expect(grpcCode(err), String(err)).toBe(status.DEADLINE_EXCEEDED);
      await until(
        'the exec',
        () => processes(`sleep ${HANG}`),
        (p) => p.length === 0,
      );
      const ps = await daemon.client.runtime('ExecSync', { container_id: id, cmd: ['ps'], timeout: '10' });
      expect(ps.stdout!.toString()).not.toContain(HANG);
      await daemon.client.runtime('RemoveContainer', { container_id: id });
    });
  });

  it('PullImage: a stalled download is dropped, with no blob, layer or temp file left', async () => {
    // A real gzip stream, of which only the header is ever sent: nothing is wrong, it just stops.
    const raw = randomBytes(64 * 1024);
    const blob = gzipSync(raw);
    const image = stalling.pushImage('stall/me', 'v1', {
      layers: [blob],
      config: {
        architecture: 'amd64',
        os: 'linux',
        config: {},
        rootfs: { type: 'layers', diff_ids: [sha256(raw)] },
      },
    });
    const layer = image.layers[0]!.digest;
    stalling.intercept((_req, res, url) => {
      if (!url.pathname.endsWith(`/blobs/${layer}`)) return false;
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': String(blob.length),
      });
      res.write(blob.subarray(0, 10));
      return true;
    });
    const imageDir = path.join(daemon.rootDir, 'image');
    const err = await daemon.client
      .image('PullImage', { image: { image: `${stalling.host}/stall/me:v1` } }, { timeoutMs: 3_000 })
      .catch((e: unknown) => e);
    expect(grpcCode(err), String(err)).toBe(status.DEADLINE_EXCEEDED);
    // The client's deadline ends the call at once; the daemon drops the download and the
    // layer it was unpacking as it streamed (its temp dir) right after: wait for both.
    await until(
      'the download and the streamed unpack',
      async () => ({
        ingest: (await readdir(path.join(imageDir, 'content', 'ingest')).catch(() => [])).length,
        layerTemps: (await readdir(path.join(imageDir, 'layers')).catch(() => [])).filter((n) =>
          n.startsWith('.'),
        ),
        unpackers: await processes('layer-unpack'),
      }),
      (left) => left.ingest === 0 && left.layerTemps.length === 0 && left.unpackers.length === 0,
    );
    const statusAfter = await daemon.client.image('ImageStatus', {
      image: { image: `${stalling.host}/stall/me:v1` },
    });
    expect(statusAfter.image).toBeNull();
    stalling.clearIntercepts();
  });
});
