import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client';

/** What the gRPC edge records per call; prom-client stays out of src/cri/. */
export interface RpcMetrics {
  observe(method: string, code: string, durationSeconds: number): void;
}

export interface DaemonMetrics {
  registry: Registry;
  rpc: RpcMetrics;
}

// CRI calls range from sub-millisecond (Version, List*) to minutes (PullImage, StopPodSandbox
// with a long grace period), so the buckets span 100 µs .. 5 min.
const DURATION_BUCKETS = [
  0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
];

/**
 * A fresh registry (not prom-client's global one, so tests and a bench can build several)
 * holding process metrics and the per-RPC counters.
 */
export function createMetrics(): DaemonMetrics {
  const registry = new Registry();
  // prom-client samples the event-loop delay every 10 ms by default: 100 wake-ups a second
  // that were most of an idle daemon's CPU. Once a second still shows lag.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 1000 });
  const requests = new Counter({
    name: 'rootless_cri_grpc_requests_total',
    help: 'CRI gRPC requests handled, by method and gRPC status code.',
    labelNames: ['method', 'code'] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'rootless_cri_grpc_request_duration_seconds',
    help: 'Time from receiving a CRI gRPC request to answering it, by method.',
    labelNames: ['method'] as const,
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  // labels() hashes its arguments on every call; the label sets are few (methods × codes),
  // so keeping the bound children keeps the per-call cost to two increments.
  const counters = new Map<string, Counter.Internal>();
  const histograms = new Map<string, Histogram.Internal<'method'>>();
  return {
    registry,
    rpc: {
      observe(method, code, durationSeconds) {
        const key = `${method} ${code}`;
        let counter = counters.get(key);
        if (counter === undefined) {
          counter = requests.labels(method, code);
          counters.set(key, counter);
        }
        counter.inc();
        let histogram = histograms.get(method);
        if (histogram === undefined) {
          histogram = duration.labels(method);
          histograms.set(method, histogram);
        }
        histogram.observe(durationSeconds);
      },
    },
  };
}
