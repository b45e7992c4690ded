/**
 * Pods' TCP host ports, forwarded by the daemon instead of rootlesskit's builtin port driver
 * (issue 12, a hostPort flooded by another local user).
 *
 * Measured before: 9,000 connections from another user to one pod's host port drove
 * rootlesskit's parent to its 20,000-fd limit (each connection costs it two fds for as long as
 * the client keeps it); its accept loop for that port ended for good, and so did the one of an
 * untouched host port of another pod that received a connection meanwhile; 9,130 fds stayed
 * held after the flood. Raising nofile cannot help: the hard limit is 20,000 and the Go runtime
 * already runs at it. So TCP host ports get what the daemon's own listeners got
 * (host-listeners.ts): the supervisor binds hostIp:hostPort in the host's namespaces and hands
 * the listening socket over; the daemon, which lives in the node's network namespace, accepts
 * host connections itself and connects each to podIp:containerPort.
 *
 * Every forwarded connection goes through one ConnectionGuard shared by all host ports (the
 * daemon's fds are what it protects): at most 2,048 connections, 512 from one address. A
 * connection whose client has not sent a byte yet counts as "handshaking", so at a cap the
 * oldest silent one is closed to make room (an idle flood cannot keep clients out); once it
 * has sent data it is a session, and only when every connection is one are new ones refused,
 * until the flood ends. Sessions have no idle timeout, like rootlesskit's forwarding.
 *
 * UDP host ports stay on rootlesskit (`fallback`). The forwards live in the daemon: while it
 * restarts, TCP host ports refuse connections and open ones are cut (rootlesskit's survived a
 * daemon restart); the table is kept in <run_dir>/host-ports.json with the node's id, and a
 * daemon that starts in the same node opens them again. `[node] host_ports = "port-driver"`
 * keeps rootlesskit for TCP too.
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';
import { ConnectionGuard, type ConnectionLimits } from '../os/connection-guard.js';
import type { PortManager, PortSpec, PublishedPort } from '../os/port-manager.js';
import { HostListenError, type HostListenerSource } from './host-listeners.js';

/** Ids of forwarded ports start here; rootlesskit's (small integers) stay below. */
export const FORWARD_ID_BASE = 1_000_000;

export const HOST_PORT_CONNECTION_LIMITS: ConnectionLimits = {
  maxConnections: 2048,
  maxPerSource: 512,
  // A client that connects and never sends: closed after this, or earlier at a cap.
  handshakeTimeoutMs: 10 * 60 * 1000,
  idleTimeoutMs: 0,
};

/** How long connecting to the pod may take (an unanswered SYN would hold two fds for minutes). */
const BACKEND_CONNECT_TIMEOUT_MS = 10_000;
const STATE_VERSION = 1;

interface Forward {
  id: number;
  spec: PortSpec;
  server: net.Server;
  connections: Set<net.Socket>;
}

interface StateFile {
  version: number;
  nodeId: string;
  nextId: number;
  ports: { id: number; spec: PortSpec }[];
}

export interface HostPortForwarderOptions {
  source: HostListenerSource;
  /** rootlesskit's port API, for UDP (and ids below FORWARD_ID_BASE); null: none. */
  fallback: PortManager | null;
  runDir: string;
  /** The node the forwards belong to (os/node-identity.ts): another node's are dropped. */
  nodeId: string;
  logger: Logger;
  limits?: ConnectionLimits;
}

export class HostPortForwarder implements PortManager {
  private readonly forwards = new Map<number, Forward>();
  private readonly guard: ConnectionGuard;
  private readonly file: string;
  private readonly logger: Logger;
  private nextId = FORWARD_ID_BASE;
  private saving: Promise<void> = Promise.resolve();

  constructor(private readonly options: HostPortForwarderOptions) {
    this.logger = options.logger.child({ component: 'host-ports' });
    this.guard = new ConnectionGuard(
      options.limits ?? HOST_PORT_CONNECTION_LIMITS,
      this.logger,
      'host ports',
    );
    this.file = path.join(options.runDir, 'host-ports.json');
  }

  /**
   * Opens again the forwards a previous daemon of this node recorded (a daemon restart); those
   * of another node are dropped with it. A port that cannot be opened now is logged and dropped.
   */
  async open(): Promise<void> {
    const state = await readFile(this.file, 'utf8').then(
      (text) => JSON.parse(text) as StateFile,
      () => null,
    );
    if (state === null || state.version !== STATE_VERSION || state.nodeId !== this.options.nodeId) {
      await this.save();
      return;
    }
    this.nextId = Math.max(this.nextId, state.nextId);
    for (const { id, spec } of state.ports) {
      try {
        await this.forward(id, spec);
      } catch (err) {
        this.logger.error(
          { err, port: spec },
          'could not open a recorded host port again; its pod has no host port now',
        );
      }
    }
    if (state.ports.length > 0) this.logger.info({ ports: this.forwards.size }, 'host ports opened again');
    await this.save();
  }

