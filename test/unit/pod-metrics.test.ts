/**
 * ListMetricDescriptors / ListPodSandboxMetrics and the pod network of PodSandboxStats over
 * fakes (cgroup files, /proc totals, netns counters), and the /proc readers over a fixture tree:
 * which file feeds which series, the /proc fallback where the memory controller is absent, the
 * labels matching the descriptors, lo left out, a pid in another namespace never read.
 */
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type ContainerService, createContainerService } from '../../src/container/container-service.js';
import { BASE_LABELS, METRICS, metricDescriptors } from '../../src/container/metric-descriptors.js';
import { parseIoStat, weightToShares } from '../../src/container/pod-metrics.js';
import type { RuntimeCore } from '../../src/core/runtime-core.js';
import { silentLogger } from '../../src/log.js';
import {
  ProcNodeCounters,
  parseNetDev,
  parseProcStatFaults,
  parseProcStatus,
} from '../../src/os/process-counters.js';
import { containerConfig, hostFacts, sandboxRecord, seedSandbox } from '../fakes/container-fixtures.js';
import { FakeCgroupManager } from '../fakes/fake-cgroup-manager.js';
import { FakeImages } from '../fakes/fake-container-os.js';
import { fakeCore } from '../fakes/fake-core.js';
import { FakeNodeCounters, interfaceCounters } from '../fakes/fake-node-counters.js';
import { FakeOciRuntime } from '../fakes/fake-oci-runtime.js';
import { FakeSandboxOs } from '../fakes/fake-sandbox-os.js';
import { FakeSnapshotter } from '../fakes/fake-snapshotter.js';

const IMAGE = `sha256:${'1'.repeat(64)}`;
const POD = 'a'.repeat(64);
const ctx = { logger: silentLogger() };
const MiB = 1024n * 1024n;

let dir: string;
let core: RuntimeCore;
let service: ContainerService;
let cgroups: FakeCgroupManager;
let counters: FakeNodeCounters;
let snapshotter: FakeSnapshotter;
let runtime: FakeOciRuntime;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'metrics-unit-'));
  const images = new FakeImages();
  images.add({
    id: IMAGE,
    config: { config: { Cmd: ['sleep', '1000'] } },
    layerDirs: ['/layers/app'],
    repoTags: ['registry.local/app:1'],
    repoDigests: [],
  });
  cgroups = new FakeCgroupManager();
  counters = new FakeNodeCounters();
  snapshotter = new FakeSnapshotter('fuse-overlayfs', path.join(dir, 'snap'));
  runtime = new FakeOciRuntime();
  const node = new FakeSandboxOs();
  ({ core } = fakeCore({
    rootDir: path.join(dir, 'root'),
    images,
    snapshotter,
    runtime,
    cgroups,
    sandboxOs: node,
  }));
  service = createContainerService({
    core,
    logger: silentLogger(),
    hostFacts: hostFacts(),
    writableLayerRoot: '/var/lib/snapshots',
    counters,
  });
  await core.recover();
  await seedSandbox(core.sandboxes, node, sandboxRecord());
});

afterEach(async () => {
  await core.close();
  await rm(dir, { recursive: true, force: true });
});

async function runningContainer(name = 'app'): Promise<{ id: string; pid: number; cgroup: string }> {
  const config = containerConfig({
    metadata: { name, attempt: 0 },
    image: { ...containerConfig().image!, image: 'registry.local/app:1' },
  });
  const id = (
    await service.handlers.CreateContainer!(
      { pod_sandbox_id: POD, config, sandbox_config: null },
      ctx as never,
    )
  ).container_id!;
  await service.handlers.StartContainer!({ container_id: id }, ctx as never);
  const pid = (await core.containerView(id))!.pid;
  return { id, pid, cgroup: `/pods/pod1/${id}` };
}

async function listMetrics() {
  const r = await service.handlers.ListPodSandboxMetrics!({}, ctx as never);
  expect(r.pod_metrics).toHaveLength(1);
  return r.pod_metrics![0]!;
}

type M = { name: string; label_values: string[]; value: { value: string } | null; metric_type: string };

