/**
 * Server side of a SPDY/3.1 connection with moby/spdystream's semantics:
 *   - the client opens streams (odd ids, increasing); every accepted SYN_STREAM gets a
 *     SYN_REPLY at once (the Go client waits for it before using the stream);
 *   - DATA with FIN half-closes one direction; a stream is gone once both sides sent FIN
 *     or either side sent RST_STREAM;
 *   - PINGs from the client are echoed; GOAWAY stops new streams;
 *   - flow-control windows are NOT enforced (spdystream never sends WINDOW_UPDATE), so a
 *     slow consumer is handled by pausing the transport instead.
 *
 * The transport is any Duplex: a TCP socket after the HTTP upgrade, or a WebSocket
 * message stream for SPDY-over-WebSocket port forwarding.
 */
import { EventEmitter } from 'node:events';
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { Logger } from '../log.js';
import {
  dataFrameHead,
  GoAwayStatus,
  RstStatus,
  type SpdyFrame,
  SpdyFrameEncoder,
  SpdyFrameParser,
  type SpdyHeaders,
  type SpdyLimits,
  SpdyProtocolError,
} from './spdy-frames.js';

/** Largest DATA payload we send; the Go reader accepts any 24-bit length, 64 KiB keeps latency low. */
const MAX_OUTGOING_DATA = 64 * 1024;
/** Bytes a stream may buffer from the peer before the transport is paused. */
const STREAM_READ_BUFFER = 1 << 20;
/**
 * Bytes a stream takes before write() asks its writer to wait. Above a pipe's or socket's
 * 64 KiB reads, so a writer copying one into a stream is paused only when the transport
 * really is full, not after every chunk (Node's default is 16 KiB).
 */
const STREAM_WRITE_BUFFER = 256 * 1024;

export interface SpdyConnectionOptions {
  logger: Logger;
  limits?: Partial<SpdyLimits>;
  /** Streams open at once before new ones are refused (REFUSED_STREAM). */
  maxConcurrentStreams?: number;
  /** Called for each accepted stream, after its SYN_REPLY was queued. */
  onStream: (stream: SpdyStream) => void;
}

/**
 * One SPDY stream. Readable: the peer's DATA, ending at the peer's FIN. Writable: our
 * DATA, `end()` sends FIN. `reset()` sends RST_STREAM. A peer's RST destroys the stream
 * without an error (listeners see 'close' and `resetByPeer`), so nothing unhandled can
 * crash the daemon.
 */
export class SpdyStream extends Duplex {
  readonly id: number;
  readonly headers: SpdyHeaders;
  resetByPeer = false;
  private sentFin = false;
  private receivedFin = false;
  private sentReset = false;

  constructor(
    private readonly connection: SpdyConnection,
    id: number,
    headers: SpdyHeaders,
    peerFin: boolean,
  ) {
    super({
      allowHalfOpen: true,
      readableHighWaterMark: STREAM_READ_BUFFER,
      writableHighWaterMark: STREAM_WRITE_BUFFER,
    });
    this.id = id;
    this.headers = headers;
    if (peerFin) this.onPeerFin();
  }

  /** First value of a header, by lowercase name. */
  header(name: string): string | undefined {
    return this.headers[name.toLowerCase()]?.[0];
  }

  get finished(): boolean {
    return (this.sentFin && this.receivedFin) || this.sentReset || this.resetByPeer;
  }

  /** Aborts the stream: RST_STREAM to the peer, local side destroyed. */
  reset(status: number = RstStatus.Cancel): void {
    if (!this.finished) {
      this.sentReset = true;
      this.connection.sendFrame({ type: 'rst_stream', streamId: this.id, status });
    }
    this.destroy();
  }

  override _read(): void {
    this.connection.resumeFor(this.id);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.sentReset || this.resetByPeer || this.connection.isClosed) {
      callback();
      return;
    }
    this.connection.sendData(this.id, chunk);
    this.connection.whenWritable(callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (!this.sentReset && !this.resetByPeer && !this.sentFin) {
      this.sentFin = true;
      this.connection.sendFrame({ type: 'data', streamId: this.id, fin: true, data: Buffer.alloc(0) });
    }
    this.connection.streamMaybeDone(this);
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // Going away without a clean FIN both ways: tell the peer rather than leave it waiting.
    if (!this.finished && !this.connection.isClosed) {
      this.sentReset = true;
      this.connection.sendFrame({ type: 'rst_stream', streamId: this.id, status: RstStatus.Cancel });
    }
    this.connection.forget(this);
    callback(error);
  }

