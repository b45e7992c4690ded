/**
 * ttrpc, the RPC protocol NRI runs on (github.com/containerd/ttrpc, PROTOCOL.md; facts only):
 *
 *   message: | length (32, BE) | stream id (32, BE) | type (8) | flags (8) | data (length) |
 *
 * Types: 1 request, 2 response, 3 data. Data is at most 4 MiB; a longer message is read past
 * and answered with RESOURCE_EXHAUSTED on its stream, as the Go implementation does. Client
 * streams have odd ids, increasing; a unary call is one request (flags 0) answered by one
 * response. A request carries ttrpc.Request {service = 1, method = 2, payload = 3,
 * timeout_nano = 4, metadata = 5}; a response ttrpc.Response {status = 1, payload = 2} with
 * status google.rpc.Status {code = 1, message = 2, details = 3}.
 *
 * The parser is incremental (any chunking), never throws to its caller and bounds what it
 * buffers. TtrpcClient and TtrpcServer are one side each of a logical connection; they only
 * see frames and a `send` function, so the same code runs over a socket, the NRI
 * multiplexer (mux.ts) or a test's in-memory pipe.
 */
import { Any, KeyValue } from './api.js';
import {
  bytes,
  decodeMessage,
  defineMessage,
  encodeMessage,
  int32,
  int64,
  type MessageOf,
  message,
  repeatedMessage,
  string,
} from './protobuf.js';

export const TTRPC_HEADER_LENGTH = 10;
export const TTRPC_MAX_DATA_LENGTH = 4 << 20;

export const MessageType = { Request: 1, Response: 2, Data: 3 } as const;
export const Flag = { RemoteClosed: 0x1, RemoteOpen: 0x2, NoData: 0x4 } as const;

/** gRPC status codes, which ttrpc uses unchanged. */
export const StatusCode = {
  OK: 0,
  Cancelled: 1,
  Unknown: 2,
  InvalidArgument: 3,
  DeadlineExceeded: 4,
  NotFound: 5,
  AlreadyExists: 6,
  PermissionDenied: 7,
  ResourceExhausted: 8,
  FailedPrecondition: 9,
  Aborted: 10,
  OutOfRange: 11,
  Unimplemented: 12,
  Internal: 13,
  Unavailable: 14,
  DataLoss: 15,
  Unauthenticated: 16,
} as const;

export function statusCodeName(code: number): string {
  return Object.entries(StatusCode).find(([, c]) => c === code)?.[0] ?? `code ${code}`;
}

export const RpcStatus = defineMessage('google.rpc.Status', {
  code: int32(1),
  message: string(2),
  details: repeatedMessage(3, () => Any),
});
export type RpcStatus = MessageOf<typeof RpcStatus>;

export const TtrpcRequest = defineMessage('ttrpc.Request', {
  service: string(1),
  method: string(2),
  payload: bytes(3),
  timeoutNano: int64(4),
  metadata: repeatedMessage(5, () => KeyValue),
});
export type TtrpcRequest = MessageOf<typeof TtrpcRequest>;

export const TtrpcResponse = defineMessage('ttrpc.Response', {
  status: message(1, () => RpcStatus),
  payload: bytes(2),
});
export type TtrpcResponse = MessageOf<typeof TtrpcResponse>;

/** An RPC answered with a non-OK status, or one that could not be completed. */
export class TtrpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TtrpcError';
  }
}

/** The connection went away (or was closed) before the call was answered. */
export class TtrpcClosedError extends TtrpcError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(StatusCode.Unavailable, message, options);
    this.name = 'TtrpcClosedError';
  }
}

/** The peer broke the protocol (undecodable, misdirected or oversized answer). */
export class TtrpcProtocolError extends TtrpcError {
  constructor(code: number, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'TtrpcProtocolError';
  }
}

/** No answer within the call's timeout. */
export class TtrpcTimeoutError extends TtrpcError {
  constructor(message: string) {
    super(StatusCode.DeadlineExceeded, message);
    this.name = 'TtrpcTimeoutError';
  }
}

export interface TtrpcFrame {
  streamId: number;
  type: number;
  flags: number;
  data: Buffer;
}

/** What the parser reports: a frame, or a frame whose data was too long and was skipped. */
export type TtrpcParserEvent =
  | ({ kind: 'frame' } & TtrpcFrame)
  | { kind: 'oversized'; streamId: number; type: number; length: number };

export function encodeTtrpcFrame(streamId: number, type: number, flags: number, data: Uint8Array): Buffer {
  if (data.length > TTRPC_MAX_DATA_LENGTH) {
    throw new TtrpcError(
      StatusCode.ResourceExhausted,
      `ttrpc message of ${data.length} bytes exceeds the maximum of ${TTRPC_MAX_DATA_LENGTH}`,
    );
  }
  const out = Buffer.allocUnsafe(TTRPC_HEADER_LENGTH + data.length);
  out.writeUInt32BE(data.length, 0);
  out.writeUInt32BE(streamId >>> 0, 4);
  out.writeUInt8(type, 8);
  out.writeUInt8(flags, 9);
  out.set(data, TTRPC_HEADER_LENGTH);
  return out;
}

