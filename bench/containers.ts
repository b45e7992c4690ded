/**
 * containers: RunPodSandbox + CreateContainer + StartContainer (busybox `sleep 3600`) then
 * StopContainer + RemoveContainer + StopPodSandbox + RemovePodSandbox through the real daemon,
 * against two figures measured in the same run, rounds alternating so machine noise hits all
 * alike:
 *   - the floor, inside the node: fuse-overlayfs mount of the same image's layer dirs (from the
 *     daemon's image store) + `crun run -d` of a bundle made from the config.json the daemon
 *     wrote + `crun delete -f` + unmount + removal of the writable dirs, a bash loop timed with
 *     $EPOCHREALTIME (no fork per timestamp);
 *   - Debian's podman rootless as the test user (installed by bench/peer-setup.sh), same image
 *     from the same registry: `podman --runtime runc run -d --rm` + `podman rm -f -t 0`
 *     (podman's crun refuses the host's hybrid cgroups outside the node; runc works), storage
 *     on fuse-overlayfs like ours, its own HOME/XDG dirs, image pulled once before timing.
 * Then memory: the daemon's RSS/PSS idle and with 20 running pods (one busybox sleep container
 * each), and the per-pod overhead (daemon delta + conmon + infra catatonit).
 *
 * The image is the catalogue's busybox base with the applets as symlinks instead of hardlinks:
 * the catalogue writes hardlink tar entries with mode 0644, and containers/storage (podman)
 * applies a hardlink entry's mode to the shared inode, leaving /bin/busybox not executable
 * there. All three sides run this one image. Needs root (daemon and podman run as the test user).
 */
import { existsSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { busyboxBaseLayer, ImageBuilder, type LayerItem } from '../test/fixtures/image-builder.js';
import { pushImage, startRegistry } from '../test/fixtures/registry.js';
import { TestDaemon } from '../test/harness/daemon.js';
import { percentile } from './stats.js';

const ITERATIONS = Number(process.env.BENCH_CONTAINER_ITERATIONS ?? 30);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const MEMORY_PODS = Number(process.env.BENCH_MEMORY_PODS ?? 20);
export const REPOSITORY = 'rootless-cri/bench-busybox';
export const TAG = '1';

interface Summary {
  n: number;
  p50: number;
  p99: number;
}

function summarize(xs: number[]): Summary {
  const s = [...xs].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 50), p99: percentile(s, 99) };
}

/** `start end` pairs of $EPOCHREALTIME (seconds with µs) per line → milliseconds. */
function epochPairsMs(stdout: string): number[] {
  return stdout
    .trim()
    .split('\n')
    .filter((line) => /^\d+\.\d+ \d+\.\d+$/.test(line))
    .map((line) => {
      const [a, b] = line.split(' ').map(Number) as [number, number];
      return (b - a) * 1000;
    });
}

export async function benchImage(registryUrl: string, work: string) {
  const base = await busyboxBaseLayer();
  const items = base.items.map(
    (item): LayerItem =>
      item.kind === 'hardlink' && item.target === '/bin/busybox'
        ? { kind: 'symlink', path: item.path, target: 'busybox' }
        : item,
  );
  const image = await new ImageBuilder(path.join(work, 'layout')).build('bench-busybox', {
    layers: [{ items, comment: 'busybox with symlinked applets' }],
    config: { cmd: ['sh'] },
  });
  await pushImage(registryUrl, REPOSITORY, [TAG], image);
}

function podConfig(name: string) {
  return {
    metadata: { name, namespace: 'bench', uid: `uid-${name}`, attempt: 0 },
    log_directory: '',
    linux: {},
  };
}

export const PHASES = [
  'RunPodSandbox',
  'CreateContainer',
  'StartContainer',
  'StopContainer',
  'RemoveContainer',
  'StopPodSandbox',
  'RemovePodSandbox',
] as const;
export type Phase = (typeof PHASES)[number];
export type PhaseTimes = Partial<Record<Phase, number>>;

async function timedPhase<T>(phases: PhaseTimes | undefined, phase: Phase, task: Promise<T>): Promise<T> {
  const t0 = process.hrtime.bigint();
  const result = await task;
  if (phases) phases[phase] = Number(process.hrtime.bigint() - t0) / 1e6;
  return result;
}

