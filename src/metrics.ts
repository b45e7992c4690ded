/**
 * The daemon's Prometheus metrics (README, "Metrics"): one registry per daemon and the narrow
 * recording interfaces the layers are handed, so prom-client stays in this file (and
 * published-listeners.ts). Each family is fed from one place:
 *
 *   rootless_cri_grpc_*, rootless_cri_operation*     the edge, once per call (RpcMetrics), and
 *                                                    the streaming server per session or dial
 *   rootless_cri_image_pull_*                        the image puller, once per pull
 *   rootless_cri_containers_started/exited_total     the runtime core's observer (start, exit)
 *   rootless_cri_helper_*                            the process runner's observer, once per run
 *   state, node health, recovery, quarantine         read when scraped (addStateCollectors)
 *
 * Nothing here samples on a timer: state is read only when /metrics is scraped, so an idle
 * daemon does no work for metrics.
 */
import {
  Counter,
  collectDefaultMetrics,
  Gauge,
  Histogram,
  type Registry as PromRegistry,
  Registry,
} from 'prom-client';
import { ERROR_KINDS } from './errors.js';

/** What the gRPC edge records per call; prom-client stays out of src/cri/. */
export interface RpcMetrics {
  observe(method: string, code: string, durationSeconds: number): void;
}

/**
 * What an operator counts, fails and times: the state-changing CRI calls under a short name,
 * and the streaming sessions behind the URLs Exec, Attach and PortForward hand out (an exec
 * or attach session from upgrade to end; a port-forward connection's dial to the pod's port).
 */
export const OPERATION_OF_METHOD = {
  RunPodSandbox: 'pod_run',
  StopPodSandbox: 'pod_stop',
  RemovePodSandbox: 'pod_remove',
  CreateContainer: 'container_create',
  StartContainer: 'container_start',
  StopContainer: 'container_stop',
  RemoveContainer: 'container_remove',
  UpdateContainerResources: 'container_update',
  ExecSync: 'exec_sync',
  PullImage: 'image_pull',
  RemoveImage: 'image_remove',
} as const;

export type StreamingOperation = 'exec' | 'attach' | 'port_forward';
export type Operation = (typeof OPERATION_OF_METHOD)[keyof typeof OPERATION_OF_METHOD] | StreamingOperation;

export interface OperationMetrics {
  /** One operation finished; `failure` is its error kind (src/errors.ts) when it failed. */
  observe(operation: Operation, durationSeconds: number, failure?: string): void;
}

/** What one successful pull brought. */
export interface PullSummary {
  /** Bytes of the blobs (layers, config, manifest) this pull downloaded and verified. */
  bytes: number;
  /** Layers this pull downloaded, and layers it found already stored (or joined). */
  layersDownloaded: number;
  layersPresent: number;
  durationSeconds: number;
}

export interface ImagePullMetrics {
  pulled(pull: PullSummary): void;
  /** A pull that failed, by error kind. */
  failed(reason: string): void;
}

export interface ContainerMetrics {
  started(): void;
  /** Completed, Error, OOMKilled, StartError, ContainerMonitorDied, Unknown. */
  exited(reason: string): void;
}

/** A finished helper run, as the process runner reports it (os/process-runner.ts observeRuns). */
export type HelperRunMetrics = (
  program: string,
  durationMs: number,
  outcome: 'ok' | 'failed' | 'error',
) => void;

export interface DaemonMetrics {
  registry: Registry;
  rpc: RpcMetrics;
  operations: OperationMetrics;
  imagePulls: ImagePullMetrics;
  containers: ContainerMetrics;
  helpers: HelperRunMetrics;
}

// CRI calls range from sub-millisecond (Version, List*) to minutes (PullImage, StopPodSandbox
// with a long grace period), so the buckets span 100 µs .. 5 min.
const DURATION_BUCKETS = [
  0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
];
/** Helpers run from about a millisecond (a native helper) to a minute (the runner's default timeout). */
const HELPER_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** A pull takes from a fraction of a second (all layers present) to many minutes. */
const PULL_BUCKETS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

const KNOWN_KINDS: ReadonlySet<string> = new Set(ERROR_KINDS);

