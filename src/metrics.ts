import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client';
import { FailedPreconditionError } from './errors.js';
import type { Logger } from './log.js';
import {
  ConnectionGuard,
  type ConnectionLimits,
  DEFAULT_CONNECTION_LIMITS,
} from './streaming/connection-guard.js';

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
  collectDefaultMetrics({ register: registry });
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

export interface MetricsServerOptions {
  /** Listen address; default 127.0.0.1 (published on the host by the port driver). */
  address?: string;
  /** 0 picks a free port; the real one is in the result. */
  port: number;
  registry: Registry;
  logger: Logger;
  /** Caps and timeouts for its connections (default DEFAULT_CONNECTION_LIMITS). */
  connectionLimits?: Partial<ConnectionLimits>;
}

export interface MetricsServer {
  port: number;
  address: string;
  /** Serves a connection accepted on the host's side of the published port. */
  accept(socket: Socket): void;
  close(): Promise<void>;
}

/** Serves GET /metrics in the Prometheus text format; everything else is 404. */
export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const { registry, logger } = options;
  const host = options.address ?? '127.0.0.1';
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found; try /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' });
      res.end('method not allowed\n');
      return;
    }
    registry.metrics().then(
      (body) => {
        res.writeHead(200, { 'content-type': registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => {
        logger.error({ err }, 'collecting metrics failed');
        res
          .writeHead(500, { 'content-type': 'text/plain; charset=utf-8' })
          .end('collecting metrics failed\n');
      },
    );
  });
  // Scrapers keep connections open; without this close() would wait for them.
  server.keepAliveTimeout = 5_000;
  // Reachable by every local user: the same caps as streaming (no request upgrades here, so
  // the handshake timeout bounds every connection).
  const guard = new ConnectionGuard(
    { ...DEFAULT_CONNECTION_LIMITS, ...options.connectionLimits },
    logger,
    'metrics',
  );
  server.on('connection', (socket: Socket) => {
    guard.admit(socket);
  });
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(
        new FailedPreconditionError(
          `cannot serve metrics on ${host}:${options.port} (${err.code ?? err.message}); ` +
            'choose another metrics port, or 0 for a free one',
          { cause: err },
        ),
      );
    };
    server.once('error', onError);
    server.listen(options.port, host, () => {
      server.off('error', onError);
      // Accept failures (EMFILE) must not become an uncaught exception; libuv goes on.
      server.on('error', (err) => logger.warn({ err }, 'metrics server error (accepting goes on)'));
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  logger.info({ address: host, port }, 'metrics server listening');
  return {
    port,
    address: host,
    accept: (socket) => {
      server.emit('connection', socket);
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
