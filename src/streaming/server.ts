/**
 * The streaming HTTP server behind the Exec, Attach and PortForward RPCs.
 *
 *   RPC ─▶ validate ─▶ token (single use, 60 s) ─▶ "http://<addr>:<port>/<kind>/<token>"
 *   client ─▶ GET|POST /<kind>/<token> with an upgrade:
 *     Upgrade: SPDY/3.1 + X-Stream-Protocol-Version  → SPDY (exec/attach: v4…v1; port-forward)
 *     Upgrade: websocket + Sec-WebSocket-Protocol    → v5/v4/base64 channels, or SPDY tunnelled
 *
 * Nothing a client sends can throw out of here: bad tokens and handshakes get an HTTP
 * error, protocol violations a GOAWAY/RST, and a vanished client ends its session.
 * Connections are capped per source and in all, must upgrade within a handshake timeout,
 * and idle sessions end (connection-guard.ts): another local user cannot exhaust it.
 */
import { createServer, type IncomingMessage, type Server, STATUS_CODES } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import type { AttachRequest } from '../api/generated/runtime/v1/AttachRequest.js';
import type { ExecRequest } from '../api/generated/runtime/v1/ExecRequest.js';
import type { PortForwardRequest } from '../api/generated/runtime/v1/PortForwardRequest.js';
import type { AttachTarget, ExecTarget, PortForwardTarget, StdioOptions } from '../core/stream-targets.js';
import { errorKind, InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';
import type { OperationMetrics } from '../metrics.js';
import {
  ConnectionGuard,
  type ConnectionLimits,
  type ConnectionStats,
  DEFAULT_CONNECTION_LIMITS,
} from '../os/connection-guard.js';
import { PORT_FORWARD_PROTOCOL, servePortForward } from './port-forward.js';
import {
  type SessionOutcome,
  SPDY_REMOTE_COMMAND_PROTOCOLS,
  SpdyStreamQueue,
  serveRemoteCommandOverSpdy,
} from './remote-command.js';
import { SpdyConnection } from './spdy-connection.js';
import type { SpdyLimits } from './spdy-frames.js';
import { TokenStore } from './tokens.js';
import {
  serveRemoteCommandOverWebSocket,
  spdyOverWebSocket,
  WEBSOCKET_REMOTE_COMMAND_PROTOCOLS,
  WEBSOCKET_SPDY_TUNNEL_PREFIX,
} from './websocket.js';

export type StreamingKind = 'exec' | 'attach' | 'portforward';

export interface ValidExecRequest extends StdioOptions {
  containerId: string;
  cmd: string[];
}
export interface ValidAttachRequest extends StdioOptions {
  containerId: string;
}
export interface ValidPortForwardRequest {
  podSandboxId: string;
  ports: number[];
}

type StoredRequest =
  | { kind: 'exec'; request: ValidExecRequest }
  | { kind: 'attach'; request: ValidAttachRequest }
  | { kind: 'portforward'; request: ValidPortForwardRequest };

function validateStdio(
  what: string,
  request: { tty?: boolean; stdin?: boolean; stdout?: boolean; stderr?: boolean },
): StdioOptions {
  const options = {
    tty: request.tty === true,
    stdin: request.stdin === true,
    stdout: request.stdout === true,
    stderr: request.stderr === true,
  };
  if (options.tty && options.stderr) {
    throw new InvalidArgumentError(
      `${what}: tty and stderr cannot both be true (a terminal has one output stream); set stderr to false`,
    );
  }
  if (!options.stdin && !options.stdout && !options.stderr) {
    throw new InvalidArgumentError(`${what}: one of stdin, stdout or stderr must be true`);
  }
  return options;
}

export function validateExecRequest(request: ExecRequest): ValidExecRequest {
  const containerId = request.container_id ?? '';
  if (containerId === '') throw new InvalidArgumentError('Exec: container_id is required');
  const cmd = request.cmd ?? [];
  if (cmd.length === 0 || cmd[0] === '')
    throw new InvalidArgumentError('Exec: cmd is required (the command and its arguments)');
  return { containerId, cmd: [...cmd], ...validateStdio('Exec', request) };
}

export function validateAttachRequest(request: AttachRequest): ValidAttachRequest {
  const containerId = request.container_id ?? '';
  if (containerId === '') throw new InvalidArgumentError('Attach: container_id is required');
  return { containerId, ...validateStdio('Attach', request) };
}

export function validatePortForwardRequest(request: PortForwardRequest): ValidPortForwardRequest {
  const podSandboxId = request.pod_sandbox_id ?? '';
  if (podSandboxId === '') throw new InvalidArgumentError('PortForward: pod_sandbox_id is required');
  const ports = request.port ?? [];
  for (const port of ports) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new InvalidArgumentError(`PortForward: port ${port} is not in 1-65535`);
    }
  }
  return { podSandboxId, ports: [...ports] };
}