/**
 * The error kind behind a gRPC code name: every kind's code is its name in upper snake case
 * (NotFound ↔ NOT_FOUND, src/cri/status-codes.ts), so the edge need not say more than the code.
 */
export function kindOfCode(code: string): string {
  const kind = code
    .toLowerCase()
    .split('_')
    .map((part) => part.charAt(0).toUpperCase() + part.slice(1))
    .join('');
  return KNOWN_KINDS.has(kind) ? kind : code;
}

/** Keeps the bound child of each label set: labels() hashes its arguments on every call. */
function boundChildren<C>(bind: (...values: string[]) => C): (...values: string[]) => C {
  const children = new Map<string, C>();
  return (...values) => {
    const key = values.join('\u0000');
    let child = children.get(key);
    if (child === undefined) {
      child = bind(...values);
      children.set(key, child);
    }
    return child;
  };
}

/**
 * A fresh registry (not prom-client's global one, so tests and a bench can build several)
 * holding process metrics and every event-fed family.
 */
export function createMetrics(): DaemonMetrics {
  const registry = new Registry();
  const registers = [registry];
  // prom-client samples the event-loop delay every 10 ms by default: 100 wake-ups a second
  // that were most of an idle daemon's CPU. Once a second still shows lag.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 1000 });

  // ---- gRPC calls and operations -------------------------------------------------------------
  const requests = new Counter({
    name: 'rootless_cri_grpc_requests_total',
    help: 'CRI gRPC requests handled, by method and gRPC status code.',
    labelNames: ['method', 'code'] as const,
    registers,
  });
  const requestDuration = new Histogram({
    name: 'rootless_cri_grpc_request_duration_seconds',
    help: 'Time from receiving a CRI gRPC request to answering it, by method.',
    labelNames: ['method'] as const,
    buckets: DURATION_BUCKETS,
    registers,
  });
  const operationsTotal = new Counter({
    name: 'rootless_cri_operations_total',
    help: 'Pod, container, image, exec, attach and port-forward operations finished, failed or not.',
    labelNames: ['operation'] as const,
    registers,
  });
  const operationFailures = new Counter({
    name: 'rootless_cri_operation_failures_total',
    help: 'Operations that failed, by operation and error kind (NotFound, InvalidArgument, Internal, ...).',
    labelNames: ['operation', 'reason'] as const,
    registers,
  });
  const operationDuration = new Histogram({
    name: 'rootless_cri_operation_duration_seconds',
    help: 'Time an operation took: the CRI call, an exec or attach session, a port-forward dial.',
    labelNames: ['operation'] as const,
    buckets: DURATION_BUCKETS,
    registers,
  });
  const requestCounter = boundChildren((method, code) => requests.labels(method!, code!));
  const requestHistogram = boundChildren((method) => requestDuration.labels(method!));
  const operationCounter = boundChildren((operation) => operationsTotal.labels(operation!));
  const operationHistogram = boundChildren((operation) => operationDuration.labels(operation!));
  const operations: OperationMetrics = {
    observe(operation, durationSeconds, failure) {
      operationCounter(operation).inc();
      operationHistogram(operation).observe(durationSeconds);
      if (failure !== undefined) operationFailures.labels(operation, failure).inc();
    },
  };
  const operationOf = OPERATION_OF_METHOD as Record<string, Operation | undefined>;

  // ---- image pulls -----------------------------------------------------------------------------
  const pullBytes = new Counter({
    name: 'rootless_cri_image_pull_bytes_total',
    help: 'Bytes of image blobs (layers, configs, manifests) downloaded from registries by successful pulls.',
    registers,
  });
  const pullLayers = new Counter({
    name: 'rootless_cri_image_pull_layers_total',
    help: 'Layers of successful pulls: downloaded from a registry, or already stored locally.',
    labelNames: ['source'] as const,
    registers,
  });
  const pullDuration = new Histogram({
    name: 'rootless_cri_image_pull_duration_seconds',
    help: 'Time a successful image pull took, from resolving the reference to recording the image.',
    buckets: PULL_BUCKETS,
    registers,
  });
  const pullFailures = new Counter({
    name: 'rootless_cri_image_pull_failures_total',
    help: 'Image pulls that failed, by error kind (NotFound, Unavailable, InvalidArgument, ResourceExhausted, ...).',
    labelNames: ['reason'] as const,
    registers,
  });

  // ---- containers ------------------------------------------------------------------------------
  const containersStarted = new Counter({
    name: 'rootless_cri_containers_started_total',
    help: 'Containers started (StartContainer succeeded).',
    registers,
  });
  const containersExited = new Counter({
    name: 'rootless_cri_containers_exited_total',
    help: 'Container exits recorded, by reason (Completed, Error, OOMKilled, StartError, ContainerMonitorDied, Unknown).',
    labelNames: ['reason'] as const,
    registers,
  });

  // ---- helper programs -------------------------------------------------------------------------
  const helperDuration = new Histogram({
    name: 'rootless_cri_helper_duration_seconds',
    help: 'Wall time of a helper program the daemon ran (crun, conmon, CNI plugins, native helpers, ...) to its exit; for a long-lived one, to its spawn.',
    labelNames: ['program'] as const,
    buckets: HELPER_BUCKETS,
    registers,
  });
  const helperFailures = new Counter({
    name: 'rootless_cri_helper_failures_total',
    help: 'Helper runs that exited non-zero (failed) or could not run or timed out (error), by program.',
    labelNames: ['program', 'outcome'] as const,
    registers,
  });
  const helperHistogram = boundChildren((program) => helperDuration.labels(program!));

  return {
    registry,
    rpc: {
      observe(method, code, durationSeconds) {
        requestCounter(method, code).inc();
        requestHistogram(method).observe(durationSeconds);
        const operation = operationOf[method];
        if (operation !== undefined) {
          operations.observe(operation, durationSeconds, code === 'OK' ? undefined : kindOfCode(code));
        }
      },
    },
    operations,
    imagePulls: {
      pulled(pull) {
        pullBytes.inc(pull.bytes);
        pullLayers.labels('registry').inc(pull.layersDownloaded);
        pullLayers.labels('local').inc(pull.layersPresent);
        pullDuration.observe(pull.durationSeconds);
      },
      failed(reason) {
        pullFailures.labels(reason).inc();
      },
    },
    containers: {
      started: () => containersStarted.inc(),
      exited: (reason) => containersExited.labels(reason === '' ? 'Unknown' : reason).inc(),
    },
    helpers(program, durationMs, outcome) {
      helperHistogram(program).observe(durationMs / 1000);
      if (outcome !== 'ok') helperFailures.labels(program, outcome).inc();
    },
  };
}

