/**
 * The metric families of src/metrics.ts: names, labels and what each recording call adds,
 * read back in the exposition format Prometheus scrapes. The real daemon's families are
 * checked after a workload in test/integration/metrics.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { GRPC_STATUS_BY_KIND, grpcStatusName } from '../../src/cri/status-codes.js';
import { ERROR_KINDS } from '../../src/errors.js';
import { addStateCollectors, createMetrics, kindOfCode, type StateSources } from '../../src/metrics.js';

/** `name{labels} value` lines of a scrape, as a map (HELP/TYPE lines left out). */
async function scrape(registry: { metrics(): Promise<string> }): Promise<Map<string, number>> {
  const series = new Map<string, number>();
  for (const line of (await registry.metrics()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    series.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return series;
}

function sources(overrides: Partial<StateSources> = {}): StateSources {
  return {
    podStates: () => ['ready', 'ready', 'notready'],
    containerStates: () => ['running', 'running', 'exited', 'created'],
    eventSubscribersDropped: () => 2,
    conditions: async () => ({ runtime: true, network: false }),
    uplinkUp: async () => true,
    rootlesskitUp: async () => {
      throw new Error('connection refused');
    },
    listeners: () => [
      { name: 'streaming', listening: true },
      { name: 'metrics', listening: false },
    ],
    recovery: () => ({ durationSeconds: 0.25, problems: 3 }),
    quarantined: () => ({ images: 1, sandboxRecords: 0, containerRecords: 2 }),
    ...overrides,
  };
}

describe('kindOfCode', () => {
  it('turns every gRPC code the edge answers with back into its error kind', () => {
    for (const kind of ERROR_KINDS) expect(kindOfCode(grpcStatusName(GRPC_STATUS_BY_KIND[kind]))).toBe(kind);
  });

  it('keeps a code that is no error kind as it is', () => {
    expect(kindOfCode('DATA_LOSS')).toBe('DATA_LOSS');
    expect(kindOfCode('CODE_42')).toBe('CODE_42');
  });
});

describe('createMetrics', () => {
  it('counts every RPC, and the state-changing ones as operations with failures by kind', async () => {
    const metrics = createMetrics();
    metrics.rpc.observe('RunPodSandbox', 'OK', 0.2);
    metrics.rpc.observe('RunPodSandbox', 'INVALID_ARGUMENT', 0.001);
    metrics.rpc.observe('PullImage', 'NOT_FOUND', 1.5);
    metrics.rpc.observe('ListContainers', 'OK', 0.0002);
    const s = await scrape(metrics.registry);
    expect(s.get('rootless_cri_grpc_requests_total{method="RunPodSandbox",code="OK"}')).toBe(1);
    expect(s.get('rootless_cri_grpc_requests_total{method="ListContainers",code="OK"}')).toBe(1);
    expect(s.get('rootless_cri_operations_total{operation="pod_run"}')).toBe(2);
    expect(s.get('rootless_cri_operation_failures_total{operation="pod_run",reason="InvalidArgument"}')).toBe(
      1,
    );
    expect(s.get('rootless_cri_operation_failures_total{operation="image_pull",reason="NotFound"}')).toBe(1);
    expect(s.get('rootless_cri_operation_duration_seconds_count{operation="image_pull"}')).toBe(1);
    expect(s.get('rootless_cri_operation_duration_seconds_sum{operation="image_pull"}')).toBe(1.5);
    // Polling reads are RPCs, not operations.
    expect([...s.keys()].filter((k) => k.includes('operation="') && k.includes('list'))).toEqual([]);
  });

  it('counts streaming operations, with a failure only when one is given', async () => {
    const metrics = createMetrics();
    metrics.operations.observe('exec', 3);
    metrics.operations.observe('port_forward', 0.002, 'Unavailable');
    const s = await scrape(metrics.registry);
    expect(s.get('rootless_cri_operations_total{operation="exec"}')).toBe(1);
    expect(s.get('rootless_cri_operations_total{operation="port_forward"}')).toBe(1);
    expect(
      s.get('rootless_cri_operation_failures_total{operation="port_forward",reason="Unavailable"}'),
    ).toBe(1);
    expect(s.has('rootless_cri_operation_failures_total{operation="exec",reason="Internal"}')).toBe(false);
  });

  it('records pulls: bytes, layers by source, duration, failures by reason', async () => {
    const metrics = createMetrics();
    metrics.imagePulls.pulled({ bytes: 1000, layersDownloaded: 2, layersPresent: 1, durationSeconds: 4 });
    metrics.imagePulls.pulled({ bytes: 50, layersDownloaded: 0, layersPresent: 3, durationSeconds: 0.2 });
    metrics.imagePulls.failed('NotFound');
    const s = await scrape(metrics.registry);
    expect(s.get('rootless_cri_image_pull_bytes_total')).toBe(1050);
    expect(s.get('rootless_cri_image_pull_layers_total{source="registry"}')).toBe(2);
    expect(s.get('rootless_cri_image_pull_layers_total{source="local"}')).toBe(4);
    expect(s.get('rootless_cri_image_pull_duration_seconds_count')).toBe(2);
    expect(s.get('rootless_cri_image_pull_duration_seconds_bucket{le="5"}')).toBe(2);
    expect(s.get('rootless_cri_image_pull_duration_seconds_bucket{le="0.5"}')).toBe(1);
    expect(s.get('rootless_cri_image_pull_failures_total{reason="NotFound"}')).toBe(1);
  });

  it('records container starts and exits by reason, and helper runs by program', async () => {
    const metrics = createMetrics();
    metrics.containers.started();
    metrics.containers.exited('Completed');
    metrics.containers.exited('ContainerMonitorDied');
    metrics.containers.exited('');
    metrics.helpers('crun', 12, 'ok');
    metrics.helpers('crun', 30, 'failed');
    metrics.helpers('bridge', 5, 'error');
    const s = await scrape(metrics.registry);
    expect(s.get('rootless_cri_containers_started_total')).toBe(1);
    expect(s.get('rootless_cri_containers_exited_total{reason="Completed"}')).toBe(1);
    expect(s.get('rootless_cri_containers_exited_total{reason="ContainerMonitorDied"}')).toBe(1);
    expect(s.get('rootless_cri_containers_exited_total{reason="Unknown"}')).toBe(1);
    expect(s.get('rootless_cri_helper_duration_seconds_count{program="crun"}')).toBe(2);
    expect(s.get('rootless_cri_helper_duration_seconds_bucket{le="0.025",program="crun"}')).toBe(1);
    expect(s.get('rootless_cri_helper_failures_total{program="crun",outcome="failed"}')).toBe(1);
    expect(s.get('rootless_cri_helper_failures_total{program="bridge",outcome="error"}')).toBe(1);
  });
});

describe('addStateCollectors', () => {
  it('reads state when scraped: pods and containers by state, health, listeners, recovery', async () => {
    const metrics = createMetrics();
    let running = 2;
    addStateCollectors(
      metrics.registry,
      sources({ containerStates: () => [...Array(running).fill('running'), 'exited', 'created'] }),
    );
    let s = await scrape(metrics.registry);
    expect(s.get('rootless_cri_pod_sandboxes{state="ready"}')).toBe(2);
    expect(s.get('rootless_cri_pod_sandboxes{state="notready"}')).toBe(1);
    // Every state is there, 0 when nothing is in it, so a query never misses a series.
    expect(s.get('rootless_cri_pod_sandboxes{state="creating"}')).toBe(0);
    expect(s.get('rootless_cri_containers{state="running"}')).toBe(2);
    expect(s.get('rootless_cri_containers{state="creating"}')).toBe(0);
    expect(s.get('rootless_cri_container_event_subscribers_dropped_total')).toBe(2);
    expect(s.get('rootless_cri_runtime_condition{condition="RuntimeReady"}')).toBe(1);
    expect(s.get('rootless_cri_runtime_condition{condition="NetworkReady"}')).toBe(0);
    expect(s.get('rootless_cri_node_uplink_up')).toBe(1);
    // A probe that fails counts as down; it does not fail the scrape.
    expect(s.get('rootless_cri_node_rootlesskit_up')).toBe(0);
    expect(s.get('rootless_cri_published_listener_up{listener="streaming"}')).toBe(1);
    expect(s.get('rootless_cri_published_listener_up{listener="metrics"}')).toBe(0);
    expect(s.get('rootless_cri_recovery_duration_seconds')).toBe(0.25);
    expect(s.get('rootless_cri_recovery_problems')).toBe(3);
    expect(s.get('rootless_cri_quarantined_objects{kind="image"}')).toBe(1);
    expect(s.get('rootless_cri_quarantined_objects{kind="container_record"}')).toBe(2);
    running = 0;
    s = await scrape(metrics.registry);
    expect(s.get('rootless_cri_containers{state="running"}')).toBe(0);
  });

  it('leaves out the node probes outside a rootlesskit node; recovery reads 0 until it has run', async () => {
    const metrics = createMetrics();
    const { uplinkUp: _u, rootlesskitUp: _r, ...rest } = sources({ recovery: () => null });
    addStateCollectors(metrics.registry, rest);
    const text = await metrics.registry.metrics();
    expect(text).not.toContain('rootless_cri_node_uplink_up');
    expect(text).not.toContain('rootless_cri_node_rootlesskit_up');
    expect(text).toMatch(/^rootless_cri_recovery_duration_seconds 0$/m);
  });
});