/** Protocols the client offered in `X-Stream-Protocol-Version` (repeated and/or comma-joined). */
export function offeredProtocols(header: string | string[] | undefined): string[] {
  const values = Array.isArray(header) ? header : header === undefined ? [] : [header];
  return values
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter((v) => v !== '');
}

/** The first of our protocols the client offers; '' when the client offered none (legacy v1); undefined: no match. */
export function negotiate(offered: string[], supported: readonly string[]): string | undefined {
  if (offered.length === 0) return '';
  return supported.find((p) => offered.includes(p));
}

export interface StreamingServiceOptions {
  /** Address to listen on (inside the node: 127.0.0.1). */
  address: string;
  /** 0 picks a free port. */
  port: number;
  /** Host put into URLs; default `address`. */
  advertisedAddress?: string;
  exec: ExecTarget;
  attach: AttachTarget;
  portForward: PortForwardTarget;
  logger: Logger;
  tokenTtlMs?: number;
  maxOutstandingTokens?: number;
  /** Milliseconds clock for token expiry. */
  now?: () => number;
  spdyLimits?: Partial<SpdyLimits>;
  streamCreationTimeoutMs?: number;
  clientCloseTimeoutMs?: number;
  /** Connection caps and timeouts (default DEFAULT_CONNECTION_LIMITS). */
  connectionLimits?: Partial<ConnectionLimits>;
  /** Told of every exec and attach session's end and every port-forward dial. */
  metrics?: OperationMetrics;
}

export interface StreamingService {
  readonly port: number;
  /** Stores a validated request and returns its absolute single-use URL. */
  url(kind: 'exec', request: ValidExecRequest): string;
  url(kind: 'attach', request: ValidAttachRequest): string;
  url(kind: 'portforward', request: ValidPortForwardRequest): string;
  /** The RPC handlers: validate, check the target exists, return `{ url }`. */
  readonly handlers: {
    exec(request: ExecRequest): Promise<{ url: string }>;
    attach(request: AttachRequest): Promise<{ url: string }>;
    portForward(request: PortForwardRequest): Promise<{ url: string }>;
  };
  /** Sessions and connections in progress (for tests and metrics). */
  readonly activeConnections: number;
  /** What the connection limits did so far. */
  connectionStats(): ConnectionStats;
  /** Serves a connection accepted by another listener (the host's, see published-listeners.ts). */
  accept(socket: Socket): void;
  /** Stops listening and drops every connection. */
  close(): Promise<void>;
}

