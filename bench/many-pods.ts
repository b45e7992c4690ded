/**
 * many-pods: the daemon at kubelet's default max of 110 pods (issue 16). A real daemon as the
 * unprivileged test user starts BENCH_MANY_PODS pods (default 110), each with one busybox
 * `sleep` container, then measures with all of them running:
 *
 *   - the in-node daemon's CPU over a quiet window (default 30 s, nothing calls it), as a share
 *     of one core (aim <= 1 %), and its RSS and the supervisor's (/proc/<pid>/status VmRSS), both
 *     before the pods exist and with them;
 *   - p50 / p99 of the RPCs kubelet polls, called one at a time BENCH_MANY_CALLS times each
 *     (default 50, after 3 warm-up calls): ListPodSandbox and ListContainers (aim p50 <= 6 ms),
 *     ListPodSandboxStats and ListContainerStats (aim p50 <= 50 ms), and ListPodSandboxMetrics
 *     (kubelet's PodAndContainerStatsFromCRI; no aim yet). The floor is Version's round trip
 *     through the same daemon in the same run: what any RPC costs before it does work. Each
 *     RPC's line gives the daemon's CPU per call and its RSS after that RPC's calls.
 *
 * Every answer is checked to list all the pods / containers, so a list that skipped work would
 * fail rather than look fast. Everything is removed at the end, and the harness fails the run
 * on any process, mount, cgroup or file left behind. Needs root (a real daemon as the test user).
 * BENCH_DAEMON_ENV adds to the daemon's environment (daemon-env.ts), e.g. NODE_OPTIONS=--cpu-prof.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { busyboxBaseLayer, ImageBuilder } from '../test/fixtures/image-builder.js';
import { pushImage, startRegistry } from '../test/fixtures/registry.js';
import type { CriClient } from '../test/harness/cri-client.js';
import type { TestDaemon } from '../test/harness/daemon.js';
import { daemonEnvFrom, startBenchDaemon } from './daemon-env.js';
import { processCpuMs } from './proc-cpu.js';
import { percentile } from './stats.js';

const PODS = Number(process.env.BENCH_MANY_PODS ?? 110);
const PARALLEL = Number(process.env.BENCH_MANY_PARALLEL ?? 2);
const CALLS = Number(process.env.BENCH_MANY_CALLS ?? 50);
const IDLE_WINDOW_MS = Number(process.env.BENCH_MANY_IDLE_MS ?? 30_000);
const WARMUP = 3;
const REPOSITORY = 'rootless-cri/bench-many-pods';

/** VmRSS of a process, in MiB. */
async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(kb) / 1024;
}

function podConfig(i: number) {
  return {
    metadata: { name: `many-${i}`, namespace: 'bench', uid: `uid-many-${i}`, attempt: 0 },
    log_directory: '',
    labels: { bench: 'many-pods', index: String(i) },
    linux: {},
  };
}

/** Runs `work(i)` for i in [0, count) with at most `parallel` at a time. */
async function pool(count: number, parallel: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) await work(next++);
  };
  await Promise.all(Array.from({ length: parallel }, worker));
}

interface Timing {
  p50: number;
  p99: number;
  /** The daemon's CPU (user + system) per call, ms, over the timed calls. */
  cpuPerCall: number;
  /** The daemon's RSS after the calls, MiB. */
  rssAfter: number;
}

/**
 * `calls` sequential calls after a warm-up (the call checks its own answer). Milliseconds of
 * wall time; the daemon's CPU over them (its /proc ticks: 10 ms each, so 50 calls of 20 ms give
 * a figure to ~1 %) tells what a call costs the node apart from how busy the machine was.
 */