  /** @internal */
  onPeerData(data: Buffer): void {
    if (this.receivedFin) {
      this.reset(RstStatus.StreamAlreadyClosed);
      return;
    }
    if (data.length > 0 && !this.push(data)) this.connection.pauseFor(this.id);
  }

  /** @internal */
  onPeerFin(): void {
    if (this.receivedFin) return;
    this.receivedFin = true;
    this.push(null);
    this.connection.streamMaybeDone(this);
  }

  /** @internal */
  onPeerReset(): void {
    this.resetByPeer = true;
    this.emit('reset');
    this.destroy();
  }
}

export class SpdyConnection extends EventEmitter {
  private readonly streams = new Map<number, SpdyStream>();
  private readonly encoder = new SpdyFrameEncoder();
  private readonly parser: SpdyFrameParser;
  private readonly pausedBy = new Set<number>();
  private readonly logger: Logger;
  private readonly maxConcurrentStreams: number;
  /** The transport is a socket: a DATA frame's head and payload are written without a copy. */
  private readonly gatheredWrites: boolean;
  private lastPeerStreamId = 0;
  private goneAway = false;
  private closed = false;
  private readonly closedPromise: Promise<void>;
  private resolveClosed!: () => void;

  constructor(
    private readonly transport: Duplex,
    private readonly options: SpdyConnectionOptions,
  ) {
    super();
    this.logger = options.logger;
    this.maxConcurrentStreams = options.maxConcurrentStreams ?? 2048;
    this.gatheredWrites = transport instanceof Socket;
    this.closedPromise = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    this.parser = new SpdyFrameParser(
      (frame) => this.onFrame(frame),
      (error) => this.onProtocolError(error),
      options.limits,
    );
    transport.on('data', (chunk: Buffer) => this.parser.push(chunk));
    transport.on('end', () => this.onTransportGone());
    transport.on('close', () => this.onTransportGone());
    transport.on('error', (error) => {
      this.logger.debug({ err: error }, 'SPDY transport error');
      this.onTransportGone();
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Resolves once the transport is gone (the client closed it, or we did). */
  get closed$(): Promise<void> {
    return this.closedPromise;
  }

  get streamCount(): number {
    return this.streams.size;
  }

  /** Sends GOAWAY and closes the transport once written. */
  close(status: number = GoAwayStatus.Ok): void {
    if (this.closed) return;
    this.goAway(status);
    this.transport.end();
    // A peer that never reads would keep the socket forever; the write side is done.
    const timer = setTimeout(() => this.transport.destroy(), 5_000);
    timer.unref();
    this.closedPromise.finally(() => clearTimeout(timer));
  }

  /** Drops the transport at once, resetting nothing (the peer sees the TCP close). */
  destroy(): void {
    this.transport.destroy();
    this.onTransportGone();
  }

  goAway(status: number = GoAwayStatus.Ok): void {
    if (this.closed || this.goneAway) return;
    this.goneAway = true;
    this.sendFrame({ type: 'goaway', lastGoodStreamId: this.lastPeerStreamId, status });
  }

  /** @internal */
  sendFrame(frame: SpdyFrame): void {
    if (this.closed || this.transport.destroyed || this.transport.writableEnded) return;
    this.transport.write(this.encoder.encode(frame));
  }

  /**
   * @internal DATA frames of at most MAX_OUTGOING_DATA bytes carrying `data`. On a socket each
   * frame's head and payload go out as separate buffers of one gathered write (writev), so
   * the payload is never copied; other transports (a WebSocket tunnel, where every write is a
   * message) get whole frames.
   */
  sendData(streamId: number, data: Buffer): void {
    if (this.closed || this.transport.destroyed || this.transport.writableEnded) return;
    if (!this.gatheredWrites) {
      for (let offset = 0; offset < data.length; offset += MAX_OUTGOING_DATA) {
        const piece = data.subarray(offset, offset + MAX_OUTGOING_DATA);
        this.transport.write(this.encoder.encode({ type: 'data', streamId, fin: false, data: piece }));
      }
      return;
    }
    this.transport.cork();
    for (let offset = 0; offset < data.length; offset += MAX_OUTGOING_DATA) {
      const piece = data.subarray(offset, offset + MAX_OUTGOING_DATA);
      this.transport.write(dataFrameHead(streamId, false, piece.length));
      this.transport.write(piece);
    }
    this.transport.uncork();
  }

  /** @internal Calls back when the transport has room (back-pressure for stream writes). */
  whenWritable(callback: () => void): void {
    if (this.closed || !this.transport.writableNeedDrain) {
      callback();
      return;
    }
    const done = (): void => {
      this.transport.off('drain', done);
      this.off('closed', done);
      callback();
    };
    this.transport.on('drain', done);
    this.on('closed', done);
  }

  /** @internal */
  pauseFor(streamId: number): void {
    this.pausedBy.add(streamId);
    this.transport.pause();
  }

  /** @internal */
  resumeFor(streamId: number): void {
    if (this.pausedBy.delete(streamId) && this.pausedBy.size === 0 && !this.closed) this.transport.resume();
  }

  /** @internal */
  streamMaybeDone(stream: SpdyStream): void {
    if (stream.finished) this.forget(stream);
  }

  /** @internal */
  forget(stream: SpdyStream): void {
    if (this.streams.get(stream.id) === stream) this.streams.delete(stream.id);
    this.resumeFor(stream.id);
  }

  private onFrame(frame: SpdyFrame): void {
    switch (frame.type) {
      case 'syn_stream':
        this.onSynStream(frame);
        return;
      case 'data': {
        const stream = this.streams.get(frame.streamId);
        if (!stream) {
          // Data for a stream we already reset races with the reset; only unknown ids are an error.
          if (frame.streamId > this.lastPeerStreamId) {
            this.sendFrame({ type: 'rst_stream', streamId: frame.streamId, status: RstStatus.InvalidStream });
          }
          return;
        }
        stream.onPeerData(frame.data);
        if (frame.fin) stream.onPeerFin();
        return;
      }
      case 'headers': {
        const stream = this.streams.get(frame.streamId);
        if (stream && frame.fin) stream.onPeerFin();
        return;
      }
      case 'rst_stream':
        this.streams.get(frame.streamId)?.onPeerReset();
        return;
      case 'ping':
        // Our own pings would be even; echo the client's (odd) ones.
        if (frame.id % 2 === 1) this.sendFrame(frame);
        return;
      case 'goaway':
        this.goneAway = true;
        this.emit('goaway', frame.status);
        if (this.streams.size === 0) this.close();
        return;
      case 'syn_reply':
        // We never open streams, so a reply cannot refer to one of ours.
        this.onProtocolError(new SpdyProtocolError('SYN_REPLY for a stream the server never opened'));
        return;
      case 'settings':
      case 'window_update':
        // No flow control to enforce and no settings we act on.
        return;
    }
  }

  private onSynStream(frame: Extract<SpdyFrame, { type: 'syn_stream' }>): void {
    const id = frame.streamId;
    if (id % 2 === 0 || id <= this.lastPeerStreamId) {
      this.sendFrame({ type: 'rst_stream', streamId: id, status: RstStatus.ProtocolError });
      return;
    }
    this.lastPeerStreamId = id;
    if (this.goneAway || this.streams.size >= this.maxConcurrentStreams) {
      this.sendFrame({ type: 'rst_stream', streamId: id, status: RstStatus.RefusedStream });
      return;
    }
    const stream = new SpdyStream(this, id, frame.headers, false);
    this.streams.set(id, stream);
    this.sendFrame({ type: 'syn_reply', streamId: id, fin: false, headers: {} });
    if (frame.fin || frame.unidirectional) stream.onPeerFin();
    try {
      this.options.onStream(stream);
    } catch (error) {
      this.logger.warn({ err: error, streamId: id }, 'stream handler failed; resetting the stream');
      stream.reset(RstStatus.InternalError);
    }
  }

  private onProtocolError(error: SpdyProtocolError): void {
    this.logger.info({ err: error }, 'SPDY protocol error from client; closing the connection');
    this.emit('protocolError', error);
    this.goAway(error.goAwayStatus);
    for (const stream of [...this.streams.values()]) stream.reset(RstStatus.ProtocolError);
    this.close(error.goAwayStatus);
  }

  private onTransportGone(): void {
    if (this.closed) return;
    this.closed = true;
    for (const stream of [...this.streams.values()]) stream.destroy();
    this.streams.clear();
    this.pausedBy.clear();
    if (!this.transport.destroyed) this.transport.destroy();
    this.emit('closed');
    this.resolveClosed();
  }
}
