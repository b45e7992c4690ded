/**
 * Fair download slots: at most `concurrency` blob downloads run on the node, at most
 * `perHost` of them from one registry host, and a freed slot goes to the hosts in turn
 * (round robin over the hosts with someone waiting; first come, first served within one).
 * So a registry that trickles bytes can hold only its own share, and a healthy image from
 * another registry starts at once (issue 12 item 2). A caller whose signal fires while it
 * waits leaves the queue; a slot is given back exactly once however often `release` runs.
 */
import { InvalidArgumentError } from '../errors.js';
import { abortError } from './registry-client.js';

interface Waiter {
  host: string;
  grant: () => void;
}

export interface SlotState {
  running: number;
  waiting: number;
  /** Per registry host: downloads running and waiting. */
  hosts: Record<string, { running: number; waiting: number }>;
}

export class DownloadSlots {
  readonly perHost: number;
  private active = 0;
  private readonly activeByHost = new Map<string, number>();
  private readonly queues = new Map<string, Waiter[]>();
  /** Hosts with waiters, in the order they get the next free slot. */
  private turn: string[] = [];

  constructor(
    readonly concurrency: number,
    perHost: number = concurrency,
  ) {
    for (const [name, value] of [
      ['download concurrency', concurrency],
      ['per-registry download concurrency', perHost],
    ] as const) {
      if (!Number.isSafeInteger(value) || value < 1) {
        throw new InvalidArgumentError(`${name} must be a positive integer, not ${value}`);
      }
    }
    this.perHost = Math.min(perHost, concurrency);
  }

  get running(): number {
    return this.active;
  }

  get waiting(): number {
    let n = 0;
    for (const queue of this.queues.values()) n += queue.length;
    return n;
  }

  state(): SlotState {
    const hosts: SlotState['hosts'] = {};
    for (const [host, running] of this.activeByHost) hosts[host] = { running, waiting: 0 };
    for (const [host, queue] of this.queues) {
      hosts[host] = { running: hosts[host]?.running ?? 0, waiting: queue.length };
    }
    return { running: this.active, waiting: this.waiting, hosts };
  }

  async run<T>(task: () => Promise<T>, signal?: AbortSignal, host = ''): Promise<T> {
    const release = await this.acquire(signal, host);
    try {
      return await task();
    } finally {
      release();
    }
  }

  /**
   * Waits for a slot for a download from `host`; the answer gives it back. The queue entry
   * is made before this returns its promise, so calls made in a row queue in that order.
   */
  acquire(signal?: AbortSignal, host = ''): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(abortError(signal, 'queued download'));
    return new Promise<() => void>((resolve, reject) => {
      const waiter: Waiter = {
        host,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(this.releaser(host));
        },
      };
      const onAbort = () => {
        const queue = this.queues.get(host);
        const index = queue?.indexOf(waiter) ?? -1;
        if (index >= 0) {
          queue!.splice(index, 1);
          if (queue!.length === 0) this.dropHost(host);
        }
        reject(abortError(signal!, 'queued download'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      let queue = this.queues.get(host);
      if (queue === undefined) {
        queue = [];
        this.queues.set(host, queue);
        this.turn.push(host);
      }
      queue.push(waiter);
      this.pump();
    });
  }

  private releaser(host: string): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active -= 1;
      const left = (this.activeByHost.get(host) ?? 1) - 1;
      if (left === 0) this.activeByHost.delete(host);
      else this.activeByHost.set(host, left);
      this.pump();
    };
  }

  /** Hands free slots to waiting hosts in turn, skipping hosts at their own cap. */
  private pump(): void {
    while (this.active < this.concurrency) {
      const index = this.turn.findIndex((h) => (this.activeByHost.get(h) ?? 0) < this.perHost);
      if (index < 0) return;
      const host = this.turn[index]!;
      const queue = this.queues.get(host)!;
      const waiter = queue.shift()!;
      // This host goes to the back of the line (if it still waits); the others keep their turn.
      this.turn.splice(index, 1);
      if (queue.length === 0) this.queues.delete(host);
      else this.turn.push(host);
      this.active += 1;
      this.activeByHost.set(host, (this.activeByHost.get(host) ?? 0) + 1);
      waiter.grant();
    }
  }

  private dropHost(host: string): void {
    this.queues.delete(host);
    this.turn = this.turn.filter((h) => h !== host);
  }
}
