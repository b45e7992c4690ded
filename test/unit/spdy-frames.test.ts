import { createHash } from 'node:crypto';
import { constants, createDeflate, type Deflate, inflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import {
  decodeHeaderBlock,
  encodeHeaderBlock,
  FrameType,
  HeaderBlockCompressor,
  HeaderBlockDecompressor,
  SPDY3_DICTIONARY,
  type SpdyFrame,
  SpdyFrameEncoder,
  SpdyFrameParser,
  SpdyProtocolError,
} from '../../src/streaming/spdy-frames.js';

const GO_DICTIONARY_SHA256 = '51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02';

/** What a Go client does: one zlib stream with the SPDY dictionary, sync-flushed per block. */
function goLikeCompressor(): { compress(raw: Buffer): Promise<Buffer> } {
  const deflate: Deflate = createDeflate({ dictionary: SPDY3_DICTIONARY });
  return {
    compress: (raw) =>
      new Promise((resolve) => {
        const out: Buffer[] = [];
        const onData = (chunk: Buffer): void => {
          out.push(chunk);
        };
        deflate.on('data', onData);
        deflate.write(raw);
        deflate.flush(constants.Z_SYNC_FLUSH, () => {
          deflate.off('data', onData);
          resolve(Buffer.concat(out));
        });
      }),
  };
}

function controlFrame(type: number, flags: number, payload: Buffer, version = 3): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt16BE(0x8000 | version, 0);
  head.writeUInt16BE(type, 2);
  head.writeUInt32BE((flags << 24) | payload.length, 4);
  return Buffer.concat([head, payload]);
}

function collect(limits = {}): { parser: SpdyFrameParser; frames: SpdyFrame[]; errors: SpdyProtocolError[] } {
  const frames: SpdyFrame[] = [];
  const errors: SpdyProtocolError[] = [];
  const parser = new SpdyFrameParser(
    (f) => frames.push(f),
    (e) => errors.push(e),
    limits,
  );
  return { parser, frames, errors };
}

const SAMPLE_FRAMES: SpdyFrame[] = [
  {
    type: 'syn_stream',
    streamId: 1,
    associatedStreamId: 0,
    priority: 3,
    fin: false,
    unidirectional: false,
    headers: { streamtype: ['error'], port: ['80'], requestid: ['0'] },
  },
  { type: 'syn_reply', streamId: 1, fin: false, headers: {} },
  { type: 'headers', streamId: 1, fin: true, headers: { multi: ['a', 'b'] } },
  { type: 'data', streamId: 1, fin: false, data: Buffer.from('hello') },
  { type: 'data', streamId: 3, fin: true, data: Buffer.alloc(0) },
  { type: 'rst_stream', streamId: 5, status: 5 },
  { type: 'settings', clear: true, entries: [{ id: 7, flags: 1, value: 65536 }] },
  { type: 'ping', id: 1 },
  { type: 'goaway', lastGoodStreamId: 7, status: 0 },
  { type: 'window_update', streamId: 1, delta: 1024 },
];

