/**
 * kubelet v1.36 in standalone mode with PodAndContainerStatsFromCRI: pod and container figures
 * come from the runtime (ListPodSandboxStats, ListPodSandboxMetrics), not from cadvisor, which
 * sees little inside a user namespace. One static pod holds 20 MB of memory and reads a file
 * from an image volume (an image mounted read-only by kubelet's `volumes[].image`, with
 * `subPath`); /stats/summary and /metrics/cadvisor must show that pod as it is (memory in
 * /metrics/cadvisor comes from the processes where the memory controller is not delegated;
 * /stats/summary's from ContainerStats, which reports it only from the cgroup).
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import {
  buildCatalogue,
  catalogueEntry,
  HTTP_SERVER_INDEX_HTML,
  pushCatalogue,
} from '../fixtures/test-images.js';
import { mirrorConfig, TestDaemon } from '../harness/daemon.js';
import {
  CLI,
  check,
  httpsRequest,
  KUBELET_SH,
  k8sBinary,
  NodeProcess,
  type PodStatus,
  podRunning,
  publishPort,
  StopWaiting,
  userDirs,
  waitFor,
  writeUserFile,
} from './k8s-harness.js';

const REPORT_DIR =
  process.env.ROOTLESS_CRI_REPORT_DIR ?? path.resolve(import.meta.dirname, '../../.work/reports');
const NODE_NAME = 'rcri-cri-stats';
const SUITE = 'kubelet with CRI stats';
const BUSYBOX = `registry.k8s.io/${catalogueEntry('busybox').repository}:1.29-2`;
const HTTP_SERVER = `registry.k8s.io/${catalogueEntry('http-server').repository}:1`;
const POD = `stats-${NODE_NAME}`;

const MANIFEST = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name: 'stats', namespace: 'default' },
  spec: {
    terminationGracePeriodSeconds: 1,
    volumes: [{ name: 'web', image: { reference: HTTP_SERVER, pullPolicy: 'IfNotPresent' } }],
    containers: [
      {
        name: 'main',
        image: BUSYBOX,
        // 20 MB held by the shell; `exit` keeps it from exec'ing sleep and dropping them.
        command: ['sh', '-c', 'x=$(head -c 20000000 /dev/zero | tr "\\0" a); sleep 3600; exit 0'],
        volumeMounts: [{ name: 'web', mountPath: '/vol', subPath: 'www', readOnly: true }],
      },
    ],
  },
};

describe('standalone kubelet taking pod stats from the runtime', { timeout: 150_000 }, () => {
  let registry: RunningRegistry;
  let daemon: TestDaemon;
  let kubelet: NodeProcess | undefined;
  let kubeletPort = 0;

  const kubeletApi = (urlPath: string, method = 'GET') =>
    httpsRequest(`https://127.0.0.1:${kubeletPort}${urlPath}`, { method });

  beforeAll(async () => {
    const { images } = await buildCatalogue({
      cacheDir: path.join(REPORT_DIR, '..', 'test-images'),
      names: ['busybox', 'http-server'],
    });
    registry = await startRegistry();
    await pushCatalogue(registry.host, images);
    daemon = await TestDaemon.start({
      extraConfig: `${mirrorConfig(registry.url)}\n[node]\nhostname = "${NODE_NAME}"\n`,
    });
    const k8s = path.join(daemon.tmp, 'k8s');
    const manifests = path.join(k8s, 'manifests');
    const dropins = path.join(k8s, 'kubelet.conf.d');
    await userDirs(daemon, k8s, manifests, dropins, path.join(k8s, 'run'));
    await writeUserFile(
      daemon,
      path.join(dropins, '90-cri-stats.conf'),
      [
        'apiVersion: kubelet.config.k8s.io/v1beta1',
        'kind: KubeletConfiguration',
        'fileCheckFrequency: 1s',
        'featureGates:',
        '  KubeletInUserNamespace: true',
        '  PodAndContainerStatsFromCRI: true',
        '',
      ].join('\n'),
    );
    await writeUserFile(daemon, path.join(manifests, 'stats.json'), JSON.stringify(MANIFEST));
    kubelet = await NodeProcess.start(daemon, 'kubelet', [KUBELET_SH, '--', '--v=2'], {
      KUBELET: k8sBinary('kubelet'),
      ROOTLESS_CRI: `${process.execPath} ${CLI}`,
      ROOTLESS_CRI_CONFIG: daemon.configFile,
      ROOTLESS_CRI_SOCKET: daemon.socket,
      KUBELET_ROOT_DIR: path.join(k8s, 'kubelet'),
      KUBELET_MANIFESTS: manifests,
      KUBELET_DROPINS: dropins,
      KUBELET_RUN_DIR: path.join(k8s, 'run'),
    });
    kubeletPort = await publishPort(daemon, '127.0.0.1', 10250);
    await waitFor('the stats pod to run', async () => {
      if (!kubelet?.running) throw new StopWaiting(`kubelet exited:\n${await kubelet?.logTail()}`);
      const r = await kubeletApi('/pods').catch(() => undefined);
      if (r?.status !== 200) return undefined;
      const pod = (JSON.parse(r.body) as { items: PodStatus[] }).items.find((p) => p.metadata.name === POD);
      return pod && podRunning(pod) ? true : undefined;
    });
  }, 240_000);

  afterAll(async () => {
    if (kubelet) {
      const log = await kubelet.logTail(40);
      await kubelet.stop();
      if (process.env.ROOTLESS_CRI_K8S_LOGS) console.log(`kubelet log tail:\n${log}`);
    }
    await daemon?.stop();
    await registry?.stop();
  }, 180_000);

  it('mounts the image volume read-only at its subPath', async () => {
    const run = (command: string) =>
      kubeletApi(`/run/default/${POD}/main?cmd=${encodeURIComponent(command)}`, 'POST');
    const read = await run('cat /vol/index.html');
    expect(read.status, read.body).toBe(200);
    expect(read.body).toBe(HTTP_SERVER_INDEX_HTML);
    const write = await run('touch /vol/new');
    expect(write.body).toMatch(/Read-only file system/);
    await check(SUITE, 'an image volume (volumes[].image, subPath) is mounted read-only');
  });

  it('answers /stats/summary and /metrics/cadvisor from the runtime, with memory and network', async () => {
    const summary = await waitFor('the pod in /stats/summary with memory and network', async () => {
      const r = await kubeletApi('/stats/summary');
      if (r.status !== 200) return undefined;
      const pods = (
        JSON.parse(r.body) as {
          pods: {
            podRef: { name: string };
            memory?: { workingSetBytes?: number };
            network?: { name?: string; rxBytes?: number };
            containers?: { name: string; memory?: { workingSetBytes?: number } }[];
          }[];
        }
      ).pods;
      const pod = pods.find((p) => p.podRef.name === POD);
      return pod?.network?.name ? pod : undefined;
    });
    expect(summary.network?.name).toBe('eth0');
    expect(summary.network?.rxBytes ?? 0).toBeGreaterThan(0);
    // ContainerStats reports memory only from the cgroup's memory files: 0 (unknown) where the
    // memory controller is not delegated, as on a hybrid-cgroup host; else the real figure.
    const main = summary.containers?.find((c) => c.name === 'main');
    const summaryMemory = main?.memory?.workingSetBytes ?? 0;
    if (summaryMemory !== 0) expect(summaryMemory).toBeGreaterThanOrEqual(20_000_000);

    // The container builds its 20 MB string after it starts (slower on a loaded machine): wait
    // until the working set shows it, rather than read it once.
    let metrics = { status: 0, body: '' };
    const line = await waitFor('the container working set of 20 MB in /metrics/cadvisor', async () => {
      metrics = await kubeletApi('/metrics/cadvisor');
      const found = metrics.body
        .split('\n')
        .find((l) => l.startsWith('container_memory_working_set_bytes{') && l.includes('container="main"'));
      return found && Number(found.split(' ')[1]) >= 20_000_000 ? found : undefined;
    }).catch((err: unknown) => {
      throw new Error(`${String(err)}\n${metrics.status} ${metrics.body.slice(0, 2000)}`);
    });
    expect(line).toContain(`pod="${POD}"`);
    expect(line).toContain('namespace="default"');
    expect(metrics.body).toMatch(
      new RegExp(`^container_network_receive_bytes_total\\{[^}]*interface="eth0"[^}]*pod="${POD}"`, 'm'),
    );
    await check(
      SUITE,
      '/stats/summary and /metrics/cadvisor come from ListPodSandboxStats / ListPodSandboxMetrics',
      `container working set in /metrics/cadvisor ${Math.round(Number(line!.split(' ')[1]) / 1e6)} MB, in /stats/summary ${Math.round(summaryMemory / 1e6)} MB; pod network on eth0`,
    );
  });
});
