/**
 * GetContainerEvents: every subscriber gets every container event (created, started,
 * stopped, deleted) from the moment it subscribed, in order, each with the container's status
 * and, when the pod layer provides it, its pod's status. A slow subscriber gets its own queue
 * (bounded: one that falls too far behind is dropped, so it cannot grow the daemon's memory);
 * the stream ends when the client goes away or the daemon shuts down.
 */
import type { CallContext, SendMessage } from '../api/handlers.js';
import type {
  ContainerEventResponse,
  ContainerEventType,
  ContainerStatus,
  PodSandboxStatus,
  RuntimeRequest,
} from '../api/proto.js';

/** Events kept per subscriber before it is considered gone. */
export const MAX_QUEUED_EVENTS = 1000;

export type ContainerEventKind = Extract<ContainerEventType, string>;

interface Subscriber {
  send: SendMessage<ContainerEventResponse>;
  queue: ContainerEventResponse[];
  flushing: boolean;
  done: () => void;
}

export class ContainerEvents {
  readonly #subscribers = new Set<Subscriber>();
  #closed = false;

  constructor(
    /** The pod's status for an event (optional: the pod layer may not provide one). */
    private readonly sandboxStatus: (podId: string) => Promise<PodSandboxStatus | null> = async () => null,
  ) {}

  get subscribers(): number {
    return this.#subscribers.size;
  }

  /** Sends the event to every subscriber; never throws, never waits for slow ones. */
  async publish(
    kind: ContainerEventKind,
    containerId: string,
    podId: string,
    status: ContainerStatus | null,
    createdAt: bigint,
  ): Promise<void> {
    if (this.#subscribers.size === 0) return;
    const podStatus = await this.sandboxStatus(podId).catch(() => null);
    const event: ContainerEventResponse = {
      container_id: containerId,
      container_event_type: kind,
      created_at: createdAt.toString(),
      pod_sandbox_status: podStatus,
      containers_statuses: status ? [status] : [],
    };
    for (const subscriber of this.#subscribers) {
      if (subscriber.queue.length >= MAX_QUEUED_EVENTS) {
        this.#subscribers.delete(subscriber);
        subscriber.done();
        continue;
      }
      subscriber.queue.push(event);
      void this.#flush(subscriber);
    }
  }

  async #flush(subscriber: Subscriber): Promise<void> {
    if (subscriber.flushing) return;
    subscriber.flushing = true;
    try {
      while (subscriber.queue.length > 0) {
        const next = subscriber.queue.shift()!;
        await subscriber.send(next);
      }
    } catch {
      // The client is gone.
      this.#subscribers.delete(subscriber);
      subscriber.done();
    } finally {
      subscriber.flushing = false;
    }
  }

  /** Streams events until the signal aborts or the events are closed. */
  async subscribe(send: SendMessage<ContainerEventResponse>, signal: AbortSignal): Promise<void> {
    if (this.#closed) return;
    await new Promise<void>((resolve) => {
      const subscriber: Subscriber = { send, queue: [], flushing: false, done: resolve };
      this.#subscribers.add(subscriber);
      const stop = () => {
        this.#subscribers.delete(subscriber);
        resolve();
      };
      if (signal.aborted) stop();
      else signal.addEventListener('abort', stop, { once: true });
    });
  }

  /** Ends every stream (daemon shutdown). */
  close(): void {
    this.#closed = true;
    for (const s of this.#subscribers) s.done();
    this.#subscribers.clear();
  }
}

export function createGetContainerEvents(events: ContainerEvents) {
  return async function GetContainerEvents(
    _request: RuntimeRequest<'GetContainerEvents'>,
    send: SendMessage<ContainerEventResponse>,
    ctx: Pick<CallContext, 'signal'>,
  ): Promise<void> {
    await events.subscribe(send, ctx.signal);
  };
}