/** What the state gauges read when /metrics is scraped. */
export interface StateSources {
  /** Internal states: creating, ready, notready. */
  podStates(): Iterable<string>;
  /** Internal states: creating, created, running, exited. */
  containerStates(): Iterable<string>;
  /** GetContainerEvents subscribers dropped for falling behind, since start. */
  eventSubscribersDropped(): number;
  /** RuntimeReady and NetworkReady as Status reports them. */
  conditions(): Promise<{ runtime: boolean; network: boolean }>;
  /** slirp4netns's tap0 in the node; absent outside a rootlesskit node. */
  uplinkUp?(): Promise<boolean>;
  /** Whether rootlesskit answers on its API socket; absent outside a rootlesskit node. */
  rootlesskitUp?(): Promise<boolean>;
  /** The daemon's own listeners published on the host (streaming, metrics). */
  listeners(): { name: string; listening: boolean }[];
  /** The last start's recovery; null until it has run. */
  recovery(): { durationSeconds: number; problems: number } | null;
  /** Objects moved aside: image-store objects in quarantine, records unreadable at the last start. */
  quarantined(): { images: number; sandboxRecords: number; containerRecords: number };
}

const POD_STATES = ['creating', 'ready', 'notready'];
const CONTAINER_STATES = ['creating', 'created', 'running', 'exited'];
/** A probe that does not answer in this time counts as down (and never holds a scrape long). */
const PROBE_TIMEOUT_MS = 2_000;

