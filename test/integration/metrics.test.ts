/**
 * /metrics as an operator scrapes it: the real daemon as the unprivileged test user, a
 * scripted workload through the real crictl (pulls, one of an image that does not exist, a
 * pod, containers that complete, fail and lose their monitor, ExecSync, an exec session, a
 * port-forward to a pod's HTTP server and one to a port nobody listens on), scraped on the
 * host's 127.0.0.1 before, during and after. Every family the README lists must have moved.
 * Then a restart over an unreadable container record: recovery and quarantine show it.
 */
import { chown, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import {
  buildCatalogue,
  type CatalogueImage,
  catalogueEntry,
  HTTP_SERVER_INDEX_HTML,
  HTTP_SERVER_PORT,
  pushCatalogue,
} from '../fixtures/test-images.js';
import { crictlPortForward } from '../harness/crictl-port-forward.js';
import { sleep, TestDaemon } from '../harness/daemon.js';

let daemon: TestDaemon;
let registry: RunningRegistry;
let images: CatalogueImage[];
let metricsUrl: string;
let files = 0;
/** Scrapes: before the workload, while its pod runs, after everything was removed. */
let before: Series;
let during: Series;
let after: Series;

type Series = Map<string, number>;

function ref(name: string): string {
  const entry = catalogueEntry(name);
  return `${registry.host}/${entry.repository}:${entry.tags[0]}`;
}

/** Where this daemon serves /metrics on the host (a kernel-assigned port, new at each start). */
async function findMetricsUrl(): Promise<void> {
  const info = JSON.parse(await crictlOk(['info', '-o', 'json'])) as { listeners: { metrics: string } };
  metricsUrl = info.listeners.metrics;
  expect(metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
}

async function scrape(): Promise<Series> {
  const response = await fetch(metricsUrl, { signal: AbortSignal.timeout(10_000) });
  expect(response.status).toBe(200);
  const series: Series = new Map();
  for (const line of (await response.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    series.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return series;
}

/** A series' value (0 when absent: a counter not yet incremented has no labelled series). */
function at(series: Series, name: string): number {
  return series.get(name) ?? 0;
}

function moved(name: string): number {
  return at(after, name) - at(before, name);
}

/** Failures of one operation, whatever their reason. */
function failuresOf(operation: string): number {
  const prefix = `rootless_cri_operation_failures_total{operation="${operation}",`;
  return [...after.keys()].filter((k) => k.startsWith(prefix)).reduce((sum, k) => sum + moved(k), 0);
}

async function userFile(name: string, content: string): Promise<string> {
  const file = path.join(daemon.tmp, `${files++}-${name}`);
  await writeFile(file, content);
  await chown(file, daemon.user.uid, daemon.user.gid);
  return file;
}

async function crictlOk(args: string[]): Promise<string> {
  const r = await daemon.crictl(args);
  if (r.exitCode !== 0) {
    throw new Error(
      `crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}\n${await daemon.logTail()}`,
    );
  }
  return r.stdout.trim();
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

async function state(id: string): Promise<string> {
  return crictlOk(['inspect', '-o', 'go-template', '--template', '{{.status.state}}', id]);
}

beforeAll(async () => {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  images = (await buildCatalogue({ cacheDir, names: ['busybox', 'http-server'] })).images;
  registry = await startRegistry();
  await pushCatalogue(registry.url, images);
  daemon = await TestDaemon.start();
  await findMetricsUrl();

  before = await scrape();
  // Images: two pulls, and one of a tag the registry does not have.
  await crictlOk(['pull', ref('busybox')]);
  await crictlOk(['pull', ref('http-server')]);
  const missing = await daemon.crictl([
    'pull',
    `${registry.host}/${catalogueEntry('busybox').repository}:no-such-tag`,
  ]);
  expect(missing.exitCode).not.toBe(0);

  // A pod with containers that run, complete, fail, and one whose monitor will die.
  const podFile = await userFile(
    'pod.json',
    JSON.stringify({
      metadata: { name: 'metrics', namespace: 'metrics', uid: 'uid-metrics', attempt: 0 },
      log_directory: path.join(daemon.tmp, 'logs'),
    }),
  );
  const pod = await crictlOk(['runp', podFile]);
  // A pod whose sysctl value the kernel refuses: the namespace set-up helper fails, and so does
  // RunPodSandbox.
  const refusedFile = await userFile(
    'refused.json',
    JSON.stringify({
      metadata: { name: 'refused', namespace: 'metrics', uid: 'uid-refused', attempt: 0 },
      linux: { sysctls: { 'net.ipv4.tcp_keepalive_time': 'not-a-number' } },
    }),
  );
  const refused = await daemon.crictl(['runp', refusedFile]);
  expect(refused.stderr).toMatch(/tcp_keepalive_time.*refused by the kernel/);
  const container = async (name: string, extra: Record<string, unknown>) => {
    const file = await userFile(
      `${name}.json`,
      JSON.stringify({
        metadata: { name },
        image: { image: ref('busybox') },
        log_path: `${name}.log`,
        ...extra,
      }),
    );
    const id = await crictlOk(['create', pod, file, podFile]);
    await crictlOk(['start', id]);
    return id;
  };
  const idle = await container('idle', { command: ['tail', '-f', '/dev/null'] });
  const victim = await container('victim', { command: ['tail', '-f', '/dev/null'] });
  const done = await container('done', { command: ['true'] });
  const fails = await container('fails', { command: ['sh', '-c', 'exit 3'] });
  const webFile = await userFile(
    'web.json',
    JSON.stringify({ metadata: { name: 'web' }, image: { image: ref('http-server') }, log_path: 'web.log' }),
  );
  const web = await crictlOk(['create', pod, webFile, podFile]);
  await crictlOk(['start', web]);
  // A container whose command is no executable: crun refuses to create it.
  const brokenFile = await userFile(
    'broken.json',
    JSON.stringify({
      metadata: { name: 'broken' },
      image: { image: ref('busybox') },
      command: ['/etc/passwd'],
      log_path: 'broken.log',
    }),
  );
  const broken = await daemon.crictl(['create', pod, brokenFile, podFile]);
  expect(broken.exitCode, broken.stdout).not.toBe(0);
  await waitFor(
    'done and fails exited',
    async () => (await state(done)) === 'CONTAINER_EXITED' && (await state(fails)) === 'CONTAINER_EXITED',
  );

  // ExecSync (one command failing inside: the helper fails, the call does not), an exec session,
  // and an ExecSync into a container that does not exist.
  expect(await crictlOk(['exec', '-s', idle, 'echo', 'sync'])).toBe('sync');
  expect((await daemon.crictl(['exec', '-s', idle, 'sh', '-c', 'exit 3'])).exitCode).not.toBe(0);
  expect(await crictlOk(['exec', idle, 'echo', 'session'])).toBe('session');
  expect((await daemon.crictl(['exec', '-s', 'f'.repeat(64), 'true'])).exitCode).not.toBe(0);

  // Port-forward: to the pod's HTTP server, and to a port nobody listens on.
  const forward = await crictlPortForward(daemon.crictlConfig, pod, HTTP_SERVER_PORT);
  try {
    const page = await fetch(`http://127.0.0.1:${forward.localPort}/`, {
      signal: AbortSignal.timeout(10_000),
    });
    expect(await page.text()).toBe(HTTP_SERVER_INDEX_HTML);
  } finally {
    await forward.stop();
  }
  const nowhere = await crictlPortForward(daemon.crictlConfig, pod, 9);
  try {
    await expect(
      fetch(`http://127.0.0.1:${nowhere.localPort}/`, { signal: AbortSignal.timeout(10_000) }),
    ).rejects.toThrow();
  } finally {
    await nowhere.stop();
  }

  during = await scrape();

  // conmon killed: the low-rate monitor check (every 10 s) finds it and records the exit.
  const kill = await daemon.enter([
    'sh',
    '-c',
    `kill -9 "$(cat ${path.join(daemon.runDir, 'containers', victim, 'conmon.pid')})"`,
  ]);
  expect(kill.exitCode, kill.stderr).toBe(0);
  await waitFor('the monitor death recorded', async () => (await state(victim)) === 'CONTAINER_EXITED');

  await crictlOk(['stopp', pod]);
  await crictlOk(['rmp', pod]);
  after = await scrape();
}, 300_000);

afterAll(async () => {
  await daemon?.stop();
  await registry?.stop();
}, 120_000);

describe('operations', () => {
  it('counts and times pod, container, image, exec and port-forward operations', () => {
    for (const [operation, least] of [
      ['image_pull', 3],
      ['pod_run', 2],
      ['container_create', 6],
      ['container_start', 5],
      ['exec_sync', 3],
      ['exec', 1],
      ['port_forward', 2],
      ['pod_stop', 1],
      ['pod_remove', 1],
    ] as const) {
      expect(
        moved(`rootless_cri_operations_total{operation="${operation}"}`),
        operation,
      ).toBeGreaterThanOrEqual(least);
      expect(
        moved(`rootless_cri_operation_duration_seconds_count{operation="${operation}"}`),
        operation,
      ).toBe(moved(`rootless_cri_operations_total{operation="${operation}"}`));
    }
    expect(moved('rootless_cri_operation_duration_seconds_sum{operation="exec"}')).toBeGreaterThan(0);
  });

  it('counts failures by operation and error kind', () => {
    expect(moved('rootless_cri_operation_failures_total{operation="image_pull",reason="NotFound"}')).toBe(1);
    expect(moved('rootless_cri_operation_failures_total{operation="exec_sync",reason="NotFound"}')).toBe(1);
    // Nothing listens on port 9: the dial fails (connection refused).
    expect(failuresOf('port_forward')).toBeGreaterThanOrEqual(1);
    // crun refused the container whose command is no executable; the kernel, the pod's sysctl.
    expect(failuresOf('container_create')).toBe(1);
    expect(failuresOf('pod_run')).toBe(1);
    // A command that exits non-zero is a successful ExecSync, and the session that ran a
    // command is a successful exec.
    expect(moved('rootless_cri_operation_failures_total{operation="exec",reason="Internal"}')).toBe(0);
    // The RPC view agrees.
    expect(moved('rootless_cri_grpc_requests_total{method="PullImage",code="NOT_FOUND"}')).toBe(1);
  });
});

describe('image pulls', () => {
  it('counts bytes and layers downloaded, durations, and failures by reason', () => {
    // The two images' configs and distinct layers (http-server's first layer is busybox's), which
    // this daemon had never stored, and their manifests.
    const blobs = new Map<string, number>();
    for (const { image } of images) {
      for (const blob of [image.config, ...image.layers]) blobs.set(blob.digest, blob.size);
    }
    const blobBytes = [...blobs.values()].reduce((sum, size) => sum + size, 0);
    expect(moved('rootless_cri_image_pull_bytes_total')).toBeGreaterThan(blobBytes);
    expect(moved('rootless_cri_image_pull_bytes_total')).toBeLessThan(blobBytes + 10_000);
    expect(moved('rootless_cri_image_pull_layers_total{source="registry"}')).toBeGreaterThanOrEqual(2);
    expect(moved('rootless_cri_image_pull_duration_seconds_count')).toBe(2);
    expect(moved('rootless_cri_image_pull_failures_total{reason="NotFound"}')).toBe(1);
  });
});

describe('containers', () => {
  it('counts starts and exits by reason', () => {
    expect(moved('rootless_cri_containers_started_total')).toBe(5);
    expect(moved('rootless_cri_containers_exited_total{reason="Completed"}')).toBe(1);
    expect(moved('rootless_cri_containers_exited_total{reason="ContainerMonitorDied"}')).toBe(1);
    // "fails" exited 3; idle and web were stopped by StopPodSandbox (killed: exit 137).
    expect(moved('rootless_cri_containers_exited_total{reason="Error"}')).toBeGreaterThanOrEqual(1);
  });

  it('shows pods and containers by state while they exist, and none after removal', () => {
    expect(at(during, 'rootless_cri_pod_sandboxes{state="ready"}')).toBe(1);
    expect(at(during, 'rootless_cri_containers{state="running"}')).toBe(3);
    expect(at(during, 'rootless_cri_containers{state="exited"}')).toBe(2);
    expect(at(after, 'rootless_cri_pod_sandboxes{state="ready"}')).toBe(0);
    expect(at(after, 'rootless_cri_containers{state="running"}')).toBe(0);
    expect(at(after, 'rootless_cri_containers{state="exited"}')).toBe(0);
  });
});

describe('node health and helpers', () => {
  it('shows the conditions, the uplink, rootlesskit and the published listeners up', () => {
    expect(at(after, 'rootless_cri_runtime_condition{condition="RuntimeReady"}')).toBe(1);
    expect(at(after, 'rootless_cri_runtime_condition{condition="NetworkReady"}')).toBe(1);
    expect(at(after, 'rootless_cri_node_uplink_up')).toBe(1);
    expect(at(after, 'rootless_cri_node_rootlesskit_up')).toBe(1);
    expect(at(after, 'rootless_cri_published_listener_up{listener="streaming"}')).toBe(1);
    expect(at(after, 'rootless_cri_published_listener_up{listener="metrics"}')).toBe(1);
  });

  it('times helper runs by program, and counts the failed ones', () => {
    for (const program of ['crun', 'conmon', 'bridge']) {
      expect(
        moved(`rootless_cri_helper_duration_seconds_count{program="${program}"}`),
        program,
      ).toBeGreaterThan(0);
    }
    // The pod set-up step that wrote the refused sysctl exited non-zero.
    expect(moved('rootless_cri_helper_failures_total{program="nsenter",outcome="failed"}')).toBe(1);
  });
});

describe('recovery', () => {
  it('reports the duration, and an unreadable record as a problem and quarantined after a restart', async () => {
    expect(at(after, 'rootless_cri_recovery_duration_seconds')).toBeGreaterThan(0);
    expect(at(after, 'rootless_cri_recovery_problems')).toBe(0);
    expect(at(after, 'rootless_cri_quarantined_objects{kind="container_record"}')).toBe(0);
    await daemon.kill9();
    const record = path.join(daemon.rootDir, 'containers', `${'e'.repeat(64)}.json`);
    await writeFile(record, '{"version": 1, "id": ');
    await chown(record, daemon.user.uid, daemon.user.gid);
    await daemon.serve();
    await findMetricsUrl();
    const restarted = await scrape();
    expect(at(restarted, 'rootless_cri_recovery_duration_seconds')).toBeGreaterThan(0);
    expect(at(restarted, 'rootless_cri_recovery_problems')).toBe(1);
    expect(at(restarted, 'rootless_cri_quarantined_objects{kind="container_record"}')).toBe(1);
    expect(at(restarted, 'rootless_cri_quarantined_objects{kind="sandbox_record"}')).toBe(0);
    expect(at(restarted, 'rootless_cri_quarantined_objects{kind="image"}')).toBe(0);
    // Counters start again with the new process.
    expect(at(restarted, 'rootless_cri_containers_started_total')).toBe(0);
  }, 120_000);
});
