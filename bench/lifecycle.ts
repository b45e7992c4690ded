/**
 * lifecycle: where a pod + container lifecycle's time goes, per RPC. The containers suite's
 * sequence (RunPodSandbox, CreateContainer busybox `sleep 3600`, StartContainer, StopContainer
 * timeout 0, RemoveContainer, StopPodSandbox, RemovePodSandbox) through the real daemon, and for
 * each RPC:
 *   - wall: the client's round trip;
 *   - helpers: the time at least one helper process (crun, conmon, CNI plugins, unshare,
 *     fuse-overlayfs, ...) ran or was waited on for this call, as the daemon's process runner
 *     accounts it (os/helper-time.ts), read from the per-RPC log line (`helperMs`);
 *   - outside: the daemon's own time, the server-side duration minus helpers.
 * p50 over BENCH_LIFECYCLE_ITERATIONS (default 30) lifecycles, and the p50 of a lifecycle's
 * summed outside time (aim: <= 10 ms, issue 16).
 *
 * BENCH_DAEMON_LOG=FILE keeps a copy of the daemon's log. BENCH_DAEMON_ENV="K=V ..." adds to the
 * daemon's environment; BENCH_DAEMON_ENV_B="K=V ..." starts a second daemon with that
 * environment and alternates lifecycles between the two, so machine noise hits both alike
 * (BENCH_DAEMON_ENV_B=ROOTLESS_CRI_RUN_SERVER=0 compares runs forked by the daemon itself). BENCH_CPU_PROF=DIR writes V8 CPU profiles of the daemon (and its supervisor) to DIR
 * (node --cpu-prof; the in-node daemon's is the larger one). Needs root (a real daemon as the
 * test user).
 */
import { chown, cp, mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startRegistry } from '../test/fixtures/registry.js';
import { type TestDaemon, testUser } from '../test/harness/daemon.js';
import {
  benchImage,
  criIteration,
  PHASES,
  type Phase,
  type PhaseTimes,
  REPOSITORY,
  TAG,
} from './containers.js';
import { daemonEnvFrom, startBenchDaemon } from './daemon-env.js';
import { percentile } from './stats.js';

const ITERATIONS = Number(process.env.BENCH_LIFECYCLE_ITERATIONS ?? 30);
const CPU_PROF = process.env.BENCH_CPU_PROF;

interface RpcLine {
  msg?: string;
  method?: string;
  durationMs?: number;
  helperMs?: number;
}

const p50 = (xs: number[]) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );

