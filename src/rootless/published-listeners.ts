/**
 * The daemon's HTTP listeners (streaming, /metrics) listen on 127.0.0.1 inside the node and
 * are published on the host's 127.0.0.1 at the same port, so the URLs Exec/Attach/
 * PortForward return work from both sides. Two ways to publish:
 *
 *  - handoff (default, when the supervisor started the daemon): the supervisor binds the
 *    host port and hands the listening socket over (host-listeners.ts explains why not
 *    rootlesskit's builtin driver); host connections go through the listener's own
 *    connection limits;
 *  - port-driver: rootlesskit's port API, as `rootlessctl add-ports` does (a daemon in
 *    namespaces someone else made, or node.publish_listeners = "port-driver"). Its ids are
 *    recorded so a daemon killed with -9 removes them when it starts again.
 *
 * A watchdog checks every listener every few seconds: a handed-off socket that stopped
 * listening is asked for again; a port the port driver no longer lists is added again
 * (with a backoff while that fails, e.g. rootlesskit out of fds). Each republish is logged,
 * counted in status() (verbose Status) and in the `rootless_cri_published_listener_republished_total`
 * metric. What the port driver cannot tell (its accept loop ended while it still lists the
 * port) is invisible from here: that is why handoff is the default.
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import type { Server, Socket } from 'node:net';
import path from 'node:path';
import { Counter, type Registry } from 'prom-client';
import { FailedPreconditionError } from '../errors.js';
import type { Logger } from '../log.js';
import type { PortManager } from '../os/port-manager.js';
import { HostListenError, type HostListenerSource } from './host-listeners.js';

export type PublishMode = 'handoff' | 'port-driver';

/** What a listener must offer to be published. */
export interface PublishableListener {
  port: number;
  /** Serves a connection accepted on the host's side. */
  accept(socket: Socket): void;
  close(): Promise<void>;
}

export interface PublishedListenerStatus {
  name: string;
  port: number;
  via: PublishMode | 'none';
  listening: boolean;
  republished: number;
  lastLoss?: { at: string; reason: string };
  lastError?: string;
}

export interface ListenerPublisherOptions {
  runDir: string;
  /** Host listeners from the supervisor; null when there is no channel. */
  source: HostListenerSource | null;
  ports: PortManager | null;
  /** Preferred mode; handoff needs `source`. */
  mode: PublishMode;
  logger: Logger;
  checkIntervalMs?: number;
  metrics?: Registry;
}

interface Entry {
  name: string;
  listener: PublishableListener;
  via: PublishMode | 'none';
  host?: Server;
  portId?: number;
  republished: number;
  lastLoss?: { at: string; reason: string };
  lastError?: string;
  /** No retry before this time (backoff after a failed republish). */
  retryAt: number;
  backoffMs: number;
}

const HOST_ADDRESS = '127.0.0.1';
const MAX_BACKOFF_MS = 60_000;

export class ListenerPublisher {
  readonly mode: PublishMode | 'none';
  private readonly file: string;
  private readonly entries: Entry[] = [];
  private readonly logger: Logger;
  private readonly republishedMetric: Counter<'listener'> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<void> | undefined;
  private closing = false;

  constructor(private readonly options: ListenerPublisherOptions) {
    this.file = path.join(options.runDir, 'daemon-ports.json');
    this.logger = options.logger.child({ component: 'published-listeners' });
    this.mode =
      options.mode === 'handoff' && options.source
        ? 'handoff'
        : options.ports
          ? 'port-driver'
          : options.source
            ? 'handoff'
            : 'none';
    if (options.mode === 'handoff' && this.mode !== 'handoff') {
      this.logger.warn(
        'no supervisor channel to hand host listeners over: publishing through rootlesskit’s port driver, which a connection flood from another local user can take down',
      );
    }
    if (this.mode === 'none') this.logger.warn('no rootlesskit API: listeners are not published on the host');
    this.republishedMetric = options.metrics
      ? new Counter({
          name: 'rootless_cri_published_listener_republished_total',
          help: 'Times a daemon listener published on the host was found lost and published again.',
          labelNames: ['listener'] as const,
          registers: [options.metrics],
        })
      : undefined;
  }

  /** Removes port-driver ports a previous daemon (killed with -9) left published. */
  async removeStale(): Promise<void> {
    if (!this.options.ports) return;
    const stale = JSON.parse(await readFile(this.file, 'utf8').catch(() => '[]')) as number[];
    for (const id of stale) {
      await this.options.ports
        .remove(id)
        .catch((err) => this.logger.warn({ err, id }, 'could not remove a stale published port'));
    }
    await this.save();
  }

  /**
   * Publishes `listener` on the host's 127.0.0.1 at its port. A port taken on the host is a
   * FailedPrecondition (startPublished then tries another port).
   */
  async publish(name: string, listener: PublishableListener): Promise<void> {
    const entry: Entry = { name, listener, via: this.mode, republished: 0, retryAt: 0, backoffMs: 1000 };
    this.entries.push(entry);
    try {
      await this.open(entry);
    } catch (err) {
      this.entries.splice(this.entries.indexOf(entry), 1);
      throw err;
    }
    this.timer ??= setInterval(() => void this.check(), this.options.checkIntervalMs ?? 5000);
    this.timer.unref();
  }

  status(): PublishedListenerStatus[] {
    return this.entries.map((e) => ({
      name: e.name,
      port: e.listener.port,
      via: e.via,
      listening:
        e.via === 'handoff'
          ? e.host?.listening === true
          : e.via === 'port-driver'
            ? e.portId !== undefined
            : false,
      republished: e.republished,
      ...(e.lastLoss ? { lastLoss: e.lastLoss } : {}),
      ...(e.lastError ? { lastError: e.lastError } : {}),
    }));
  }