function pick(metrics: readonly M[] | undefined, name: string, extra: string[] = []): bigint[] {
  return (metrics ?? [])
    .filter((m) => m.name === name && extra.every((v, i) => m.label_values[BASE_LABELS.length + i] === v))
    .map((m) => BigInt(m.value?.value ?? '-1'));
}

describe('ListMetricDescriptors', () => {
  it('describes every metric once, with help and the base labels first', async () => {
    const { descriptors } = await service.handlers.ListMetricDescriptors!({}, ctx as never);
    const names = descriptors!.map((d) => d.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names).toEqual(Object.values(METRICS).map((m) => m.name));
    for (const d of descriptors!) {
      expect(d.help).not.toBe('');
      expect(d.label_keys!.slice(0, BASE_LABELS.length)).toEqual([...BASE_LABELS]);
    }
    expect(metricDescriptors().find((d) => d.name === 'container_memory_failures_total')?.label_keys).toEqual(
      [...BASE_LABELS, 'failure_type', 'scope'],
    );
  });
});

describe('ListPodSandboxMetrics', () => {
  it('takes cpu, memory, limits and io from the cgroup files where the controllers are delegated', async () => {
    const { id, pid, cgroup } = await runningContainer();
    cgroups.setFile(
      cgroup,
      'cpu.stat',
      'usage_usec 7500000\nuser_usec 5000000\nsystem_usec 2500000\nnr_periods 40\nnr_throttled 4\nthrottled_usec 3000000\n',
    );
    cgroups.setFile(cgroup, 'cpu.max', '50000 100000\n');
    cgroups.setFile(cgroup, 'cpu.weight', '100\n');
    cgroups.setFile(cgroup, 'memory.current', `${64n * MiB}\n`);
    cgroups.setFile(
      cgroup,
      'memory.stat',
      `anon ${40n * MiB}\nfile ${20n * MiB}\nfile_mapped ${MiB}\ninactive_file ${16n * MiB}\nkernel 4096\npgfault 900\npgmajfault 9\n`,
    );
    cgroups.setFile(cgroup, 'memory.peak', `${80n * MiB}\n`);
    cgroups.setFile(cgroup, 'memory.events', 'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n');
    cgroups.setFile(cgroup, 'memory.max', `${128n * MiB}\n`);
    cgroups.setFile(cgroup, 'memory.swap.max', 'max\n');
    cgroups.setFile(cgroup, 'pids.max', '512\n');
    cgroups.setFile(cgroup, 'io.stat', '254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n');
    counters.pids.set(cgroups.dir(cgroup), [pid, 777]);
    counters.totals.set(pid, { processes: 1, threads: 3, fileDescriptors: 5, sockets: 2, anonBytes: 1n });
    counters.totals.set(777, { processes: 1, threads: 1, fileDescriptors: 3 });
    counters.filesystems.set('/var/lib/snapshots', {
      device: '/dev/vda1',
      capacityBytes: 100n * MiB,
      inodesTotal: 1000n,
      inodesFree: 900n,
    });
    snapshotter.snapshots.get(id)!.usage = { bytes: 3n * MiB, inodes: 7n };

    const pod = await listMetrics();
    expect(pod.pod_sandbox_id).toBe(POD);
    const metrics = pod.container_metrics!.find((c) => c.container_id === id)!.metrics as M[];
    const one = (name: string, extra: string[] = []) => {
      const values = pick(metrics, name, extra);
      expect(values, name).toHaveLength(1);
      return values[0];
    };
    expect(one('container_cpu_usage_seconds_total', ['total'])).toBe(7n);
    expect(one('container_cpu_user_seconds_total')).toBe(5n);
    expect(one('container_cpu_system_seconds_total')).toBe(2n);
    expect(one('container_cpu_cfs_periods_total')).toBe(40n);
    expect(one('container_cpu_cfs_throttled_periods_total')).toBe(4n);
    expect(one('container_cpu_cfs_throttled_seconds_total')).toBe(3n);
    expect(one('container_memory_usage_bytes')).toBe(64n * MiB);
    expect(one('container_memory_working_set_bytes')).toBe(48n * MiB);
    expect(one('container_memory_rss')).toBe(40n * MiB);
    expect(one('container_memory_cache')).toBe(20n * MiB);
    expect(one('container_memory_mapped_file')).toBe(MiB);
    expect(one('container_memory_kernel_usage')).toBe(4096n);
    expect(one('container_memory_max_usage_bytes')).toBe(80n * MiB);
    expect(one('container_memory_failcnt')).toBe(3n);
    expect(one('container_oom_events_total')).toBe(1n);
    expect(one('container_memory_failures_total', ['pgfault', 'container'])).toBe(900n);
    expect(one('container_memory_failures_total', ['pgmajfault', 'hierarchy'])).toBe(9n);
    expect(one('container_processes')).toBe(2n);
    expect(one('container_threads')).toBe(4n);
    expect(one('container_threads_max')).toBe(512n);
    expect(one('container_file_descriptors')).toBe(8n);
    expect(one('container_sockets')).toBe(2n);
    expect(one('container_spec_cpu_period')).toBe(100_000n);
    expect(one('container_spec_cpu_quota')).toBe(50_000n);
    expect(one('container_spec_cpu_shares')).toBe(weightToShares(100n));
    expect(one('container_spec_memory_limit_bytes')).toBe(128n * MiB);
    expect(one('container_spec_memory_swap_limit_bytes')).toBe(0n);
    expect(one('container_fs_usage_bytes', ['/dev/vda1'])).toBe(3n * MiB);
    expect(one('container_fs_limit_bytes', ['/dev/vda1'])).toBe(100n * MiB);
    expect(one('container_fs_inodes_free', ['/dev/vda1'])).toBe(900n);
    expect(one('container_fs_reads_bytes_total', ['/dev/vda'])).toBe(4096n);
    expect(one('container_fs_writes_total', ['/dev/vda'])).toBe(2n);
    expect(one('container_blkio_device_usage_total', ['/dev/vda', '254', '0', 'Write'])).toBe(8192n);

    const labels = metrics.find((m) => m.name === 'container_processes')!.label_values;
    expect(labels).toEqual([
      'app',
      id,
      'registry.local/app:1',
      expect.stringMatching(/^app_/),
      'default',
      'pod',
    ]);
    // Every series carries exactly its descriptor's labels.
    const keys = new Map(metricDescriptors().map((d) => [d.name, d.label_keys!.length]));
    for (const m of [...metrics, ...(pod.metrics as M[])]) {
      expect(m.label_values.length, m.name).toBe(keys.get(m.name));
      expect(m.metric_type).toBe(Object.values(METRICS).find((d) => d.name === m.name)!.kind);
    }
  });

  it('without the memory controller, memory comes from the processes; nothing enforced reads as 0', async () => {
    const { id, pid, cgroup } = await runningContainer();
    cgroups.setFile(cgroup, 'cpu.stat', 'usage_usec 10\nuser_usec 5\nsystem_usec 5\n');
    counters.pids.set(cgroups.dir(cgroup), [pid]);
    counters.totals.set(pid, {
      processes: 1,
      threads: 1,
      residentBytes: 30n * MiB,
      anonBytes: 20n * MiB,
      fileBytes: 10n * MiB,
      swapBytes: MiB,
      peakResidentBytes: 50n * MiB,
      pageTableBytes: 8192n,
      minorFaults: 100n,
      majorFaults: 2n,
    });
    const metrics = (await listMetrics()).container_metrics!.find((c) => c.container_id === id)!
      .metrics as M[];
    const one = (name: string, extra: string[] = []) => pick(metrics, name, extra)[0];
    expect(one('container_memory_usage_bytes')).toBe(30n * MiB);
    expect(one('container_memory_working_set_bytes')).toBe(30n * MiB);
    expect(one('container_memory_rss')).toBe(20n * MiB);
    expect(one('container_memory_cache')).toBe(10n * MiB);
    expect(one('container_memory_swap')).toBe(MiB);
    expect(one('container_memory_max_usage_bytes')).toBe(50n * MiB);
    expect(one('container_memory_kernel_usage')).toBe(8192n);
    expect(one('container_memory_failures_total', ['pgfault', 'container'])).toBe(102n);
    expect(one('container_memory_failures_total', ['pgmajfault', 'container'])).toBe(2n);
    expect(one('container_cpu_cfs_periods_total')).toBe(0n);
    expect(one('container_spec_cpu_shares')).toBe(0n);
    expect(one('container_spec_memory_limit_bytes')).toBe(0n);
    expect(one('container_threads_max')).toBe(0n);
    // Only set limits are reported; io only with io.stat.
    expect(pick(metrics, 'container_spec_cpu_quota')).toEqual([]);
    expect(pick(metrics, 'container_fs_reads_total')).toEqual([]);
  });

  it('pod level: the pod cgroup and the pod network namespace (lo left out), read through a pid in it', async () => {
    const { pid } = await runningContainer();
    cgroups.setFile('/pods/pod1', 'cpu.stat', 'usage_usec 3000000\n');
    counters.netns.set('/run/netns/n1', {
      pids: [pid],
      interfaces: [interfaceCounters('lo', 0), interfaceCounters('eth0', 100)],
    });
    const pod = await listMetrics();
    const metrics = pod.metrics as M[];
    expect(pick(metrics, 'container_cpu_usage_seconds_total', ['total'])).toEqual([3n]);
    expect(pick(metrics, 'container_network_receive_bytes_total', ['eth0'])).toEqual([101n]);
    expect(pick(metrics, 'container_network_transmit_packets_dropped_total', ['eth0'])).toEqual([108n]);
    expect(metrics.some((m) => m.label_values.includes('lo'))).toBe(false);
    expect(metrics.find((m) => m.name === 'container_last_seen')!.label_values).toEqual([
      '',
      POD,
      '',
      '',
      'default',
      'pod',
    ]);
    // The infra pid first, then running containers.
    expect(counters.calls).toContain(`networkInterfaces /run/netns/n1 4242,${pid}`);

    const stats = (await service.handlers.PodSandboxStats!({ pod_sandbox_id: POD }, ctx as never)).stats!;
    expect(stats.linux?.network).toMatchObject({
      default_interface: { name: 'eth0', rx_bytes: { value: '101' }, tx_errors: { value: '107' } },
      interfaces: [{ name: 'eth0' }],
    });
    expect(BigInt(stats.linux!.network!.timestamp as string)).toBeGreaterThan(0n);

    // No process in the namespace: no network figures, the rest still answers.
    counters.netns.get('/run/netns/n1')!.pids = [];
    expect(pick((await listMetrics()).metrics as M[], 'container_network_receive_bytes_total')).toEqual([]);
    expect(
      (await service.handlers.PodSandboxStats!({ pod_sandbox_id: POD }, ctx as never)).stats!.linux
        ?.network ?? null,
    ).toBeNull();
  });

  it('lists created and running containers only, and ready pods only', async () => {
    const { id } = await runningContainer('a');
    const { id: stopped } = await runningContainer('b');
    await service.handlers.StopContainer!({ container_id: stopped, timeout: '0' }, ctx as never);
    const pod = await listMetrics();
    expect(pod.container_metrics!.map((c) => c.container_id)).toEqual([id]);
    const record = core.sandboxes.get(POD)!;
    await core.sandboxes.put({ ...record, state: 'notready' });
    expect((await service.handlers.ListPodSandboxMetrics!({}, ctx as never)).pod_metrics).toEqual([]);
  });
});

