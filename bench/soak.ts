/**
 * `npm run soak [minutes]` (default 30; as root, not in CI): random operations against a real
 * daemon, with kill -9 of a random component of the stack now and then, for the life of a node
 * in fast-forward (issue 11). The soak keeps its own model of what exists: every pod and
 * container a call created and no call removed. After each fault it starts the daemon again if
 * needed and compares: an object of the model that the daemon no longer lists is LOST; one the
 * daemon lists that the model does not know is a PHANTOM. At the end everything is removed and
 * the harness's leak check (processes, mounts, cgroups, files) plus the node's leftovers (IP
 * leases, namespace pins, host ports) are counted. Prints one summary; exits 1 when anything
 * was lost, a phantom seen, an object could not be removed, something leaked, or a call failed
 * INTERNAL (refusals after a fault, such as exec in an exited container, are expected).
 *
 * Faults: the daemon, the supervisor, the supervisor's nsenter child, a container's conmon, a
 * container's process, a container's fuse-overlayfs, slirp4netns, the daemon's run server
 * (native/run-server, killed 0-30 ms into the next operation, so that it dies with the
 * operation's crun, conmon or CNI plugin in flight), and (rarely: it ends every pod) the node
 * holder, catatonit. A fault that ends the node makes every pod and container
 * "gone with a reason": they stay in the model, must be listed, and must be removable.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { childrenOf } from '../src/os/process-tree.js';
import { busyboxBaseLayer, ImageBuilder } from '../test/fixtures/image-builder.js';
import { pushImage, startRegistry } from '../test/fixtures/registry.js';
import { TestDaemon } from '../test/harness/daemon.js';
import { nodeLeftovers } from '../test/harness/node-leftovers.js';
import { nextSeed } from './seeded-random.js';

const MINUTES = Number(process.argv[2] ?? process.env.SOAK_MINUTES ?? 30);
/** About one fault per this many operations. */
const OPS_PER_FAULT = Number(process.env.SOAK_OPS_PER_FAULT ?? 12);
const MAX_PODS = 6;
const MAX_CONTAINERS_PER_POD = 3;
const REPOSITORY = 'rootless-cri/soak';

interface PodModel {
  id: string;
  name: string;
  config: unknown;
  containers: Set<string>;
  stopped: boolean;
}

type Counter = Map<string, number>;
const bump = (c: Counter, key: string) => c.set(key, (c.get(key) ?? 0) + 1);

let seed = Number(process.env.SOAK_SEED ?? Date.now() % 2 ** 31);
/** A small seeded generator, so a run that found something can be replayed (SOAK_SEED). */
function random(): number {
  seed = nextSeed(seed);
  return seed / 2 ** 31;
}
/** One of the names, each as likely as its weight. */
function pickWeighted(weights: [string, number][]): string {
  const total = weights.reduce((sum, [, w]) => sum + w, 0);
  let r = random() * total;
  for (const [name, w] of weights) {
    r -= w;
    if (r < 0) return name;
  }
  return weights[weights.length - 1]![0];
}
function pick<T>(items: T[]): T | undefined {
  return items.length === 0 ? undefined : items[Math.floor(random() * items.length)];
}

async function comm(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
}

async function parentOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

function kill(pid: number | undefined): boolean {
  if (!pid || pid <= 1) return false;
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}