export async function startPod(daemon: TestDaemon, image: string, name: string, phases?: PhaseTimes) {
  const config = podConfig(name);
  const { pod_sandbox_id } = await timedPhase(
    phases,
    'RunPodSandbox',
    daemon.client.runtime('RunPodSandbox', { config }),
  );
  const { container_id } = await timedPhase(
    phases,
    'CreateContainer',
    daemon.client.runtime('CreateContainer', {
      pod_sandbox_id,
      sandbox_config: config,
      config: { metadata: { name: 'sleep' }, image: { image }, command: ['sleep', '3600'], log_path: '' },
    }),
  );
  await timedPhase(phases, 'StartContainer', daemon.client.runtime('StartContainer', { container_id }));
  return { pod_sandbox_id, container_id };
}

export async function stopPod(
  daemon: TestDaemon,
  pod: { pod_sandbox_id: string; container_id: string },
  phases?: PhaseTimes,
) {
  const { container_id, pod_sandbox_id } = pod;
  // timeout 0: SIGKILL at once, as `crun delete -f` and `podman rm -f -t 0` do.
  await timedPhase(
    phases,
    'StopContainer',
    daemon.client.runtime('StopContainer', { container_id, timeout: 0 }),
  );
  await timedPhase(phases, 'RemoveContainer', daemon.client.runtime('RemoveContainer', { container_id }));
  await timedPhase(phases, 'StopPodSandbox', daemon.client.runtime('StopPodSandbox', { pod_sandbox_id }));
  await timedPhase(phases, 'RemovePodSandbox', daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id }));
}

