/**
 * SPDY/3.1 framing as moby/spdystream (and so kubelet, crictl and critest) speaks it.
 *
 *   control frame: |1|version(15)=3|type(16)|flags(8)|length(24)|payload
 *   data frame:    |0|stream id(31)|flags(8)|length(24)|payload
 *
 * Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are one zlib stream per direction that
 * starts with the SPDY/3 dictionary and is sync-flushed after every block; inside, an
 * int32 pair count and int32-length-prefixed lowercase names and NUL-joined values.
 *
 * The parser is incremental (any chunking), never throws to its caller and enforces
 * limits: a violation is reported once as a `SpdyProtocolError` and the parser stops,
 * because after a bad frame neither the framing nor the shared zlib context can be trusted.
 */
import { inflateRawSync, constants as zlibConstants } from 'node:zlib';

export const SPDY_VERSION = 3;

export const FrameType = {
  SynStream: 1,
  SynReply: 2,
  RstStream: 3,
  Settings: 4,
  Ping: 6,
  GoAway: 7,
  Headers: 8,
  WindowUpdate: 9,
} as const;

export const FLAG_FIN = 0x01;
export const FLAG_UNIDIRECTIONAL = 0x02;
export const FLAG_CLEAR_SETTINGS = 0x01;

/** RST_STREAM status codes (SPDY/3 §2.4.2). */
export const RstStatus = {
  ProtocolError: 1,
  InvalidStream: 2,
  RefusedStream: 3,
  UnsupportedVersion: 4,
  Cancel: 5,
  InternalError: 6,
  FlowControlError: 7,
  StreamInUse: 8,
  StreamAlreadyClosed: 9,
  FrameTooLarge: 11,
} as const;

/** GOAWAY status codes (SPDY/3 §2.6.6). */
export const GoAwayStatus = { Ok: 0, ProtocolError: 1, InternalError: 2 } as const;

/** Lowercase header name → values (SPDY joins several values of one name with NUL). */
export type SpdyHeaders = Record<string, string[]>;

export type SpdyFrame =
  | { type: 'data'; streamId: number; fin: boolean; data: Buffer }
  | {
      type: 'syn_stream';
      streamId: number;
      associatedStreamId: number;
      priority: number;
      fin: boolean;
      unidirectional: boolean;
      headers: SpdyHeaders;
    }
  | { type: 'syn_reply'; streamId: number; fin: boolean; headers: SpdyHeaders }
  | { type: 'headers'; streamId: number; fin: boolean; headers: SpdyHeaders }
  | { type: 'rst_stream'; streamId: number; status: number }
  | { type: 'settings'; clear: boolean; entries: { id: number; flags: number; value: number }[] }
  | { type: 'ping'; id: number }
  | { type: 'goaway'; lastGoodStreamId: number; status: number }
  | { type: 'window_update'; streamId: number; delta: number };

export interface SpdyLimits {
  /** Largest DATA payload accepted (the 24-bit length field allows 16 MiB - 1). */
  maxDataFrameLength: number;
  /** Largest control frame payload accepted, compressed header block included. */
  maxControlFrameLength: number;
  /** Largest decompressed header block. */
  maxHeaderBlockLength: number;
  /** Most name/value pairs in one header block. */
  maxHeaderCount: number;
}

export const DEFAULT_SPDY_LIMITS: SpdyLimits = {
  maxDataFrameLength: 0xffffff,
  maxControlFrameLength: 1 << 20,
  maxHeaderBlockLength: 1 << 20,
  maxHeaderCount: 1024,
};

/** A peer broke the protocol. `streamId` is set when only one stream is at fault. */
export class SpdyProtocolError extends Error {
  readonly goAwayStatus: number;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SpdyProtocolError';
    this.goAwayStatus = GoAwayStatus.ProtocolError;
  }
}

/**
 * The SPDY/3 header compression dictionary (SPDY/3 §2.6.10.1): length-prefixed words
 * followed by a run of common header text. Built rather than spelled out as 1423 hex bytes.
 */
