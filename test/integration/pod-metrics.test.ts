/**
 * ListMetricDescriptors / ListPodSandboxMetrics and the pod network figures of PodSandboxStats
 * with the real daemon, through crictl (`metricdescs`, `metricsp`, `statsp`) from the host: a
 * busybox container holding 20 MB of anonymous memory, a listening socket, a 2 MB file in its
 * writable layer and a few processes; traffic from the pod to the node's bridge shows in the
 * pod's eth0 counters. The figures must match what the container did, whichever source the host
 * gives them (cgroup memory files, or the processes' /proc figures where memory is not delegated).
 */
import { chown, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, catalogueEntry, pushCatalogue } from '../fixtures/test-images.js';
import { crictlCommand, mirrorConfig, sleep, TestDaemon } from '../harness/daemon.js';

const REPORT_DIR =
  process.env.ROOTLESS_CRI_REPORT_DIR ?? path.resolve(import.meta.dirname, '../../.work/reports');
const BASE_LABELS = ['container', 'id', 'image', 'name', 'namespace', 'pod'];

interface Metric {
  name: string;
  labelValues: string[];
  value?: { value?: string };
  metricType?: string;
}
interface PodMetrics {
  podSandboxId: string;
  metrics?: Metric[];
  containerMetrics?: { containerId: string; metrics?: Metric[] }[];
}