export async function criIteration(
  daemon: TestDaemon,
  image: string,
  name: string,
  phases?: PhaseTimes,
): Promise<number> {
  const t0 = process.hrtime.bigint();
  const pod = await startPod(daemon, image, name, phases);
  await stopPod(daemon, pod, phases);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

interface RuntimeSpecSubset {
  root: { path: string; readonly: boolean };
  annotations?: Record<string, string>;
  mounts: { destination: string; type?: string; source?: string; options?: string[] }[];
  linux: { namespaces: { type: string; path?: string }[]; cgroupsPath?: string };
}

function floorSpec(daemonSpec: RuntimeSpecSubset, rootfs: string, daemonTmp: string): RuntimeSpecSubset {
  const spec = structuredClone(daemonSpec);
  spec.root = { path: rootfs, readonly: false };
  spec.annotations = {};
  spec.linux.namespaces = spec.linux.namespaces.map((ns) => ({ type: ns.type }));
  spec.linux.cgroupsPath = '/bench-floor/floor';
  spec.mounts = spec.mounts.filter((m) => !m.source?.startsWith(daemonTmp));
  if (!spec.mounts.some((m) => m.destination === '/dev/shm')) {
    spec.mounts.push({
      destination: '/dev/shm',
      type: 'tmpfs',
      source: 'shm',
      options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'],
    });
  }
  return spec;
}

function floorScript(dir: string, lowerdir: string, iterations: number): string {
  return `
set -e
R=${dir}/crun; B=${dir}/bundle; S=${dir}/snap
mkdir -p $R $S
for i in $(seq ${iterations}); do
  t0=$EPOCHREALTIME
  mkdir $S/upper $S/work $S/merged
  fuse-overlayfs -o lowerdir=${lowerdir},upperdir=$S/upper,workdir=$S/work $S/merged
  crun --root $R --cgroup-manager=cgroupfs run -d --bundle $B floor$i </dev/null >/dev/null 2>&1
  crun --root $R --cgroup-manager=cgroupfs delete -f floor$i
  fusermount3 -u $S/merged 2>/dev/null || umount $S/merged
  rm -rf $S/upper $S/work $S/merged
  echo "$t0 $EPOCHREALTIME"
done
rmdir /sys/fs/cgroup/bench-floor 2>/dev/null || true
`;
}

/** podman as the test user with its own HOME, XDG dirs and storage (fuse-overlayfs, like ours). */
class Podman {
  readonly env: string[];
  constructor(
    private readonly daemon: TestDaemon,
    private readonly dir: string,
  ) {
    this.env = [
      `HOME=${dir}/home`,
      `XDG_RUNTIME_DIR=${dir}/run`,
      `XDG_CONFIG_HOME=${dir}/home/.config`,
      `XDG_DATA_HOME=${dir}/home/.local/share`,
    ];
  }

  async setup(): Promise<void> {
    const config = path.join(this.dir, 'home/.config/containers');
    await mkdir(config, { recursive: true });
    await mkdir(path.join(this.dir, 'run'), { mode: 0o700 });
    await writeFile(
      path.join(config, 'storage.conf'),
      '[storage]\ndriver = "overlay"\n[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n',
    );
    for (const p of [
      '',
      'run',
      'home',
      'home/.config',
      'home/.config/containers',
      'home/.config/containers/storage.conf',
    ]) {
      await chown(path.join(this.dir, p), this.daemon.user.uid, this.daemon.user.gid);
    }
  }

  run(args: string[]) {
    return this.daemon.asUser(['env', ...this.env, 'podman', ...args]);
  }

  script(body: string) {
    return this.daemon.asUser(['env', ...this.env, 'bash', '-c', body]);
  }

  /** Removes what podman left: containers, images, its pause process (a catatonit kept per user). */
  async teardown(): Promise<void> {
    await this.run(['rm', '-af', '-t', '0']);
    await this.run(['rmi', '-af']);
    const pauseFile = path.join(this.dir, 'run/libpod/tmp/pause.pid');
    const pid = Number((await readFile(pauseFile, 'utf8').catch(() => '')).trim());
    if (pid > 0) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

function podmanLoop(image: string, iterations: number): string {
  return `
set -e
for i in $(seq ${iterations}); do
  t0=$EPOCHREALTIME
  id=$(podman --runtime runc run -d --rm ${image} sleep 3600)
  podman --runtime runc rm -f -t 0 $id >/dev/null
  echo "$t0 $EPOCHREALTIME"
done
`;
}

type ProcessMemoryFigures = { rssBytes: number; pssBytes: number };

interface ProcessMemory {
  pid: number;
  comm: string;
  ppid: number;
  rssBytes: number;
  pssBytes: number;
}

async function memoryOf(pid: number): Promise<{ rssBytes: number; pssBytes: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (text: string, key: string) =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  return { rssBytes: kb(status, 'VmRSS') * 1024, pssBytes: kb(rollup, 'Pss') * 1024 };
}

/** Every process in the node's user namespace, with its memory. */
async function nodeProcesses(userNamespace: string): Promise<ProcessMemory[]> {
  const found: ProcessMemory[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    try {
      if ((await readlink(`/proc/${pid}/ns/user`)) !== userNamespace) continue;
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      found.push({ pid, comm, ppid, ...(await memoryOf(pid)) });
    } catch {
      // exited while we looked
    }
  }
  return found;
}

const mean = (xs: number[]) => (xs.length === 0 ? Number.NaN : xs.reduce((a, b) => a + b, 0) / xs.length);

async function benchMemory(
  daemon: TestDaemon,
  image: string,
  fresh: ProcessMemoryFigures,
): Promise<string[]> {
  const out: string[] = [];
  const daemonPid = await daemon.daemonPid();
  const userNamespace = await readlink(`/proc/${await daemon.nodePid()}/ns/user`);
  await new Promise((r) => setTimeout(r, 2000));
  const idle = await memoryOf(daemonPid);
  const pods = [];
  try {
    for (let i = 0; i < MEMORY_PODS; i++) pods.push(await startPod(daemon, image, `mem-${i}`));
    await new Promise((r) => setTimeout(r, 2000));
    const loaded = await memoryOf(daemonPid);
    const processes = await nodeProcesses(userNamespace);
    const byPid = new Map(processes.map((p) => [p.pid, p]));
    const conmon = processes.filter((p) => p.comm === 'conmon');
    // The infra process of a pod: `unshare --pid --fork catatonit -P`, started by the run
    // server (or by the daemon with ROOTLESS_CRI_RUN_SERVER=0): the unshare is whatever parent
    // an infra catatonit has.
    const infra = processes.filter((p) => p.comm === 'catatonit' && byPid.get(p.ppid)?.comm === 'unshare');
    const unshare = infra.map((p) => byPid.get(p.ppid)!);
    const fuse = processes.filter((p) => p.comm === 'fuse-overlayfs');
    const kib = (b: number) => `${(b / 1024).toFixed(0)} KiB`;
    const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
    const delta = {
      rss: (loaded.rssBytes - idle.rssBytes) / MEMORY_PODS,
      pss: (loaded.pssBytes - idle.pssBytes) / MEMORY_PODS,
    };
    const avg = (ps: ProcessMemory[], key: 'rssBytes' | 'pssBytes') => mean(ps.map((p) => p[key]));
    out.push(`memory: daemon with ${MEMORY_PODS} running pods (one busybox sleep container each)`);
    out.push(
      `  daemon idle, fresh (after start + pull)  RSS ${mib(fresh.rssBytes)} (${fresh.rssBytes} B)  PSS ${mib(fresh.pssBytes)}`,
    );
    out.push(
      `  daemon idle, after 2 warm-up pods        RSS ${mib(idle.rssBytes)} (${idle.rssBytes} B)  PSS ${mib(idle.pssBytes)}`,
    );
    out.push(
      `  daemon with ${MEMORY_PODS} running pods            RSS ${mib(loaded.rssBytes)} (${loaded.rssBytes} B)  PSS ${mib(loaded.pssBytes)}`,
    );
    out.push(
      `  found: ${conmon.length} conmon, ${infra.length} infra catatonit, ${unshare.length} unshare, ${fuse.length} fuse-overlayfs`,
    );
    const rows: [string, number, number][] = [
      // Against the idle figure just before the pods (warm heap), so start-up growth is not counted.
      ['daemon delta per pod', delta.rss, delta.pss],
      ['conmon (mean)', avg(conmon, 'rssBytes'), avg(conmon, 'pssBytes')],
      ['infra catatonit (mean)', avg(infra, 'rssBytes'), avg(infra, 'pssBytes')],
      ['infra unshare parent (mean)', avg(unshare, 'rssBytes'), avg(unshare, 'pssBytes')],
      ['fuse-overlayfs (mean)', avg(fuse, 'rssBytes'), avg(fuse, 'pssBytes')],
    ];
    for (const [name, rss, pss] of rows) {
      out.push(`  ${name.padEnd(29)} RSS ${kib(rss).padStart(9)}  PSS ${kib(pss).padStart(9)}`);
    }
    const three = rows.slice(0, 3);
    const all = rows;
    const sum = (rs: typeof rows, i: 1 | 2) => rs.reduce((a, r) => a + r[i], 0);
    out.push(
      `  per-pod overhead (daemon + conmon + infra catatonit): RSS ${Math.round(sum(three, 1))} B  PSS ${Math.round(sum(three, 2))} B`,
    );
    out.push(
      `  with unshare and fuse-overlayfs too:                  RSS ${Math.round(sum(all, 1))} B  PSS ${Math.round(sum(all, 2))} B`,
    );
  } finally {
    for (const pod of pods) await stopPod(daemon, pod);
  }
  return out;
}

export async function benchContainers(): Promise<void> {
  // podman (and containerd/runc, which the peer bench uses) from Debian when missing.
  await execa('bash', [path.resolve(import.meta.dirname, '../../bench/peer-setup.sh')], { stdio: 'inherit' });
  const work = await mkdtemp(path.join(os.tmpdir(), 'rcri-bench-containers-'));
  const registry = await startRegistry();
  let daemon: TestDaemon | undefined;
  let podman: Podman | undefined;
  const ms = { cri: [] as number[], floor: [] as number[], podman: [] as number[] };
  let podmanError: string | null = null;
  let podmanInfo = '';
  let memory: string[] = [];
  const phaseSamples: PhaseTimes[] = [];
  try {
    await benchImage(registry.url, work);
    const image = `${registry.host}/${REPOSITORY}:${TAG}`;
    daemon = await TestDaemon.start();
    const podmanLock = `/dev/shm/libpod_rootless_lock_${daemon.user.uid}`;
    const lockExisted = existsSync(podmanLock);
    await daemon.client.image('PullImage', { image: { image } }, { timeoutMs: 120_000 });
    await new Promise((r) => setTimeout(r, 2000));
    const freshIdle = await memoryOf(await daemon.daemonPid());

    // The image's layer dirs in the daemon's store, top layer first as overlay wants them.
    const status = await daemon.client.image('ImageStatus', { image: { image }, verbose: true });
    const info = JSON.parse(status.info?.info ?? '{"layers":[]}') as { layers: { chainId: string }[] };
    if (info.layers.length === 0) throw new Error('ImageStatus verbose info names no layers');
    const lowerdir = info.layers
      .map((l) => path.join(daemon!.rootDir, 'image/layers', l.chainId.replace(/^sha256:/, '')))
      .reverse()
      .join(':');

    // Warm-up, and the config.json the daemon writes, for the floor's bundle.
    const warm = await startPod(daemon, image, 'warm-0');
    const daemonSpec = JSON.parse(
      await readFile(path.join(daemon.runDir, 'containers', warm.container_id, 'config.json'), 'utf8'),
    ) as RuntimeSpecSubset;
    await stopPod(daemon, warm);
    await criIteration(daemon, image, 'warm-1');
    // Memory before the latency runs: their garbage would make the idle figure, and so the
    // per-pod delta, depend on when V8 last collected.
    memory = await benchMemory(daemon, image, freshIdle);

    const floorDir = path.join(daemon.tmp, 'floor');
    await mkdir(path.join(floorDir, 'bundle'), { recursive: true });
    await writeFile(
      path.join(floorDir, 'bundle/config.json'),
      JSON.stringify(floorSpec(daemonSpec, path.join(floorDir, 'snap/merged'), daemon.tmp)),
    );
    for (const p of ['', 'bundle', 'bundle/config.json']) {
      await chown(path.join(floorDir, p), daemon.user.uid, daemon.user.gid);
    }

    podman = new Podman(daemon, path.join(daemon.tmp, 'podman'));
    await podman.setup();
    const pull = await podman.run(['pull', '--quiet', '--tls-verify=false', image]);
    if (pull.exitCode !== 0) podmanError = `podman pull failed: ${pull.stderr.trim()}`;
    else {
      const i = await podman.run([
        'info',
        '--format',
        '{{.Store.GraphDriverName}}, cgroups {{.Host.CgroupsVersion}}, network backend {{.Host.NetworkBackend}}',
      ]);
      podmanInfo = i.stdout.trim();
      const probe = await podman.script(podmanLoop(image, 1));
      if (probe.exitCode !== 0) podmanError = `podman run failed: ${probe.stderr.trim()}`;
    }

    const perRound = Math.ceil(ITERATIONS / ROUNDS);
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < perRound; i++) {
        const times: PhaseTimes = {};
        ms.cri.push(await criIteration(daemon, image, `r${round}-${i}`, times));
        phaseSamples.push(times);
      }
      const floor = await daemon.enter(['bash', '-c', floorScript(floorDir, lowerdir, perRound)]);
      if (floor.exitCode !== 0) throw new Error(`floor script failed: ${floor.stderr}`);
      ms.floor.push(...epochPairsMs(floor.stdout));
      if (podmanError === null) {
        const r = await podman.script(podmanLoop(image, perRound));
        if (r.exitCode !== 0) podmanError = `podman run failed: ${r.stderr.trim()}`;
        else ms.podman.push(...epochPairsMs(r.stdout));
      }
    }

    await podman.teardown();
    podman = undefined;
    if (!lockExisted) await rm(podmanLock, { force: true });
  } finally {
    await podman?.teardown();
    await daemon?.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
  const cri = summarize(ms.cri);
  const floor = summarize(ms.floor);
  const f = (x: number) => `${x.toFixed(1)} ms`.padStart(9);
  console.log(
    `containers: pod + busybox sleep container, start then teardown, ${cri.n} iterations in ${ROUNDS} alternating rounds`,
  );
  console.log(`  rootless-cri (Run+Create+Start, Stop+Remove x2)   p50 ${f(cri.p50)}  p99 ${f(cri.p99)}`);
  console.log(`  floor (fuse-overlayfs + crun run -d/delete -f)    p50 ${f(floor.p50)}  p99 ${f(floor.p99)}`);
  console.log(
    `  ratio rootless-cri / floor: p50 ${(cri.p50 / floor.p50).toFixed(2)}x  p99 ${(cri.p99 / floor.p99).toFixed(2)}x  (aim: <= 2x)`,
  );
  const phaseLine = PHASES.map(
    (phase) => `${phase} ${summarize(phaseSamples.map((t) => t[phase] ?? Number.NaN)).p50.toFixed(1)}`,
  ).join(', ');
  console.log(`    per RPC, p50 ms: ${phaseLine}`);
  if (podmanError !== null || ms.podman.length === 0) {
    console.log(`  podman: not measured: ${podmanError ?? 'no samples'}`);
  } else {
    const pm = summarize(ms.podman);
    console.log(`  podman 4.3 rootless, runc (${podmanInfo})`);
    console.log(`    run -d --rm + rm -f -t 0                          p50 ${f(pm.p50)}  p99 ${f(pm.p99)}`);
    console.log(
      `  ratio rootless-cri / podman: p50 ${(cri.p50 / pm.p50).toFixed(2)}x  p99 ${(cri.p99 / pm.p99).toFixed(2)}x  (aim: <= 1.0x)`,
    );
  }
  for (const line of memory) console.log(line);
}
