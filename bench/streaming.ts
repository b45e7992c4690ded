/**
 * streaming: three figures through the real daemon, each against a floor or peer measured in
 * the same run, rounds alternating so machine noise hits both alike:
 *   - ExecSync `true` in a running busybox container (sequential gRPC calls from the host) vs
 *     `crun exec <id> true` on the same container inside the node (a bash loop timed with
 *     $EPOCHREALTIME, so no fork per timestamp);
 *   - exec stdout throughput: `crictl exec [-r spdy|websocket] <id> sh -c 'dd if=/dev/zero
 *     bs=1M count=256 2>/dev/null'` from the host into `wc -c` (wall time of the whole command,
 *     crictl start-up included) vs the same command through `crun exec <id>` inside the node
 *     into `wc -c`. dd with 1 MiB blocks rather than `head -c`: busybox head is CPU-bound at
 *     about 210 MB/s here, which would make the floor measure head instead of the pipe. Also
 *     net of each path's run with nothing to stream (count=0), so the ratio is of throughput
 *     and not of crictl's start-up, which alone is about as long as the floor's whole run;
 *   - port-forward throughput: curl on the host fetching a 256 MiB file from busybox httpd in a
 *     pod, through `crictl port-forward` (SPDY and WebSocket) vs rootlesskit's builtin port
 *     driver publishing the same pod port (`rootlessctl add-ports 127.0.0.1:P:<podIP>:8080/tcp`
 *     on the node's API socket).
 * BENCH_DAEMON_ENV="K=V ..." adds to the daemon's environment (bench/daemon-env.ts).
 * Needs root (the daemon runs as the test user).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort, startRegistry } from '../test/fixtures/registry.js';
import {
  buildCatalogue,
  catalogueEntry,
  HTTP_SERVER_PORT,
  pushCatalogue,
} from '../test/fixtures/test-images.js';
import { APP_DIR, crictlCommand, TEST_USER, type TestDaemon } from '../test/harness/daemon.js';
import { daemonEnvFrom, startBenchDaemon } from './daemon-env.js';
import { percentile } from './stats.js';

const execFileAsync = promisify(execFile);
const EXEC_CALLS = Number(process.env.BENCH_EXEC_CALLS ?? 200);
const EXEC_ROUNDS = 4;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const STREAM_BYTES = Number(process.env.BENCH_STREAM_BYTES ?? 256 * 1024 * 1024);
const EXEC_WARMUP = 20;

function summarize(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 50), p99: percentile(s, 99) };
}

function median(xs: number[]): number {
  return summarize(xs).p50;
}

/** `start end` pairs of $EPOCHREALTIME per line → milliseconds. */
function epochPairsMs(stdout: string): number[] {
  return stdout
    .trim()
    .split('\n')
    .filter((line) => /^\d+\.\d+ \d+\.\d+/.test(line))
    .map((line) => {
      const [a, b] = line.split(' ').map(Number) as [number, number];
      return (b - a) * 1000;
    });
}

const MB = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);

/** `crictl port-forward` as the test user, until it says it is forwarding. */
async function portForward(daemon: TestDaemon, pod: string, local: number, transport: string) {
  const child: ChildProcess = spawn(
    'bash',
    [
      path.join(APP_DIR, 'deploy/run-as-user.sh'),
      TEST_USER,
      '--',
      ...crictlCommand(daemon.crictlConfig, [
        'port-forward',
        '-r',
        transport,
        pod,
        `${local}:${HTTP_SERVER_PORT}`,
      ]),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  );
  let output = '';
  child.stdout!.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    output += d.toString();
  });
  const exited = new Promise((r) => child.once('exit', r));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    try {
      process.kill(-child.pid!, 'SIGTERM');
    } catch {
      // gone
    }
    await exited;
  };
  const deadline = Date.now() + 20_000;
  while (!output.includes('Forwarding from')) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`crictl port-forward did not start: ${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { stop };
}

/** curl of the big file on the host; milliseconds of curl's own transfer time. */
async function curlMs(port: number, bytes: number): Promise<number> {
  const { stdout } = await execFileAsync('curl', [
    '-sS',
    '-o',
    '/dev/null',
    '-w',
    '%{size_download} %{time_total}',
    `http://127.0.0.1:${port}/big`,
  ]);
  const [size, seconds] = stdout.trim().split(' ').map(Number) as [number, number];
  if (size !== bytes) throw new Error(`curl through port ${port} got ${size} bytes, expected ${bytes}`);
  return seconds * 1000;
}

