/**
 * A real kubelet (built by deploy/kubernetes/build.sh) in standalone mode inside a test daemon's
 * node, started with deploy/kubelet/kubelet.sh and the shipped kubelet.yaml, running static pods
 * from images the tests built and serve from a local registry. What kubelet reports is read from
 * its API (/pods, /containerLogs, /run), published on the host's 127.0.0.1.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, catalogueEntry, HTTP_SERVER_PORT, pushCatalogue } from '../fixtures/test-images.js';
import { mirrorConfig, TestDaemon } from '../harness/daemon.js';
import {
  CLI,
  check,
  containerStatus,
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
const NODE_NAME = 'rcri-standalone';
const SUITE = 'standalone kubelet';
const BUSYBOX = `registry.k8s.io/${catalogueEntry('busybox').repository}:1.29-2`;
const HTTP_SERVER = `registry.k8s.io/${catalogueEntry('http-server').repository}:1`;
/** CRI log line: RFC 3339 time, stream, P(artial) or F(ull) tag, message. */
const CRI_LOG_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) (stdout|stderr) [PF] .*$/;

function pod(name: string, spec: Record<string, unknown>): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'default' },
    // busybox sh as PID 1 ignores SIGTERM: do not wait 30 s for it on every restart.
    spec: { terminationGracePeriodSeconds: 1, ...spec },
  };
}

const MANIFESTS: Record<string, Record<string, unknown>> = {
  probes: pod('probes', {
    containers: [
      {
        name: 'web',
        image: HTTP_SERVER,
        livenessProbe: {
          httpGet: { path: '/index.html', port: HTTP_SERVER_PORT },
          periodSeconds: 1,
          failureThreshold: 1,
        },
      },
      {
        name: 'execprobe',
        image: BUSYBOX,
        command: ['sh', '-c', 'touch /tmp/alive; echo exec-start; exec sleep 3600'],
        livenessProbe: { exec: { command: ['cat', '/tmp/alive'] }, periodSeconds: 1, failureThreshold: 1 },
      },
      {
        name: 'gate',
        image: BUSYBOX,
        command: ['sleep', '3600'],
        readinessProbe: { exec: { command: ['cat', '/tmp/ready'] }, periodSeconds: 1, failureThreshold: 1 },
      },
    ],
  }),
  // Crashes twice (exit 3), then stays up: a settled state to read `previous` logs from (kubelet
  // removes older dead containers while a crash loop goes on).
  crash: pod('crash', {
    volumes: [{ name: 'count', emptyDir: {} }],
    containers: [
      {
        name: 'crash',
        image: BUSYBOX,
        command: [
          'sh',
          '-c',
          'n=$(($(cat /count/n 2>/dev/null || echo 0) + 1)); echo $n > /count/n; echo crash-run-$n; ' +
            '[ $n -ge 3 ] && exec sleep 3600; exit 3',
        ],
        volumeMounts: [{ name: 'count', mountPath: '/count' }],
      },
    ],
  }),
  init: pod('init', {
    volumes: [{ name: 'shared', emptyDir: {} }],
    initContainers: [
      {
        name: 'prepare',
        image: BUSYBOX,
        command: ['sh', '-c', 'echo written-by-init > /data/greeting'],
        volumeMounts: [{ name: 'shared', mountPath: '/data' }],
      },
    ],
    containers: [
      {
        name: 'main',
        image: BUSYBOX,
        command: ['sh', '-c', 'cat /data/greeting; exec sleep 3600'],
        volumeMounts: [{ name: 'shared', mountPath: '/data' }],
      },
    ],
  }),
  victim: pod('victim', {
    containers: [{ name: 'sleeper', image: BUSYBOX, command: ['sleep', '3600'] }],
  }),
};

