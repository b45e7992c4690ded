/**
 * The /metrics HTTP endpoint: the Prometheus text format of a prom-client registry, on
 * 127.0.0.1 in the node (published on the host's 127.0.0.1 by the daemon), with the same
 * connection caps as the streaming server, since every local user can reach it.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Registry } from 'prom-client';
import { FailedPreconditionError } from '../errors.js';
import type { Logger } from '../log.js';
import { ConnectionGuard, type ConnectionLimits, DEFAULT_CONNECTION_LIMITS } from './connection-guard.js';

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
