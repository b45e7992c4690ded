/**
 * ttrpc framing, the unary client and server, and the NRI multiplexer, including the
 * malformed input a plugin could send: oversized, truncated and unknown frames, bad stream
 * ids, garbage payloads. None of it may throw out of the parsers or endpoints.
 */
import { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import {
  encodeMuxMessage,
  MUX_MAX_PAYLOAD,
  MuxFrameParser,
  MuxProtocolError,
  NriMux,
} from '../../src/nri/mux.js';
import { decodeMessage, encodeMessage } from '../../src/nri/protobuf.js';
import {
  encodeTtrpcFrame,
  Flag,
  MessageType,
  StatusCode,
  TTRPC_MAX_DATA_LENGTH,
  TtrpcClient,
  TtrpcClosedError,
  TtrpcError,
  TtrpcFrameParser,
  type TtrpcHandler,
  type TtrpcParserEvent,
  TtrpcProtocolError,
  TtrpcRequest,
  TtrpcResponse,
  TtrpcServer,
  TtrpcTimeoutError,
} from '../../src/nri/ttrpc.js';

function parseAll(chunks: Buffer[]): TtrpcParserEvent[] {
  const events: TtrpcParserEvent[] = [];
  const parser = new TtrpcFrameParser((e) => events.push(e));
  for (const chunk of chunks) parser.push(chunk);
  return events;
}

function header(length: number, streamId: number, type: number, flags = 0): Buffer {
  const h = Buffer.alloc(10);
  h.writeUInt32BE(length, 0);
  h.writeUInt32BE(streamId, 4);
  h.writeUInt8(type, 8);
  h.writeUInt8(flags, 9);
  return h;
}

describe('ttrpc frame parser', () => {
  it('writes the 10-byte header: length, stream id, type, flags (big-endian)', () => {
    const frame = encodeTtrpcFrame(3, MessageType.Request, 0, Buffer.from('abc'));
    expect([...frame]).toEqual([0, 0, 0, 3, 0, 0, 0, 3, 1, 0, 0x61, 0x62, 0x63]);
  });

  it('parses frames split at every byte and several frames in one chunk', () => {
    const a = encodeTtrpcFrame(1, MessageType.Request, 0, Buffer.from('first'));
    const b = encodeTtrpcFrame(3, MessageType.Response, Flag.RemoteClosed, Buffer.alloc(0));
    const all = Buffer.concat([a, b]);
    const byByte = parseAll([...all].map((x) => Buffer.from([x])));
    const whole = parseAll([all]);
    for (const events of [byByte, whole]) {
      expect(events).toEqual([
        { kind: 'frame', streamId: 1, type: 1, flags: 0, data: Buffer.from('first') },
        { kind: 'frame', streamId: 3, type: 2, flags: 1, data: Buffer.alloc(0) },
      ]);
    }
  });

  it('skips an oversized frame without buffering it, reports it, and goes on', () => {
    const oversized = TTRPC_MAX_DATA_LENGTH + 1;
    const events = parseAll([
      header(oversized, 5, MessageType.Request),
      Buffer.alloc(1 << 20),
      Buffer.alloc(oversized - (1 << 20)),
      encodeTtrpcFrame(7, MessageType.Request, 0, Buffer.from('next')),
    ]);
    expect(events).toEqual([
      { kind: 'oversized', streamId: 5, type: 1, length: oversized },
      { kind: 'frame', streamId: 7, type: 1, flags: 0, data: Buffer.from('next') },
    ]);
  });

  it('waits for the rest of a truncated frame', () => {
    const frame = encodeTtrpcFrame(1, MessageType.Request, 0, Buffer.from('payload'));
    expect(parseAll([frame.subarray(0, 12)])).toEqual([]);
    expect(parseAll([frame.subarray(0, 9)])).toEqual([]);
  });

  it('refuses to encode more than 4 MiB of data', () => {
    expect(() => encodeTtrpcFrame(1, 1, 0, Buffer.alloc(TTRPC_MAX_DATA_LENGTH + 1))).toThrow(TtrpcError);
  });
});

/** A client and a server joined back to back in memory. */
function pair(handlers: Record<string, TtrpcHandler>) {
  const serverFrames: Buffer[] = [];
  let client!: TtrpcClient;
  const toClient = new TtrpcFrameParser((e) => client.onParserEvent(e));
  const server = new TtrpcServer(
    (frame) => {
      serverFrames.push(frame);
      toClient.push(frame);
    },
    new Map(Object.entries(handlers)),
  );
  const toServer = new TtrpcFrameParser((e) => server.onParserEvent(e));
  client = new TtrpcClient((frame) => toServer.push(frame));
  /** What the server answers to raw bytes (as a response list). */
  const rawToServer = (bytes: Buffer): TtrpcResponse[] => {
    const before = serverFrames.length;
    toServer.push(bytes);
    return serverFrames.slice(before).map((f) => decodeMessage(TtrpcResponse, f.subarray(10)));
  };
  return { client, server, rawToServer, toServer };
}

function request(service: string, method: string, payload = Buffer.alloc(0)): Buffer {
  return Buffer.from(encodeMessage(TtrpcRequest, { service, method, payload }));
}

describe('ttrpc client and server', () => {
  it('makes unary calls with odd, increasing stream ids and passes the timeout', async () => {
    const seen: { timeoutMs: number }[] = [];
    const { client } = pair({
      'svc/Echo': async (payload, context) => {
        seen.push({ timeoutMs: context.timeoutMs });
        return Buffer.concat([Buffer.from(payload), Buffer.from('!')]);
      },
    });
    expect(Buffer.from(await client.call('svc', 'Echo', Buffer.from('a'), 1500))).toEqual(Buffer.from('a!'));
    expect(Buffer.from(await client.call('svc', 'Echo', Buffer.from('b'), 1500))).toEqual(Buffer.from('b!'));
    expect(seen).toEqual([{ timeoutMs: 1500 }, { timeoutMs: 1500 }]);
    expect(client.outstanding).toBe(0);
  });

  it('maps handler errors to statuses: TtrpcError keeps its code, anything else is Unknown', async () => {
    const { client } = pair({
      'svc/Coded': async () => {
        throw new TtrpcError(StatusCode.InvalidArgument, 'bad name');
      },
      'svc/Plain': () => {
        throw new Error('boom');
      },
    });
    await expect(client.call('svc', 'Coded', Buffer.alloc(0), 1000)).rejects.toMatchObject({
      code: StatusCode.InvalidArgument,
      message: 'bad name',
    });
    await expect(client.call('svc', 'Plain', Buffer.alloc(0), 1000)).rejects.toMatchObject({
      code: StatusCode.Unknown,
      message: 'boom',
    });
  });

  it('answers Unimplemented for an unknown method or service', async () => {
    const { client } = pair({ 'svc/Known': async () => Buffer.alloc(0) });
    await expect(client.call('svc', 'Other', Buffer.alloc(0), 1000)).rejects.toMatchObject({
      code: StatusCode.Unimplemented,
      message: 'method Other',
    });
    await expect(client.call('nope', 'Known', Buffer.alloc(0), 1000)).rejects.toMatchObject({
      code: StatusCode.Unimplemented,
      message: 'service nope',
    });
  });

  it('times out a call that gets no answer and ignores the late answer', async () => {
    let release!: () => void;
    const { client } = pair({
      'svc/Slow': () =>
        new Promise((resolve) => {
          release = () => resolve(Buffer.from('late'));
        }),
    });
    await expect(client.call('svc', 'Slow', Buffer.alloc(0), 30)).rejects.toBeInstanceOf(TtrpcTimeoutError);
    release();
    await new Promise((resolve) => setImmediate(resolve));
    expect(client.outstanding).toBe(0);
  });

  it('fails outstanding and later calls when the connection closes', async () => {
    const { client } = pair({ 'svc/Never': () => new Promise(() => {}) });
    const pending = client.call('svc', 'Never', Buffer.alloc(0), 10_000);
    client.close(new TtrpcClosedError('plugin went away'));
    await expect(pending).rejects.toThrow('plugin went away');
    await expect(client.call('svc', 'Never', Buffer.alloc(0), 10_000)).rejects.toBeInstanceOf(
      TtrpcClosedError,
    );
  });

  it('rejects even, reused and decreasing stream ids, and streaming, like the Go server', () => {
    const { rawToServer } = pair({ 'svc/Ok': async () => Buffer.from('ok') });
    const ok = request('svc', 'Ok');
    expect(rawToServer(encodeTtrpcFrame(2, MessageType.Request, 0, ok))[0]?.status).toEqual({
      code: StatusCode.InvalidArgument,
      message: 'StreamID must be odd for client initiated streams',
      details: [],
    });
    expect(rawToServer(encodeTtrpcFrame(5, MessageType.Request, 0, ok))).toEqual([]); // answered asynchronously
    expect(rawToServer(encodeTtrpcFrame(5, MessageType.Request, 0, ok))[0]?.status?.message).toBe(
      'StreamID cannot be re-used and must increment',
    );
    expect(rawToServer(encodeTtrpcFrame(3, MessageType.Request, 0, ok))[0]?.status?.code).toBe(
      StatusCode.InvalidArgument,
    );
    expect(rawToServer(encodeTtrpcFrame(7, MessageType.Data, 0, Buffer.from('x')))[0]?.status?.code).toBe(
      StatusCode.InvalidArgument,
    );
    expect(rawToServer(encodeTtrpcFrame(9, MessageType.Request, Flag.RemoteOpen, ok))[0]?.status?.code).toBe(
      StatusCode.Unimplemented,
    );
  });

  it('ignores unknown message types and answers garbage requests with InvalidArgument', () => {
    const { rawToServer } = pair({ 'svc/Ok': async () => Buffer.from('ok') });
    expect(rawToServer(encodeTtrpcFrame(1, 0x7f, 0, Buffer.from('future')))).toEqual([]);
    const garbage = rawToServer(encodeTtrpcFrame(3, MessageType.Request, 0, Buffer.from([0x0a, 0xff, 0x01])));
    expect(garbage[0]?.status?.code).toBe(StatusCode.InvalidArgument);
    expect(garbage[0]?.status?.message).toMatch(/^unmarshal request error: /);
  });

  it('answers an oversized request with ResourceExhausted on its stream', () => {
    const { rawToServer } = pair({});
    const answers = rawToServer(
      Buffer.concat([
        header(TTRPC_MAX_DATA_LENGTH + 5, 11, MessageType.Request),
        Buffer.alloc(TTRPC_MAX_DATA_LENGTH + 5),
      ]),
    );
    expect(answers[0]?.status?.code).toBe(StatusCode.ResourceExhausted);
  });

  it('rejects a call whose answer is undecodable, misdirected or oversized, as a protocol error', async () => {
    const frames: Buffer[] = [];
    const client = new TtrpcClient((frame) => frames.push(frame));
    const parser = new TtrpcFrameParser((e) => client.onParserEvent(e));
    const a = client.call('s', 'm', Buffer.alloc(0), 1000);
    parser.push(encodeTtrpcFrame(1, MessageType.Response, 0, Buffer.from([0x0a, 0x09])));
    await expect(a).rejects.toBeInstanceOf(TtrpcProtocolError);
    const b = client.call('s', 'm', Buffer.alloc(0), 1000);
    parser.push(encodeTtrpcFrame(3, MessageType.Request, 0, Buffer.alloc(0)));
    await expect(b).rejects.toBeInstanceOf(TtrpcProtocolError);
    const c = client.call('s', 'm', Buffer.alloc(0), 1000);
    parser.push(header(TTRPC_MAX_DATA_LENGTH + 1, 5, MessageType.Response));
    await expect(c).rejects.toMatchObject({ code: StatusCode.ResourceExhausted });
    // Answers on streams nobody waits for are dropped.
    parser.push(encodeTtrpcFrame(99, MessageType.Response, 0, Buffer.alloc(0)));
    expect(client.outstanding).toBe(0);
  });
});

describe('NRI multiplexer', () => {
  it('frames a message as connection id, length, payload; at most 4096 bytes first, then the rest', () => {
    const small = encodeMuxMessage(2, Buffer.from('hello'));
    expect([...small.subarray(0, 8)]).toEqual([0, 0, 0, 2, 0, 0, 0, 5]);
    const big = Buffer.alloc(10_000, 7);
    const framed = encodeMuxMessage(1, big);
    expect(framed.readUInt32BE(0)).toBe(1);
    expect(framed.readUInt32BE(4)).toBe(4096);
    expect(framed.readUInt32BE(8 + 4096)).toBe(1);
    expect(framed.readUInt32BE(8 + 4096 + 4)).toBe(10_000 - 4096);
    expect(framed.length).toBe(10_000 + 16);
  });

  it('demultiplexes any chunking and drops frames for connections nobody opened', () => {
    const got: [number, string][] = [];
    const parser = new MuxFrameParser(
      (id, payload) => got.push([id, payload.toString()]),
      (err) => {
        throw err;
      },
    );
    const bytes = Buffer.concat([
      encodeMuxMessage(1, Buffer.from('one')),
      encodeMuxMessage(7, Buffer.from('seven')),
      encodeMuxMessage(2, Buffer.from('two')),
    ]);
    for (const b of bytes) parser.push(Buffer.from([b]));
    expect(got).toEqual([
      [1, 'one'],
      [7, 'seven'],
      [2, 'two'],
    ]);
  });

  it('reports an oversized frame once and stops', () => {
    const errors: Error[] = [];
    const payloads: number[] = [];
    const parser = new MuxFrameParser(
      (id) => payloads.push(id),
      (err) => errors.push(err),
    );
    const h = Buffer.alloc(8);
    h.writeUInt32BE(1, 0);
    h.writeUInt32BE(MUX_MAX_PAYLOAD + 1, 4);
    parser.push(h);
    parser.push(encodeMuxMessage(1, Buffer.from('after')));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(MuxProtocolError);
    expect(payloads).toEqual([]);
  });

  it('closes the socket once, with the reason, on a framing violation from the peer', async () => {
    const socket = new Socket();
    const reasons: Error[] = [];
    const mux = new NriMux(socket, (reason) => reasons.push(reason));
    const h = Buffer.alloc(8);
    h.writeUInt32BE(2, 0);
    h.writeUInt32BE(0xffffffff, 4);
    socket.emit('data', h);
    socket.emit('close');
    expect(reasons).toHaveLength(1);
    expect(reasons[0]!.message).toMatch(/exceeds the \d+-byte maximum/);
    expect(mux.isClosed).toBe(true);
    expect(() => mux.send(1, Buffer.from('x'))).toThrow('connection is closed');
  });
});
