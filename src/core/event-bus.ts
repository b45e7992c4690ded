/**
 * The event bus behind GetContainerEvents: every subscriber gets every container AND sandbox
 * event (created, started, stopped, deleted) from the moment it subscribed, in order. A
 * container event carries the container's status and its pod's; a sandbox event carries
 * container_id = the pod's id, the pod's status and the statuses of its containers (as
 * containerd sends them). A slow subscriber gets its own queue
 * (bounded: one that falls too far behind is dropped, so it cannot grow the daemon's memory);
 * the stream ends when the client goes away or the daemon shuts down.
 */
import type { SendMessage } from '../api/handlers.js';
import type {
  ContainerEventResponse,
  ContainerEventType,
  ContainerStatus,
  PodSandboxStatus,
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

export interface EventSources {
  /** The pod's status, or null when it is gone. */
  podStatus(podId: string): PodSandboxStatus | null;
  /** The statuses of the pod's containers (sandbox events). */
  podContainerStatuses(podId: string): ContainerStatus[];
}

export class EventBus {
  readonly #subscribers = new Set<Subscriber>();
  #closed = false;

  /** Dropped subscribers (too slow) and events, for metrics. */
  dropped = 0;

  constructor(private readonly sources: EventSources) {}

  get subscribers(): number {
    return this.#subscribers.size;
  }

  /** Sends the event to every subscriber; never throws, never waits for slow ones. */
  publish(
    kind: ContainerEventKind,
    containerId: string,
    podId: string,
    status: ContainerStatus | null,
    createdAt: bigint,
  ): void {
    if (this.#subscribers.size === 0) return;
    this.#send({
      container_id: containerId,
      container_event_type: kind,
      created_at: createdAt.toString(),
      pod_sandbox_status: this.sources.podStatus(podId),
      containers_statuses: status ? [status] : [],
    });
  }

  /** A sandbox event: container_id is the pod's id; the pod's containers' statuses go along. */
  publishSandbox(
    kind: ContainerEventKind,
    podId: string,
    createdAt: bigint,
    podStatus?: PodSandboxStatus,
  ): void {
    if (this.#subscribers.size === 0) return;
    this.#send({
      container_id: podId,
      container_event_type: kind,
      created_at: createdAt.toString(),
      pod_sandbox_status: podStatus ?? this.sources.podStatus(podId),
      containers_statuses: this.sources.podContainerStatuses(podId),
    });
  }

  #send(event: ContainerEventResponse): void {
    for (const subscriber of this.#subscribers) {
      if (subscriber.queue.length >= MAX_QUEUED_EVENTS) {
        this.dropped += 1;
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