export async function soak(): Promise<number> {
  const work = await mkdtemp(path.join(os.tmpdir(), 'rcri-soak-'));
  const registry = await startRegistry();
  const ops: Counter = new Map();
  const failedOps: Counter = new Map();
  const faults: Counter = new Map();
  const adopted: Counter = new Map();
  const internal: string[] = [];
  const problems: string[] = [];
  let lost = 0;
  let phantoms = 0;
  let unremovable = 0;
  let daemon: TestDaemon | undefined;
  const pods = new Map<string, PodModel>();
  const startedAt = Date.now();
  const startSeed = seed;
  try {
    const base = await busyboxBaseLayer();
    const built = await new ImageBuilder(path.join(work, 'layout')).build('soak', {
      layers: [{ items: base.items, comment: 'busybox' }],
      config: { cmd: ['sh'] },
    });
    await pushImage(registry.url, REPOSITORY, ['1'], built);
    const image = `${registry.host}/${REPOSITORY}:1`;
    daemon = await TestDaemon.start();
    const d = daemon;
    await d.client.image('PullImage', { image: { image } }, { timeoutMs: 120_000 });
    let serial = 0;

    /** The daemon answers again (a fault may have ended it, or the whole node). */
    const ensureServing = async () => {
      try {
        await d.client.runtime('Version', {}, { timeoutMs: 3_000 });
        return;
      } catch {
        // Gone: its supervisor ends with it; a new serve adopts or remakes the node.
      }
      await d.supervisorExited(60_000).catch(() => undefined);
      await d.serve();
    };

    const containersOf = (p: PodModel) => [...p.containers];
    const allContainers = () =>
      [...pods.values()].flatMap((p) => containersOf(p).map((c) => ({ pod: p, id: c })));

    const operations: Record<string, () => Promise<void>> = {
      runPod: async () => {
        if (pods.size >= MAX_PODS) return;
        const name = `soak-${serial++}`;
        const config = {
          metadata: { name, namespace: 'soak', uid: `uid-${name}`, attempt: 0 },
          log_directory: '',
          linux: {},
        };
        const id = (await d.client.runtime('RunPodSandbox', { config } as never)).pod_sandbox_id!;
        pods.set(id, { id, name, config, containers: new Set(), stopped: false });
      },
      createContainer: async () => {
        const pod = pick(
          [...pods.values()].filter((p) => !p.stopped && p.containers.size < MAX_CONTAINERS_PER_POD),
        );
        if (!pod) return;
        const command = pick([['sleep', '3600'], ['top'], ['sh', '-c', 'sleep 2; exit 3']])!;
        const id = (
          await d.client.runtime('CreateContainer', {
            pod_sandbox_id: pod.id,
            sandbox_config: pod.config,
            config: {
              metadata: { name: `c${serial++}`, attempt: 0 },
              image: { image },
              command,
              log_path: '',
            },
          } as never)
        ).container_id!;
        pod.containers.add(id);
        await d.client.runtime('StartContainer', { container_id: id });
      },
      exec: async () => {
        const c = pick(allContainers());
        if (!c) return;
        await d.client.runtime('ExecSync', { container_id: c.id, cmd: ['echo', 'hi'], timeout: '10' });
      },
      stopContainer: async () => {
        const c = pick(allContainers());
        if (!c) return;
        await d.client.runtime('StopContainer', { container_id: c.id, timeout: '2' });
      },
      removeContainer: async () => {
        const c = pick(allContainers());
        if (!c) return;
        await d.client.runtime('RemoveContainer', { container_id: c.id });
        c.pod.containers.delete(c.id);
      },
      stopPod: async () => {
        const pod = pick([...pods.values()]);
        if (!pod) return;
        await d.client.runtime('StopPodSandbox', { pod_sandbox_id: pod.id });
        pod.stopped = true;
      },
      removePod: async () => {
        const pod = pick([...pods.values()]);
        if (!pod) return;
        await d.client.runtime('StopPodSandbox', { pod_sandbox_id: pod.id });
        await d.client.runtime('RemovePodSandbox', { pod_sandbox_id: pod.id });
        pods.delete(pod.id);
      },
      list: async () => {
        await d.client.runtime('ListContainers', {});
        await d.client.runtime('ListPodSandbox', {});
        await d.client.image('ImageFsInfo', {});
      },
    };
    const weights: [string, number][] = [
      ['runPod', 3],
      ['createContainer', 5],
      ['exec', 4],
      ['stopContainer', 2],
      ['removeContainer', 2],
      ['stopPod', 1],
      ['removePod', 2],
      ['list', 2],
    ];

    /** A process of the container's stack, found through the node's processes. */
    const containerProcess = async (kind: 'conmon' | 'fuse-overlayfs' | 'init') => {
      const c = pick(allContainers());
      if (!c) return undefined;
      const ps = await d.enter(['ps', '-eo', 'pid,args']);
      for (const line of ps.stdout.split('\n')) {
        if (!line.includes(c.id)) continue;
        const [pidText, program] = line.trim().split(/\s+/);
        const base = path.basename(program ?? '');
        if (kind === 'conmon' && base === 'conmon') return { node: Number(pidText) };
        if (kind === 'fuse-overlayfs' && base === 'fuse-overlayfs') return { node: Number(pidText) };
      }
      if (kind === 'init') {
        // conmon's pid file holds the pid in the node's pid namespace, not the host's.
        const pidFile = path.join(d.runDir, 'containers', c.id, 'container.pid');
        const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
        return pid > 1 ? { node: pid } : undefined;
      }
      return undefined;
    };

    const faultKinds: [string, number][] = [
      ['daemon', 4],
      ['supervisor', 2],
      ['nsenter', 1],
      ['conmon', 2],
      ['container-process', 3],
      ['fuse-overlayfs', 1],
      ['slirp4netns', 1],
      ['node-holder', 1],
      ['run-server', 2],
    ];
    /** Kills the daemon's run server a random moment into what comes next. */
    const armRunServerKill = async () => {
      let server: number | undefined;
      for (const c of await childrenOf(await d.daemonPid())) {
        if ((await comm(c)) === 'run-server') server = c;
      }
      if (server === undefined) return;
      const target = server;
      setTimeout(() => {
        if (kill(target)) bump(faults, 'run-server');
      }, random() * 30);
    };
    const injectFault = async (kind: string) => {
      let done = false;
      switch (kind) {
        case 'daemon':
          done = kill(await d.daemonPid());
          break;
        case 'supervisor':
          done = kill(await d.supervisorPid());
          break;
        case 'nsenter': {
          for (const c of await childrenOf(await d.supervisorPid()))
            if ((await comm(c)) === 'nsenter') done = kill(c);
          break;
        }
        case 'slirp4netns': {
          const rootlesskit = await parentOf(await d.nodePid());
          for (const c of await childrenOf(rootlesskit))
            if ((await comm(c)) === 'slirp4netns') done = kill(c);
          break;
        }
        case 'node-holder':
          done = kill(await d.nodePid());
          break;
        case 'conmon':
        case 'fuse-overlayfs':
        case 'container-process': {
          // Pids of the node's pid namespace: killed from inside the node.
          const found = await containerProcess(kind === 'container-process' ? 'init' : kind);
          if (found) done = (await d.enter(['kill', '-9', String(found.node)])).exitCode === 0;
          break;
        }
      }
      if (!done) return;
      bump(faults, kind);
      if (['daemon', 'supervisor', 'nsenter', 'node-holder'].includes(kind)) {
        // The daemon ends with each of these (at once, or when it sees its supervisor gone):
        // wait for that, then serve again, as an operator's service manager would.
        await d.supervisorExited(60_000);
        await d.serve();
      }
      await ensureServing();
    };

    /**
     * Every object of the model is listed (else LOST). After a fault nothing else may be listed
     * (else PHANTOM); after a failed call the daemon may keep what the call made (a pod whose
     * cleanup failed stays NOTREADY, by design): such objects join the model, counted.
     */
    const compare = async (after: string, adopt: boolean) => {
      const listedPods = new Set(
        ((await d.client.runtime('ListPodSandbox', {})).items ?? []).map((p) => p.id!),
      );
      const listed = (await d.client.runtime('ListContainers', {})).containers ?? [];
      const listedContainers = new Set(listed.map((c) => c.id!));
      for (const pod of pods.values()) {
        if (!listedPods.has(pod.id)) {
          lost++;
          problems.push(`after ${after}: pod ${pod.name} lost`);
          pods.delete(pod.id);
          continue;
        }
        for (const c of pod.containers) {
          if (!listedContainers.has(c)) {
            lost++;
            problems.push(`after ${after}: container ${c.slice(0, 12)} of ${pod.name} lost`);
            pod.containers.delete(c);
          }
        }
      }
      for (const id of listedPods) {
        if (pods.has(id)) continue;
        if (!adopt) {
          phantoms++;
          problems.push(`after ${after}: pod ${id.slice(0, 12)} listed but never made`);
        }
        bump(adopted, 'pod');
        pods.set(id, {
          id,
          name: `adopted-${id.slice(0, 12)}`,
          config: {},
          containers: new Set(),
          stopped: true,
        });
      }
      const known = new Set(allContainers().map((c) => c.id));
      for (const c of listed) {
        if (known.has(c.id!)) continue;
        if (!adopt) {
          phantoms++;
          problems.push(`after ${after}: container ${c.id!.slice(0, 12)} listed but never made`);
        }
        bump(adopted, 'container');
        pods.get(c.pod_sandbox_id!)?.containers.add(c.id!);
      }
    };

    const deadline = startedAt + MINUTES * 60_000;
    while (Date.now() < deadline) {
      if (random() < 1 / OPS_PER_FAULT) {
        const kind = pickWeighted(faultKinds);
        if (kind === 'run-server') {
          await armRunServerKill(); // and the operation below runs while it dies
        } else {
          await injectFault(kind);
          await compare('a fault', false);
          continue;
        }
      }
      const name = pickWeighted(weights);
      try {
        await operations[name]!();
        bump(ops, name);
      } catch (err) {
        const code = (err as { code?: number }).code;
        bump(failedOps, `${name}: ${String(code ?? '?')}`);
        // Refusals (FAILED_PRECONDITION for an exited container, NOT_FOUND...) are expected after
        // faults; INTERNAL or UNKNOWN never are: each is shown.
        if (code === undefined || code === 2 || code === 13) {
          internal.push(`${name}: ${String((err as Error).message ?? err).slice(0, 400)}`);
        }
        // A create that failed after the record was made, or a call cut by a fault: the daemon
        // is asked what exists, and the model follows the calls that answered.
        await ensureServing();
        await compare(`a failed ${name}`, true);
      }
    }

    // Everything goes; anything that cannot is counted.
    for (const pod of pods.values()) {
      for (const c of pod.containers) {
        await d.client.runtime('RemoveContainer', { container_id: c }).catch((err: unknown) => {
          unremovable++;
          problems.push(`container ${c.slice(0, 12)}: ${String(err)}`);
        });
      }
      try {
        await d.client.runtime('StopPodSandbox', { pod_sandbox_id: pod.id });
        await d.client.runtime('RemovePodSandbox', { pod_sandbox_id: pod.id });
      } catch (err) {
        unremovable++;
        problems.push(`pod ${pod.name}: ${String(err)}`);
      }
    }
    const left = await nodeLeftovers(d);
    let leaks = left.length;
    problems.push(...left.map((l) => `left in the node: ${l}`));
    try {
      await d.stop();
    } catch (err) {
      leaks++;
      problems.push(`leak check: ${String(err).slice(0, 2000)}`);
    }
    daemon = undefined;
    const minutes = ((Date.now() - startedAt) / 60_000).toFixed(1);
    const sum = (c: Counter) => [...c.values()].reduce((a, b) => a + b, 0);
    console.log(
      JSON.stringify(
        {
          minutes: Number(minutes),
          seed: startSeed,
          operations: { done: sum(ops), byKind: Object.fromEntries(ops) },
          operationsFailed: { count: sum(failedOps), byKindAndCode: Object.fromEntries(failedOps) },
          faults: { injected: sum(faults), byKind: Object.fromEntries(faults) },
          keptByFailedCalls: Object.fromEntries(adopted),
          internalErrors: internal.slice(0, 20),
          lost,
          phantoms,
          unremovable,
          leaks,
          problems: problems.slice(0, 50),
        },
        null,
        2,
      ),
    );
    console.log(
      `soak: ${minutes} min, ${sum(ops)} operations, ${sum(faults)} faults, ${lost} lost, ${phantoms} phantoms, ${unremovable} unremovable, ${leaks} leaks, ${internal.length} internal errors`,
    );
    return lost + phantoms + unremovable + leaks + internal.length === 0 ? 0 : 1;
  } finally {
    await daemon?.stop().catch(() => undefined);
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
}

process.exitCode = await soak();