  async add(spec: PortSpec): Promise<PublishedPort> {
    if (spec.protocol !== 'tcp') {
      if (!this.options.fallback) {
        throw new FailedPreconditionError(
          `cannot publish ${spec.protocol.toUpperCase()} host port ${spec.parentPort}: no rootlesskit port API`,
        );
      }
      return this.options.fallback.add(spec);
    }
    const id = this.nextId++;
    await this.forward(id, spec);
    await this.save();
    return { ...spec, id };
  }

  async remove(id: number): Promise<void> {
    if (id < FORWARD_ID_BASE) {
      await this.options.fallback?.remove(id);
      return;
    }
    const forward = this.forwards.get(id);
    if (!forward) return;
    this.forwards.delete(id);
    for (const socket of forward.connections) socket.destroy();
    await new Promise<void>((resolve) => forward.server.close(() => resolve()));
    await this.save();
  }

  async list(): Promise<PublishedPort[]> {
    const ours = [...this.forwards.values()].map((f) => ({ ...f.spec, id: f.id }));
    const theirs = this.options.fallback ? await this.options.fallback.list() : [];
    return [...ours, ...theirs];
  }

  /** Connection counts (verbose Status). */
  stats() {
    return { ports: this.forwards.size, connections: this.guard.stats(), limits: this.guard.limits };
  }

  /** Stops every forward (daemon shutdown); the table stays for the next daemon. */
  async close(): Promise<void> {
    const all = [...this.forwards.values()];
    this.forwards.clear();
    for (const forward of all) {
      for (const socket of forward.connections) socket.destroy();
      await new Promise<void>((resolve) => forward.server.close(() => resolve()));
    }
    await this.saving;
  }

  private async forward(id: number, spec: PortSpec): Promise<void> {
    let server: net.Server;
    try {
      server = await this.options.source.open(spec.parentIP, spec.parentPort);
    } catch (err) {
      throw listenError(err, spec);
    }
    // Half-closes pass through (a client that shuts down its sending side still gets the answer):
    // net.Server reads this property for every connection it accepts.
    (server as net.Server & { allowHalfOpen: boolean }).allowHalfOpen = true;
    const forward: Forward = { id, spec, server, connections: new Set() };
    this.forwards.set(id, forward);
    server.on('connection', (socket: net.Socket) => this.accept(forward, socket));
    let lastError = 0;
    server.on('error', (err: NodeJS.ErrnoException) => {
      // EMFILE and the like while accepting: libuv keeps listening.
      if (Date.now() - lastError < 10_000) return;
      lastError = Date.now();
      this.logger.warn({ port: spec.parentPort, code: err.code, err }, 'host port error (accepting goes on)');
    });
    server.once('close', () => {
      if (this.forwards.get(id) === forward) {
        this.logger.error({ port: spec.parentPort }, 'a forwarded host port closed unexpectedly');
      }
    });
  }

  private accept(forward: Forward, client: net.Socket): void {
    if (!this.guard.admit(client)) return;
    const { childIP, childPort } = forward.spec;
    const backend = net.connect({ host: childIP, port: childPort, allowHalfOpen: true });
    forward.connections.add(client);
    backend.setTimeout(BACKEND_CONNECT_TIMEOUT_MS, () => backend.destroy());
    backend.once('connect', () => backend.setTimeout(0));
    // The first byte from the client makes it a session: no longer evictable at a cap.
    client.once('data', () => this.guard.upgraded(client));
    client.pipe(backend);
    backend.pipe(client);
    const done = () => {
      client.destroy();
      backend.destroy();
    };
    client.once('close', () => {
      forward.connections.delete(client);
      done();
    });
    backend.once('close', done);
    client.on('error', done);
    backend.on('error', done);
  }

  private save(): Promise<void> {
    const state: StateFile = {
      version: STATE_VERSION,
      nodeId: this.options.nodeId,
      nextId: this.nextId,
      ports: [...this.forwards.values()].map((f) => ({ id: f.id, spec: f.spec })),
    };
    // One write at a time, in order: the last state wins.
    this.saving = this.saving.then(async () => {
      const tmp = `${this.file}.tmp`;
      await writeFile(tmp, JSON.stringify(state), { mode: 0o600 });
      await rename(tmp, this.file);
    });
    return this.saving;
  }
}

function listenError(err: unknown, spec: PortSpec): Error {
  const code = err instanceof HostListenError ? err.code : (err as NodeJS.ErrnoException | null)?.code;
  const where = `host port ${spec.parentIP}:${spec.parentPort}/${spec.protocol}`;
  if (code === 'EADDRINUSE') {
    return new FailedPreconditionError(`${where} is already in use`, { cause: err });
  }
  if (code === 'EACCES') {
    return new FailedPreconditionError(
      `cannot publish ${where}: permission denied; ports below net.ipv4.ip_unprivileged_port_start need root ` +
        `on the host (sudo sysctl net.ipv4.ip_unprivileged_port_start=${spec.parentPort})`,
      { cause: err },
    );
  }
  if (code === 'EADDRNOTAVAIL' || code === 'EINVAL') {
    return new InvalidArgumentError(
      `cannot publish ${where}: ${spec.parentIP} is not an address of this host`,
      {
        cause: err,
      },
    );
  }
  return new FailedPreconditionError(
    `cannot publish ${where}: ${err instanceof Error ? err.message : String(err)}`,
    { cause: err },
  );
}