// biome-ignore format: a word list reads better packed
const DICTIONARY_WORDS = [
  'options', 'head', 'post', 'put', 'delete', 'trace', 'accept', 'accept-charset', 'accept-encoding',
  'accept-language', 'accept-ranges', 'age', 'allow', 'authorization', 'cache-control', 'connection',
  'content-base', 'content-encoding', 'content-language', 'content-length', 'content-location',
  'content-md5', 'content-range', 'content-type', 'date', 'etag', 'expect', 'expires', 'from', 'host',
  'if-match', 'if-modified-since', 'if-none-match', 'if-range', 'if-unmodified-since', 'last-modified',
  'location', 'max-forwards', 'pragma', 'proxy-authenticate', 'proxy-authorization', 'range', 'referer',
  'retry-after', 'server', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'user-agent', 'vary', 'via',
  'warning', 'www-authenticate', 'method', 'get', 'status', '200 OK', 'version', 'HTTP/1.1', 'url',
  'public', 'set-cookie', 'keep-alive', 'origin',
];

const DICTIONARY_TAIL =
  '100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505' +
  '203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized' +
  '403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable' +
  'Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT' +
  'chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,' +
  'text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.';

export const SPDY3_DICTIONARY: Buffer = (() => {
  const parts: Buffer[] = [];
  for (const word of DICTIONARY_WORDS) {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(word.length);
    parts.push(len, Buffer.from(word, 'latin1'));
  }
  parts.push(Buffer.from(DICTIONARY_TAIL, 'latin1'));
  return Buffer.concat(parts);
})();

function adler32(data: Buffer): number {
  let a = 1;
  let b = 0;
  for (const byte of data) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  return ((b << 16) | a) >>> 0;
}

const ZLIB_WINDOW = 32 * 1024;
const SYNC_FLUSH_MARKER = Buffer.from([0x00, 0x00, 0x00, 0xff, 0xff]);

/**
 * Decompresses one direction's header blocks. Node has no public synchronous API for a
 * long-lived inflate context, so the context is carried as deflate's own state allows:
 * every block ends on a byte boundary (sync flush), and a block can only refer back
 * 32 KiB into the uncompressed history, so inflating each block raw with the last 32 KiB
 * of history as the preset dictionary gives exactly what one persistent inflater would.
 */
export class HeaderBlockDecompressor {
  private history: Buffer = SPDY3_DICTIONARY;
  private started = false;
  private broken = false;

  constructor(private readonly maxOutput: number) {}

  decompress(block: Buffer): Buffer {
    if (this.broken) throw new SpdyProtocolError('header compression context is no longer usable');
    let body = block;
    if (!this.started) {
      // zlib header: CMF (deflate, window ≤ 32 KiB), FLG with FDICT, then the dictionary's adler32.
      if (block.length < 6) throw this.fail('header block too short for a zlib header');
      const cmf = block[0]!;
      const flg = block[1]!;
      if ((cmf & 0x0f) !== 8 || cmf >> 4 > 7 || ((cmf << 8) | flg) % 31 !== 0 || (flg & 0x20) === 0) {
        throw this.fail('header block is not a zlib stream with a preset dictionary');
      }
      if (block.readUInt32BE(2) !== adler32(SPDY3_DICTIONARY)) {
        throw this.fail('header block uses a dictionary other than the SPDY/3 one');
      }
      body = block.subarray(6);
      this.started = true;
    }
    let out: Buffer;
    try {
      out = inflateRawSync(body, {
        dictionary: this.history,
        finishFlush: zlibConstants.Z_SYNC_FLUSH,
        maxOutputLength: this.maxOutput,
      });
    } catch (error) {
      throw this.fail(
        (error as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE'
          ? `decompressed header block is larger than ${this.maxOutput} bytes`
          : 'header block does not decompress',
        error,
      );
    }
    const joined = Buffer.concat([this.history, out]);
    this.history = joined.length > ZLIB_WINDOW ? joined.subarray(joined.length - ZLIB_WINDOW) : joined;
    return out;
  }

  private fail(message: string, cause?: unknown): SpdyProtocolError {
    this.broken = true;
    return new SpdyProtocolError(message, { cause });
  }
}

/**
 * Compresses this side's header blocks. Our blocks are a few short headers, so they are
 * sent as deflate "stored" blocks followed by the sync-flush marker: valid zlib that any
 * inflater reads, byte-aligned after every block, and synchronous.
 */
export class HeaderBlockCompressor {
  private started = false;