async function timeCalls(daemonPid: number, calls: number, call: () => Promise<void>): Promise<Timing> {
  for (let i = 0; i < WARMUP; i++) await call();
  const samples: number[] = [];
  const cpuBefore = processCpuMs(daemonPid);
  for (let i = 0; i < calls; i++) {
    const t0 = process.hrtime.bigint();
    await call();
    samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const cpuPerCall = (processCpuMs(daemonPid) - cpuBefore) / calls;
  samples.sort((a, b) => a - b);
  return {
    p50: percentile(samples, 50),
    p99: percentile(samples, 99),
    cpuPerCall,
    rssAfter: await rssMiB(daemonPid),
  };
}

function expectCount(what: string, got: number, want: number): void {
  if (got !== want) throw new Error(`${what} listed ${got} entries, expected ${want}`);
}

async function measureRpcs(cri: CriClient, daemonPid: number): Promise<Record<string, Timing>> {
  const timeout = { timeoutMs: 120_000 };
  return {
    Version: await timeCalls(daemonPid, CALLS, async () => {
      await cri.runtime('Version', {});
    }),
    ListPodSandbox: await timeCalls(daemonPid, CALLS, async () => {
      const r = await cri.runtime('ListPodSandbox', {}, timeout);
      expectCount('ListPodSandbox', r.items.length, PODS);
    }),
    ListContainers: await timeCalls(daemonPid, CALLS, async () => {
      const r = await cri.runtime('ListContainers', {}, timeout);
      expectCount('ListContainers', r.containers.length, PODS);
    }),
    ListPodSandboxStats: await timeCalls(daemonPid, CALLS, async () => {
      const r = await cri.runtime('ListPodSandboxStats', {}, timeout);
      expectCount('ListPodSandboxStats', r.stats.length, PODS);
      const containers = r.stats.reduce((n, s) => n + (s.linux?.containers.length ?? 0), 0);
      expectCount('ListPodSandboxStats containers', containers, PODS);
    }),
    ListContainerStats: await timeCalls(daemonPid, CALLS, async () => {
      const r = await cri.runtime('ListContainerStats', {}, timeout);
      expectCount('ListContainerStats', r.stats.length, PODS);
    }),
    ListPodSandboxMetrics: await timeCalls(daemonPid, CALLS, async () => {
      const r = await cri.runtime('ListPodSandboxMetrics', {}, timeout);
      expectCount('ListPodSandboxMetrics', r.pod_metrics.length, PODS);
    }),
  };
}

const AIMS: Record<string, number | undefined> = {
  ListPodSandbox: 6,
  ListContainers: 6,
  ListPodSandboxStats: 50,
  ListContainerStats: 50,
};

export async function benchManyPods(): Promise<void> {
  const work = await mkdtemp(path.join(os.tmpdir(), 'rcri-bench-many-'));
  const registry = await startRegistry();
  let daemon: TestDaemon | undefined;
  try {
    const base = await busyboxBaseLayer();
    const built = await new ImageBuilder(path.join(work, 'layout')).build('bench-many-pods', {
      layers: [{ items: base.items, comment: 'busybox' }],
      config: { cmd: ['sh'] },
    });
    await pushImage(registry.url, REPOSITORY, ['1'], built);
    const image = `${registry.host}/${REPOSITORY}:1`;
    daemon = await startBenchDaemon(daemonEnvFrom('BENCH_DAEMON_ENV'));
    const cri = daemon.client;
    await cri.image('PullImage', { image: { image } }, { timeoutMs: 120_000 });
    const daemonPid = await daemon.daemonPid();
    const supervisorPid = await daemon.supervisorPid();
    const rssEmpty = { daemon: await rssMiB(daemonPid), supervisor: await rssMiB(supervisorPid) };

    const pods: string[] = new Array(PODS);
    const t0 = Date.now();
    try {
      await pool(PODS, PARALLEL, async (i) => {
        const config = podConfig(i);
        const { pod_sandbox_id } = await cri.runtime('RunPodSandbox', { config }, { timeoutMs: 120_000 });
        pods[i] = pod_sandbox_id;
        const { container_id } = await cri.runtime('CreateContainer', {
          pod_sandbox_id,
          sandbox_config: config,
          config: { metadata: { name: 'sleep' }, image: { image }, command: ['sleep', '3600'] },
        });
        await cri.runtime('StartContainer', { container_id });
      });
      const startSeconds = (Date.now() - t0) / 1000;
      console.log(
        `many-pods: ${PODS} pods, one busybox sleep container each, started ${PARALLEL} at a time in ${startSeconds.toFixed(1)} s`,
      );

      const cpuBefore = processCpuMs(daemonPid);
      const idleStart = Date.now();
      await new Promise((r) => setTimeout(r, IDLE_WINDOW_MS));
      const cpuMs = processCpuMs(daemonPid) - cpuBefore;
      const idleSeconds = (Date.now() - idleStart) / 1000;
      const cpuShare = (cpuMs / 1000 / idleSeconds) * 100;
      const rssIdle = { daemon: await rssMiB(daemonPid), supervisor: await rssMiB(supervisorPid) };
      console.log(
        `  idle daemon CPU over ${idleSeconds.toFixed(0)} s: ${cpuShare.toFixed(2)} % of a core (aim <= 1 %, ratio ${(cpuShare / 1).toFixed(2)}x)`,
      );
      console.log(
        `  RSS daemon ${rssIdle.daemon.toFixed(0)} MiB (${rssEmpty.daemon.toFixed(0)} with no pods, ` +
          `${(((rssIdle.daemon - rssEmpty.daemon) * 1024) / PODS).toFixed(0)} KiB per pod), ` +
          `supervisor ${rssIdle.supervisor.toFixed(0)} MiB (${rssEmpty.supervisor.toFixed(0)} with no pods)`,
      );

      const timings = await measureRpcs(cri, daemonPid);
      const floor = timings.Version!.p50;
      console.log(
        `  RPCs, ${CALLS} calls each, one at a time (ms; floor = Version p50 ${floor.toFixed(2)} ms):`,
      );
      for (const [method, t] of Object.entries(timings)) {
        if (method === 'Version') continue;
        const aim = AIMS[method];
        const vsAim = aim === undefined ? '' : `  aim p50 <= ${aim} ms: ratio ${(t.p50 / aim).toFixed(2)}x`;
        console.log(
          `    ${method.padEnd(22)} p50 ${t.p50.toFixed(2).padStart(8)}  p99 ${t.p99.toFixed(2).padStart(8)}  ` +
            `(${(t.p50 / floor).toFixed(1)}x floor)  daemon CPU ${t.cpuPerCall.toFixed(1)} ms/call, ` +
            `RSS after ${t.rssAfter.toFixed(0)} MiB${vsAim}`,
        );
      }
    } finally {
      await pool(PODS, PARALLEL, async (i) => {
        const pod_sandbox_id = pods[i];
        if (pod_sandbox_id === undefined) return;
        await cri.runtime('StopPodSandbox', { pod_sandbox_id }, { timeoutMs: 120_000 });
        await cri.runtime('RemovePodSandbox', { pod_sandbox_id }, { timeoutMs: 120_000 });
      });
    }
  } finally {
    await daemon?.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}