/**
 * Incremental ttrpc frame parser. Bytes of an oversized frame are skipped as they arrive
 * (never buffered); everything else is bounded by one frame.
 */
export class TtrpcFrameParser {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private skipping = 0;

  constructor(private readonly onEvent: (event: TtrpcParserEvent) => void) {}

  push(chunk: Buffer): void {
    let data = chunk;
    if (this.skipping > 0) {
      const skipped = Math.min(this.skipping, data.length);
      this.skipping -= skipped;
      data = data.subarray(skipped);
      if (data.length === 0) return;
    }
    this.chunks.push(data);
    this.buffered += data.length;
    this.drain();
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    const head = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return head;
  }

  private peekHeader(): Buffer {
    if (this.chunks[0]!.length >= TTRPC_HEADER_LENGTH) return this.chunks[0]!;
    const all = Buffer.concat(this.chunks, this.buffered);
    this.chunks = [all];
    return all;
  }

  private drain(): void {
    while (this.buffered >= TTRPC_HEADER_LENGTH) {
      const header = this.peekHeader();
      const length = header.readUInt32BE(0);
      const streamId = header.readUInt32BE(4);
      const type = header.readUInt8(8);
      const flags = header.readUInt8(9);
      if (length > TTRPC_MAX_DATA_LENGTH) {
        this.take(TTRPC_HEADER_LENGTH);
        const skipped = Math.min(length, this.buffered);
        this.take(skipped);
        this.skipping = length - skipped;
        this.onEvent({ kind: 'oversized', streamId, type, length });
        continue;
      }
      if (this.buffered < TTRPC_HEADER_LENGTH + length) return;
      const frame = this.take(TTRPC_HEADER_LENGTH + length);
      // Copy: the frame outlives the chunk it was sliced from.
      const payload = Buffer.from(frame.subarray(TTRPC_HEADER_LENGTH));
      this.onEvent({ kind: 'frame', streamId, type, flags, data: payload });
    }
  }
}

type Send = (frame: Buffer) => void;

interface PendingCall {
  resolve(payload: Uint8Array): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | undefined;
  what: string;
}

/** The calling side of a ttrpc connection: unary calls with per-call timeouts. */
export class TtrpcClient {
  private nextStreamId = 1;
  private readonly pending = new Map<number, PendingCall>();
  private closedWith: Error | undefined;

  constructor(
    private readonly send: Send,
    private readonly onUnexpected: (what: string) => void = () => {},
  ) {}