  compress(raw: Buffer): Buffer {
    const parts: Buffer[] = [];
    if (!this.started) {
      const header = Buffer.alloc(6);
      header[0] = 0x78; // deflate, 32 KiB window
      let flg = 0x20; // FDICT
      flg += 31 - ((0x78 * 256 + flg) % 31);
      header[1] = flg;
      header.writeUInt32BE(adler32(SPDY3_DICTIONARY), 2);
      parts.push(header);
      this.started = true;
    }
    for (let offset = 0; offset < raw.length; offset += 0xffff) {
      const piece = raw.subarray(offset, Math.min(raw.length, offset + 0xffff));
      const blockHeader = Buffer.alloc(5);
      blockHeader[0] = 0; // BFINAL=0, BTYPE=00 (stored)
      blockHeader.writeUInt16LE(piece.length, 1);
      blockHeader.writeUInt16LE(~piece.length & 0xffff, 3);
      parts.push(blockHeader, piece);
    }
    // The empty stored block a sync flush ends with: inflaters (Go's among them) hand out a
    // block's bytes only once they see the next block start.
    parts.push(SYNC_FLUSH_MARKER);
    return Buffer.concat(parts);
  }
}

export function encodeHeaderBlock(headers: SpdyHeaders): Buffer {
  const entries = Object.entries(headers).filter(([, values]) => values.length > 0);
  const parts: Buffer[] = [];
  const count = Buffer.alloc(4);
  count.writeUInt32BE(entries.length);
  parts.push(count);
  for (const [name, values] of entries) {
    for (const bytes of [Buffer.from(name.toLowerCase(), 'utf8'), Buffer.from(values.join('\0'), 'utf8')]) {
      const len = Buffer.alloc(4);
      len.writeUInt32BE(bytes.length);
      parts.push(len, bytes);
    }
  }
  return Buffer.concat(parts);
}

export function decodeHeaderBlock(raw: Buffer, maxCount: number): SpdyHeaders {
  if (raw.length < 4) throw new SpdyProtocolError('header block shorter than its pair count');
  const count = raw.readUInt32BE(0);
  if (count > maxCount) throw new SpdyProtocolError(`header block has ${count} pairs; at most ${maxCount}`);
  const headers: SpdyHeaders = Object.create(null);
  let offset = 4;
  const readString = (): string => {
    if (offset + 4 > raw.length) throw new SpdyProtocolError('header block truncated');
    const len = raw.readUInt32BE(offset);
    offset += 4;
    if (len > raw.length - offset) throw new SpdyProtocolError('header block truncated');
    const value = raw.toString('utf8', offset, offset + len);
    offset += len;
    return value;
  };
  for (let i = 0; i < count; i++) {
    const name = readString();
    const value = readString();
    if (name.length === 0) throw new SpdyProtocolError('header block has an empty name');
    if (name !== name.toLowerCase())
      throw new SpdyProtocolError(`header name ${JSON.stringify(name)} is not lowercase`);
    if (headers[name] !== undefined)
      throw new SpdyProtocolError(`header ${JSON.stringify(name)} appears twice`);
    headers[name] = value.split('\0');
  }
  if (offset !== raw.length) throw new SpdyProtocolError('header block has trailing bytes');
  return headers;
}

function controlFrame(type: number, flags: number, payload: Buffer): Buffer {
  if (payload.length > 0xffffff) throw new RangeError('SPDY control frame payload over 16 MiB');
  const frame = Buffer.allocUnsafe(8 + payload.length);
  frame.writeUInt16BE(0x8000 | SPDY_VERSION, 0);
  frame.writeUInt16BE(type, 2);
  frame.writeUInt32BE(((flags & 0xff) << 24) | payload.length, 4);
  payload.copy(frame, 8);
  return frame;
}

function uint32s(...values: number[]): Buffer {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => {
    buf.writeUInt32BE(v >>> 0, i * 4);
  });
  return buf;
}

/**
 * The 8 bytes in front of a DATA frame's payload, for writers that send the payload as a
 * buffer of its own (a gathered write) instead of copying it behind the head.
 */
export function dataFrameHead(streamId: number, fin: boolean, length: number): Buffer {
  if (length > 0xffffff) throw new RangeError('SPDY data frame payload over 16 MiB');
  const head = Buffer.allocUnsafe(8);
  head.writeUInt32BE(streamId & 0x7fffffff, 0);
  head.writeUInt32BE(((fin ? FLAG_FIN : 0) << 24) | length, 4);
  return head;
}

/** Encodes frames; header blocks go through this direction's single compression context. */
export class SpdyFrameEncoder {
  private readonly compressor = new HeaderBlockCompressor();