describe('parsers', () => {
  it('io.stat, cpu.weight, /proc/<pid>/status and stat, /proc/net/dev', () => {
    expect(parseIoStat('8:0 rbytes=1 wbytes=2 rios=3\nbad line\n')).toEqual(
      new Map([
        [
          '8:0',
          new Map([
            ['rbytes', 1n],
            ['wbytes', 2n],
            ['rios', 3n],
          ]),
        ],
      ]),
    );
    expect([weightToShares(1n), weightToShares(100n), weightToShares(10000n)]).toEqual([2n, 2597n, 262144n]);
    const status = parseProcStatus('Name:\tsh\nThreads:\t4\nVmRSS:\t    1024 kB\nRssAnon:\t 12 kB\n');
    expect([status.get('Threads'), status.get('VmRSS'), status.get('RssAnon')]).toEqual([
      4n,
      1048576n,
      12288n,
    ]);
    // The comm may hold spaces and parentheses.
    expect(parseProcStatFaults('42 (a (b) c) S 1 42 42 0 -1 4194560 150 0 7 0 1 2 0 0 20 0 1 0')).toEqual({
      minor: 150n,
      major: 7n,
    });
    const dev = parseNetDev(
      'Inter-|   Receive                                                |  Transmit\n' +
        ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n' +
        '    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n' +
        '  eth0:    5000      40    1    2    0     0          0         0     3000      30    3    4    0     0       0          0\n',
    );
    expect(
      dev.map((i) => [
        i.name,
        i.rxBytes,
        i.rxPackets,
        i.rxErrors,
        i.rxDropped,
        i.txBytes,
        i.txPackets,
        i.txErrors,
        i.txDropped,
      ]),
    ).toEqual([
      ['lo', 100n, 2n, 0n, 0n, 100n, 2n, 0n, 0n],
      ['eth0', 5000n, 40n, 1n, 2n, 3000n, 30n, 3n, 4n],
    ]);
  });
});

