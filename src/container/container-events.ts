/**
 * GetContainerEvents: a stream of every container and sandbox event from the moment the
 * client subscribed (core/event-bus.ts), until the client goes away or the daemon stops.
 */
import type { CallContext, SendMessage } from '../api/handlers.js';
import type { ContainerEventResponse, RuntimeRequest } from '../api/proto.js';
import type { EventBus } from '../core/event-bus.js';

export function createGetContainerEvents(events: EventBus) {
  return async function GetContainerEvents(
    _request: RuntimeRequest<'GetContainerEvents'>,
    send: SendMessage<ContainerEventResponse>,
    ctx: Pick<CallContext, 'signal'>,
  ): Promise<void> {
    await events.subscribe(send, ctx.signal);
  };
}