  encode(frame: SpdyFrame): Buffer {
    switch (frame.type) {
      case 'data':
        return Buffer.concat([dataFrameHead(frame.streamId, frame.fin, frame.data.length), frame.data]);
      case 'syn_stream': {
        const fixed = Buffer.alloc(10);
        fixed.writeUInt32BE(frame.streamId & 0x7fffffff, 0);
        fixed.writeUInt32BE(frame.associatedStreamId & 0x7fffffff, 4);
        fixed[8] = (frame.priority & 0x07) << 5;
        const flags = (frame.fin ? FLAG_FIN : 0) | (frame.unidirectional ? FLAG_UNIDIRECTIONAL : 0);
        const block = this.compressor.compress(encodeHeaderBlock(frame.headers));
        return controlFrame(FrameType.SynStream, flags, Buffer.concat([fixed, block]));
      }
      case 'syn_reply':
      case 'headers': {
        const block = this.compressor.compress(encodeHeaderBlock(frame.headers));
        const type = frame.type === 'syn_reply' ? FrameType.SynReply : FrameType.Headers;
        return controlFrame(
          type,
          frame.fin ? FLAG_FIN : 0,
          Buffer.concat([uint32s(frame.streamId & 0x7fffffff), block]),
        );
      }
      case 'rst_stream':
        return controlFrame(FrameType.RstStream, 0, uint32s(frame.streamId & 0x7fffffff, frame.status));
      case 'settings': {
        const body = Buffer.alloc(4 + frame.entries.length * 8);
        body.writeUInt32BE(frame.entries.length, 0);
        frame.entries.forEach((entry, i) => {
          body.writeUInt32BE(((entry.flags & 0xff) << 24) | (entry.id & 0xffffff), 4 + i * 8);
          body.writeUInt32BE(entry.value >>> 0, 8 + i * 8);
        });
        return controlFrame(FrameType.Settings, frame.clear ? FLAG_CLEAR_SETTINGS : 0, body);
      }
      case 'ping':
        return controlFrame(FrameType.Ping, 0, uint32s(frame.id));
      case 'goaway':
        return controlFrame(FrameType.GoAway, 0, uint32s(frame.lastGoodStreamId & 0x7fffffff, frame.status));
      case 'window_update':
        return controlFrame(
          FrameType.WindowUpdate,
          0,
          uint32s(frame.streamId & 0x7fffffff, frame.delta & 0x7fffffff),
        );
    }
  }
}

/**
 * Incremental parser for the frames one peer sends. `push` any chunk; complete frames go
 * to `onFrame` in order; the first violation goes to `onError` and the parser stops.
 * Unknown control frame types are skipped, as SPDY/3 asks.
 */
export class SpdyFrameParser {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private failed = false;
  private readonly decompressor: HeaderBlockDecompressor;
  readonly limits: SpdyLimits;

  constructor(
    private readonly onFrame: (frame: SpdyFrame) => void,
    private readonly onError: (error: SpdyProtocolError) => void,
    limits: Partial<SpdyLimits> = {},
  ) {
    this.limits = { ...DEFAULT_SPDY_LIMITS, ...limits };
    this.decompressor = new HeaderBlockDecompressor(this.limits.maxHeaderBlockLength);
  }

  get hasFailed(): boolean {
    return this.failed;
  }