/** The daemon's `rpc` log lines of the lifecycle RPCs, in order, once all `expected` are written. */
async function rpcLines(logFile: string, offset: number, expected: number): Promise<RpcLine[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const text = (await readFile(logFile)).subarray(offset).toString('utf8');
    const lines: RpcLine[] = [];
    for (const line of text.split('\n')) {
      if (!line.includes('"msg":"rpc"')) continue;
      try {
        const parsed = JSON.parse(line) as RpcLine;
        if ((PHASES as readonly string[]).includes(parsed.method ?? '')) lines.push(parsed);
      } catch {
        // a line still being written
      }
    }
    if (lines.length >= expected) return lines;
    if (Date.now() > deadline) {
      throw new Error(`the daemon logged ${lines.length} of ${expected} rpc lines (is log_level debug?)`);
    }
    // pino writes asynchronously: wait for the rest to reach the file.
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Arm {
  name: string;
  daemon: TestDaemon;
  logFile: string;
  offset: number;
  phases: PhaseTimes[];
  lines: RpcLine[];
}

/** A daemon of the bench, restarted with `env` when there is any. */
async function startArm(name: string, env: Record<string, string>, image: string): Promise<Arm> {
  const daemon = await startBenchDaemon(env);
  await daemon.client.image('PullImage', { image: { image } }, { timeoutMs: 120_000 });
  for (let i = 0; i < 3; i++) await criIteration(daemon, image, `warm-${i}`);
  const logFile = path.join(daemon.tmp, 'daemon.log');
  return { name, daemon, logFile, offset: (await readFile(logFile)).length, phases: [], lines: [] };
}

export async function benchLifecycle(): Promise<void> {
  const work = await mkdtemp(path.join(os.tmpdir(), 'rcri-bench-lifecycle-'));
  const registry = await startRegistry();
  const arms: Arm[] = [];
  try {
    await benchImage(registry.url, work);
    const image = `${registry.host}/${REPOSITORY}:${TAG}`;
    const envA = daemonEnvFrom('BENCH_DAEMON_ENV');
    // Profiles go to a temp dir the daemon's user owns (the harness counts the user's files
    // elsewhere as leaks), and are copied out once the daemon has exited.
    const profDir = CPU_PROF ? await mkdtemp(path.join(os.tmpdir(), 'rcri-cpu-prof-')) : '';
    if (CPU_PROF) {
      const user = await testUser();
      await chown(profDir, user.uid, user.gid);
      envA.NODE_OPTIONS = `--cpu-prof --cpu-prof-dir=${profDir}`;
    }
    arms.push(await startArm('A', envA, image));
    if (process.env.BENCH_DAEMON_ENV_B !== undefined)
      arms.push(await startArm('B', daemonEnvFrom('BENCH_DAEMON_ENV_B'), image));
    for (let i = 0; i < ITERATIONS; i++) {
      for (const arm of arms) {
        const times: PhaseTimes = {};
        await criIteration(arm.daemon, image, `l${i}`, times);
        arm.phases.push(times);
      }
    }
    for (const arm of arms) arm.lines = await rpcLines(arm.logFile, arm.offset, ITERATIONS * PHASES.length);
    if (process.env.BENCH_DAEMON_LOG) await cp(arms[0]!.logFile, process.env.BENCH_DAEMON_LOG);
    if (CPU_PROF) {
      // The profile is written when the daemon exits; stop --all (below) then ends the node.
      await arms[0]!.daemon.cli(['stop']);
      await arms[0]!.daemon.supervisorExited();
      await mkdir(CPU_PROF, { recursive: true });
      for (const file of await readdir(profDir)) {
        const target = path.join(CPU_PROF, file);
        await cp(path.join(profDir, file), target);
        await chown(target, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
      }
      await rm(profDir, { recursive: true, force: true });
      console.log(`CPU profiles of the daemon in ${CPU_PROF}`);
    }
  } finally {
    for (const arm of arms) await arm.daemon.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
  const walls: number[] = [];
  for (const arm of arms) {
    if (arms.length > 1) {
      const env = arm.name === 'A' ? process.env.BENCH_DAEMON_ENV : process.env.BENCH_DAEMON_ENV_B;
      console.log(
        `daemon ${arm.name} (${env?.trim() || 'default environment'}), lifecycles alternating with the other:`,
      );
    }
    walls.push(report(arm.phases, arm.lines));
  }
  if (arms.length > 1) console.log(`  B / A lifecycle wall p50: ${(walls[1]! / walls[0]!).toFixed(2)}×`);
}

/** Prints one daemon's table; returns its lifecycle wall p50. */
function report(phases: PhaseTimes[], lines: RpcLine[]): number {
  const byMethod = new Map<Phase, { server: number[]; helpers: number[]; outside: number[] }>();
  for (const phase of PHASES) byMethod.set(phase, { server: [], helpers: [], outside: [] });
  const lifecycleOutside: number[] = [];
  for (let i = 0; i < ITERATIONS; i++) {
    let outside = 0;
    for (const line of lines.slice(i * PHASES.length, (i + 1) * PHASES.length)) {
      const entry = byMethod.get(line.method as Phase)!;
      const server = line.durationMs ?? 0;
      const helpers = line.helperMs ?? 0;
      entry.server.push(server);
      entry.helpers.push(helpers);
      entry.outside.push(server - helpers);
      outside += server - helpers;
    }
    lifecycleOutside.push(outside);
  }
  const f = (x: number) => x.toFixed(1).padStart(7);
  console.log(
    `lifecycle: pod + busybox container, per RPC p50 ms over ${ITERATIONS} lifecycles (helpers = helper processes ran or were waited on; outside = daemon time outside them)`,
  );
  console.log(
    `  ${'RPC'.padEnd(17)} ${'wall'.padStart(7)} ${'helpers'.padStart(7)} ${'outside'.padStart(7)}`,
  );
  let wallSum = 0;
  for (const phase of PHASES) {
    const entry = byMethod.get(phase)!;
    const wall = p50(phases.map((t) => t[phase] ?? Number.NaN));
    wallSum += wall;
    console.log(`  ${phase.padEnd(17)} ${f(wall)} ${f(p50(entry.helpers))} ${f(p50(entry.outside))}`);
  }
  const totalWall = p50(phases.map((t) => PHASES.reduce((a, phase) => a + (t[phase] ?? 0), 0)));
  console.log(
    `  lifecycle total: wall p50 ${totalWall.toFixed(1)} ms (sum of per-RPC p50s ${wallSum.toFixed(1)}); daemon time outside helpers p50 ${p50(lifecycleOutside).toFixed(1)} ms (aim: <= 10 ms)`,
  );
  return totalWall;
}
