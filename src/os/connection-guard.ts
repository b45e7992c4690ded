/**
 * Connection limits for the daemon's HTTP listeners (streaming, /metrics), which any local
 * user can reach on 127.0.0.1 (issue 12 item 1, catalogue row 47):
 *
 *   accepted ─▶ admitted? ──no──▶ reset at once (no fd kept)
 *                  │yes
 *                  ▼
 *              handshaking ──handshake timeout──▶ closed
 *                  │ upgrade (a valid token: exec/attach/port-forward)
 *                  ▼
 *               session ──idle timeout (no byte either way)──▶ closed
 *
 * - At most `maxConnections` in all and `maxPerSource` from one remote address. At a cap,
 *   the oldest connection still handshaking (of that source, or of any source for the total)
 *   is closed to make room; only when every connection is a session is the new one refused.
 *   An attacker's idle connections therefore never keep a real client out for long, and a
 *   flood costs the daemon a bounded number of fds whatever its size.
 * - Only a client that holds a token (from the CRI socket, 0600) can become a session.
 * Refusals are logged at most once per 10 s, with counts.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../log.js';

export interface ConnectionLimits {
  maxConnections: number;
  maxPerSource: number;
  /** From accept to a completed upgrade (or answered request). */
  handshakeTimeoutMs: number;
  /** A session with no bytes either way for this long is closed (0: never). */
  idleTimeoutMs: number;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  maxConnections: 256,
  maxPerSource: 64,
  handshakeTimeoutMs: 10_000,
  // kubelet's --streaming-connection-idle-timeout default.
  idleTimeoutMs: 4 * 60 * 60 * 1000,
};

export interface ConnectionStats {
  open: number;
  sessions: number;
  refused: number;
  evicted: number;
  handshakeTimeouts: number;
  idleTimeouts: number;
}

interface Tracked {
  source: string;
  session: boolean;
  timer: NodeJS.Timeout | undefined;
}

const LOG_EVERY_MS = 10_000;