  push(chunk: Buffer): void {
    if (this.failed || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    try {
      this.drain();
    } catch (error) {
      this.failed = true;
      this.chunks.length = 0;
      this.buffered = 0;
      this.onError(
        error instanceof SpdyProtocolError
          ? error
          : new SpdyProtocolError('malformed SPDY frame', { cause: error }),
      );
    }
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    const joined = Buffer.concat(this.chunks);
    this.chunks.length = 0;
    this.chunks.push(joined);
    return joined.subarray(0, n);
  }

  private take(n: number): Buffer {
    const out = this.peek(n);
    const first = this.chunks[0]!;
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return out;
  }

  private drain(): void {
    while (!this.failed && this.buffered >= 8) {
      const head = this.peek(8);
      const word0 = head.readUInt32BE(0);
      const flags = head[4]!;
      const length = head.readUInt32BE(4) & 0xffffff;
      const isControl = (word0 & 0x80000000) !== 0;
      if (isControl) {
        const version = (word0 >>> 16) & 0x7fff;
        if (version !== SPDY_VERSION)
          throw new SpdyProtocolError(`SPDY version ${version} is not supported (only 3)`);
        if (length > this.limits.maxControlFrameLength) {
          throw new SpdyProtocolError(
            `control frame of ${length} bytes exceeds the limit of ${this.limits.maxControlFrameLength}`,
          );
        }
      } else if (length > this.limits.maxDataFrameLength) {
        throw new SpdyProtocolError(
          `data frame of ${length} bytes exceeds the limit of ${this.limits.maxDataFrameLength}`,
        );
      }
      if (this.buffered < 8 + length) return;
      this.take(8);
      // Copy so a frame never pins the (possibly much larger) socket chunk it came in.
      const payload = length === 0 ? Buffer.alloc(0) : Buffer.from(this.take(length));
      if (!isControl) {
        const streamId = word0 & 0x7fffffff;
        if (streamId === 0) throw new SpdyProtocolError('data frame on stream 0');
        this.onFrame({ type: 'data', streamId, fin: (flags & FLAG_FIN) !== 0, data: payload });
        continue;
      }
      const frame = this.parseControl(word0 & 0xffff, flags, payload);
      if (frame) this.onFrame(frame);
    }
  }

  private parseControl(type: number, flags: number, payload: Buffer): SpdyFrame | undefined {
    const need = (n: number, name: string): void => {
      if (payload.length < n)
        throw new SpdyProtocolError(`${name} frame too short (${payload.length} bytes)`);
    };
    const exactly = (n: number, name: string): void => {
      if (payload.length !== n)
        throw new SpdyProtocolError(`${name} frame has length ${payload.length}, not ${n}`);
    };
    const streamIdAt = (offset: number, name: string): number => {
      const id = payload.readUInt32BE(offset) & 0x7fffffff;
      if (id === 0) throw new SpdyProtocolError(`${name} frame on stream 0`);
      return id;
    };
    const headersFrom = (offset: number): SpdyHeaders =>
      decodeHeaderBlock(this.decompressor.decompress(payload.subarray(offset)), this.limits.maxHeaderCount);
    switch (type) {
      case FrameType.SynStream: {
        need(10, 'SYN_STREAM');
        const streamId = streamIdAt(0, 'SYN_STREAM');
        return {
          type: 'syn_stream',
          streamId,
          associatedStreamId: payload.readUInt32BE(4) & 0x7fffffff,
          priority: payload[8]! >> 5,
          fin: (flags & FLAG_FIN) !== 0,
          unidirectional: (flags & FLAG_UNIDIRECTIONAL) !== 0,
          headers: headersFrom(10),
        };
      }
      case FrameType.SynReply:
      case FrameType.Headers: {
        const name = type === FrameType.SynReply ? 'SYN_REPLY' : 'HEADERS';
        need(4, name);
        const streamId = streamIdAt(0, name);
        return {
          type: type === FrameType.SynReply ? 'syn_reply' : 'headers',
          streamId,
          fin: (flags & FLAG_FIN) !== 0,
          headers: headersFrom(4),
        };
      }
      case FrameType.RstStream:
        exactly(8, 'RST_STREAM');
        return { type: 'rst_stream', streamId: streamIdAt(0, 'RST_STREAM'), status: payload.readUInt32BE(4) };
      case FrameType.Settings: {
        need(4, 'SETTINGS');
        const count = payload.readUInt32BE(0);
        if (payload.length !== 4 + count * 8)
          throw new SpdyProtocolError('SETTINGS frame length does not match its count');
        const entries = [];
        for (let i = 0; i < count; i++) {
          const word = payload.readUInt32BE(4 + i * 8);
          entries.push({ flags: word >>> 24, id: word & 0xffffff, value: payload.readUInt32BE(8 + i * 8) });
        }
        return { type: 'settings', clear: (flags & FLAG_CLEAR_SETTINGS) !== 0, entries };
      }
      case FrameType.Ping:
        exactly(4, 'PING');
        return { type: 'ping', id: payload.readUInt32BE(0) };
      case FrameType.GoAway:
        // SPDY/3 has a status word; tolerate a SPDY/2-style 4-byte body as "OK".
        if (payload.length !== 8 && payload.length !== 4)
          throw new SpdyProtocolError('GOAWAY frame has a bad length');
        return {
          type: 'goaway',
          lastGoodStreamId: payload.readUInt32BE(0) & 0x7fffffff,
          status: payload.length === 8 ? payload.readUInt32BE(4) : GoAwayStatus.Ok,
        };
      case FrameType.WindowUpdate:
        exactly(8, 'WINDOW_UPDATE');
        return {
          type: 'window_update',
          streamId: payload.readUInt32BE(0) & 0x7fffffff,
          delta: payload.readUInt32BE(4) & 0x7fffffff,
        };
      default:
        return undefined;
    }
  }
}
