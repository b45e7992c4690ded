/**
 * exits: how fast a container's exit shows, and what watching exits costs while nothing happens.
 *
 *   - exit → ContainerStatus EXITED: a busybox container `sh -c 'sleep 1; exit 3'` is started,
 *     and ContainerStatus is read in a tight loop (one call at a time) until it says EXITED. The
 *     latency is the moment the loop first saw EXITED minus finished_at (the exit file's mtime,
 *     which conmon writes right after the process ended). One call's round trip (~0.3 ms) bounds
 *     the error. Aim: p50 <= 20 ms (exits are events from the exit directory, not a poll).
 *   - idle CPU with N running containers (default 50, 10 pods x 5): the in-node daemon's
 *     utime+stime over a quiet window (default 30 s), as a share of one core. Aim: <= 0.5 %.
 *   - a /metrics scrape with those containers: its latency from the host, and the daemon's CPU
 *     per scrape (metrics read state only when scraped, so this is their whole cost).
 *
 * Needs root (a real daemon as the test user).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { busyboxBaseLayer, ImageBuilder } from '../test/fixtures/image-builder.js';
import { pushImage, startRegistry } from '../test/fixtures/registry.js';
import { TestDaemon } from '../test/harness/daemon.js';
import { processCpuMs } from './proc-cpu.js';
import { percentile } from './stats.js';

const SAMPLES = Number(process.env.BENCH_EXIT_SAMPLES ?? 20);
const IDLE_PODS = Number(process.env.BENCH_IDLE_PODS ?? 10);
const CONTAINERS_PER_POD = Number(process.env.BENCH_IDLE_CONTAINERS_PER_POD ?? 5);
const IDLE_WINDOW_MS = Number(process.env.BENCH_IDLE_WINDOW_MS ?? 30_000);
const REPOSITORY = 'rootless-cri/bench-exits';
/** /metrics scrapes timed with the idle containers running (state is read at scrape time). */
const SCRAPES = Number(process.env.BENCH_SCRAPES ?? 50);

function podConfig(name: string) {
  return {
    metadata: { name, namespace: 'bench', uid: `uid-${name}`, attempt: 0 },
    log_directory: '',
    linux: {},
  };
}

export async function benchExits(): Promise<void> {
  const work = await mkdtemp(path.join(os.tmpdir(), 'rcri-bench-exits-'));
  const registry = await startRegistry();
  let daemon: TestDaemon | undefined;
  try {
    const base = await busyboxBaseLayer();
    const built = await new ImageBuilder(path.join(work, 'layout')).build('bench-exits', {
      layers: [{ items: base.items, comment: 'busybox' }],
      config: { cmd: ['sh'] },
    });
    await pushImage(registry.url, REPOSITORY, ['1'], built);
    const image = `${registry.host}/${REPOSITORY}:1`;
    daemon = await TestDaemon.start();
    const cri = daemon.client;
    await cri.image('PullImage', { image: { image } }, { timeoutMs: 120_000 });

    // ---- exit → EXITED latency ----
    const config = podConfig('exits');
    const { pod_sandbox_id } = await cri.runtime('RunPodSandbox', { config });
    const latencies: number[] = [];
    for (let i = 0; i < SAMPLES + 1; i++) {
      const { container_id } = await cri.runtime('CreateContainer', {
        pod_sandbox_id,
        sandbox_config: config,
        config: {
          metadata: { name: `exit-${i}` },
          image: { image },
          command: ['sh', '-c', 'sleep 1; exit 3'],
        },
      });
      await cri.runtime('StartContainer', { container_id });
      let seenAt = 0n;
      let finishedAt = 0n;
      for (;;) {
        const s = (await cri.runtime('ContainerStatus', { container_id })).status!;
        if (s.state === 'CONTAINER_EXITED') {
          seenAt = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
          finishedAt = BigInt(s.finished_at as string);
          break;
        }
      }
      if (i > 0) latencies.push(Number(seenAt - finishedAt) / 1e6); // the first one warms up
      await cri.runtime('RemoveContainer', { container_id });
    }
    await cri.runtime('StopPodSandbox', { pod_sandbox_id });
    await cri.runtime('RemovePodSandbox', { pod_sandbox_id });
    const sorted = [...latencies].sort((a, b) => a - b);
    console.log(`exits: exit -> ContainerStatus EXITED (n=${sorted.length}, a status call at a time)`);
    console.log(
      `  p50 ${percentile(sorted, 50).toFixed(1)} ms  p90 ${percentile(sorted, 90).toFixed(1)} ms  max ${sorted.at(-1)?.toFixed(1)} ms  (aim: p50 <= 20 ms)`,
    );

    // ---- idle CPU with running containers ----
    const pods: string[] = [];
    for (let p = 0; p < IDLE_PODS; p++) {
      const podCfg = podConfig(`idle-${p}`);
      const { pod_sandbox_id: id } = await cri.runtime('RunPodSandbox', { config: podCfg });
      pods.push(id!);
      for (let c = 0; c < CONTAINERS_PER_POD; c++) {
        const { container_id } = await cri.runtime('CreateContainer', {
          pod_sandbox_id: id,
          sandbox_config: podCfg,
          config: { metadata: { name: `sleep-${c}` }, image: { image }, command: ['sleep', '3600'] },
        });
        await cri.runtime('StartContainer', { container_id });
      }
    }
    const pid = await daemon.daemonPid();
    const before = processCpuMs(pid);
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, IDLE_WINDOW_MS));
    const usedMs = processCpuMs(pid) - before;
    const seconds = (Date.now() - t0) / 1000;
    const share = (usedMs / 1000 / seconds) * 100;
    console.log(
      `exits: idle daemon CPU with ${IDLE_PODS * CONTAINERS_PER_POD} running containers (${IDLE_PODS} pods): ` +
        `${share.toFixed(2)} % of a core over ${seconds.toFixed(0)} s (aim: <= 0.5 %)`,
    );
    const listeners = (await cri.runtime('Status', { verbose: true })).info?.listeners ?? '{}';
    const metricsUrl = (JSON.parse(listeners) as { metrics: string }).metrics;
    const running = `rootless_cri_containers{state="running"} ${IDLE_PODS * CONTAINERS_PER_POD}`;
    const scrapeMs: number[] = [];
    const cpuBeforeScrapes = processCpuMs(pid);
    for (let i = 0; i < SCRAPES; i++) {
      const t = performance.now();
      const body = await (await fetch(metricsUrl)).text();
      scrapeMs.push(performance.now() - t);
      if (!body.includes(running)) throw new Error(`the scrape does not show ${running}`);
    }
    const cpuMsPerScrape = (processCpuMs(pid) - cpuBeforeScrapes) / SCRAPES;
    scrapeMs.sort((a, b) => a - b);
    console.log(
      `exits: /metrics scrape with ${IDLE_PODS * CONTAINERS_PER_POD} running containers (n=${SCRAPES}): ` +
        `p50 ${percentile(scrapeMs, 50).toFixed(1)} ms  p90 ${percentile(scrapeMs, 90).toFixed(1)} ms; ` +
        `daemon CPU ${cpuMsPerScrape.toFixed(1)} ms a scrape (${(cpuMsPerScrape / 150).toFixed(3)} % of a core at one scrape every 15 s)`,
    );
    for (const id of pods) {
      await cri.runtime('StopPodSandbox', { pod_sandbox_id: id });
      await cri.runtime('RemovePodSandbox', { pod_sandbox_id: id });
    }
  } finally {
    await daemon?.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}