  /** Stops the watchdog and takes every listener off the host. */
  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.timer);
    for (const entry of this.entries) await this.take(entry);
    this.entries.length = 0;
    await this.save();
  }

  /** One round of the watchdog; joins the round in progress if there is one. */
  check(): Promise<void> {
    if (this.closing) return Promise.resolve();
    this.checking ??= this.checkOnce().finally(() => {
      this.checking = undefined;
    });
    return this.checking;
  }

  private async checkOnce(): Promise<void> {
    {
      let listed: Set<number> | undefined;
      for (const entry of this.entries) {
        let lost: string | undefined;
        if (entry.via === 'handoff' && entry.host?.listening !== true)
          lost = 'the host listener stopped listening';
        if (entry.via === 'port-driver') {
          if (entry.portId === undefined) lost = 'it is not published';
          else {
            listed ??= await this.listPortIds();
            if (listed !== undefined && !listed.has(entry.portId))
              lost = `rootlesskit no longer lists port ${entry.portId}`;
          }
        }
        if (lost !== undefined) await this.republish(entry, lost);
      }
    }
  }

  private async listPortIds(): Promise<Set<number> | undefined> {
    try {
      return new Set((await this.options.ports!.list()).map((p) => p.id));
    } catch (err) {
      this.logger.warn({ err }, 'cannot list rootlesskit ports to check the published listeners');
      return undefined;
    }
  }

  private async republish(entry: Entry, reason: string): Promise<void> {
    if (entry.retryAt > Date.now()) return;
    // The time of the loss, not of each retry.
    if (entry.lastError === undefined) entry.lastLoss = { at: new Date().toISOString(), reason };
    await this.take(entry);
    try {
      await this.open(entry);
      entry.republished += 1;
      entry.backoffMs = 1000;
      entry.lastError = undefined;
      this.republishedMetric?.labels(entry.name).inc();
      this.logger.warn(
        { listener: entry.name, port: entry.listener.port, via: entry.via, reason, times: entry.republished },
        'a published listener was lost; published it again on the host',
      );
    } catch (err) {
      entry.lastError = err instanceof Error ? err.message : String(err);
      entry.retryAt = Date.now() + entry.backoffMs;
      entry.backoffMs = Math.min(entry.backoffMs * 2, MAX_BACKOFF_MS);
      this.logger.error(
        {
          listener: entry.name,
          port: entry.listener.port,
          reason,
          err: entry.lastError,
          retryInMs: entry.retryAt - Date.now(),
        },
        'a published listener was lost and publishing it again failed; retrying',
      );
    }
  }

  private async open(entry: Entry): Promise<void> {
    const port = entry.listener.port;
    if (entry.via === 'handoff') {
      let host: Server;
      try {
        host = await this.options.source!.open(HOST_ADDRESS, port);
      } catch (err) {
        throw hostError(err, port);
      }
      entry.host = host;
      host.on('connection', (socket: Socket) => entry.listener.accept(socket));
      let lastError = 0;
      host.on('error', (err: NodeJS.ErrnoException) => {
        // EMFILE and the like while accepting: libuv keeps listening.
        if (Date.now() - lastError < 10_000) return;
        lastError = Date.now();
        this.logger.warn(
          { listener: entry.name, code: err.code, err },
          'host listener error (accepting goes on)',
        );
      });
      host.once('close', () => {
        if (this.closing || entry.host !== host) return;
        this.logger.warn(
          { listener: entry.name, port },
          'the host listener closed; the watchdog publishes it again',
        );
        void this.check();
      });
      return;
    }
    if (entry.via === 'port-driver') {
      const published = await this.options.ports!.add({
        protocol: 'tcp',
        parentIP: HOST_ADDRESS,
        parentPort: port,
        childIP: HOST_ADDRESS,
        childPort: port,
      });
      entry.portId = published.id;
      await this.save();
    }
  }

  /** Takes one listener off the host (idempotent). */
  private async take(entry: Entry): Promise<void> {
    const host = entry.host;
    entry.host = undefined;
    if (host?.listening) await new Promise<void>((resolve) => host.close(() => resolve()));
    if (entry.portId !== undefined) {
      const id = entry.portId;
      entry.portId = undefined;
      await this.options.ports?.remove(id).catch(() => undefined);
      await this.save();
    }
  }

  private async save(): Promise<void> {
    const ids = this.entries.map((e) => e.portId).filter((id): id is number => id !== undefined);
    const tmp = `${this.file}.tmp`;
    await writeFile(tmp, JSON.stringify(ids), { mode: 0o600 });
    await rename(tmp, this.file);
  }
}

function hostError(err: unknown, port: number): Error {
  const code = err instanceof HostListenError ? err.code : '';
  if (code === 'EADDRINUSE') {
    return new FailedPreconditionError(`host port 127.0.0.1:${port} is already in use`, { cause: err });
  }
  return new FailedPreconditionError(
    `cannot publish port ${port} on the host: ${err instanceof Error ? err.message : String(err)}`,
    { cause: err },
  );
}

/**
 * Starts an HTTP listener inside the node and publishes it on the host at the same port. With
 * port 0 a free port is picked; if that number is taken on the host, another one is tried.
 */
export async function startPublished<L extends PublishableListener>(
  name: string,
  start: (port: number) => Promise<L>,
  wantedPort: number,
  publisher: ListenerPublisher,
  logger: Logger,
): Promise<L> {
  for (let attempt = 0; ; attempt++) {
    const listener = await start(wantedPort);
    try {
      await publisher.publish(name, listener);
      return listener;
    } catch (err) {
      await listener.close();
      if (wantedPort !== 0 || attempt >= 4) throw err;
      logger.debug({ err, port: listener.port }, 'port taken on the host; trying another');
    }
  }
}