export async function createStreamingService(options: StreamingServiceOptions): Promise<StreamingService> {
  const { logger } = options;
  const tokens = new TokenStore<StoredRequest>({
    ttlMs: options.tokenTtlMs,
    maxOutstanding: options.maxOutstandingTokens,
    now: options.now,
  });
  const sockets = new Set<Socket | Duplex>();
  const guard = new ConnectionGuard(
    { ...DEFAULT_CONNECTION_LIMITS, ...options.connectionLimits },
    logger,
    'streaming',
  );
  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    maxPayload: 16 << 20,
  });
  // We choose the subprotocol ourselves: ws refuses `SPDY/3.1+portforward.k8s.io` (a '/'
  // is not allowed in an RFC 7230 token), which is exactly what client-go sends.
  const chosenWebSocketProtocol = new WeakMap<IncomingMessage, string>();
  wss.on('headers', (headers: string[], request: IncomingMessage) => {
    const chosen = chosenWebSocketProtocol.get(request);
    if (chosen !== undefined) headers.push(`Sec-WebSocket-Protocol: ${chosen}`);
  });

  const server: Server = createServer((request, response) => {
    // Only upgrades are served; a plain request still burns its token so it cannot be replayed.
    const route = parseRoute(request.url);
    if (route) tokens.take(route.token);
    response.writeHead(route ? 400 : 404, {
      'Content-Type': 'text/plain; charset=utf-8',
      Connection: 'close',
    });
    response.end(route ? 'unable to upgrade: missing upgrade headers in request\n' : 'not found\n');
  });
  server.on('clientError', (_error, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });
  server.on('connection', (socket: Socket) => {
    if (!guard.admit(socket)) return;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  // Accept failures (EMFILE, ENFILE) reach here; libuv keeps listening, so they must never
  // become an uncaught exception.
  let lastAcceptError = 0;
  server.on('error', (error: NodeJS.ErrnoException) => {
    if (Date.now() - lastAcceptError < 10_000) return;
    lastAcceptError = Date.now();
    logger.warn({ err: error, code: error.code }, 'streaming server error (accepting goes on)');
  });
  server.on('upgrade', (request: IncomingMessage, socket: Socket, head: Buffer) => {
    socket.on('error', (error) => logger.debug({ err: error }, 'streaming socket error'));
    try {
      handleUpgrade(request, socket, head);
    } catch (error) {
      logger.error({ err: error }, 'streaming upgrade failed');
      socket.destroy();
    }
  });

  function rejectUpgrade(
    socket: Socket,
    status: number,
    message: string,
    headers: Record<string, string> = {},
  ): void {
    const body = Buffer.from(`${message}\n`);
    const lines = [
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}`,
      'Content-Type: text/plain; charset=utf-8',
      `Content-Length: ${body.length}`,
      'Connection: close',
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    ];
    socket.end(Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`), body]));
  }

  function handleUpgrade(request: IncomingMessage, socket: Socket, head: Buffer): void {
    const route = parseRoute(request.url);
    if (!route) {
      rejectUpgrade(
        socket,
        404,
        'not found: streaming URLs look like /exec/<token>, /attach/<token> or /portforward/<token>',
      );
      return;
    }
    if (request.method !== 'GET' && request.method !== 'POST') {
      rejectUpgrade(socket, 405, `method ${request.method} not allowed: use GET or POST`);
      return;
    }
    const stored = tokens.take(route.token);
    if (!stored || stored.kind !== route.kind) {
      rejectUpgrade(
        socket,
        404,
        `streaming token not found or expired (tokens are single use and valid for 1 minute): call ${rpcName(route.kind)} again for a new URL`,
      );
      return;
    }
    const upgrade = (request.headers.upgrade ?? '').toLowerCase();
    const log = logger.child({ streaming: route.kind });
    if (upgrade === 'websocket') {
      upgradeWebSocket(request, socket, head, stored, log);
    } else if (upgrade === 'spdy/3.1') {
      upgradeSpdy(request, socket, head, stored, log);
    } else {
      rejectUpgrade(
        socket,
        400,
        `unable to upgrade: unsupported protocol ${JSON.stringify(request.headers.upgrade ?? '')}; use SPDY/3.1 or websocket`,
      );
    }
  }

  function upgradeSpdy(
    request: IncomingMessage,
    socket: Socket,
    head: Buffer,
    stored: StoredRequest,
    log: Logger,
  ): void {
    const supported = stored.kind === 'portforward' ? [PORT_FORWARD_PROTOCOL] : SPDY_REMOTE_COMMAND_PROTOCOLS;
    const protocol = negotiate(offeredProtocols(request.headers['x-stream-protocol-version']), supported);
    if (protocol === undefined) {
      rejectUpgrade(
        socket,
        403,
        `unable to upgrade: unable to negotiate protocol: client supports ${JSON.stringify(offeredProtocols(request.headers['x-stream-protocol-version']))}, server accepts ${JSON.stringify(supported)}`,
        {
          'X-Accepted-Stream-Protocol-Versions': supported.join(', '),
        },
      );
      return;
    }
    const lines = ['HTTP/1.1 101 Switching Protocols', 'Connection: Upgrade', 'Upgrade: SPDY/3.1'];
    if (protocol !== '') lines.push(`X-Stream-Protocol-Version: ${protocol}`);
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    guard.upgraded(socket);
    socket.setNoDelay(true);
    if (head.length > 0) socket.unshift(head);
    const queue = new SpdyStreamQueue();
    const connection = new SpdyConnection(socket, {
      logger: log,
      limits: options.spdyLimits,
      onStream: (stream) => queue.push(stream),
    });
    void runStored(stored, connection, queue, protocol, log);
  }

  function upgradeWebSocket(
    request: IncomingMessage,
    socket: Socket,
    head: Buffer,
    stored: StoredRequest,
    log: Logger,
  ): void {
    const offered = (request.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((p) => p.trim())
      .filter((p) => p !== '');
    const supported =
      stored.kind === 'portforward'
        ? [WEBSOCKET_SPDY_TUNNEL_PREFIX + PORT_FORWARD_PROTOCOL]
        : WEBSOCKET_REMOTE_COMMAND_PROTOCOLS;
    const chosen = supported.find((p) => offered.includes(p));
    if (chosen === undefined) {
      rejectUpgrade(
        socket,
        403,
        `unable to upgrade: no acceptable WebSocket subprotocol among ${JSON.stringify(offered)}; server accepts ${JSON.stringify(supported)}`,
      );
      return;
    }
    chosenWebSocketProtocol.set(request, chosen);
    delete request.headers['sec-websocket-protocol'];
    wss.handleUpgrade(request, socket, head, (ws) => {
      guard.upgraded(socket);
      if (stored.kind === 'portforward') {
        const queue = new SpdyStreamQueue();
        const connection = spdyOverWebSocket(ws, log, (stream) => queue.push(stream), options.spdyLimits);
        void runStored(stored, connection, queue, PORT_FORWARD_PROTOCOL, log);
        return;
      }
      const started = performance.now();
      const common = { subprotocol: chosen, options: stored.request, logger: log };
      const run =
        stored.kind === 'exec'
          ? serveRemoteCommandOverWebSocket(ws, {
              ...common,
              command: stored.request.cmd,
              start: () =>
                options.exec.exec(stored.request.containerId, stored.request.cmd, stdio(stored.request)),
            })
          : serveRemoteCommandOverWebSocket(ws, {
              ...common,
              start: () => options.attach.attach(stored.request.containerId, stdio(stored.request)),
            });
      void run.then(
        (outcome) => sessionEnded(stored.kind, started, outcome, log),
        (error) => sessionThrew(stored.kind, started, error, log),
      );
    });
  }

  async function runStored(
    stored: StoredRequest,
    connection: SpdyConnection,
    queue: SpdyStreamQueue,
    protocol: string,
    log: Logger,
  ): Promise<void> {
    const started = performance.now();
    try {
      if (stored.kind === 'portforward') {
        const podSandboxId = stored.request.podSandboxId;
        await servePortForward(connection, (handler) => queue.consume(handler), {
          logger: log,
          dial: (port) => timedDial(() => options.portForward.dial(podSandboxId, port)),
        });
        return;
      }
      const request = stored.request;
      const common = {
        protocol: protocol === '' ? SPDY_REMOTE_COMMAND_PROTOCOLS.at(-1)! : protocol,
        options: stdio(request),
        logger: log,
        streamCreationTimeoutMs: options.streamCreationTimeoutMs,
        clientCloseTimeoutMs: options.clientCloseTimeoutMs,
      };
      const outcome =
        stored.kind === 'exec'
          ? await serveRemoteCommandOverSpdy(connection, queue, {
              ...common,
              command: stored.request.cmd,
              start: () => options.exec.exec(stored.request.containerId, stored.request.cmd, stdio(request)),
            })
          : await serveRemoteCommandOverSpdy(connection, queue, {
              ...common,
              start: () => options.attach.attach(stored.request.containerId, stdio(request)),
            });
      sessionEnded(stored.kind, started, outcome, log);
    } catch (error) {
      sessionThrew(stored.kind, started, error, log);
    } finally {
      connection.destroy();
    }
  }

  /** Where an exec or attach session ends: its log line and its metrics. */
  function sessionEnded(
    kind: 'exec' | 'attach',
    started: number,
    outcome: SessionOutcome,
    log: Logger,
  ): void {
    logOutcome(log)(outcome);
    // A client that hangs up (Ctrl-C) ends its session; that is no failure of ours.
    const failure = outcome.kind === 'failed' ? outcome.errorKind : undefined;
    options.metrics?.observe(kind, (performance.now() - started) / 1000, failure);
  }

  /** A session that broke rather than ended (a bug or the host): logged as an error. */
  function sessionThrew(kind: StreamingKind, started: number, error: unknown, log: Logger): void {
    log.error({ err: error }, 'streaming session failed');
    // A port-forward connection's operations are its dials, counted by timedDial.
    if (kind !== 'portforward') {
      options.metrics?.observe(kind, (performance.now() - started) / 1000, errorKind(error));
    }
  }

  /** A port-forward connection is an operation: its dial to the pod's port, timed and counted. */
  async function timedDial(dial: () => Promise<Duplex>): Promise<Duplex> {
    const started = performance.now();
    try {
      const socket = await dial();
      options.metrics?.observe('port_forward', (performance.now() - started) / 1000);
      return socket;
    } catch (error) {
      options.metrics?.observe('port_forward', (performance.now() - started) / 1000, errorKind(error));
      throw error;
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.address, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.advertisedAddress ?? options.address;
  const base = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  logger.info({ address: options.address, port }, 'streaming server listening');

  function url(
    kind: StreamingKind,
    request: ValidExecRequest | ValidAttachRequest | ValidPortForwardRequest,
  ): string {
    const token = tokens.issue({ kind, request } as StoredRequest);
    return `${base}/${kind}/${token}`;
  }

  return {
    port,
    url: url as StreamingService['url'],
    handlers: {
      async exec(request) {
        const valid = validateExecRequest(request);
        await options.exec.validate?.(valid.containerId);
        return { url: url('exec', valid) };
      },
      async attach(request) {
        const valid = validateAttachRequest(request);
        await options.attach.validate?.(valid.containerId);
        return { url: url('attach', valid) };
      },
      async portForward(request) {
        const valid = validatePortForwardRequest(request);
        await options.portForward.validate?.(valid.podSandboxId);
        return { url: url('portforward', valid) };
      },
    },
    get activeConnections() {
      return sockets.size;
    },
    connectionStats: () => guard.stats(),
    accept(socket) {
      server.emit('connection', socket);
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      for (const client of wss.clients) client.terminate();
      wss.close();
      await closed;
    },
  };
}

function stdio(request: StdioOptions): StdioOptions {
  return { tty: request.tty, stdin: request.stdin, stdout: request.stdout, stderr: request.stderr };
}

function rpcName(kind: StreamingKind): string {
  return kind === 'exec' ? 'Exec' : kind === 'attach' ? 'Attach' : 'PortForward';
}

function logOutcome(log: Logger): (outcome: SessionOutcome) => void {
  return (outcome) => {
    if (outcome.kind === 'exited') log.debug({ exitCode: outcome.exitCode }, 'streaming session finished');
    else if (outcome.kind === 'failed') log.info({ reason: outcome.message }, 'streaming session failed');
    else log.info('streaming session ended by the client');
  };
}

function parseRoute(rawUrl: string | undefined): { kind: StreamingKind; token: string } | undefined {
  const path = (rawUrl ?? '').split('?')[0]!;
  const match = /^\/(exec|attach|portforward)\/([A-Za-z0-9_-]{8,64})\/?$/.exec(path);
  if (!match) return undefined;
  return { kind: match[1] as StreamingKind, token: match[2]! };
}