describe('pod and container metrics through crictl', () => {
  let daemon: TestDaemon;
  let registry: RunningRegistry;
  let podId = '';
  let containerId = '';
  let image = '';

  const crictl = async (args: string[]) => {
    const r = await daemon.asUser(crictlCommand(daemon.crictlConfig, args));
    if (r.exitCode !== 0) throw new Error(`crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}`);
    return r.stdout;
  };
  const writeJson = async (name: string, value: unknown) => {
    const file = path.join(daemon.tmp, name);
    await writeFile(file, JSON.stringify(value));
    await chown(file, daemon.user.uid, daemon.user.gid);
    return file;
  };
  const podMetrics = async (): Promise<PodMetrics> => {
    const all = JSON.parse(await crictl(['metricsp', '-o', 'json'])) as { podMetrics: PodMetrics[] };
    const mine = all.podMetrics.find((p) => p.podSandboxId === podId);
    expect(mine, 'the pod is listed').toBeDefined();
    return mine!;
  };
  const value = (metrics: Metric[] | undefined, name: string, extra: string[] = []): bigint => {
    const found = (metrics ?? []).filter(
      (m) => m.name === name && extra.every((v, i) => m.labelValues[BASE_LABELS.length + i] === v),
    );
    expect(found, `${name}${extra.length ? ` {${extra.join(',')}}` : ''}`).toHaveLength(1);
    return BigInt(found[0]!.value?.value ?? '0');
  };
  const txPackets = async () =>
    value((await podMetrics()).metrics, 'container_network_transmit_packets_total', ['eth0']);

  beforeAll(async () => {
    const cacheDir = path.join(REPORT_DIR, '..', 'test-images');
    const { images } = await buildCatalogue({ cacheDir, names: ['busybox'] });
    registry = await startRegistry();
    await pushCatalogue(registry.host, images);
    const bb = catalogueEntry('busybox');
    image = `registry.k8s.io/${bb.repository}:${bb.tags[0]}`;
    daemon = await TestDaemon.start({ extraConfig: mirrorConfig(registry.url) });
    await crictl(['pull', image]);
    const pod = await writeJson('pod.json', {
      metadata: { name: 'metrics', namespace: 'metrics-ns', uid: 'metrics-uid', attempt: 0 },
      linux: {},
    });
    podId = (await crictl(['runp', pod])).trim();
    const container = await writeJson('container.json', {
      metadata: { name: 'worker' },
      image: { image },
      command: [
        'sh',
        '-c',
        // 20 MB held by the shell, a listening socket, a 2 MB file in the writable layer; the
        // `exit` keeps the shell (and its 20 MB) from exec'ing the last command.
        'x=$(head -c 20000000 /dev/zero | tr "\\0" a); nc -l -p 8080 & dd if=/dev/zero of=/big bs=1M count=2 2>/dev/null; touch /ready; sleep 3600; exit 0',
      ],
    });
    containerId = (await crictl(['create', podId, container, pod])).trim();
    await crictl(['start', containerId]);
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await daemon.asUser(
        crictlCommand(daemon.crictlConfig, ['exec', containerId, 'ls', '/ready']),
      );
      if (r.exitCode === 0) break;
      if (Date.now() > deadline) throw new Error(`the container did not get ready: ${r.stderr}`);
      await sleep(100);
    }
  }, 240_000);

  afterAll(async () => {
    if (podId) await crictl(['rmp', '-f', podId]).catch(() => undefined);
    await daemon?.stop();
    await registry?.stop();
  }, 120_000);

  it('metricdescs lists cadvisor names, each with help and the base labels first', async () => {
    const { descriptors } = JSON.parse(await crictl(['metricdescs', '-o', 'json'])) as {
      descriptors: { name: string; help: string; labelKeys: string[] }[];
    };
    const byName = new Map(descriptors.map((d) => [d.name, d]));
    for (const name of [
      'container_cpu_usage_seconds_total',
      'container_memory_working_set_bytes',
      'container_memory_rss',
      'container_processes',
      'container_sockets',
      'container_fs_usage_bytes',
      'container_network_receive_bytes_total',
      'container_spec_memory_limit_bytes',
      'container_start_time_seconds',
    ]) {
      expect(byName.get(name), name).toBeDefined();
    }
    for (const d of descriptors) {
      expect(d.help, d.name).not.toBe('');
      expect(d.labelKeys.slice(0, BASE_LABELS.length), d.name).toEqual(BASE_LABELS);
    }
    expect(byName.get('container_network_transmit_bytes_total')?.labelKeys.at(-1)).toBe('interface');
  });

  it('metricsp reports what the container does, with labels matching the descriptors', async () => {
    const { descriptors } = JSON.parse(await crictl(['metricdescs', '-o', 'json'])) as {
      descriptors: { name: string; labelKeys: string[] }[];
    };
    const keys = new Map(descriptors.map((d) => [d.name, d.labelKeys.length]));
    const pod = await podMetrics();
    const container = pod.containerMetrics?.find((c) => c.containerId === containerId);
    expect(container).toBeDefined();
    const metrics = container!.metrics!;
    for (const m of [...metrics, ...(pod.metrics ?? [])]) {
      expect(m.labelValues.length, m.name).toBe(keys.get(m.name));
    }
    const labels = metrics.find((m) => m.name === 'container_processes')!.labelValues;
    expect(labels.slice(0, 3)).toEqual(['worker', containerId, image]);
    expect(labels.slice(4)).toEqual(['metrics-ns', 'metrics']);

    expect(value(metrics, 'container_memory_rss')).toBeGreaterThanOrEqual(20_000_000n);
    expect(value(metrics, 'container_memory_working_set_bytes')).toBeGreaterThanOrEqual(20_000_000n);
    expect(value(metrics, 'container_memory_usage_bytes')).toBeGreaterThanOrEqual(
      value(metrics, 'container_memory_working_set_bytes'),
    );
    // sh, nc and sleep.
    expect(value(metrics, 'container_processes')).toBe(3n);
    expect(value(metrics, 'container_threads')).toBe(3n);
    expect(value(metrics, 'container_sockets')).toBeGreaterThanOrEqual(1n);
    expect(value(metrics, 'container_file_descriptors')).toBeGreaterThanOrEqual(7n);
    expect(value(metrics, 'container_fs_usage_bytes')).toBeGreaterThanOrEqual(2n * 1024n * 1024n);
    const now = BigInt(Math.floor(Date.now() / 1000));
    const started = value(metrics, 'container_start_time_seconds');
    expect(started).toBeGreaterThan(now - 300n);
    expect(started).toBeLessThanOrEqual(now);
    expect(value(metrics, 'container_cpu_usage_seconds_total', ['total'])).toBeGreaterThanOrEqual(0n);

    // The pod's own series: its cgroup (all three processes and the pod's infra) and its network.
    expect(value(pod.metrics, 'container_processes')).toBeGreaterThanOrEqual(4n);
    expect((pod.metrics ?? []).some((m) => m.labelValues.includes('lo'))).toBe(false);
  });

  it('pod traffic shows in metricsp and statsp eth0 counters', async () => {
    const before = await txPackets();
    // Connection refused by the node's bridge address: a SYN out and a RST back, at least.
    const r = await daemon.asUser(
      crictlCommand(daemon.crictlConfig, [
        'exec',
        containerId,
        'sh',
        '-c',
        'gw=$(ip route | sed -n "s/^default via \\([0-9.]*\\).*/\\1/p"); echo x | nc "$gw" 1',
      ]),
    );
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/refused/i);
    expect(await txPackets()).toBeGreaterThan(before);

    const stats = JSON.parse(await crictl(['statsp', '-o', 'json', podId])) as {
      stats: {
        linux: {
          network?: {
            defaultInterface?: { name: string; txBytes?: { value: string }; rxBytes?: { value: string } };
          };
        };
      }[];
    };
    const eth0 = stats.stats[0]?.linux.network?.defaultInterface;
    expect(eth0?.name).toBe('eth0');
    expect(BigInt(eth0?.txBytes?.value ?? '0')).toBeGreaterThan(0n);
    expect(BigInt(eth0?.rxBytes?.value ?? '0')).toBeGreaterThan(0n);
  });
});