describe('SPDY/3 dictionary and header compression', () => {
  it('is the 1423-byte SPDY/3 dictionary', () => {
    expect(SPDY3_DICTIONARY.length).toBe(1423);
    expect(SPDY3_DICTIONARY.subarray(0, 11)).toEqual(Buffer.from([0, 0, 0, 7, ...Buffer.from('options')]));
    expect(SPDY3_DICTIONARY.subarray(-6).toString()).toBe('enq=0.');
    // Digest of the dictionary bytes as moby/spdystream v0.5.1 (spdy/dictionary.go) ships them.
    expect(createHash('sha256').update(SPDY3_DICTIONARY).digest('hex')).toBe(GO_DICTIONARY_SHA256);
  });

  it('decompresses a real zlib stream block by block, carrying the context across blocks', async () => {
    const client = goLikeCompressor();
    const decompressor = new HeaderBlockDecompressor(1 << 20);
    const blocks = [
      encodeHeaderBlock({ streamtype: ['error'], 'x-long': ['a'.repeat(40_000)] }),
      // Repeats the first block: compresses to back-references into the earlier block.
      encodeHeaderBlock({ streamtype: ['error'], 'x-long': ['a'.repeat(40_000)] }),
      encodeHeaderBlock({ streamtype: ['stdout'] }),
    ];
    const compressed: Buffer[] = [];
    for (const block of blocks) compressed.push(await client.compress(block));
    expect(compressed[1]!.length).toBeLessThan(200);
    for (let i = 0; i < blocks.length; i++)
      expect(decompressor.decompress(compressed[i]!)).toEqual(blocks[i]);
    // Without the earlier context the same bytes do not decode.
    const fresh = new HeaderBlockDecompressor(1 << 20);
    expect(() => fresh.decompress(compressed[1]!)).toThrow(SpdyProtocolError);
  });

  it('writes blocks any zlib inflater reads with the SPDY dictionary', () => {
    const compressor = new HeaderBlockCompressor();
    const a = encodeHeaderBlock({ streamtype: ['data'] });
    const b = encodeHeaderBlock({ big: ['x'.repeat(70_000)] });
    const stream = Buffer.concat([compressor.compress(a), compressor.compress(b)]);
    const inflated = inflateSync(stream, {
      dictionary: SPDY3_DICTIONARY,
      finishFlush: constants.Z_SYNC_FLUSH,
    });
    expect(inflated).toEqual(Buffer.concat([a, b]));
    // Every block ends with the sync-flush marker so a streaming inflater releases it at once.
    expect(compressor.compress(a).subarray(-4)).toEqual(Buffer.from([0, 0, 0xff, 0xff]));
  });

  it('refuses a decompression bomb and a wrong dictionary', async () => {
    const client = goLikeCompressor();
    const bomb = await client.compress(Buffer.alloc(5 << 20));
    expect(bomb.length).toBeLessThan(20_000);
    expect(() => new HeaderBlockDecompressor(1 << 20).decompress(bomb)).toThrow(/larger than/);
    const other = createDeflate({ dictionary: Buffer.from('not the spdy dictionary') });
    const wrong = await new Promise<Buffer>((resolve) => {
      const out: Buffer[] = [];
      other.on('data', (c: Buffer) => out.push(c));
      other.write(Buffer.from('abc'));
      other.flush(constants.Z_SYNC_FLUSH, () => resolve(Buffer.concat(out)));
    });
    expect(() => new HeaderBlockDecompressor(1 << 20).decompress(wrong)).toThrow(/dictionary/);
  });

  it('decodes header blocks strictly', () => {
    expect(decodeHeaderBlock(encodeHeaderBlock({ a: ['1', '2'] }), 10)).toEqual({ a: ['1', '2'] });
    const tooMany = Buffer.alloc(4);
    tooMany.writeUInt32BE(11);
    expect(() => decodeHeaderBlock(tooMany, 10)).toThrow(/at most 10/);
    expect(() => decodeHeaderBlock(encodeHeaderBlock({ a: ['1'] }).subarray(0, 10), 10)).toThrow(/truncated/);
    const upper = Buffer.concat([
      Buffer.from([0, 0, 0, 1, 0, 0, 0, 1]),
      Buffer.from('A'),
      Buffer.from([0, 0, 0, 0]),
    ]);
    expect(() => decodeHeaderBlock(upper, 10)).toThrow(/lowercase/);
    const huge = Buffer.from([0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff]);
    expect(() => decodeHeaderBlock(huge, 10)).toThrow(/truncated/);
  });
});