async function probe(check: () => Promise<boolean>): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), PROBE_TIMEOUT_MS);
  });
  try {
    return await Promise.race([check().catch(() => false), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function countBy(values: Iterable<string>, known: readonly string[]): Map<string, number> {
  const counts = new Map(known.map((k) => [k, 0]));
  for (const value of values) counts.set(value, (counts.get(value) ?? 0) + 1);
  return counts;
}

/** Gauges computed from `sources` at scrape time (no timer). */
export function addStateCollectors(registry: PromRegistry, sources: StateSources): void {
  const registers = [registry];
  new Gauge({
    name: 'rootless_cri_pod_sandboxes',
    help: 'Pod sandboxes by state (creating, ready, notready).',
    labelNames: ['state'] as const,
    registers,
    collect() {
      this.reset();
      for (const [state, n] of countBy(sources.podStates(), POD_STATES)) this.labels(state).set(n);
    },
  });
  new Gauge({
    name: 'rootless_cri_containers',
    help: 'Containers by state (creating, created, running, exited).',
    labelNames: ['state'] as const,
    registers,
    collect() {
      this.reset();
      for (const [state, n] of countBy(sources.containerStates(), CONTAINER_STATES))
        this.labels(state).set(n);
    },
  });
  new Counter({
    name: 'rootless_cri_container_event_subscribers_dropped_total',
    help: 'GetContainerEvents subscribers dropped because they fell too far behind.',
    registers,
    collect() {
      this.reset();
      this.inc(sources.eventSubscribersDropped());
    },
  });
  new Gauge({
    name: 'rootless_cri_runtime_condition',
    help: 'CRI runtime conditions as Status reports them (RuntimeReady, NetworkReady): 1 true, 0 false.',
    labelNames: ['condition'] as const,
    registers,
    async collect() {
      const conditions = await sources.conditions().catch(() => ({ runtime: false, network: false }));
      this.labels('RuntimeReady').set(conditions.runtime ? 1 : 0);
      this.labels('NetworkReady').set(conditions.network ? 1 : 0);
    },
  });
  const { uplinkUp, rootlesskitUp } = sources;
  if (uplinkUp !== undefined) {
    new Gauge({
      name: 'rootless_cri_node_uplink_up',
      help: "1 when the node's uplink (slirp4netns, its tap0 device) is there; 0 while pods have no egress.",
      registers,
      async collect() {
        this.set((await probe(uplinkUp)) ? 1 : 0);
      },
    });
  }
  if (rootlesskitUp !== undefined) {
    new Gauge({
      name: 'rootless_cri_node_rootlesskit_up',
      help: '1 when rootlesskit answers on its API socket (the port driver host ports go through).',
      registers,
      async collect() {
        this.set((await probe(rootlesskitUp)) ? 1 : 0);
      },
    });
  }
  new Gauge({
    name: 'rootless_cri_published_listener_up',
    help: "1 when the daemon's listener (streaming, metrics) is published and listening on the host.",
    labelNames: ['listener'] as const,
    registers,
    collect() {
      this.reset();
      for (const l of sources.listeners()) this.labels(l.name).set(l.listening ? 1 : 0);
    },
  });
  new Gauge({
    name: 'rootless_cri_recovery_duration_seconds',
    help: 'How long recovery took at the last start (node, sandboxes, containers, images); 0 until it has finished.',
    registers,
    collect() {
      const recovery = sources.recovery();
      if (recovery) this.set(recovery.durationSeconds);
    },
  });
  new Gauge({
    name: 'rootless_cri_recovery_problems',
    help: 'Objects recovery at the last start could not read or restore (each logged and shown by crictl info).',
    registers,
    collect() {
      const recovery = sources.recovery();
      if (recovery) this.set(recovery.problems);
    },
  });
  new Gauge({
    name: 'rootless_cri_quarantined_objects',
    help: 'Objects moved aside: image-store objects in quarantine now; sandbox and container records unreadable at the last start.',
    labelNames: ['kind'] as const,
    registers,
    collect() {
      const q = sources.quarantined();
      this.labels('image').set(q.images);
      this.labels('sandbox_record').set(q.sandboxRecords);
      this.labels('container_record').set(q.containerRecords);
    },
  });
}