  /**
   * Call service/method with an encoded request; resolves with the encoded response
   * payload. Rejects with TtrpcError (non-OK status), TtrpcTimeoutError or TtrpcClosedError.
   * The timeout is also sent to the server (timeout_nano), which bounds its handler.
   */
  call(service: string, method: string, payload: Uint8Array, timeoutMs: number): Promise<Uint8Array> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const streamId = this.nextStreamId;
    if (streamId > 0xffffffff) {
      return Promise.reject(new TtrpcClosedError('ttrpc stream ids exhausted; reconnect'));
    }
    this.nextStreamId += 2;
    const what = `${service}/${method}`;
    const request = encodeMessage(TtrpcRequest, {
      service,
      method,
      payload,
      timeoutNano: BigInt(Math.round(timeoutMs)) * 1_000_000n,
    });
    return new Promise<Uint8Array>((resolve, reject) => {
      const call: PendingCall = { resolve, reject, timer: undefined, what };
      call.timer = setTimeout(() => {
        this.pending.delete(streamId);
        reject(new TtrpcTimeoutError(`${what}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(streamId, call);
      try {
        this.send(encodeTtrpcFrame(streamId, MessageType.Request, 0, request));
      } catch (err) {
        this.pending.delete(streamId);
        clearTimeout(call.timer);
        reject(
          err instanceof TtrpcError
            ? err
            : new TtrpcClosedError(`${what}: cannot send: ${(err as Error)?.message ?? String(err)}`, {
                cause: err,
              }),
        );
      }
    });
  }

  onParserEvent(event: TtrpcParserEvent): void {
    const call = this.pending.get(event.streamId);
    if (!call) {
      // A late answer to a call that timed out, or a stream we never opened.
      this.onUnexpected(`ttrpc ${event.kind} on inactive stream ${event.streamId}`);
      return;
    }
    if (event.kind === 'oversized') {
      this.finish(event.streamId, call);
      call.reject(
        new TtrpcProtocolError(
          StatusCode.ResourceExhausted,
          `${call.what}: answer of ${event.length} bytes exceeds the ${TTRPC_MAX_DATA_LENGTH}-byte maximum`,
        ),
      );
      return;
    }
    if (event.type !== MessageType.Response) {
      this.finish(event.streamId, call);
      call.reject(
        new TtrpcProtocolError(
          StatusCode.Internal,
          `${call.what}: unexpected ttrpc message type ${event.type}`,
        ),
      );
      return;
    }
    this.finish(event.streamId, call);
    let response: TtrpcResponse;
    try {
      response = decodeMessage(TtrpcResponse, event.data);
    } catch (err) {
      call.reject(
        new TtrpcProtocolError(StatusCode.Internal, `${call.what}: undecodable response`, { cause: err }),
      );
      return;
    }
    const code = response.status?.code ?? StatusCode.OK;
    if (code !== StatusCode.OK) {
      call.reject(new TtrpcError(code, response.status?.message || statusCodeName(code)));
      return;
    }
    call.resolve(response.payload ?? new Uint8Array(0));
  }

  private finish(streamId: number, call: PendingCall): void {
    this.pending.delete(streamId);
    clearTimeout(call.timer);
  }

  /** Fail every outstanding call; later calls fail at once. */
  close(reason: Error): void {
    if (this.closedWith) return;
    this.closedWith = reason;
    for (const [streamId, call] of this.pending) {
      this.finish(streamId, call);
      call.reject(reason);
    }
  }

  get outstanding(): number {
    return this.pending.size;
  }
}

export interface TtrpcCallContext {
  service: string;
  method: string;
  /** The caller's timeout (timeout_nano), 0 when it sent none. */
  timeoutMs: number;
}

/** Serves one call: resolve with the encoded response payload or throw (TtrpcError for a code). */
export type TtrpcHandler = (payload: Uint8Array, context: TtrpcCallContext) => Promise<Uint8Array>;

/** The serving side of a ttrpc connection: unary requests only. */
export class TtrpcServer {
  private lastStreamId = 0;
  private closed = false;

  constructor(
    private readonly send: Send,
    private readonly handlers: ReadonlyMap<string, TtrpcHandler>,
    private readonly onHandlerError: (what: string, err: unknown) => void = () => {},
  ) {}

  onParserEvent(event: TtrpcParserEvent): void {
    if (this.closed) return;
    if (event.kind === 'oversized') {
      this.respondStatus(
        event.streamId,
        StatusCode.ResourceExhausted,
        `message length ${event.length} exceeds maximum message size of ${TTRPC_MAX_DATA_LENGTH}`,
      );
      return;
    }
    if (event.streamId % 2 !== 1) {
      this.respondStatus(
        event.streamId,
        StatusCode.InvalidArgument,
        'StreamID must be odd for client initiated streams',
      );
      return;
    }
    if (event.type === MessageType.Data) {
      this.respondStatus(
        event.streamId,
        StatusCode.InvalidArgument,
        'streaming is not supported by this server',
      );
      return;
    }
    if (event.type !== MessageType.Request) return; // unknown types are ignored for forward compatibility
    if (event.streamId <= this.lastStreamId) {
      this.respondStatus(
        event.streamId,
        StatusCode.InvalidArgument,
        'StreamID cannot be re-used and must increment',
      );
      return;
    }
    this.lastStreamId = event.streamId;
    if (event.flags & Flag.RemoteOpen) {
      this.respondStatus(event.streamId, StatusCode.Unimplemented, 'streaming requests are not supported');
      return;
    }
    let request: TtrpcRequest;
    try {
      request = decodeMessage(TtrpcRequest, event.data);
    } catch (err) {
      this.respondStatus(
        event.streamId,
        StatusCode.InvalidArgument,
        `unmarshal request error: ${(err as Error).message}`,
      );
      return;
    }
    const service = request.service ?? '';
    const method = request.method ?? '';
    const handler = this.handlers.get(`${service}/${method}`);
    if (!handler) {
      const known = [...this.handlers.keys()].some((k) => k.startsWith(`${service}/`));
      this.respondStatus(
        event.streamId,
        StatusCode.Unimplemented,
        known ? `method ${method}` : `service ${service}`,
      );
      return;
    }
    const timeoutNano = request.timeoutNano ?? 0n;
    const timeoutMs = timeoutNano > 0n ? Number(timeoutNano / 1_000_000n) : 0;
    const streamId = event.streamId;
    const payload = request.payload ?? new Uint8Array(0);
    Promise.resolve()
      .then(() => handler(payload, { service, method, timeoutMs }))
      .then(
        (payload) => this.respond(streamId, { payload }),
        (err: unknown) => {
          this.onHandlerError(`${service}/${method}`, err);
          const code = err instanceof TtrpcError ? err.code : StatusCode.Unknown;
          this.respondStatus(streamId, code, err instanceof Error ? err.message : String(err));
        },
      );
  }

  private respondStatus(streamId: number, code: number, message: string): void {
    this.respond(streamId, { status: { code, message } });
  }

  private respond(streamId: number, response: TtrpcResponse): void {
    if (this.closed) return;
    let data: Uint8Array;
    try {
      data = encodeMessage(TtrpcResponse, response);
      this.send(encodeTtrpcFrame(streamId, MessageType.Response, 0, data));
    } catch (err) {
      if (err instanceof TtrpcError && response.status === undefined) {
        this.respondStatus(streamId, err.code, err.message);
        return;
      }
      this.onHandlerError('respond', err);
    }
  }

  close(): void {
    this.closed = true;
  }
}