describe('SpdyFrameParser', () => {
  it('round-trips every frame type, whole and split at every byte', () => {
    const encoder = new SpdyFrameEncoder();
    const wire = Buffer.concat(SAMPLE_FRAMES.map((f) => encoder.encode(f)));
    const whole = collect();
    whole.parser.push(wire);
    expect(whole.errors).toEqual([]);
    expect(whole.frames).toEqual(SAMPLE_FRAMES);

    // Same encoder output, fed one byte at a time (a fresh parser: the zlib context restarts).
    const bytewise = collect();
    for (let i = 0; i < wire.length; i++) bytewise.parser.push(wire.subarray(i, i + 1));
    expect(bytewise.frames).toEqual(SAMPLE_FRAMES);

    // And at random boundaries.
    let seed = 7;
    const random = collect();
    for (let i = 0; i < wire.length; ) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      const n = 1 + (seed % 23);
      random.parser.push(wire.subarray(i, i + n));
      i += n;
    }
    expect(random.frames).toEqual(SAMPLE_FRAMES);
  });

  it('parses header blocks compressed by a real zlib context', async () => {
    const client = goLikeCompressor();
    const { parser, frames, errors } = collect();
    for (const [id, type] of [
      [1, 'error'],
      [3, 'stdout'],
      [5, 'stderr'],
    ] as const) {
      const fixed = Buffer.alloc(10);
      fixed.writeUInt32BE(id, 0);
      const block = await client.compress(encodeHeaderBlock({ streamtype: [type] }));
      parser.push(controlFrame(FrameType.SynStream, 0, Buffer.concat([fixed, block])));
    }
    expect(errors).toEqual([]);
    expect(
      frames.map((f) => (f.type === 'syn_stream' ? [f.streamId, f.headers.streamtype] : f.type)),
    ).toEqual([
      [1, ['error']],
      [3, ['stdout']],
      [5, ['stderr']],
    ]);
  });

  it('skips unknown control frames', () => {
    const { parser, frames, errors } = collect();
    parser.push(controlFrame(0x77, 0, Buffer.from('whatever')));
    parser.push(new SpdyFrameEncoder().encode({ type: 'ping', id: 3 }));
    expect(errors).toEqual([]);
    expect(frames).toEqual([{ type: 'ping', id: 3 }]);
  });

  const malformed: [string, Buffer, RegExp, object?][] = [
    ['a SPDY/2 frame', controlFrame(FrameType.Ping, 0, Buffer.alloc(4), 2), /version 2/],
    [
      'an oversized data frame',
      Buffer.from([0, 0, 0, 1, 0, 0, 0x10, 0x01]),
      /data frame of 4097 bytes exceeds/,
      { maxDataFrameLength: 4096 },
    ],
    [
      'an oversized control frame',
      controlFrame(FrameType.SynStream, 0, Buffer.alloc(0)).fill(0xff, 5, 8),
      /control frame of 16777215/,
    ],
    [
      'a PING of the wrong length',
      controlFrame(FrameType.Ping, 0, Buffer.alloc(5)),
      /PING frame has length 5/,
    ],
    ['a RST_STREAM on stream 0', controlFrame(FrameType.RstStream, 0, Buffer.alloc(8)), /stream 0/],
    ['a data frame on stream 0', Buffer.from([0, 0, 0, 0, 0, 0, 0, 0]), /stream 0/],
    ['a SETTINGS count that lies', controlFrame(FrameType.Settings, 0, Buffer.from([0, 0, 1, 0])), /count/],
    [
      'a SYN_STREAM with a garbage header block',
      controlFrame(
        FrameType.SynStream,
        0,
        Buffer.concat([Buffer.from([0, 0, 0, 1, 0, 0, 0, 0, 0, 0]), Buffer.from('garbage!')]),
      ),
      /zlib/,
    ],
    [
      'a SYN_STREAM too short for its ids',
      controlFrame(FrameType.SynStream, 0, Buffer.alloc(3)),
      /too short/,
    ],
  ];
  for (const [name, bytes, message, limits] of malformed) {
    it(`reports ${name} as a protocol error without throwing, then stops`, () => {
      const { parser, frames, errors } = collect(limits);
      expect(() => parser.push(bytes)).not.toThrow();
      expect(errors).toHaveLength(1);
      expect(errors[0]).toBeInstanceOf(SpdyProtocolError);
      expect(errors[0]!.message).toMatch(message);
      expect(parser.hasFailed).toBe(true);
      parser.push(new SpdyFrameEncoder().encode({ type: 'ping', id: 1 }));
      expect(frames).toEqual([]);
      expect(errors).toHaveLength(1);
    });
  }

  it('enforces the decompressed header block and header count limits', async () => {
    const bombClient = goLikeCompressor();
    const bomb = collect({ maxHeaderBlockLength: 64 * 1024 });
    const fixed = Buffer.alloc(10);
    fixed.writeUInt32BE(1, 0);
    const big = await bombClient.compress(encodeHeaderBlock({ a: ['x'.repeat(100_000)] }));
    bomb.parser.push(controlFrame(FrameType.SynStream, 0, Buffer.concat([fixed, big])));
    expect(bomb.errors[0]?.message).toMatch(/larger than 65536/);

    const countClient = goLikeCompressor();
    const many: Record<string, string[]> = {};
    for (let i = 0; i < 20; i++) many[`h${i}`] = ['v'];
    const counted = collect({ maxHeaderCount: 10 });
    const block = await countClient.compress(encodeHeaderBlock(many));
    counted.parser.push(controlFrame(FrameType.SynStream, 0, Buffer.concat([fixed, block])));
    expect(counted.errors[0]?.message).toMatch(/20 pairs; at most 10/);
  });
});
