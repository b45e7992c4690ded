/**
 * The NRI connection multiplexer (github.com/containerd/nri pkg/net/multiplex; facts only).
 * One plugin socket carries several logical byte streams, each frame being
 *
 *   | connection id (32, BE) | payload length (32, BE) | payload |
 *
 * Connection 1 carries the Plugin service (the plugin serves, the runtime calls) and
 * connection 2 the Runtime service (the runtime serves RegisterPlugin/UpdateContainers, the
 * plugin calls); 0 is reserved. Frames for a connection nobody opened are dropped, as the
 * Go side does. A payload is at most 10 + 4 MiB (one whole ttrpc message).
 *
 * How we cut a ttrpc message into frames matters to the Go reader: its multiplexed
 * connection hands out one frame per Read and fails a Read whose buffer is smaller than the
 * frame, and ttrpc reads through a 4096-byte bufio.Reader (straight into the message buffer
 * once 4096 or more bytes of the message are still missing). So a message goes out as a
 * first frame of at most 4096 bytes and, when longer, one frame with the rest: every Read
 * then has room for the frame it gets, and no message takes more than two slots of the Go
 * side's 256-frame queue.
 */
import type { Socket } from 'node:net';

export const MUX_HEADER_LENGTH = 8;
export const MUX_MAX_PAYLOAD = 10 + (4 << 20);
const GO_BUFIO_SIZE = 4096;

export const PLUGIN_SERVICE_CONN = 1;
export const RUNTIME_SERVICE_CONN = 2;

/** Output queued beyond this (a peer that stopped reading) closes the connection. */
const MAX_QUEUED_OUTPUT = 16 << 20;

export class MuxProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MuxProtocolError';
  }
}

/** Incremental demultiplexer: feeds payloads to `onPayload`; reports the first violation once. */
export class MuxFrameParser {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failed = false;

  constructor(
    private readonly onPayload: (connId: number, payload: Buffer) => void,
    private readonly onError: (err: MuxProtocolError) => void,
  ) {}

  push(chunk: Buffer): void {
    if (this.failed) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (!this.failed && this.buffered >= MUX_HEADER_LENGTH) {
      const head = this.contiguous(MUX_HEADER_LENGTH);
      const connId = head.readUInt32BE(0);
      const length = head.readUInt32BE(4);
      if (length > MUX_MAX_PAYLOAD) {
        this.failed = true;
        this.chunks = [];
        this.buffered = 0;
        this.onError(
          new MuxProtocolError(
            `multiplexed frame of ${length} bytes for connection ${connId} exceeds the ${MUX_MAX_PAYLOAD}-byte maximum`,
          ),
        );
        return;
      }
      if (this.buffered < MUX_HEADER_LENGTH + length) return;
      const frame = this.take(MUX_HEADER_LENGTH + length);
      this.onPayload(connId, Buffer.from(frame.subarray(MUX_HEADER_LENGTH)));
    }
  }

  private contiguous(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    return this.chunks[0]!;
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return all.subarray(0, n);
  }
}

/** Frame one ttrpc message (header included) for connection `connId`, cut as described above. */
export function encodeMuxMessage(connId: number, message: Buffer): Buffer {
  const pieces =
    message.length <= GO_BUFIO_SIZE
      ? [message]
      : [message.subarray(0, GO_BUFIO_SIZE), message.subarray(GO_BUFIO_SIZE)];
  const out = Buffer.allocUnsafe(pieces.length * MUX_HEADER_LENGTH + message.length);
  let offset = 0;
  for (const piece of pieces) {
    out.writeUInt32BE(connId, offset);
    out.writeUInt32BE(piece.length, offset + 4);
    piece.copy(out, offset + MUX_HEADER_LENGTH);
    offset += MUX_HEADER_LENGTH + piece.length;
  }
  return out;
}

/**
 * A multiplexed socket: `open(id, onData)` subscribes to one logical connection's bytes,
 * `send(id, message)` writes one whole ttrpc message on it. `onClose` fires once, with the
 * reason, when the socket ends, errs, violates the framing or is closed by us.
 */
export class NriMux {
  private readonly receivers = new Map<number, (data: Buffer) => void>();
  private readonly parser: MuxFrameParser;
  private closed = false;

  constructor(
    private readonly socket: Socket,
    private readonly onClose: (reason: Error) => void,
  ) {
    this.parser = new MuxFrameParser(
      (connId, payload) => this.receivers.get(connId)?.(payload),
      (err) => this.close(err),
    );
    socket.on('data', (chunk: Buffer) => this.parser.push(chunk));
    socket.on('error', (err) => this.close(err));
    socket.on('end', () => this.close(new Error('plugin closed the connection')));
    socket.on('close', () => this.close(new Error('connection closed')));
  }

  open(connId: number, onData: (data: Buffer) => void): void {
    if (connId === 0) throw new Error('mux connection id 0 is reserved');
    this.receivers.set(connId, onData);
  }

  send(connId: number, message: Buffer): void {
    if (this.closed) throw new Error('connection is closed');
    if (this.socket.writableLength > MAX_QUEUED_OUTPUT) {
      const err = new MuxProtocolError(
        `more than ${MAX_QUEUED_OUTPUT} bytes queued for a plugin that does not read; disconnecting it`,
      );
      this.close(err);
      throw err;
    }
    this.socket.write(encodeMuxMessage(connId, message));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(reason: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.receivers.clear();
    this.socket.destroy();
    this.onClose(reason);
  }
}
