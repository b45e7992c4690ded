/**
 * The one edge adapter (STYLE.md habit 2). Every CRI handler is a plain async function
 * `(request, ctx) => response` that never sees grpc-js; this module turns it into a
 * grpc-js handler that
 *   - assigns a request id and a child logger,
 *   - answers UNAVAILABLE until startup recovery has opened the readiness gate,
 *   - gives the handler an AbortSignal that fires on client cancel or deadline,
 *   - maps a thrown error to a gRPC status through the one table in status-codes.ts
 *     (anything that is not a CriError becomes INTERNAL; nothing a handler throws can
 *     crash the daemon),
 *   - logs one structured line per call and records the per-RPC metrics.
 * Per-call work is kept small (lazy logger and signal, cached metric children) because
 * kubelet polls Version/Status/List* and `npm run bench` compares us with bare grpc-js.
 */
import { randomBytes } from 'node:crypto';
import type {
  handleServerStreamingCall,
  handleUnaryCall,
  ServerUnaryCall,
  ServerWritableStream,
} from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import type { CallContext, SendMessage, ServerStreamHandler, UnaryHandler } from '../api/handlers.js';
import {
  CancelledError,
  CriError,
  DeadlineExceededError,
  describeError,
  describeSystemError,
  errorKind,
  systemErrorIn,
} from '../errors.js';
import type { Logger } from '../log.js';
import type { RpcMetrics } from '../metrics.js';
import { type HelperTimeAccount, withHelperTimeAccount } from '../os/helper-time.js';
import { grpcStatusFor, grpcStatusName } from './status-codes.js';

/** What the adapter needs of any grpc-js server call (grpc-js does not export its common type). */
type SurfaceCall = Pick<ServerUnaryCall<unknown, unknown>, 'cancelled' | 'getDeadline' | 'once' | 'off'>;

export interface Readiness {
  isReady(): boolean;
}

/** Closed at start; the daemon opens it once recovery has finished. */
export class ReadinessGate implements Readiness {
  #open = false;

  open(): void {
    this.#open = true;
  }

  isReady(): boolean {
    return this.#open;
  }
}

export interface EdgeOptions {
  logger: Logger;
  readiness: Readiness;
  metrics?: RpcMetrics;
}

export const NOT_READY_MESSAGE = 'rootless-cri is still recovering its state; retry shortly';

/**
 * Calls that kubelet and monitoring make every few seconds: their successes are logged at debug
 * so the info log shows what changed, not the polling. ExecSync is kubelet's exec probe (every
 * 10 s per probe by default): containerd logs it at debug too. Its failures stay at warn.
 */
export function isQuietMethod(method: string): boolean {
  return (
    method === 'Version' ||
    method === 'ExecSync' ||
    method === 'Status' ||
    method === 'RuntimeConfig' ||
    method === 'ImageFsInfo' ||
    method.startsWith('List') ||
    method.startsWith('Stream') ||
    method.endsWith('Status') ||
    method.endsWith('Stats') ||
    method === 'GetContainerEvents'
  );
}

// Request ids come from a pooled random buffer: one randomBytes call per 512 requests
// instead of one per request.
const ID_BYTES = 8;
let idPool = Buffer.alloc(0);
let idOffset = 0;
function newRequestId(): string {
  if (idOffset + ID_BYTES > idPool.length) {
    idPool = randomBytes(ID_BYTES * 512);
    idOffset = 0;
  }
  const id = idPool.toString('hex', idOffset, idOffset + ID_BYTES);
  idOffset += ID_BYTES;
  return id;
}

class CallState implements CallContext {
  readonly requestId = newRequestId();
  readonly deadline: Date | undefined;
  #logger: Logger | undefined;
  #controller: AbortController | undefined;
  #timer: NodeJS.Timeout | undefined;
  #onCancel: (() => void) | undefined;

  constructor(
    readonly method: string,
    private readonly baseLogger: Logger,
    private readonly call: SurfaceCall,
  ) {
    const deadline = call.getDeadline();
    const ms = deadline instanceof Date ? deadline.getTime() : deadline;
    this.deadline = Number.isFinite(ms) ? new Date(ms) : undefined;
  }