export class ConnectionGuard {
  private readonly tracked = new Map<Socket, Tracked>();
  /** Per source, the connections still handshaking, oldest first. */
  private readonly handshaking = new Map<string, Set<Socket>>();
  private readonly perSource = new Map<string, number>();
  private readonly counters = { refused: 0, evicted: 0, handshakeTimeouts: 0, idleTimeouts: 0 };
  private sessions = 0;
  private unlogged = { refused: 0, evicted: 0, sources: new Map<string, number>() };
  private lastLog = 0;
  private flushTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly limits: ConnectionLimits,
    private readonly logger: Logger,
    private readonly name: string,
  ) {}

  /**
   * Takes a new connection in or closes it (resets it, so no TIME_WAIT is left either).
   * Returns whether it was admitted.
   */
  admit(socket: Socket): boolean {
    const source = sourceOf(socket);
    if ((this.perSource.get(source) ?? 0) >= this.limits.maxPerSource && !this.evictOldest(source)) {
      return this.refuse(socket, source);
    }
    if (this.tracked.size >= this.limits.maxConnections && !this.evictOldest(undefined)) {
      return this.refuse(socket, source);
    }
    const entry: Tracked = { source, session: false, timer: undefined };
    this.tracked.set(socket, entry);
    this.perSource.set(source, (this.perSource.get(source) ?? 0) + 1);
    let waiting = this.handshaking.get(source);
    if (waiting === undefined) {
      waiting = new Set();
      this.handshaking.set(source, waiting);
    }
    waiting.add(socket);
    entry.timer = setTimeout(() => {
      this.counters.handshakeTimeouts += 1;
      socket.destroy();
    }, this.limits.handshakeTimeoutMs);
    entry.timer.unref();
    socket.once('close', () => this.forget(socket));
    return true;
  }

  /** The connection upgraded to a session: no handshake clock, the idle clock instead. */
  upgraded(socket: Socket): void {
    const entry = this.tracked.get(socket);
    if (entry === undefined || entry.session) return;
    entry.session = true;
    this.sessions += 1;
    clearTimeout(entry.timer);
    entry.timer = undefined;
    this.dropHandshaking(socket, entry.source);
    if (this.limits.idleTimeoutMs > 0) {
      socket.setTimeout(this.limits.idleTimeoutMs, () => {
        this.counters.idleTimeouts += 1;
        socket.destroy();
      });
    }
  }

  stats(): ConnectionStats {
    return { open: this.tracked.size, sessions: this.sessions, ...this.counters };
  }

  private refuse(socket: Socket, source: string): false {
    this.counters.refused += 1;
    this.unlogged.refused += 1;
    this.unlogged.sources.set(source, (this.unlogged.sources.get(source) ?? 0) + 1);
    this.maybeLog();
    if (typeof socket.resetAndDestroy === 'function' && !socket.destroyed) socket.resetAndDestroy();
    else socket.destroy();
    return false;
  }

  /** Closes the oldest handshaking connection (of `source`, or of the source with the most). */
  private evictOldest(source: string | undefined): boolean {
    let from = source;
    if (from === undefined) {
      let most = 0;
      for (const [s, set] of this.handshaking) {
        if (set.size > most) {
          most = set.size;
          from = s;
        }
      }
    }
    const oldest = from === undefined ? undefined : this.handshaking.get(from)?.values().next().value;
    if (oldest === undefined) return false;
    this.counters.evicted += 1;
    this.unlogged.evicted += 1;
    this.unlogged.sources.set(from!, (this.unlogged.sources.get(from!) ?? 0) + 1);
    this.maybeLog();
    // Forgotten now, so the count is right for the connection being admitted.
    this.forget(oldest);
    if (typeof oldest.resetAndDestroy === 'function' && !oldest.destroyed) oldest.resetAndDestroy();
    else oldest.destroy();
    return true;
  }

  private forget(socket: Socket): void {
    const entry = this.tracked.get(socket);
    if (entry === undefined) return;
    this.tracked.delete(socket);
    clearTimeout(entry.timer);
    if (entry.session) this.sessions -= 1;
    else this.dropHandshaking(socket, entry.source);
    const left = (this.perSource.get(entry.source) ?? 1) - 1;
    if (left <= 0) this.perSource.delete(entry.source);
    else this.perSource.set(entry.source, left);
  }

  private dropHandshaking(socket: Socket, source: string): void {
    const set = this.handshaking.get(source);
    set?.delete(socket);
    if (set?.size === 0) this.handshaking.delete(source);
  }

  private maybeLog(): void {
    const now = Date.now();
    if (now - this.lastLog < LOG_EVERY_MS) {
      // What happens until then is reported then, even if the flood has stopped by that time.
      this.flushTimer ??= setTimeout(
        () => {
          this.flushTimer = undefined;
          if (this.unlogged.refused + this.unlogged.evicted > 0) this.maybeLog();
        },
        this.lastLog + LOG_EVERY_MS - now,
      );
      this.flushTimer.unref();
      return;
    }
    this.lastLog = now;
    const top = [...this.unlogged.sources.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3);
    this.logger.warn(
      {
        listener: this.name,
        refused: this.unlogged.refused,
        evicted: this.unlogged.evicted,
        open: this.tracked.size,
        sessions: this.sessions,
        sources: Object.fromEntries(top),
        limits: { total: this.limits.maxConnections, perSource: this.limits.maxPerSource },
      },
      'connection limits reached: refusing or closing handshaking connections (a flood from a local user?)',
    );
    this.unlogged = { refused: 0, evicted: 0, sources: new Map() };
  }
}

function sourceOf(socket: Socket): string {
  const address = socket.remoteAddress ?? 'unknown';
  return address.startsWith('::ffff:') ? address.slice(7) : address;
}
