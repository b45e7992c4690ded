/**
 * peer: rootless-cri against containerd 1.6 rootless (bench/containerd-peer.ts), both driven over
 * CRI by the same grpc client, same busybox image from the same local registry, same CNI plugins,
 * in one run: rounds alternate (A then B, then B then A, ...) so machine noise hits both alike,
 * and every figure is a median over all rounds, printed with both values and the ratio
 * rootless-cri / containerd.
 *
 *   - start: RunPodSandbox + CreateContainer + StartContainer (busybox `sleep 3600`);
 *   - teardown: StopContainer (timeout 0) + RemoveContainer + StopPodSandbox + RemovePodSandbox;
 *   - CreateContainer alone, RemoveContainer alone (of the stopped container), from the same
 *     lifecycles;
 *   - ExecSync `true` in a running container;
 *   - idle RSS after pulls and warm-up: the whole stack (every process of the runtime's trees:
 *     rootless-cri's supervisor and its node's rootlesskit, slirp4netns, catatonit, daemon;
 *     containerd's rootlesskit, slirp4netns, containerd; the bench's registry socat pair is not
 *     counted) and the daemon alone (rootless-cri: supervisor + in-node daemon, its two Node
 *     processes; containerd: the containerd process);
 *   - per-pod overhead, RSS and PSS: BENCH_PEER_PODS (default 10) pods, each with one busybox
 *     `sleep`, started on one side while the other idles; the memory of every process of the
 *     bench user (bench/user-memory.ts: both stacks, the pods, their monitors and shims, from
 *     /proc/<pid>/smaps_rollup) after minus before, divided by the pods. Two rounds per side,
 *     alternating; the mean. Also printed by process name: with fuse-overlayfs every container
 *     has its own FUSE mount, so the image's files are cached per container, not shared as
 *     kernel overlayfs shares them (BENCH_PEER_SNAPSHOTTER=overlay runs rootless-cri with it).
 *
 * Both stacks are up for the whole run (each idle while the other is measured). Needs root: it
 * installs containerd and runc from Debian when missing (bench/peer-setup.sh) and runs both
 * runtimes as the unprivileged test user.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { ImageBuilder } from '../test/fixtures/image-builder.js';
import { pushImage, startRegistry } from '../test/fixtures/registry.js';
import type { CriClient } from '../test/harness/cri-client.js';
import { TestDaemon, type UserInfo } from '../test/harness/daemon.js';
import { ContainerdPeer } from './containerd-peer.js';
import { benchImage, REPOSITORY, TAG } from './containers.js';
import { percentile } from './stats.js';
import { pssGrowthByName, subordinateUids, type UserMemory, userMemory } from './user-memory.js';

const ITERATIONS = Number(process.env.BENCH_PEER_ITERATIONS ?? 60);
const EXECS = Number(process.env.BENCH_PEER_EXECS ?? 120);
// More, shorter rounds than the other suites: the machine is shared, and a noisy stretch then
// lands on both sides.
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const PAUSE_REPOSITORY = 'rootless-cri/bench-pause';
const MEMORY_PODS = Number(process.env.BENCH_PEER_PODS ?? 10);
const MEMORY_ROUNDS = 2;
/** rootless-cri's snapshotter (default: the daemon's, fuse-overlayfs); `overlay` is kernel overlayfs. */
const SNAPSHOTTER = process.env.BENCH_PEER_SNAPSHOTTER;

interface Side {
  name: string;
  client: () => CriClient;
}

interface Lifecycle {
  start: number;
  teardown: number;
  create: number;
  remove: number;
}

const median = (xs: number[]) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );
const since = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

function podConfig(name: string) {
  return {
    metadata: { name, namespace: 'bench-peer', uid: `uid-${name}`, attempt: 0 },
    log_directory: '',
    linux: {},
  };
}

async function startPod(side: Side, image: string, name: string) {
  const client = side.client();
  const config = podConfig(name);
  const { pod_sandbox_id } = await client.runtime('RunPodSandbox', { config });
  const t0 = process.hrtime.bigint();
  const { container_id } = await client.runtime('CreateContainer', {
    pod_sandbox_id,
    sandbox_config: config,
    config: { metadata: { name: 'sleep' }, image: { image }, command: ['sleep', '3600'], log_path: '' },
  });
  const create = since(t0);
  await client.runtime('StartContainer', { container_id });
  return { pod_sandbox_id, container_id, create };
}

async function stopPod(side: Side, pod: { pod_sandbox_id: string; container_id: string }) {
  const client = side.client();
  const { container_id, pod_sandbox_id } = pod;
  await client.runtime('StopContainer', { container_id, timeout: 0 });
  const t0 = process.hrtime.bigint();
  await client.runtime('RemoveContainer', { container_id });
  const remove = since(t0);
  await client.runtime('StopPodSandbox', { pod_sandbox_id });
  await client.runtime('RemovePodSandbox', { pod_sandbox_id });
  return remove;
}