  get logger(): Logger {
    this.#logger ??= this.baseLogger.child({ method: this.method, requestId: this.requestId });
    return this.#logger;
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      const controller = new AbortController();
      this.#controller = controller;
      const deadlineExceeded = () =>
        new DeadlineExceededError(
          `${this.method} did not finish before the client's deadline; retry with a longer timeout`,
        );
      // grpc-js ends the call itself when the deadline passes, which reaches us as a cancel:
      // tell the two apart by the clock (a few ms of slack for timer granularity).
      const cancelled = () =>
        this.deadlinePassed()
          ? deadlineExceeded()
          : new CancelledError(`the client cancelled ${this.method}`);
      if (this.call.cancelled) {
        controller.abort(cancelled());
      } else {
        this.#onCancel = () => controller.abort(cancelled());
        this.call.once('cancelled', this.#onCancel);
        if (this.deadline !== undefined) {
          const abortOnDeadline = () => controller.abort(deadlineExceeded());
          const remaining = this.deadline.getTime() - Date.now();
          if (remaining <= 0) abortOnDeadline();
          else {
            this.#timer = setTimeout(abortOnDeadline, remaining);
            this.#timer.unref();
          }
        }
      }
    }
    return this.#controller.signal;
  }

  /** Whether the client's deadline has passed (with the slack of the cancel check above). */
  deadlinePassed(): boolean {
    return this.deadline !== undefined && Date.now() >= this.deadline.getTime() - 5;
  }

