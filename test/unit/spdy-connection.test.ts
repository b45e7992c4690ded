import { createServer, type Server, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { SpdyConnection, type SpdyStream } from '../../src/streaming/spdy-connection.js';
import {
  GoAwayStatus,
  RstStatus,
  type SpdyFrame,
  SpdyFrameEncoder,
  SpdyFrameParser,
} from '../../src/streaming/spdy-frames.js';

/** A SPDY client made of our own codec, talking to a SpdyConnection over loopback TCP. */
interface Harness {
  client: Socket;
  send(frame: SpdyFrame): void;
  sendRaw(bytes: Buffer): void;
  frames: SpdyFrame[];
  next(match: (f: SpdyFrame) => boolean): Promise<SpdyFrame>;
  streams: SpdyStream[];
  connection: Promise<SpdyConnection>;
  clientClosed: Promise<void>;
}

let server: Server | undefined;
afterEach(() => {
  server?.close();
  server = undefined;
});

async function connect(options: { maxConcurrentStreams?: number } = {}): Promise<Harness> {
  const streams: SpdyStream[] = [];
  let resolveConnection!: (c: SpdyConnection) => void;
  const connection = new Promise<SpdyConnection>((r) => {
    resolveConnection = r;
  });
  server = createServer((socket) => {
    resolveConnection(
      new SpdyConnection(socket, { logger: silentLogger(), onStream: (s) => streams.push(s), ...options }),
    );
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const client = new Socket();
  await new Promise<void>((r) => client.connect(port, '127.0.0.1', r));
  const encoder = new SpdyFrameEncoder();
  const frames: SpdyFrame[] = [];
  const waiters: { match: (f: SpdyFrame) => boolean; resolve: (f: SpdyFrame) => void }[] = [];
  const parser = new SpdyFrameParser(
    (frame) => {
      frames.push(frame);
      for (const w of [...waiters]) {
        if (w.match(frame)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(frame);
        }
      }
    },
    (error) => {
      throw error;
    },
  );
  client.on('data', (chunk: Buffer) => parser.push(chunk));
  const clientClosed = new Promise<void>((r) => client.once('close', () => r()));
  return {
    client,
    frames,
    streams,
    connection,
    clientClosed,
    send: (frame) => client.write(encoder.encode(frame)),
    sendRaw: (bytes) => client.write(bytes),
    next: (match) =>
      new Promise((resolve) => {
        const found = frames.find(match);
        if (found) resolve(found);
        else waiters.push({ match, resolve });
      }),
  };
}

const syn = (streamId: number, headers: Record<string, string[]> = {}, fin = false): SpdyFrame => ({
  type: 'syn_stream',
  streamId,
  associatedStreamId: 0,
  priority: 0,
  fin,
  unidirectional: false,
  headers,
});

describe('SpdyConnection', () => {
  it('replies to every SYN_STREAM and carries data with FIN both ways', async () => {
    const h = await connect();
    h.send(syn(1, { streamtype: ['stdin'] }));
    h.send(syn(3, { streamtype: ['stdout'] }));
    await h.next((f) => f.type === 'syn_reply' && f.streamId === 3);
    expect(
      h.frames.filter((f) => f.type === 'syn_reply').map((f) => (f as { streamId: number }).streamId),
    ).toEqual([1, 3]);
    const [stdin, stdout] = h.streams;
    expect(stdin!.header('StreamType')).toBe('stdin');

    const received: Buffer[] = [];
    stdin!.on('data', (c: Buffer) => received.push(c));
    const ended = new Promise((r) => stdin!.once('end', r));
    h.send({ type: 'data', streamId: 1, fin: false, data: Buffer.from('abc') });
    h.send({ type: 'data', streamId: 1, fin: true, data: Buffer.from('def') });
    await ended;
    expect(Buffer.concat(received).toString()).toBe('abcdef');

    // 200 KiB goes out in several frames, then FIN; flow-control windows are not waited for.
    stdout!.end(Buffer.alloc(200 * 1024, 7));
    await h.next((f) => f.type === 'data' && f.streamId === 3 && f.fin);
    const data = h.frames.filter(
      (f): f is Extract<SpdyFrame, { type: 'data' }> => f.type === 'data' && f.streamId === 3,
    );
    expect(data.length).toBeGreaterThan(1);
    expect(Buffer.concat(data.map((f) => f.data))).toEqual(Buffer.alloc(200 * 1024, 7));
    h.client.destroy();
  });

  it('echoes client pings, ignores WINDOW_UPDATE and SETTINGS, and resets a stream on request', async () => {
    const h = await connect();
    h.send({ type: 'settings', clear: false, entries: [{ id: 7, flags: 0, value: 1 }] });
    h.send({ type: 'window_update', streamId: 1, delta: 10 });
    h.send({ type: 'ping', id: 5 });
    expect(await h.next((f) => f.type === 'ping')).toEqual({ type: 'ping', id: 5 });
    h.send(syn(1));
    await h.next((f) => f.type === 'syn_reply');
    const closed = new Promise((r) => h.streams[0]!.once('close', r));
    h.send({ type: 'rst_stream', streamId: 1, status: RstStatus.Cancel });
    await closed;
    expect(h.streams[0]!.resetByPeer).toBe(true);
    const connection = await h.connection;
    expect(connection.streamCount).toBe(0);
    h.client.destroy();
  });

  it('refuses reused or even stream ids and streams over the cap', async () => {
    const h = await connect({ maxConcurrentStreams: 1 });
    h.send(syn(3));
    h.send(syn(1));
    h.send(syn(4));
    h.send(syn(5));
    await h.next((f) => f.type === 'rst_stream' && f.streamId === 5);
    const resets = h.frames.filter((f) => f.type === 'rst_stream') as { streamId: number; status: number }[];
    expect(resets).toEqual([
      { type: 'rst_stream', streamId: 1, status: RstStatus.ProtocolError },
      { type: 'rst_stream', streamId: 4, status: RstStatus.ProtocolError },
      { type: 'rst_stream', streamId: 5, status: RstStatus.RefusedStream },
    ]);
    h.client.destroy();
  });

  it('answers garbage with GOAWAY(PROTOCOL_ERROR), resets open streams and closes', async () => {
    const h = await connect();
    h.send(syn(1));
    await h.next((f) => f.type === 'syn_reply');
    h.sendRaw(Buffer.from([0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]));
    const goaway = await h.next((f) => f.type === 'goaway');
    expect(goaway).toEqual({ type: 'goaway', lastGoodStreamId: 1, status: GoAwayStatus.ProtocolError });
    await h.clientClosed;
    const connection = await h.connection;
    await connection.closed$;
    expect(connection.isClosed).toBe(true);
    expect(h.streams[0]!.destroyed).toBe(true);
  });
});