async function lifecycle(side: Side, image: string, name: string): Promise<Lifecycle> {
  const t0 = process.hrtime.bigint();
  const pod = await startPod(side, image, name);
  const start = since(t0);
  const t1 = process.hrtime.bigint();
  const remove = await stopPod(side, pod);
  return { start, teardown: since(t1), create: pod.create, remove };
}

async function execs(side: Side, container_id: string, n: number): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    const r = await side.client().runtime('ExecSync', { container_id, cmd: ['true'], timeout: 10 });
    samples.push(since(t0));
    if (r.exit_code !== 0) throw new Error(`${side.name}: ExecSync true exited with ${r.exit_code}`);
  }
  return samples;
}

/** A pause stand-in for containerd's sandbox image: Debian's static catatonit in pause mode. */
async function pushPauseImage(registryUrl: string, work: string): Promise<void> {
  const image = await new ImageBuilder(path.join(work, 'pause-layout')).build('bench-pause', {
    layers: [
      {
        items: [{ kind: 'file', path: '/pause', hostFile: '/usr/bin/catatonit', mode: 0o755 }],
        comment: 'catatonit -P as the pause process',
      },
    ],
    config: { entrypoint: ['/pause', '-P'] },
  });
  await pushImage(registryUrl, PAUSE_REPOSITORY, [TAG], image);
}

interface Proc {
  pid: number;
  ppid: number;
  comm: string;
  rssBytes: number;
}

async function processTable(): Promise<Map<number, Proc>> {
  const table = new Map<number, Proc>();
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const status = await readFile(`/proc/${entry}/status`, 'utf8');
      const rssKb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0);
      table.set(Number(entry), { pid: Number(entry), ppid, comm, rssBytes: rssKb * 1024 });
    } catch {
      // exited while we looked
    }
  }
  return table;
}

/** The processes of the trees rooted at `roots`, each once. */
function trees(table: Map<number, Proc>, roots: number[]): Proc[] {
  const children = new Map<number, number[]>();
  for (const p of table.values()) children.set(p.ppid, [...(children.get(p.ppid) ?? []), p.pid]);
  const seen = new Set<number>();
  const todo = [...roots];
  while (todo.length > 0) {
    const pid = todo.pop()!;
    if (seen.has(pid) || !table.has(pid)) continue;
    seen.add(pid);
    todo.push(...(children.get(pid) ?? []));
  }
  return [...seen].map((pid) => table.get(pid)!);
}

interface StackMemory {
  whole: number;
  daemon: number;
  parts: string;
}

function summarizeStack(procs: Proc[], daemonPids: number[], roles: Map<number, string>): StackMemory {
  const mib = (b: number) => (b / 1048576).toFixed(1);
  return {
    whole: procs.reduce((a, p) => a + p.rssBytes, 0),
    daemon: procs.filter((p) => daemonPids.includes(p.pid)).reduce((a, p) => a + p.rssBytes, 0),
    parts: procs
      .sort((a, b) => b.rssBytes - a.rssBytes)
      .map((p) => `${roles.get(p.pid) ?? p.comm} ${mib(p.rssBytes)}`)
      .join(', '),
  };
}

async function rootlessCriMemory(daemon: TestDaemon): Promise<StackMemory> {
  const table = await processTable();
  const supervisor = await daemon.supervisorPid();
  const daemonPid = await daemon.daemonPid();
  // The node's host-side rootlesskit: the topmost rootlesskit above the node's init.
  let rootlesskit = await daemon.nodePid();
  for (let p = table.get(rootlesskit)?.ppid; p !== undefined && table.get(p)?.comm === 'rootlesskit'; ) {
    rootlesskit = p;
    p = table.get(p)?.ppid;
  }
  const roles = new Map([
    [supervisor, 'supervisor'],
    [daemonPid, 'daemon'],
    [rootlesskit, 'rootlesskit'],
  ]);
  const procs = trees(table, [supervisor, rootlesskit]);
  for (const p of procs)
    if (p.comm === 'exe' && p.ppid === rootlesskit) roles.set(p.pid, 'rootlesskit child');
  return summarizeStack(procs, [supervisor, daemonPid], roles);
}

async function containerdMemory(peer: ContainerdPeer): Promise<StackMemory> {
  const table = await processTable();
  const procs = trees(table, [peer.rootlesskitPid()]).filter(
    (p) => p.comm !== 'socat' && !peer.plumbingPids().includes(p.pid),
  );
  const containerd = procs.filter((p) => p.comm === 'containerd').map((p) => p.pid);
  if (containerd.length !== 1)
    throw new Error(`found ${containerd.length} containerd processes in the peer's tree`);
  const roles = new Map<number, string>();
  for (const p of procs)
    if (p.comm === 'exe' && p.ppid === peer.rootlesskitPid()) roles.set(p.pid, 'rootlesskit child');
  return summarizeStack(procs, containerd, roles);
}