  /** Releases the timer and listener; called once the answer has been sent. */
  finish(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    if (this.#onCancel !== undefined) this.call.off('cancelled', this.#onCancel);
  }
}

interface Outcome {
  code: status;
  durationMs: number;
  error?: unknown;
  messagesSent?: number;
  helpers?: HelperTimeAccount;
}

function finishCall(options: EdgeOptions, ctx: CallState, outcome: Outcome): void {
  ctx.finish();
  const codeName = grpcStatusName(outcome.code);
  options.metrics?.observe(ctx.method, codeName, outcome.durationMs / 1000);
  const { logger } = options;
  const fields: Record<string, unknown> = {
    method: ctx.method,
    requestId: ctx.requestId,
    code: codeName,
    durationMs: Math.round(outcome.durationMs * 1000) / 1000,
  };
  if (outcome.messagesSent !== undefined) fields.messagesSent = outcome.messagesSent;
  if (outcome.helpers !== undefined && outcome.helpers.helperRuns > 0) {
    // Time in helper processes (crun, conmon, CNI, ...); the rest is the daemon's own.
    fields.helperMs = Math.round(outcome.helpers.helperMs * 1000) / 1000;
    fields.helperRuns = outcome.helpers.helperRuns;
  }
  if (outcome.code === status.OK) {
    if (isQuietMethod(ctx.method)) {
      if (logger.isLevelEnabled('debug')) logger.debug(fields, 'rpc');
    } else logger.info(fields, 'rpc');
    return;
  }
  if (outcome.error !== undefined) fields.error = describeError(outcome.error);
  if (outcome.code === status.INTERNAL) {
    // Unexpected failures carry the stack and cause chain: they are bugs or host trouble.
    fields.err = outcome.error;
    logger.error(fields, 'rpc failed');
  } else if (outcome.code === status.UNAVAILABLE && !(outcome.error instanceof CriError)) {
    // Not ready yet: clients poll for this during startup; recovery logs its own progress.
    if (logger.isLevelEnabled('debug')) logger.debug(fields, 'rpc refused: not ready');
  } else {
    logger.warn(fields, 'rpc failed');
  }
}

/** What a client is told: the error's message (a full disk said plainly), at most 2 KiB. */
export const MAX_DETAILS = 2048;

function messageOf(err: unknown): string {
  let text = err instanceof Error ? err.message : String(err);
  const system = systemErrorIn(err);
  const plain = system && errorKind(err) !== 'Internal' ? describeSystemError(system) : undefined;
  if (plain && !(err instanceof CriError && err.kind !== 'Internal')) text = `${text}: ${plain}`;
  if (text.length > MAX_DETAILS) {
    text = `${text.slice(0, MAX_DETAILS - 40)}... (${text.length - MAX_DETAILS + 40} more characters)`;
  }
  return text;
}

/** The code to record for a call whose client has gone: grpc-js already answered it. */
function goneCode(ctx: CallState): status {
  return ctx.deadlinePassed() ? status.DEADLINE_EXCEEDED : status.CANCELLED;
}

/** The status a failed call answers with (and records). */
function failure(err: unknown, call: SurfaceCall, ctx: CallState): { code: status; details: string } {
  const code = call.cancelled ? goneCode(ctx) : grpcStatusFor(err);
  return { code, details: messageOf(err) };
}

export function wrapUnary<Request, Response>(
  method: string,
  handler: UnaryHandler<Request, Response>,
  options: EdgeOptions,
): handleUnaryCall<Request, Response> {
  return (call, callback) => {
    const started = performance.now();
    const ctx = new CallState(method, options.logger, call);
    if (!options.readiness.isReady()) {
      callback({ code: status.UNAVAILABLE, details: NOT_READY_MESSAGE });
      finishCall(options, ctx, { code: status.UNAVAILABLE, durationMs: performance.now() - started });
      return;
    }
    let pending: Promise<Response>;
    // Calls that change state get a helper-time account (polled reads stay as cheap as they were).
    let helpers: HelperTimeAccount | undefined;
    try {
      if (isQuietMethod(method)) pending = Promise.resolve(handler(call.request, ctx));
      else {
        const accounted = withHelperTimeAccount(() => handler(call.request, ctx));
        helpers = accounted.account;
        pending = Promise.resolve(accounted.result);
      }
    } catch (err) {
      pending = Promise.reject(err);
    }
    pending.then(
      (response) => {
        // An answer after the client has gone is dropped by grpc-js; record what the client saw.
        const code = call.cancelled ? goneCode(ctx) : status.OK;
        callback(null, response);
        finishCall(options, ctx, { code, durationMs: performance.now() - started, helpers });
      },
      (err: unknown) => {
        const answer = failure(err, call, ctx);
        callback(answer);
        finishCall(options, ctx, {
          code: answer.code,
          durationMs: performance.now() - started,
          error: err,
          helpers,
        });
      },
    );
  };
}

export function wrapServerStream<Request, Response>(
  method: string,
  handler: ServerStreamHandler<Request, Response>,
  options: EdgeOptions,
): handleServerStreamingCall<Request, Response> {
  return (call: ServerWritableStream<Request, Response>) => {
    const started = performance.now();
    const ctx = new CallState(method, options.logger, call);
    if (!options.readiness.isReady()) {
      call.emit('error', { code: status.UNAVAILABLE, details: NOT_READY_MESSAGE });
      finishCall(options, ctx, { code: status.UNAVAILABLE, durationMs: performance.now() - started });
      return;
    }
    let messagesSent = 0;
    const gone = () => new CancelledError(`the client of ${method} has gone away`);
    const send: SendMessage<Response> = (message) => {
      if (call.cancelled || call.writableEnded) return Promise.reject(gone());
      messagesSent++;
      if (call.write(message)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const onDrain = () => {
          call.off('cancelled', onCancelled);
          resolve();
        };
        const onCancelled = () => {
          call.off('drain', onDrain);
          reject(gone());
        };
        call.once('drain', onDrain);
        call.once('cancelled', onCancelled);
      });
    };
    let pending: Promise<void>;
    try {
      pending = Promise.resolve(handler(call.request, send, ctx));
    } catch (err) {
      pending = Promise.reject(err);
    }
    pending.then(
      () => {
        if (!call.writableEnded) call.end();
        finishCall(options, ctx, {
          code: call.cancelled ? goneCode(ctx) : status.OK,
          durationMs: performance.now() - started,
          messagesSent,
        });
      },
      (err: unknown) => {
        const answer = failure(err, call, ctx);
        // grpc-js turns an 'error' event on a server stream into the call's final status.
        if (!call.writableEnded) call.emit('error', answer);
        finishCall(options, ctx, {
          code: answer.code,
          durationMs: performance.now() - started,
          error: err,
          messagesSent,
        });
      },
    );
  };
}
