/**
 * The schema-driven protobuf codec: round trips, proto3 rules (defaults not written, packed
 * and unpacked repeated scalars, merged singular messages, unknown fields skipped), 64-bit
 * values, and hostile bytes, which must only ever give ProtobufDecodeError.
 */
import { describe, expect, it } from 'vitest';
import { Container, ContainerAdjustment, PodSandbox } from '../../src/nri/api.js';
import {
  bool,
  decodeMessage,
  defineMessage,
  encodeMessage,
  enumeration,
  int32,
  int64,
  map,
  message,
  ProtobufDecodeError,
  repeated,
  repeatedMessage,
  string,
  uint32,
  uint64,
} from '../../src/nri/protobuf.js';

const Inner = defineMessage('Inner', { value: int64(1), name: string(2) });
const Sample = defineMessage('Sample', {
  text: string(1),
  count: int32(2),
  big: int64(3),
  ubig: uint64(4),
  small: uint32(5),
  flag: bool(6),
  kind: enumeration(7),
  numbers: repeated(8, 'uint32'),
  words: repeated(9, 'string'),
  inner: message(10, () => Inner),
  inners: repeatedMessage(11, () => Inner),
  labels: map(12, 'string', 'string'),
  byNumber: map(13, 'int32', 'string'),
});

function bytes(...values: number[]): Uint8Array {
  return Uint8Array.from(values);
}