export async function benchStreaming(): Promise<void> {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  const images = (await buildCatalogue({ cacheDir, names: ['busybox', 'http-server'] })).images;
  const registry = await startRegistry();
  let daemon: TestDaemon | undefined;
  let podId: string | undefined;
  const ms = {
    execSync: [] as number[],
    crunExec: [] as number[],
    spdyExec: [] as number[],
    wsExec: [] as number[],
    crunStream: [] as number[],
    spdyEmpty: [] as number[],
    wsEmpty: [] as number[],
    crunEmpty: [] as number[],
    spdyForward: [] as number[],
    wsForward: [] as number[],
    builtinForward: [] as number[],
  };
  let fixedExecMs = 0;
  try {
    await pushCatalogue(registry.url, images);
    daemon = await startBenchDaemon(daemonEnvFrom('BENCH_DAEMON_ENV'));
    const ref = (name: string) => {
      const entry = catalogueEntry(name);
      return `${registry.host}/${entry.repository}:${entry.tags[0]}`;
    };
    for (const name of ['busybox', 'http-server']) {
      await daemon.client.image('PullImage', { image: { image: ref(name) } }, { timeoutMs: 120_000 });
    }
    const config = {
      metadata: { name: 'bench-streaming', namespace: 'bench', uid: 'uid-bench-streaming', attempt: 0 },
      log_directory: '',
      linux: {},
    };
    podId = (await daemon.client.runtime('RunPodSandbox', { config })).pod_sandbox_id;
    const container = async (name: string, image: string, command: string[]) => {
      const { container_id } = await daemon!.client.runtime('CreateContainer', {
        pod_sandbox_id: podId,
        sandbox_config: config,
        config: { metadata: { name }, image: { image }, command, log_path: '' },
      });
      await daemon!.client.runtime('StartContainer', { container_id });
      return container_id as string;
    };
    const idle = await container('idle', ref('busybox'), ['sleep', '3600']);
    const web = await container('web', ref('http-server'), []);
    const made = await daemon.client.runtime(
      'ExecSync',
      {
        container_id: web,
        cmd: ['dd', 'if=/dev/zero', 'of=/www/big', 'bs=1M', `count=${STREAM_BYTES / 1048576}`],
        timeout: 120,
      },
      { timeoutMs: 130_000 },
    );
    if (made.exit_code !== 0) throw new Error(`writing /www/big failed: ${made.stderr}`);
    const podStatus = await daemon.client.runtime('PodSandboxStatus', { pod_sandbox_id: podId });
    const podIp = podStatus.status?.network?.ip;
    if (!podIp) throw new Error('the pod has no IP');
    const crunRoot = path.join(daemon.runDir, 'crun');
    const crun = `crun --root ${crunRoot}`;

    // ExecSync vs crun exec.
    for (let i = 0; i < EXEC_WARMUP; i++) {
      await daemon.client.runtime('ExecSync', { container_id: idle, cmd: ['true'], timeout: 10 });
    }
    const perRound = Math.ceil(EXEC_CALLS / EXEC_ROUNDS);
    for (let round = 0; round < EXEC_ROUNDS; round++) {
      for (let i = 0; i < perRound; i++) {
        const t0 = process.hrtime.bigint();
        const r = await daemon.client.runtime('ExecSync', { container_id: idle, cmd: ['true'], timeout: 10 });
        ms.execSync.push(Number(process.hrtime.bigint() - t0) / 1e6);
        if (r.exit_code !== 0) throw new Error(`ExecSync true exited with ${r.exit_code}: ${r.stderr}`);
      }
      const floor = await daemon.enter([
        'bash',
        '-c',
        `set -e; for i in $(seq ${perRound}); do t0=$EPOCHREALTIME; ${crun} exec ${idle} true; echo "$t0 $EPOCHREALTIME"; done`,
      ]);
      if (floor.exitCode !== 0) throw new Error(`crun exec loop failed: ${floor.stderr}`);
      ms.crunExec.push(...epochPairsMs(floor.stdout));
    }

    // Exec stdout throughput vs crun exec into a pipe.
    const ddLine = (bytes: number) => `dd if=/dev/zero bs=1M count=${bytes / 1048576} 2>/dev/null`;
    const crictlLine = (args: string[]) => crictlCommand(daemon!.crictlConfig, args).join(' ');
    const hostExec = async (transport: string, bytes: number): Promise<number> => {
      const t0 = process.hrtime.bigint();
      const r = await daemon!.asUser([
        'sh',
        '-c',
        `${crictlLine(['exec', '-r', transport, idle, 'sh', '-c'])} '${ddLine(bytes)}' | wc -c`,
      ]);
      const elapsed = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.exitCode !== 0 || Number(r.stdout.trim()) !== bytes) {
        throw new Error(`crictl exec -r ${transport} gave ${r.stdout.trim()} bytes: ${r.stderr}`);
      }
      return elapsed;
    };
    const fixed: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      fixed.push(await hostExec('spdy', 0));
      ms.spdyExec.push(await hostExec('spdy', STREAM_BYTES));
      ms.wsExec.push(await hostExec('websocket', STREAM_BYTES));
      const floor = await daemon.enter([
        'bash',
        '-c',
        `set -e; t0=$EPOCHREALTIME; n=$(${crun} exec ${idle} sh -c '${ddLine(STREAM_BYTES)}' | wc -c); echo "$t0 $EPOCHREALTIME $n"`,
      ]);
      if (floor.exitCode !== 0 || !floor.stdout.trim().endsWith(` ${STREAM_BYTES}`)) {
        throw new Error(`crun exec dd failed: ${floor.stdout} ${floor.stderr}`);
      }
      ms.crunStream.push(...epochPairsMs(floor.stdout));
      // The same commands with nothing to stream: what each path costs before its first byte.
      ms.wsEmpty.push(await hostExec('websocket', 0));
      const empty = await daemon.enter([
        'bash',
        '-c',
        `set -e; t0=$EPOCHREALTIME; n=$(${crun} exec ${idle} sh -c '${ddLine(0)}' | wc -c); echo "$t0 $EPOCHREALTIME $n"`,
      ]);
      if (empty.exitCode !== 0) throw new Error(`crun exec of an empty dd failed: ${empty.stderr}`);
      ms.crunEmpty.push(...epochPairsMs(empty.stdout));
    }
    fixedExecMs = median(fixed);
    ms.spdyEmpty = fixed;

    // Port-forward vs rootlesskit's builtin driver, to the same pod port.
    const builtinPort = await freePort();
    const added = await daemon.asUser([
      'rootlessctl',
      '--socket',
      path.join(daemon.runDir, 'node/api.sock'),
      'add-ports',
      `127.0.0.1:${builtinPort}:${podIp}:${HTTP_SERVER_PORT}/tcp`,
    ]);
    if (added.exitCode !== 0) throw new Error(`rootlessctl add-ports failed: ${added.stderr}`);
    for (let round = 0; round < ROUNDS; round++) {
      for (const [transport, samples] of [
        ['spdy', ms.spdyForward],
        ['websocket', ms.wsForward],
      ] as const) {
        const local = await freePort();
        const forward = await portForward(daemon, podId, local, transport);
        try {
          samples.push(await curlMs(local, STREAM_BYTES));
        } finally {
          await forward.stop();
        }
      }
      ms.builtinForward.push(await curlMs(builtinPort, STREAM_BYTES));
    }
    await daemon.asUser([
      'rootlessctl',
      '--socket',
      path.join(daemon.runDir, 'node/api.sock'),
      'remove-ports',
      added.stdout.trim(),
    ]);
  } finally {
    if (daemon && podId) {
      await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: podId }).catch(() => undefined);
      await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: podId }).catch(() => undefined);
    }
    await daemon?.stop();
    await registry.stop();
  }

  const f = (x: number) => `${x.toFixed(2)} ms`.padStart(10);
  const ours = summarize(ms.execSync);
  const floor = summarize(ms.crunExec);
  console.log(`streaming: ExecSync \`true\` in a running busybox container, ${ours.n} calls (sequential)`);
  console.log(`  rootless-cri ExecSync         p50 ${f(ours.p50)}  p99 ${f(ours.p99)}`);
  console.log(`  crun exec in the node         p50 ${f(floor.p50)}  p99 ${f(floor.p99)}`);
  console.log(
    `  ratio ExecSync / crun exec: p50 ${(ours.p50 / floor.p50).toFixed(2)}x  p99 ${(ours.p99 / floor.p99).toFixed(2)}x  (aim: <= 1.3x)`,
  );

  const mib = STREAM_BYTES / 1048576;
  const rate = (samples: number[]) => MB(STREAM_BYTES, median(samples));
  const r = (x: number) => `${x.toFixed(0)} MB/s`.padStart(10);
  const crunRate = rate(ms.crunStream);
  console.log(
    `streaming: exec stdout, dd of ${mib} MiB from /dev/zero into wc -c, ${ROUNDS} rounds, medians`,
  );
  console.log(`  crictl exec (SPDY) from the host      ${r(rate(ms.spdyExec))}`);
  console.log(`  crictl exec (WebSocket) from the host ${r(rate(ms.wsExec))}`);
  console.log(`  crun exec in the node (floor)         ${r(crunRate)}`);
  console.log(
    `  ratio SPDY / floor ${(rate(ms.spdyExec) / crunRate).toFixed(2)}x, WebSocket / floor ${(rate(ms.wsExec) / crunRate).toFixed(2)}x  (wall time incl. a fixed ${fixedExecMs.toFixed(0)} ms for crictl start-up + Exec RPC + empty stream)`,
  );

  // Throughput once streaming: the bytes over the time a path takes beyond its own empty run
  // (crictl start-up, the Exec RPC and the stream set-up for ours; crun exec's start for the floor).
  const netRate = (samples: number[], empty: number[]) =>
    MB(STREAM_BYTES, Math.max(1, median(samples) - median(empty)));
  const netCrun = netRate(ms.crunStream, ms.crunEmpty);
  const netSpdy = netRate(ms.spdyExec, ms.spdyEmpty);
  const netWs = netRate(ms.wsExec, ms.wsEmpty);
  console.log(
    `  net of each path's empty run (median ${median(ms.spdyEmpty).toFixed(0)} / ${median(ms.wsEmpty).toFixed(0)} / ${median(ms.crunEmpty).toFixed(0)} ms): SPDY ${r(netSpdy)}, WebSocket ${r(netWs)}, floor ${r(netCrun)}; ratio SPDY ${(netSpdy / netCrun).toFixed(2)}x, WebSocket ${(netWs / netCrun).toFixed(2)}x  (aim: >= 0.8x)`,
  );

  const builtin = rate(ms.builtinForward);
  console.log(
    `streaming: port-forward, curl of a ${mib} MiB file from httpd in a pod, ${ROUNDS} rounds, medians`,
  );
  console.log(`  crictl port-forward (SPDY)           ${r(rate(ms.spdyForward))}`);
  console.log(`  crictl port-forward (WebSocket)      ${r(rate(ms.wsForward))}`);
  console.log(`  rootlesskit builtin port driver      ${r(builtin)}`);
  console.log(
    `  ratio to builtin: SPDY ${(rate(ms.spdyForward) / builtin).toFixed(2)}x, WebSocket ${(rate(ms.wsForward) / builtin).toFixed(2)}x  (issue 5 sets no number; 1.0x = builtin)`,
  );
}
