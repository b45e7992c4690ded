/**
 * One connected NRI plugin: the multiplexed socket, our ttrpc client on connection 1 (we
 * call the plugin's Plugin service) and our ttrpc server on connection 2 (the plugin calls
 * RegisterPlugin and UpdateContainers). Registration state and the event subscription live
 * here; what registration and events mean is the adapter's business.
 *
 *   connected ──RegisterPlugin──▶ registered ──Configure, Synchronize──▶ ready
 *        │                            │                                   │
 *        └────────────────────────────┴──── error, timeout, EOF ──────────┴──▶ closed
 */
import type { Socket } from 'node:net';
import { eventBit, PLUGIN_SERVICE, RUNTIME_SERVICE } from './api.js';
import { NriMux, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN } from './mux.js';
import { decodeMessage, encodeMessage, type MessageSchema, ProtobufDecodeError } from './protobuf.js';
import {
  StatusCode,
  TtrpcClient,
  TtrpcClosedError,
  TtrpcFrameParser,
  type TtrpcHandler,
  TtrpcProtocolError,
  TtrpcServer,
} from './ttrpc.js';

export type PluginState = 'connected' | 'registered' | 'ready' | 'closed';

/** The plugin answered with something that is not a valid message: it is disconnected. */
export class PluginProtocolError extends TtrpcProtocolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(StatusCode.Internal, message, options);
    this.name = 'PluginProtocolError';
  }
}

/** Handlers of the Runtime service for one plugin connection. */
export interface RuntimeServiceHandlers {
  registerPlugin(plugin: NriPlugin, payload: Uint8Array): Promise<Uint8Array>;
  updateContainers(plugin: NriPlugin, payload: Uint8Array): Promise<Uint8Array>;
}

let nextConnectionNumber = 1;

export class NriPlugin {
  state: PluginState = 'connected';
  name = '';
  index = '';
  nriVersion = '';
  /** Event subscription mask (bit event-1 per event), set by Configure. */
  events = 0;
  readonly connectionNumber = nextConnectionNumber++;
  closeReason: Error | undefined;

  private readonly mux: NriMux;
  private readonly client: TtrpcClient;
  private readonly server: TtrpcServer;
  private readonly closeListeners: ((reason: Error) => void)[] = [];

  constructor(
    socket: Socket,
    handlers: RuntimeServiceHandlers,
    private readonly log: (level: 'debug' | 'warn', message: string) => void,
  ) {
    this.mux = new NriMux(socket, (reason) => this.onMuxClosed(reason));
    this.client = new TtrpcClient(
      (frame) => this.mux.send(PLUGIN_SERVICE_CONN, frame),
      (what) => this.log('debug', `${this.id}: ${what}`),
    );
    const serverHandlers = new Map<string, TtrpcHandler>([
      [`${RUNTIME_SERVICE}/RegisterPlugin`, (payload) => handlers.registerPlugin(this, payload)],
      [`${RUNTIME_SERVICE}/UpdateContainers`, (payload) => handlers.updateContainers(this, payload)],
    ]);
    this.server = new TtrpcServer(
      (frame) => {
        if (!this.mux.isClosed) this.mux.send(RUNTIME_SERVICE_CONN, frame);
      },
      serverHandlers,
      (what, err) =>
        this.log('debug', `${this.id}: ${what} failed: ${(err as Error)?.message ?? String(err)}`),
    );
    const clientParser = new TtrpcFrameParser((event) => this.client.onParserEvent(event));
    const serverParser = new TtrpcFrameParser((event) => this.server.onParserEvent(event));
    this.mux.open(PLUGIN_SERVICE_CONN, (data) => clientParser.push(data));
    this.mux.open(RUNTIME_SERVICE_CONN, (data) => serverParser.push(data));
  }

  /** "00-name" once registered, "plugin connection #N" before. */
  get id(): string {
    return this.name ? `${this.index}-${this.name}` : `plugin connection #${this.connectionNumber}`;
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  subscribed(event: number): boolean {
    return (this.events & eventBit(event)) !== 0;
  }

  onClose(listener: (reason: Error) => void): void {
    if (this.state === 'closed') listener(this.closeReason!);
    else this.closeListeners.push(listener);
  }

  /**
   * Call a Plugin service method. Rejects with TtrpcError (the plugin answered an error),
   * TtrpcTimeoutError, TtrpcClosedError or PluginProtocolError (undecodable answer).
   */
  async call<Req, Resp>(
    method: string,
    requestSchema: MessageSchema<Req>,
    request: Req,
    responseSchema: MessageSchema<Resp>,
    timeoutMs: number,
  ): Promise<Resp> {
    const payload = await this.client.call(
      PLUGIN_SERVICE,
      method,
      encodeMessage(requestSchema, request),
      timeoutMs,
    );
    try {
      return decodeMessage(responseSchema, payload);
    } catch (err) {
      if (err instanceof ProtobufDecodeError) {
        throw new PluginProtocolError(
          `${this.id} answered ${method} with an undecodable message: ${err.message}`,
          {
            cause: err,
          },
        );
      }
      throw err;
    }
  }

  close(reason: Error): void {
    this.mux.close(reason);
  }

  private onMuxClosed(reason: Error): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.closeReason = reason;
    this.client.close(
      new TtrpcClosedError(`connection to NRI ${this.id} closed: ${reason.message}`, { cause: reason }),
    );
    this.server.close();
    for (const listener of this.closeListeners.splice(0)) listener(reason);
  }
}