interface PerPod {
  rss: number;
  pss: number;
  processes: number;
  /** PSS growth per pod by process name. */
  byName: string;
}

/** What MEMORY_PODS running pods (one busybox sleep each) add to everything the user runs, per pod. */
async function perPodOverhead(side: Side, image: string, user: UserInfo, round: number): Promise<PerPod> {
  const subordinate = await subordinateUids(user);
  const settle = () => new Promise((r) => setTimeout(r, 2000));
  await settle();
  const before: UserMemory = await userMemory(user.uid, subordinate);
  const pods = [];
  for (let i = 0; i < MEMORY_PODS; i++) pods.push(await startPod(side, image, `mem-${round}-${i}`));
  await settle();
  const after = await userMemory(user.uid, subordinate);
  for (const pod of pods) await stopPod(side, pod);
  return {
    rss: (after.rssBytes - before.rssBytes) / MEMORY_PODS,
    pss: (after.pssBytes - before.pssBytes) / MEMORY_PODS,
    processes: (after.processes - before.processes) / MEMORY_PODS,
    byName: pssGrowthByName(before, after, MEMORY_PODS),
  };
}

async function containerdVersion(peer: ContainerdPeer): Promise<string> {
  const v = await peer.client.runtime('Version', {});
  const runc = await execa('runc', ['--version'], { reject: false });
  return `${v.runtime_name} ${v.runtime_version}, ${String(runc.stdout).split('\n')[0]}`;
}