describe('protobuf codec', () => {
  it('round-trips every field kind', () => {
    const value = {
      text: 'héllo',
      count: -5,
      big: -(1n << 62n),
      ubig: (1n << 64n) - 1n,
      small: 4_000_000_000,
      flag: true,
      kind: 3,
      numbers: [1, 300, 70000],
      words: ['a', '', 'c'],
      inner: { value: 0n, name: '' },
      inners: [{ value: 7n, name: 'x' }, {}],
      labels: { a: '1', ['__proto__']: 'p', '': 'empty' },
      byNumber: { '-1': 'minus one', '7': 'seven' },
    };
    const decoded = decodeMessage(Sample, encodeMessage(Sample, value));
    expect(decoded).toEqual({
      ...value,
      inners: [
        { value: 7n, name: 'x' },
        { value: 0n, name: '' },
      ],
    });
    expect(Object.keys(decoded.labels!)).toContain('__proto__');
  });

  it('writes nothing for proto3 defaults but keeps an empty optional-wrapper message', () => {
    expect(
      encodeMessage(Sample, { text: '', count: 0, big: 0n, flag: false, numbers: [], labels: {} }),
    ).toEqual(new Uint8Array(0));
    // inner present but empty: tag 10 (wire 2), length 0. Presence is what OptionalInt etc. carry.
    expect(encodeMessage(Sample, { inner: {} })).toEqual(bytes(0x52, 0x00));
    expect(decodeMessage(Sample, bytes(0x52, 0x00)).inner).toEqual({ value: 0n, name: '' });
    expect(decodeMessage(Sample, new Uint8Array(0)).inner).toBeUndefined();
  });

  it('gives absent scalars, lists and maps their defaults', () => {
    expect(decodeMessage(Sample, new Uint8Array(0))).toEqual({
      text: '',
      count: 0,
      big: 0n,
      ubig: 0n,
      small: 0,
      flag: false,
      kind: 0,
      numbers: [],
      words: [],
      inners: [],
      labels: {},
      byNumber: {},
    });
  });

  it('encodes negative int32 as a ten-byte varint and reads it back', () => {
    const encoded = encodeMessage(Sample, { count: -1 });
    expect(encoded).toEqual(bytes(0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01));
    expect(decodeMessage(Sample, encoded).count).toBe(-1);
  });

  it('writes repeated numbers packed and reads both packed and unpacked', () => {
    expect(encodeMessage(Sample, { numbers: [1, 2] })).toEqual(bytes(0x42, 0x02, 0x01, 0x02));
    // unpacked: tag 8 wire 0 twice
    expect(decodeMessage(Sample, bytes(0x40, 0x05, 0x40, 0x06)).numbers).toEqual([5, 6]);
    // mixed
    expect(decodeMessage(Sample, bytes(0x42, 0x01, 0x01, 0x40, 0x02)).numbers).toEqual([1, 2]);
  });

  it('merges a singular message field that appears twice, later fields winning', () => {
    const first = encodeMessage(Sample, { inner: { value: 1n, name: 'a' } });
    const second = encodeMessage(Sample, { inner: { value: 2n } });
    const joined = new Uint8Array([...first, ...second]);
    expect(decodeMessage(Sample, joined).inner).toEqual({ value: 2n, name: 'a' });
  });

  it('skips unknown fields of every wire type', () => {
    const unknown = bytes(
      0xf8,
      0x01,
      0x96,
      0x01, // field 31 varint
      0xf9,
      0x01,
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      8, // field 31 fixed64
      0xfa,
      0x01,
      0x02,
      0xaa,
      0xbb, // field 31 bytes
      0xfd,
      0x01,
      1,
      2,
      3,
      4, // field 31 fixed32
    );
    const known = encodeMessage(Sample, { text: 'kept' });
    expect(decodeMessage(Sample, new Uint8Array([...unknown, ...known])).text).toBe('kept');
  });

  it('reads map entries with missing keys or values as defaults, last duplicate winning', () => {
    // entry {value: "v"} only, then {key: "k", value: "1"}, then {key: "k", value: "2"}
    const data = bytes(
      0x62,
      0x03,
      0x12,
      0x01,
      0x76,
      0x62,
      0x06,
      0x0a,
      0x01,
      0x6b,
      0x12,
      0x01,
      0x31,
      0x62,
      0x06,
      0x0a,
      0x01,
      0x6b,
      0x12,
      0x01,
      0x32,
    );
    expect(decodeMessage(Sample, data).labels).toEqual({ '': 'v', k: '2' });
  });

  it('refuses values that do not fit their field when encoding', () => {
    expect(() => encodeMessage(Sample, { count: 2 ** 31 })).toThrow(TypeError);
    expect(() => encodeMessage(Sample, { ubig: -1n })).toThrow(TypeError);
    expect(() => encodeMessage(Sample, { small: -1 })).toThrow(TypeError);
    expect(() => encodeMessage(Sample, { text: 5 as unknown as string })).toThrow(
      /Sample.text: expected a string/,
    );
  });

  it.each([
    ['a truncated varint', bytes(0x10, 0xff)],
    [
      'a varint longer than ten bytes',
      bytes(0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01),
    ],
    ['a length past the end', bytes(0x0a, 0x05, 0x61)],
    ['a huge length', bytes(0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f)],
    ['a wrong wire type for a known field', bytes(0x0d, 1, 2, 3, 4)],
    ['a group (wire type 3)', bytes(0xfb, 0x01)],
    ['field number 0', bytes(0x00, 0x01)],
    ['a truncated fixed64', bytes(0xf9, 0x01, 1, 2)],
    ['a nested message cut short', bytes(0x52, 0x03, 0x08, 0xff)],
    ['a bad map entry', bytes(0x62, 0x02, 0x0d, 0x00)],
  ])('rejects %s with ProtobufDecodeError', (_what, data) => {
    expect(() => decodeMessage(Sample, data)).toThrow(ProtobufDecodeError);
  });

  it('names the message and field of a decode error', () => {
    expect(() => decodeMessage(Sample, bytes(0x52, 0x02, 0x08, 0xff))).toThrow(
      /^Sample\.inner: Inner\.value: truncated varint/,
    );
  });

  it('survives random and mutated bytes (only ProtobufDecodeError, never anything else)', () => {
    let seed = 0x1234abcd;
    const random = () => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) / 2 ** 32;
    };
    const valid = encodeMessage(Container, {
      id: 'x'.repeat(64),
      name: 'c',
      labels: { a: 'b' },
      mounts: [{ destination: '/d', options: ['ro'] }],
      linux: { resources: { memory: { limit: { value: 1n << 40n } } }, namespaces: [{ type: 'net' }] },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024n, soft: 1024n }],
    });
    let decoded = 0;
    for (let i = 0; i < 5000; i++) {
      let data: Uint8Array;
      if (i % 2 === 0) {
        data = Uint8Array.from({ length: Math.floor(random() * 64) }, () => Math.floor(random() * 256));
      } else {
        data = valid.slice(0, Math.floor(random() * (valid.length + 1)));
        for (let j = 0; j < 3; j++) data[Math.floor(random() * data.length)] = Math.floor(random() * 256);
      }
      for (const schema of [Container, PodSandbox, ContainerAdjustment]) {
        try {
          decodeMessage(schema as typeof Container, data);
          decoded++;
        } catch (err) {
          if (!(err instanceof ProtobufDecodeError)) throw err;
        }
      }
    }
    // Some inputs are valid messages, most are not: both paths ran.
    expect(decoded).toBeGreaterThan(0);
    expect(decoded).toBeLessThan(15000);
  });
});
