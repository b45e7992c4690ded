/**
 * The shapes every CRI handler has, independent of grpc-js: a handler is a plain async
 * function `(request, ctx) => response` (or `(request, send, ctx)` for a server stream).
 * The edge adapter (src/cri/edge.ts) is the only code that turns these into grpc-js handlers;
 * the domain modules implement them and import nothing from src/cri/.
 */
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import type { ImageServiceHandlers, RuntimeServiceHandlers } from './proto.js';

export interface CallContext {
  /** The RPC name, e.g. "RunPodSandbox". */
  readonly method: string;
  /** Short random hex id, also on every line of `logger`. */
  readonly requestId: string;
  /** Child logger bound to method and request id. */
  readonly logger: Logger;
  /** Aborts when the client cancels or the deadline passes; the reason is a CancelledError or DeadlineExceededError. */
  readonly signal: AbortSignal;
  /** The client's deadline, if it sent one. */
  readonly deadline: Date | undefined;
}

export type UnaryHandler<Request, Response> = (request: Request, ctx: CallContext) => Promise<Response>;

/** Sends one message; resolves when the stream can take more (back-pressure), rejects once the client is gone. */
export type SendMessage<Response> = (message: Response) => Promise<void>;

export type ServerStreamHandler<Request, Response> = (
  request: Request,
  send: SendMessage<Response>,
  ctx: CallContext,
) => Promise<void>;

type KnownKeys<T> = keyof {
  [K in keyof T as string extends K ? never : number extends K ? never : K]: T[K];
};

/** The plain async handler type for one generated grpc-js handler type. */
type PlainHandler<H> =
  H extends grpc.handleServerStreamingCall<infer Request, infer Response>
    ? ServerStreamHandler<Request, Response>
    : H extends grpc.handleUnaryCall<infer Request, infer Response>
      ? UnaryHandler<Request, Response>
      : never;

export type RuntimeHandlers = {
  [K in KnownKeys<RuntimeServiceHandlers>]: PlainHandler<RuntimeServiceHandlers[K]>;
};
export type ImageHandlers = {
  [K in KnownKeys<ImageServiceHandlers>]: PlainHandler<ImageServiceHandlers[K]>;
};

/** Handlers by RPC name (the two services share no names); missing ones answer UNIMPLEMENTED. */
export type CriHandlers = Partial<RuntimeHandlers & ImageHandlers>;
