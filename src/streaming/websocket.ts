/**
 * WebSocket transports:
 *   - exec/attach with the channel protocols: every message is one channel byte (0 stdin,
 *     1 stdout, 2 stderr, 3 error, 4 resize) then data. `v5.channel.k8s.io` adds the
 *     CLOSE signal `[255, channel]` (the client half-closing stdin). The base64 variants
 *     send text messages: an ASCII channel digit then base64 data.
 *   - port-forward tunnelled as raw SPDY inside binary messages
 *     (`SPDY/3.1+portforward.k8s.io`): the SPDY connection runs on a message-stream Duplex.
 */
import { PassThrough, Writable } from 'node:stream';
import { createWebSocketStream, type WebSocket } from 'ws';
import type { Logger } from '../log.js';
import {
  REMOTE_COMMAND_V1,
  REMOTE_COMMAND_V4,
  REMOTE_COMMAND_V5,
  type RunSessionOptions,
  runSession,
  type SessionChannels,
  type SessionOutcome,
} from './remote-command.js';
import { SpdyConnection, type SpdyStream } from './spdy-connection.js';
import type { SpdyLimits } from './spdy-frames.js';

export const WS_BASE64_V1 = 'base64.channel.k8s.io';
export const WS_BASE64_V4 = 'v4.base64.channel.k8s.io';
/** Exec/attach subprotocols we accept over WebSocket, best first. */
export const WEBSOCKET_REMOTE_COMMAND_PROTOCOLS = [
  REMOTE_COMMAND_V5,
  REMOTE_COMMAND_V4,
  WS_BASE64_V4,
  REMOTE_COMMAND_V1,
  WS_BASE64_V1,
];
export const WEBSOCKET_SPDY_TUNNEL_PREFIX = 'SPDY/3.1+';

export const Channel = { Stdin: 0, Stdout: 1, Stderr: 2, Error: 3, Resize: 4, Close: 255 } as const;

/** The remote-command protocol a WebSocket subprotocol carries (the status format follows it). */
export function remoteCommandProtocolOf(subprotocol: string): string {
  if (subprotocol === WS_BASE64_V4) return REMOTE_COMMAND_V4;
  if (subprotocol === WS_BASE64_V1 || subprotocol === '') return REMOTE_COMMAND_V1;
  return subprotocol;
}

function isBase64(subprotocol: string): boolean {
  return subprotocol === WS_BASE64_V1 || subprotocol === WS_BASE64_V4;
}

export function encodeChannelMessage(subprotocol: string, channel: number, data: Buffer): Buffer | string {
  if (isBase64(subprotocol)) return String.fromCharCode(0x30 + channel) + data.toString('base64');
  const message = Buffer.allocUnsafe(1 + data.length);
  message[0] = channel;
  data.copy(message, 1);
  return message;
}

export function decodeChannelMessage(
  subprotocol: string,
  raw: Buffer,
  isBinary: boolean,
): { channel: number; data: Buffer } | undefined {
  if (raw.length === 0) return undefined;
  if (isBase64(subprotocol)) {
    if (isBinary) return undefined;
    return { channel: raw[0]! - 0x30, data: Buffer.from(raw.subarray(1).toString('latin1'), 'base64') };
  }
  if (!isBinary) return undefined;
  return { channel: raw[0]!, data: raw.subarray(1) };
}

/** A writable that sends each chunk as one message on `channel`, with the socket's back-pressure. */
class ChannelWriter extends Writable {
  constructor(
    private readonly ws: WebSocket,
    private readonly subprotocol: string,
    private readonly channel: number,
  ) {
    // Above a pipe's 64 KiB reads, so the process's output is paused only when the socket is full.
    super({ highWaterMark: 256 * 1024 });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.ws.readyState !== this.ws.OPEN) {
      callback();
      return;
    }
    // Errors surface as the socket closing; a failed send must not fail the session.
    this.ws.send(encodeChannelMessage(this.subprotocol, this.channel, chunk), () => callback());
  }
}

export interface WebSocketRemoteCommandOptions extends Omit<RunSessionOptions, 'clientGone' | 'protocol'> {
  subprotocol: string;
}

/** Runs an exec/attach session on an accepted WebSocket; resolves when the socket is closed. */
export async function serveRemoteCommandOverWebSocket(
  ws: WebSocket,
  run: WebSocketRemoteCommandOptions,
): Promise<SessionOutcome> {
  const { subprotocol, options, logger } = run;
  const protocol = remoteCommandProtocolOf(subprotocol);
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
  const gone = new AbortController();
  ws.once('close', () => gone.abort());
  ws.on('error', (error) => logger.debug({ err: error }, 'websocket error'));

  const stdin = options.stdin ? new PassThrough() : undefined;
  const resize = options.tty ? new PassThrough() : undefined;
  const channels: SessionChannels = {
    stdin,
    resize,
    stdout: options.stdout ? new ChannelWriter(ws, subprotocol, Channel.Stdout) : undefined,
    stderr: options.stderr ? new ChannelWriter(ws, subprotocol, Channel.Stderr) : undefined,
    writeError(payload) {
      if (payload.length > 0 && ws.readyState === ws.OPEN)
        ws.send(encodeChannelMessage(subprotocol, Channel.Error, payload));
    },
  };
  ws.on('message', (raw: Buffer, isBinary: boolean) => {
    const message = decodeChannelMessage(subprotocol, raw, isBinary);
    if (!message) return;
    if (message.channel === Channel.Close && subprotocol === REMOTE_COMMAND_V5) {
      if (message.data[0] === Channel.Stdin) stdin?.end();
      if (message.data[0] === Channel.Resize) resize?.end();
      return;
    }
    const sink =
      message.channel === Channel.Stdin ? stdin : message.channel === Channel.Resize ? resize : undefined;
    if (sink && !sink.writableEnded && message.data.length > 0) sink.write(message.data);
  });
  // The reference server opens with an empty message on the lowest channel it writes to.
  const first = options.stdout ? Channel.Stdout : options.stderr ? Channel.Stderr : Channel.Error;
  ws.send(encodeChannelMessage(subprotocol, first, Buffer.alloc(0)));

  const outcome = await runSession(channels, { ...run, protocol, clientGone: gone.signal });
  stdin?.destroy();
  resize?.destroy();
  if (outcome.kind !== 'aborted') {
    // Everything sent so far goes out before the close frame; the client reads to EOF.
    await Promise.all(
      [channels.stdout, channels.stderr].map(
        (w) => new Promise<void>((resolve) => (w ? w.end(resolve) : resolve())),
      ),
    );
    ws.close(1000);
    const cap = setTimeout(() => ws.terminate(), 30_000);
    cap.unref();
    await closed;
    clearTimeout(cap);
  }
  return outcome;
}

/**
 * Runs a SPDY connection inside a WebSocket (binary messages carry the raw SPDY bytes).
 * `onStream` receives the client's streams as on a plain SPDY connection.
 */
export function spdyOverWebSocket(
  ws: WebSocket,
  logger: Logger,
  onStream: (stream: SpdyStream) => void,
  limits?: Partial<SpdyLimits>,
): SpdyConnection {
  const transport = createWebSocketStream(ws, { allowHalfOpen: false });
  transport.on('error', (error) => logger.debug({ err: error }, 'websocket tunnel error'));
  return new SpdyConnection(transport, { logger, onStream, limits });
}