// Each check waits on its own deadlines (waitFor: 90 s), longer than vitest's 60 s default.
describe('standalone kubelet with static pods', { timeout: 150_000 }, () => {
  let registry: RunningRegistry;
  let daemon: TestDaemon;
  let kubelet: NodeProcess | undefined;
  let kubeletPort = 0;
  let manifests = '';
  let kubeletEnv: Record<string, string> = {};

  const kubeletApi = (urlPath: string, method = 'GET') =>
    httpsRequest(`https://127.0.0.1:${kubeletPort}${urlPath}`, { method });
  const pods = async (): Promise<PodStatus[]> => {
    const r = await kubeletApi('/pods');
    if (r.status !== 200) throw new Error(`kubelet /pods answered ${r.status}: ${r.body}`);
    return (JSON.parse(r.body) as { items: PodStatus[] }).items;
  };
  const podNamed = async (name: string) =>
    (await pods()).find((p) => p.metadata.name === `${name}-${NODE_NAME}`);
  /** Waits until `predicate` holds for the pod; returns the pod. */
  const waitPod = (name: string, what: string, predicate: (p: PodStatus) => boolean, timeoutMs = 90_000) =>
    waitFor(
      `pod ${name}: ${what}`,
      async () => {
        const p = await podNamed(name);
        return p && predicate(p) ? p : undefined;
      },
      timeoutMs,
    );
  /** kubelet's /run: runs a command in a container through CRI ExecSync. */
  const runIn = async (podName: string, container: string, command: string) => {
    const r = await kubeletApi(
      `/run/default/${podName}-${NODE_NAME}/${container}?cmd=${encodeURIComponent(command)}`,
      'POST',
    );
    if (r.status !== 200) throw new Error(`kubelet /run ${command} answered ${r.status}: ${r.body}`);
    return r.body;
  };
  const containerLogs = async (podName: string, container: string, previous = false) => {
    const r = await kubeletApi(
      `/containerLogs/default/${podName}-${NODE_NAME}/${container}${previous ? '?previous=true' : ''}`,
    );
    if (r.status !== 200) throw new Error(`kubelet /containerLogs answered ${r.status}: ${r.body}`);
    return r.body;
  };
  const startKubelet = async () => {
    kubelet = await NodeProcess.start(daemon, 'kubelet', [KUBELET_SH, '--', '--v=2'], kubeletEnv);
    kubeletPort = await publishPort(daemon, '127.0.0.1', 10250);
    await waitFor('kubelet to answer /healthz', async () => {
      if (!kubelet?.running) throw new StopWaiting(`kubelet exited:\n${await kubelet?.logTail()}`);
      const r = await kubeletApi('/healthz').catch(() => undefined);
      return r?.status === 200 ? true : undefined;
    });
  };
  const writeManifest = (name: string) =>
    writeUserFile(daemon, path.join(manifests, `${name}.json`), JSON.stringify(MANIFESTS[name]));
  const allRunning = (p: PodStatus) => podRunning(p, p.metadata.name.startsWith('probes') ? ['gate'] : []);
  const runningPodNames = ['probes', 'init', 'victim'];
  /** Container IDs and restart counts of every running pod, to compare across restarts. */
  const snapshot = async () => {
    const out: Record<string, string> = {};
    for (const p of await pods()) {
      for (const c of p.status.containerStatuses ?? []) {
        out[`${p.metadata.name}/${c.name}`] = `${c.containerID} restarts=${c.restartCount}`;
      }
    }
    return out;
  };

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
    manifests = path.join(k8s, 'manifests');
    const dropins = path.join(k8s, 'kubelet.conf.d');
    await userDirs(daemon, k8s, manifests, dropins, path.join(k8s, 'run'));
    // Test pacing only: pick up manifest changes and restart crashed containers quickly.
    await writeUserFile(
      daemon,
      path.join(dropins, '90-test.conf'),
      [
        'apiVersion: kubelet.config.k8s.io/v1beta1',
        'kind: KubeletConfiguration',
        'fileCheckFrequency: 1s',
        'crashLoopBackOff: {maxContainerRestartPeriod: 1s}',
        '',
      ].join('\n'),
    );
    kubeletEnv = {
      KUBELET: k8sBinary('kubelet'),
      ROOTLESS_CRI: `${process.execPath} ${CLI}`,
      ROOTLESS_CRI_CONFIG: daemon.configFile,
      ROOTLESS_CRI_SOCKET: daemon.socket,
      KUBELET_ROOT_DIR: path.join(k8s, 'kubelet'),
      KUBELET_MANIFESTS: manifests,
      KUBELET_DROPINS: dropins,
      KUBELET_RUN_DIR: path.join(k8s, 'run'),
    };
    for (const name of Object.keys(MANIFESTS)) await writeManifest(name);
    await startKubelet();
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

  it('runs every static pod under the node name set in the config', async () => {
    for (const name of runningPodNames) await waitPod(name, 'running', allRunning);
    const hostname = await daemon.enter(['hostname']);
    expect(hostname.stdout.trim()).toBe(NODE_NAME);
    // What `rootless-cri enter` runs (kubelet too) sits in a leaf of the node's cgroup tree.
    const cgroup = await daemon.enter(['cat', '/proc/self/cgroup']);
    expect(cgroup.stdout).toMatch(/^0::\/enter$/m);
    const kubeletPid = await kubelet!.commandHostPid();
    expect(await readFile(`/proc/${kubeletPid}/comm`, 'utf8')).toBe('kubelet\n');
    expect(await readFile(`/proc/${kubeletPid}/cgroup`, 'utf8')).toMatch(
      new RegExp(`/${daemon.cgroupSubtree}/enter$`, 'm'),
    );
    await check(
      SUITE,
      'static pods running; node named by node.hostname; kubelet in the node cgroup leaf enter/',
      runningPodNames.join(', '),
    );
  });

  it('writes CRI-format logs that kubelet reads back', async () => {
    await waitFor('exec-start in the execprobe log', async () =>
      (await containerLogs('probes', 'execprobe')).includes('exec-start') ? true : undefined,
    );
    const p = (await podNamed('probes'))!;
    // The node's /var/log is <root_dir>/node/log on the host.
    const podDir = path.join(
      daemon.rootDir,
      'node/log/pods',
      `default_probes-${NODE_NAME}_${p.metadata.uid}`,
    );
    const lines = (await readFile(path.join(podDir, 'execprobe', '0.log'), 'utf8')).trim().split('\n');
    for (const line of lines) expect(line).toMatch(CRI_LOG_LINE);
    const links = await readdir(path.join(daemon.rootDir, 'node/log/containers'));
    expect(links.some((l) => l.startsWith(`probes-${NODE_NAME}_default_execprobe-`))).toBe(true);
    await check(SUITE, 'CRI-format log file in /var/log/pods, read back by kubelet /containerLogs');
  });

  it('restarts a container whose httpGet liveness probe fails', async () => {
    await runIn('probes', 'web', '/bin/rm /www/index.html');
    const p = await waitPod('probes', 'web restarted and ready again', (p) => {
      const web = containerStatus(p, 'web');
      return (web?.restartCount ?? 0) >= 1 && web?.ready === true;
    });
    expect(containerStatus(p, 'web')?.lastState.terminated).toBeDefined();
    await check(SUITE, 'httpGet liveness failure restarts the container');
  });

  it('restarts a container whose exec liveness probe fails', async () => {
    await runIn('probes', 'execprobe', 'rm /tmp/alive');
    await waitPod('probes', 'execprobe restarted and ready again', (p) => {
      const c = containerStatus(p, 'execprobe');
      return (c?.restartCount ?? 0) >= 1 && c?.ready === true;
    });
    await check(SUITE, 'exec liveness failure restarts the container');
  });

  it('follows a readiness probe both ways without restarting', async () => {
    expect(containerStatus((await podNamed('probes'))!, 'gate')?.ready).toBe(false);
    await runIn('probes', 'gate', 'touch /tmp/ready');
    await waitPod('probes', 'gate ready', (p) => containerStatus(p, 'gate')?.ready === true);
    await runIn('probes', 'gate', 'rm /tmp/ready');
    const p = await waitPod('probes', 'gate not ready', (p) => containerStatus(p, 'gate')?.ready === false);
    expect(containerStatus(p, 'gate')?.restartCount).toBe(0);
    expect(p.status.conditions?.find((c) => c.type === 'Ready')?.status).toBe('False');
    await check(SUITE, 'readiness probe: not ready -> ready -> not ready, no restart');
  });

  it('restarts a crashing container and keeps the previous log', async () => {
    const p = await waitPod('crash', 'running after two crashes', (p) => {
      const c = containerStatus(p, 'crash');
      return c?.restartCount === 2 && c.state.running !== undefined;
    });
    expect(containerStatus(p, 'crash')?.lastState.terminated?.exitCode).toBe(3);
    expect(await containerLogs('crash', 'crash', true)).toBe('crash-run-2\n');
    expect(await containerLogs('crash', 'crash')).toBe('crash-run-3\n');
    await check(SUITE, 'crash loop: two restarts after exit 3, `previous` log of the last crash');
  });

  it('runs init containers before the main one, sharing an emptyDir', async () => {
    const p = (await podNamed('init'))!;
    const init = p.status.initContainerStatuses?.[0];
    expect(init?.state.terminated?.exitCode).toBe(0);
    expect(await containerLogs('init', 'main')).toContain('written-by-init');
    await check(SUITE, 'init container + emptyDir');
  });

  it('restarts a container whose process is killed with SIGKILL', async () => {
    const before = containerStatus((await podNamed('victim'))!, 'sleeper')!;
    const id = before.containerID!.replace(/^[^:]+:\/\//, '');
    const inspect = await daemon.crictl(['inspect', id]);
    const pid = (JSON.parse(inspect.stdout) as { info: { pid: number } }).info.pid;
    expect(pid).toBeGreaterThan(1);
    const killed = await daemon.enter(['kill', '-9', String(pid)]);
    expect(killed.exitCode).toBe(0);
    const p = await waitPod('victim', 'sleeper restarted', (p) => {
      const c = containerStatus(p, 'sleeper');
      return (c?.restartCount ?? 0) > before.restartCount && c?.state.running !== undefined;
    });
    expect(containerStatus(p, 'sleeper')?.lastState.terminated?.exitCode).toBe(137);
    await check(SUITE, 'kill -9 of the container process: restarted, exit code 137');
  });

  it('stops a pod whose manifest is deleted, and kubelet forgets it', async () => {
    const crashPod = `crash-${NODE_NAME}`;
    await rm(path.join(manifests, 'crash.json'));
    await waitFor('crash gone from kubelet', async () => ((await podNamed('crash')) ? undefined : true));
    // kubelet stops the sandbox at once; its container GC removes it within a minute.
    await waitFor('no ready crash sandbox in the runtime', async () => {
      const r = await daemon.crictl(['pods', '--name', crashPod, '--state', 'ready', '-q']);
      return r.exitCode === 0 && r.stdout.trim() === '' ? true : undefined;
    });
    await check(SUITE, 'manifest removed: pod gone from kubelet, its sandbox stopped');
  });

  it('keeps every container across a kubelet restart', async () => {
    const before = await snapshot();
    // SIGTERM reaches kubelet itself: `rootless-cri enter` forwards it past nsenter.
    expect(await kubelet!.stop()).toBe(true);
    await startKubelet();
    for (const name of runningPodNames) await waitPod(name, 'running after the kubelet restart', allRunning);
    expect(await snapshot()).toEqual(before);
    await check(SUITE, 'kubelet restart: same containers, same restart counts');
  });

  it('recovers every pod after the daemon is killed with SIGKILL', async () => {
    const before = await snapshot();
    await daemon.kill9();
    await daemon.serve();
    for (const name of runningPodNames) await waitPod(name, 'running after the daemon restart', allRunning);
    expect(await snapshot()).toEqual(before);
    expect(kubelet!.running).toBe(true);
    // kubelet works with the new daemon: an exec into an old container, a new pod. Its gRPC
    // connection comes back on grpc-go's reconnect backoff, so the first calls may still fail.
    const restarted = Date.now();
    await waitFor('kubelet to exec through the new daemon', async () =>
      (await runIn('victim', 'sleeper', 'echo still-here')) === 'still-here\n' ? true : undefined,
    );
    const reconnect = ((Date.now() - restarted) / 1000).toFixed(1);
    await writeUserFile(
      daemon,
      path.join(manifests, 'later.json'),
      JSON.stringify(
        pod('later', {
          containers: [{ name: 'later', image: BUSYBOX, command: ['sleep', '3600'] }],
        }),
      ),
    );
    runningPodNames.push('later');
    await waitPod('later', 'running', allRunning);
    await check(
      SUITE,
      'daemon kill -9 + serve: same containers, then exec and a new pod through the new daemon',
      `kubelet's exec went through ${reconnect} s after the daemon answered again`,
    );
  });

  // The regression test for the stale netns pin: a sandbox that was running when the node
  // stopped must be stoppable and removable afterwards (CNI DEL without the gone namespace), or
  // kubelet retries KillPodSandbox forever and never recreates the pod.
  it('recovers every pod after the node is stopped and started again', async () => {
    const before = await snapshot();
    const oldSandboxes = (await daemon.crictl(['pods', '--state', 'ready', '-q'])).stdout
      .trim()
      .split('\n')
      .filter(Boolean);
    const stopped = await daemon.cli(['stop', '--all']);
    expect(stopped.exitCode).toBe(0);
    // kubelet lived in the node: it is gone with it.
    await kubelet!.exited();
    await daemon.serve();
    await startKubelet();
    for (const name of runningPodNames) await waitPod(name, 'running in the new node', allRunning, 120_000);
    const after = await snapshot();
    for (const key of Object.keys(before)) expect(after[key]).not.toBe(before[key]);
    // One ready sandbox per pod, in the new node. The old ones stay NOTREADY, with the reason,
    // until kubelet's garbage collection removes them: it keeps one dead instance of each
    // container (--maximum-dead-containers-per-container, for `logs --previous`), and with it
    // the sandbox, as it does on containerd after a reboot. (A sandbox stopped before keeps its
    // own story: only the ready ones ran in the node that went.)
    for (const name of runningPodNames) {
      const ready = await daemon.crictl(['pods', '--name', name, '--state', 'ready', '-q']);
      expect(ready.stdout.trim().split('\n').filter(Boolean), name).toHaveLength(1);
      expect(oldSandboxes).not.toContain(ready.stdout.trim());
    }
    const stillListed = new Set((await daemon.crictl(['pods', '-q'])).stdout.trim().split('\n'));
    for (const id of oldSandboxes.filter((i) => stillListed.has(i))) {
      const info = JSON.parse((await daemon.crictl(['inspectp', id])).stdout);
      expect(info.status.state, id).toBe('SANDBOX_NOTREADY');
      expect(info.info.notReadyReason, id).toMatch(/node this pod ran in is gone/);
    }
    await check(
      SUITE,
      'node stop --all + serve: kubelet recreates every pod; old sandboxes NOTREADY with the reason',
    );
  }, 240_000);
});