export async function benchPeer(): Promise<void> {
  const setup = path.resolve(import.meta.dirname, '../../bench/peer-setup.sh');
  await execa('bash', [setup], { stdio: 'inherit' });
  const work = await mkdtemp(path.join(os.tmpdir(), 'rcri-bench-peer-'));
  const registry = await startRegistry();
  let daemon: TestDaemon | undefined;
  let peer: ContainerdPeer | undefined;
  const result = {
    cri: { life: [] as Lifecycle[], exec: [] as number[] },
    containerd: { life: [] as Lifecycle[], exec: [] as number[] },
  };
  let memory: { cri: StackMemory; containerd: StackMemory } | undefined;
  const perPod: { cri: PerPod[]; containerd: PerPod[] } = { cri: [], containerd: [] };
  let version = '';
  try {
    await benchImage(registry.url, work);
    await pushPauseImage(registry.url, work);
    const image = `${registry.host}/${REPOSITORY}:${TAG}`;
    const sandboxImage = `${registry.host}/${PAUSE_REPOSITORY}:${TAG}`;
    daemon = await TestDaemon.start(
      SNAPSHOTTER ? { extraConfig: `[image]\nsnapshotter = "${SNAPSHOTTER}"\n` } : {},
    );
    peer = await ContainerdPeer.start({ user: daemon.user, registryHost: registry.host, sandboxImage });
    version = await containerdVersion(peer);
    const d = daemon;
    const p = peer;
    const sides = {
      cri: { name: 'rootless-cri', client: () => d.client },
      containerd: { name: 'containerd', client: () => p.client },
    } satisfies Record<string, Side>;
    for (const side of Object.values(sides)) {
      for (const img of side === sides.containerd ? [image, sandboxImage] : [image]) {
        await side.client().image('PullImage', { image: { image: img } }, { timeoutMs: 120_000 });
      }
      for (let i = 0; i < 2; i++) await lifecycle(side, image, `warm-${i}`);
    }
    // Idle after pulls and warm-up, before the latency rounds' garbage.
    await new Promise((r) => setTimeout(r, 2000));
    memory = { cri: await rootlessCriMemory(daemon), containerd: await containerdMemory(peer) };
    for (let round = 0; round < MEMORY_ROUNDS; round++) {
      const order = round % 2 === 0 ? (['cri', 'containerd'] as const) : (['containerd', 'cri'] as const);
      for (const key of order) perPod[key].push(await perPodOverhead(sides[key], image, daemon.user, round));
    }

    const execPods = {
      cri: await startPod(sides.cri, image, 'exec'),
      containerd: await startPod(sides.containerd, image, 'exec'),
    };
    // Both sides did the same pod network work: CNI gave each pod an address.
    for (const [key, pod] of Object.entries(execPods) as [keyof typeof sides, { pod_sandbox_id: string }][]) {
      const { status } = await sides[key]
        .client()
        .runtime('PodSandboxStatus', { pod_sandbox_id: pod.pod_sandbox_id });
      if (!status?.network?.ip) throw new Error(`${sides[key].name}: the pod has no IP address`);
    }
    await execs(sides.cri, execPods.cri.container_id, 5);
    await execs(sides.containerd, execPods.containerd.container_id, 5);
    const perRound = Math.ceil(ITERATIONS / ROUNDS);
    const execsPerRound = Math.ceil(EXECS / ROUNDS);
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? (['cri', 'containerd'] as const) : (['containerd', 'cri'] as const);
      for (const key of order) {
        for (let i = 0; i < perRound; i++) {
          result[key].life.push(await lifecycle(sides[key], image, `r${round}-${i}`));
        }
        result[key].exec.push(...(await execs(sides[key], execPods[key].container_id, execsPerRound)));
      }
    }
    await stopPod(sides.cri, execPods.cri);
    await stopPod(sides.containerd, execPods.containerd);
  } finally {
    await peer?.stop();
    await daemon?.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }

  const ms = (x: number) => `${x.toFixed(1)} ms`;
  const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
  const rows: [string, string, string, number, string][] = [];
  const timeRow = (label: string, pick: (l: Lifecycle) => number, aim: string) => {
    const a = median(result.cri.life.map(pick));
    const b = median(result.containerd.life.map(pick));
    rows.push([label, ms(a), ms(b), a / b, aim]);
  };
  timeRow('RunPodSandbox + CreateContainer + StartContainer', (l) => l.start, '');
  timeRow('teardown (stop + remove container and pod)', (l) => l.teardown, '');
  timeRow('start + teardown', (l) => l.start + l.teardown, 'aim <= 0.5x');
  timeRow('CreateContainer alone', (l) => l.create, 'aim <= 1.5x');
  timeRow('RemoveContainer alone (stopped container)', (l) => l.remove, 'aim <= 1.5x');
  {
    const a = median(result.cri.exec);
    const b = median(result.containerd.exec);
    rows.push(['ExecSync `true`', ms(a), ms(b), a / b, '']);
  }
  if (memory) {
    const { cri, containerd } = memory;
    rows.push([
      'idle RSS, whole stack',
      mib(cri.whole),
      mib(containerd.whole),
      cri.whole / containerd.whole,
      'aim <= 1.0x',
    ]);
    rows.push([
      'idle RSS, daemon only',
      mib(cri.daemon),
      mib(containerd.daemon),
      cri.daemon / containerd.daemon,
      '',
    ]);
  }
  const mean = (xs: PerPod[], pick: (p: PerPod) => number) => xs.reduce((a, p) => a + pick(p), 0) / xs.length;
  if (perPod.cri.length > 0 && perPod.containerd.length > 0) {
    for (const [label, pick] of [
      ['per-pod overhead RSS', (p: PerPod) => p.rss],
      ['per-pod overhead PSS', (p: PerPod) => p.pss],
    ] as const) {
      const a = mean(perPod.cri, pick);
      const b = mean(perPod.containerd, pick);
      rows.push([`${label} (${MEMORY_PODS} pods)`, mib(a), mib(b), a / b, 'aim <= 0.5x']);
    }
  }
  const n = result.cri.life.length;
  console.log(
    `peer: rootless-cri vs containerd rootless (${version}), ${n} lifecycles and ${result.cri.exec.length} ExecSync each, ${ROUNDS} alternating rounds, medians`,
  );
  const w = Math.max(...rows.map((r) => r[0].length));
  console.log(`  ${'figure'.padEnd(w)}  ${'rootless-cri'.padStart(12)}  ${'containerd'.padStart(12)}  ratio`);
  for (const [label, a, b, ratio, aim] of rows) {
    console.log(
      `  ${label.padEnd(w)}  ${a.padStart(12)}  ${b.padStart(12)}  ${ratio.toFixed(2).padStart(5)}x  ${aim}`.trimEnd(),
    );
  }
  if (memory) {
    console.log(`  rootless-cri stack (RSS MiB): ${memory.cri.parts}`);
    console.log(`  containerd stack (RSS MiB): ${memory.containerd.parts}`);
  }
  if (perPod.cri.length > 0) {
    const each = (xs: PerPod[]) =>
      xs.map((p) => `${mib(p.rss)} / ${mib(p.pss)} (${p.processes.toFixed(1)} processes)`).join(', ');
    console.log(
      `  per pod, RSS / PSS by round: rootless-cri ${each(perPod.cri)}; containerd ${each(perPod.containerd)}`,
    );
    console.log(`  per pod, PSS MiB by process (last round): rootless-cri ${perPod.cri.at(-1)?.byName}`);
    console.log(`  per pod, PSS MiB by process (last round): containerd ${perPod.containerd.at(-1)?.byName}`);
  }
}