describe('ProcNodeCounters over a fixture /proc and cgroup tree', () => {
  it('sums processes, counts descriptors and sockets, reads net/dev only through a pid in the namespace', async () => {
    const proc = path.join(dir, 'proc');
    const netns = path.join(dir, 'netns-pin');
    const otherNetns = path.join(dir, 'other-netns');
    await writeFile(netns, '');
    await writeFile(otherNetns, '');
    const makePid = async (pid: number, rssKb: number, ns: string, fds: string[]) => {
      const p = path.join(proc, String(pid));
      await mkdir(path.join(p, 'fd'), { recursive: true });
      await mkdir(path.join(p, 'ns'));
      await mkdir(path.join(p, 'net'));
      await writeFile(path.join(p, 'status'), `Threads:\t2\nVmRSS:\t${rssKb} kB\nRssAnon:\t${rssKb} kB\n`);
      await writeFile(path.join(p, 'stat'), `${pid} (sh) S 1 1 1 0 -1 0 10 0 1 0 0 0`);
      for (const [i, target] of fds.entries()) await symlink(target, path.join(p, 'fd', String(i)));
      await symlink(ns, path.join(p, 'ns', 'net'));
      await writeFile(
        path.join(p, 'net', 'dev'),
        `h1\nh2\n  eth0: ${pid} 1 0 0 0 0 0 0 ${pid} 1 0 0 0 0 0 0\n`,
      );
    };
    await makePid(10, 100, otherNetns, ['/dev/null']);
    await makePid(11, 200, netns, ['/dev/null', 'socket:[1]', 'socket:[2]']);
    const counters = new ProcNodeCounters(proc);
    const totals = await counters.processTotals([10, 11, 12]);
    expect(totals).toMatchObject({
      processes: 2,
      threads: 4,
      residentBytes: 300n * 1024n,
      minorFaults: 20n,
      majorFaults: 2n,
      fileDescriptors: 4,
      sockets: 2,
    });
    // pid 10 is in another namespace: skipped; 11 is read.
    expect((await counters.networkInterfaces(netns, [10, 11]))?.map((i) => i.rxBytes)).toEqual([11n]);
    expect(await counters.networkInterfaces(netns, [10])).toBeNull();
    expect(await counters.networkInterfaces(path.join(dir, 'no-such-pin'), [11])).toBeNull();

    const cg = path.join(dir, 'cgroup', 'pod');
    await mkdir(path.join(cg, 'ctr', 'sub'), { recursive: true });
    await writeFile(path.join(cg, 'cgroup.procs'), '');
    await writeFile(path.join(cg, 'ctr', 'cgroup.procs'), '10\n11\n');
    await writeFile(path.join(cg, 'ctr', 'sub', 'cgroup.procs'), '12\n');
    expect((await counters.pidsUnder(cg)).sort()).toEqual([10, 11, 12]);

    const fs = await counters.filesystem(dir);
    expect(fs?.capacityBytes).toBeGreaterThan(0n);
    expect(fs?.inodesTotal).toBeGreaterThanOrEqual(fs?.inodesFree ?? 0n);
  });
});
