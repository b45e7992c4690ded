/**
 * A small, schema-driven protobuf (proto3) codec for the NRI and ttrpc messages.
 *
 * Why not protobufjs: NRI carries 64-bit values that do not fit a JS number (nanosecond
 * timestamps, RLIM_INFINITY), optional-wrapper messages whose presence matters, and comes
 * from processes we do not trust. Here a schema is a typed table (field number, wire type,
 * TS name) from which the message's TypeScript type is inferred, so the table and the type
 * cannot drift apart; 64-bit integers are bigints; decoding checks every length against
 * the bytes left and a nesting limit and throws `ProtobufDecodeError`, never anything else.
 * protobufjs stays a test-only oracle (test/unit/nri-protobuf.test.ts cross-checks bytes).
 *
 * Wire format facts used (protobuf encoding spec): tag = field << 3 | wire type; wire types
 * 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 (3/4 groups are refused); proto3
 * scalars at their default value are not written; repeated numeric fields are written
 * packed and read packed or not; a map is a repeated entry message {key = 1, value = 2}.
 */

export class ProtobufDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtobufDecodeError';
  }
}

type ScalarName = 'string' | 'bytes' | 'bool' | 'int32' | 'uint32' | 'enum' | 'int64' | 'uint64';

interface ScalarValue {
  string: string;
  bytes: Uint8Array;
  bool: boolean;
  int32: number;
  uint32: number;
  enum: number;
  int64: bigint;
  uint64: bigint;
}

/** A field of a message schema; `T` is the TypeScript type of the field's value. */
export interface Field<T> {
  readonly no: number;
  readonly kind: 'scalar' | 'message' | 'map';
  readonly scalar?: ScalarName;
  readonly message?: () => MessageSchema<unknown>;
  readonly repeated: boolean;
  readonly mapKey?: ScalarName;
  readonly mapValue?: ScalarName | (() => MessageSchema<unknown>);
  /** Type carrier only; never set. */
  readonly __type?: T;
}

export interface MessageSchema<T> {
  readonly name: string;
  readonly fields: Readonly<Record<string, Field<unknown>>>;
  /** Fields by number, for decoding. */
  readonly byNumber: ReadonlyMap<number, { key: string; field: Field<unknown> }>;
  /** Type carrier only; never set. */
  readonly __type?: T;
}

/** The TypeScript type of a message: every field optional (proto3 has no required fields). */
export type MessageOf<S> = S extends MessageSchema<infer T> ? T : never;

type FieldsValue<F extends Record<string, Field<unknown>>> = {
  -readonly [K in keyof F]?: F[K] extends Field<infer V> ? V : never;
};

function scalarField<N extends ScalarName>(no: number, scalar: N): Field<ScalarValue[N]> {
  return { no, kind: 'scalar', scalar, repeated: false };
}

export const string = (no: number) => scalarField(no, 'string');
export const bytes = (no: number) => scalarField(no, 'bytes');
export const bool = (no: number) => scalarField(no, 'bool');
export const int32 = (no: number) => scalarField(no, 'int32');
export const uint32 = (no: number) => scalarField(no, 'uint32');
export const enumeration = (no: number) => scalarField(no, 'enum');
export const int64 = (no: number) => scalarField(no, 'int64');
export const uint64 = (no: number) => scalarField(no, 'uint64');

export function repeated<N extends ScalarName>(no: number, scalar: N): Field<ScalarValue[N][]> {
  return { no, kind: 'scalar', scalar, repeated: true };
}

export function message<M>(no: number, schema: () => MessageSchema<M>): Field<M> {
  return { no, kind: 'message', message: schema as () => MessageSchema<unknown>, repeated: false };
}

export function repeatedMessage<M>(no: number, schema: () => MessageSchema<M>): Field<M[]> {
  return { no, kind: 'message', message: schema as () => MessageSchema<unknown>, repeated: true };
}

export function map<K extends 'string' | 'int32', V extends ScalarName>(
  no: number,
  key: K,
  value: V,
): Field<Record<string, ScalarValue[V]>> {
  return { no, kind: 'map', mapKey: key, mapValue: value, repeated: false };
}

export function mapOfMessages<K extends 'string' | 'int32', M>(
  no: number,
  key: K,
  value: () => MessageSchema<M>,
): Field<Record<string, M>> {
  return {
    no,
    kind: 'map',
    mapKey: key,
    mapValue: value as () => MessageSchema<unknown>,
    repeated: false,
  };
}

/** Define a message: its name (for errors) and its fields keyed by TypeScript name. */
export function defineMessage<const F extends Record<string, Field<unknown>>>(
  name: string,
  fields: F,
): MessageSchema<FieldsValue<F>> {
  const byNumber = new Map<number, { key: string; field: Field<unknown> }>();
  for (const [key, field] of Object.entries(fields)) {
    if (byNumber.has(field.no)) throw new Error(`${name}: field number ${field.no} used twice`);
    byNumber.set(field.no, { key, field });
  }
  return { name, fields, byNumber };
}

// ---------------------------------------------------------------------------------------
// Encoding

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LENGTH = 2;
const WIRE_FIXED32 = 5;

const MAX_UINT64 = (1n << 64n) - 1n;

class Writer {
  private chunks: Uint8Array[] = [];
  private current = new Uint8Array(256);
  private pos = 0;

  private ensure(n: number): void {
    if (this.pos + n <= this.current.length) return;
    this.chunks.push(this.current.subarray(0, this.pos));
    this.current = new Uint8Array(Math.max(256, n * 2));
    this.pos = 0;
  }

  byte(b: number): void {
    this.ensure(1);
    this.current[this.pos++] = b;
  }

  /** A non-negative integer below 2^53, or a bigint (negative bigints as two's complement). */
  varint(value: number | bigint): void {
    if (typeof value === 'number' && value >= 0 && value < 0x80000000) {
      let v = value;
      while (v >= 0x80) {
        this.byte((v & 0x7f) | 0x80);
        v >>>= 7;
      }
      this.byte(v);
      return;
    }
    let v = BigInt(value);
    if (v < 0n) v = BigInt.asUintN(64, v);
    while (v >= 0x80n) {
      this.byte(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.byte(Number(v));
  }

  tag(no: number, wire: number): void {
    this.varint(no * 8 + wire);
  }

  raw(data: Uint8Array): void {
    this.ensure(data.length);
    this.current.set(data, this.pos);
    this.pos += data.length;
  }

  lengthDelimited(no: number, data: Uint8Array): void {
    this.tag(no, WIRE_LENGTH);
    this.varint(data.length);
    this.raw(data);
  }

  finish(): Uint8Array {
    const parts = [...this.chunks, this.current.subarray(0, this.pos)];
    if (parts.length === 1) return parts[0]!.slice();
    const total = parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(total);
    let offset = 0;
    for (const p of parts) {
      out.set(p, offset);
      offset += p.length;
    }
    return out;
  }
}

const utf8 = new TextEncoder();

function isDefaultScalar(scalar: ScalarName, value: unknown): boolean {
  switch (scalar) {
    case 'string':
      return value === '';
    case 'bytes':
      return (value as Uint8Array).length === 0;
    case 'bool':
      return value === false;
    case 'int64':
    case 'uint64':
      return value === 0n;
    default:
      return value === 0;
  }
}

function checkScalar(scalar: ScalarName, value: unknown, where: string): void {
  const bad = (expected: string): never => {
    throw new TypeError(`${where}: expected ${expected}, got ${typeof value}`);
  };
  switch (scalar) {
    case 'string':
      if (typeof value !== 'string') bad('a string');
      return;
    case 'bytes':
      if (!(value instanceof Uint8Array)) bad('a Uint8Array');
      return;
    case 'bool':
      if (typeof value !== 'boolean') bad('a boolean');
      return;
    case 'int32':
    case 'enum':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31) {
        bad('a 32-bit signed integer');
      }
      return;
    case 'uint32':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value >= 2 ** 32) {
        bad('a 32-bit unsigned integer');
      }
      return;
    case 'int64':
      if (typeof value !== 'bigint' || value < -(1n << 63n) || value >= 1n << 63n)
        bad('a 64-bit signed bigint');
      return;
    case 'uint64':
      if (typeof value !== 'bigint' || value < 0n || value > MAX_UINT64) bad('a 64-bit unsigned bigint');
      return;
  }
}

function writeScalarValue(w: Writer, scalar: ScalarName, value: unknown): void {
  switch (scalar) {
    case 'string': {
      const encoded = utf8.encode(value as string);
      w.varint(encoded.length);
      w.raw(encoded);
      return;
    }
    case 'bytes':
      w.varint((value as Uint8Array).length);
      w.raw(value as Uint8Array);
      return;
    case 'bool':
      w.varint(value ? 1 : 0);
      return;
    case 'uint32':
      w.varint(value as number);
      return;
    case 'int32':
    case 'enum':
      w.varint((value as number) < 0 ? BigInt(value as number) : (value as number));
      return;
    default:
      w.varint(value as bigint);
  }
}

function wireTypeOf(scalar: ScalarName): number {
  return scalar === 'string' || scalar === 'bytes' ? WIRE_LENGTH : WIRE_VARINT;
}

function writeScalarField(w: Writer, no: number, scalar: ScalarName, value: unknown): void {
  w.tag(no, wireTypeOf(scalar));
  writeScalarValue(w, scalar, value);
}

function writeMapKey(w: Writer, key: ScalarName, name: string, where: string): void {
  if (key === 'string') {
    writeScalarField(w, 1, 'string', name);
    return;
  }
  const n = Number(name);
  checkScalar('int32', n, `${where} key ${JSON.stringify(name)}`);
  writeScalarField(w, 1, 'int32', n);
}

/** Encode a message. Throws TypeError when a value does not fit its field (a bug of ours). */
export function encodeMessage<T>(schema: MessageSchema<T>, value: T): Uint8Array {
  const w = new Writer();
  writeMessage(w, schema as MessageSchema<unknown>, value as Record<string, unknown>, schema.name);
  return w.finish();
}

function writeMessage(
  w: Writer,
  schema: MessageSchema<unknown>,
  value: Record<string, unknown>,
  where: string,
): void {
  for (const [key, field] of Object.entries(schema.fields)) {
    const v = value[key];
    if (v === undefined || v === null) continue;
    const path = `${where}.${key}`;
    if (field.kind === 'scalar') {
      const scalar = field.scalar!;
      if (!field.repeated) {
        checkScalar(scalar, v, path);
        if (!isDefaultScalar(scalar, v)) writeScalarField(w, field.no, scalar, v);
        continue;
      }
      if (!Array.isArray(v)) throw new TypeError(`${path}: expected an array`);
      if (v.length === 0) continue;
      if (wireTypeOf(scalar) === WIRE_LENGTH) {
        for (const item of v) {
          checkScalar(scalar, item, path);
          writeScalarField(w, field.no, scalar, item);
        }
      } else {
        const packed = new Writer();
        for (const item of v) {
          checkScalar(scalar, item, path);
          writeScalarValue(packed, scalar, item);
        }
        w.lengthDelimited(field.no, packed.finish());
      }
    } else if (field.kind === 'message') {
      const sub = field.message!();
      const items = field.repeated ? v : [v];
      if (!Array.isArray(items)) throw new TypeError(`${path}: expected an array`);
      for (const item of items) {
        if (item === null || typeof item !== 'object') throw new TypeError(`${path}: expected an object`);
        const inner = new Writer();
        writeMessage(inner, sub, item as Record<string, unknown>, path);
        w.lengthDelimited(field.no, inner.finish());
      }
    } else {
      if (typeof v !== 'object') throw new TypeError(`${path}: expected an object (map)`);
      for (const [name, entryValue] of Object.entries(v as Record<string, unknown>)) {
        if (entryValue === undefined) continue;
        const entry = new Writer();
        writeMapKey(entry, field.mapKey!, name, path);
        const valueType = field.mapValue!;
        if (typeof valueType === 'string') {
          checkScalar(valueType, entryValue, `${path}[${JSON.stringify(name)}]`);
          writeScalarField(entry, 2, valueType, entryValue);
        } else if (entryValue !== null) {
          const inner = new Writer();
          writeMessage(inner, valueType(), entryValue as Record<string, unknown>, path);
          entry.lengthDelimited(2, inner.finish());
        }
        w.lengthDelimited(field.no, entry.finish());
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Decoding

const MAX_DEPTH = 64;
const utf8Decoder = new TextDecoder('utf-8');

class Reader {
  pos: number;

  constructor(
    readonly buf: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  fail(what: string): never {
    throw new ProtobufDecodeError(`${what} at byte ${this.pos}`);
  }

  varint64(): bigint {
    let result = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail('truncated varint');
      const b = this.buf[this.pos++]!;
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asUintN(64, result);
      shift += 7n;
    }
    return this.fail('varint longer than 10 bytes');
  }

  /** A varint of which only the low 32 bits matter (lengths, tags, 32-bit fields). */
  varint32(): number {
    let result = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail('truncated varint');
      const b = this.buf[this.pos++]!;
      if (i < 5) result += (b & 0x7f) * 2 ** (7 * i);
      if (b < 0x80) return result % 2 ** 32;
    }
    return this.fail('varint longer than 10 bytes');
  }

  length(): number {
    let n = 0;
    for (let i = 0; i < 5; i++) {
      if (this.pos >= this.end) this.fail('truncated length');
      const b = this.buf[this.pos++]!;
      n += (b & 0x7f) * 2 ** (7 * i);
      if (b < 0x80) {
        const left = this.end - this.pos;
        if (n > left) this.fail(`length ${n} exceeds the ${left} bytes left`);
        return n;
      }
    }
    return this.fail('length varint longer than 5 bytes');
  }

  skip(wire: number): void {
    switch (wire) {
      case WIRE_VARINT:
        this.varint32();
        return;
      case WIRE_FIXED64:
        if (this.end - this.pos < 8) this.fail('truncated fixed64');
        this.pos += 8;
        return;
      case WIRE_LENGTH: {
        const n = this.length();
        this.pos += n;
        return;
      }
      case WIRE_FIXED32:
        if (this.end - this.pos < 4) this.fail('truncated fixed32');
        this.pos += 4;
        return;
      default:
        this.fail(`unsupported wire type ${wire}`);
    }
  }
}

function defaultScalar(scalar: ScalarName): unknown {
  switch (scalar) {
    case 'string':
      return '';
    case 'bytes':
      return new Uint8Array(0);
    case 'bool':
      return false;
    case 'int64':
    case 'uint64':
      return 0n;
    default:
      return 0;
  }
}

function readScalar(r: Reader, scalar: ScalarName): unknown {
  switch (scalar) {
    case 'string': {
      const n = r.length();
      const s = utf8Decoder.decode(r.buf.subarray(r.pos, r.pos + n));
      r.pos += n;
      return s;
    }
    case 'bytes': {
      const n = r.length();
      const b = r.buf.slice(r.pos, r.pos + n);
      r.pos += n;
      return b;
    }
    case 'bool':
      return r.varint64() !== 0n;
    case 'uint32':
      return r.varint32();
    case 'int32':
    case 'enum':
      return r.varint32() | 0;
    case 'uint64':
      return r.varint64();
    case 'int64':
      return BigInt.asIntN(64, r.varint64());
  }
}

/**
 * Decode a message. Unknown fields are skipped; a wrong wire type, a length past the end, a
 * truncated value or nesting deeper than 64 throws ProtobufDecodeError naming the message.
 * Scalars, repeated fields and maps absent from the bytes get their proto3 defaults; absent
 * message fields stay undefined (so optional-wrapper presence is kept).
 */
export function decodeMessage<T>(schema: MessageSchema<T>, data: Uint8Array): T {
  const r = new Reader(data, 0, data.length);
  return readMessage(r, schema as MessageSchema<unknown>, 0) as T;
}

function newMessageObject(schema: MessageSchema<unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(schema.fields)) {
    if (field.kind === 'map') out[key] = Object.create(null);
    else if (field.repeated) out[key] = [];
    else if (field.kind === 'scalar') out[key] = defaultScalar(field.scalar!);
  }
  return out;
}

function readMessage(
  r: Reader,
  schema: MessageSchema<unknown>,
  depth: number,
  out: Record<string, unknown> = newMessageObject(schema),
): Record<string, unknown> {
  if (depth > MAX_DEPTH) r.fail(`${schema.name}: nested deeper than ${MAX_DEPTH}`);
  while (r.pos < r.end) {
    const tag = r.varint32();
    const no = Math.floor(tag / 8);
    const wire = tag % 8;
    if (no === 0) r.fail(`${schema.name}: field number 0`);
    const known = schema.byNumber.get(no);
    if (!known) {
      r.skip(wire);
      continue;
    }
    const { key, field } = known;
    const where = `${schema.name}.${key}`;
    try {
      readField(r, field, wire, out, key, depth);
    } catch (err) {
      if (err instanceof ProtobufDecodeError) throw new ProtobufDecodeError(`${where}: ${err.message}`);
      throw err;
    }
  }
  if (r.pos !== r.end) r.fail(`${schema.name}: field runs past the end of the message`);
  return out;
}

function readField(
  r: Reader,
  field: Field<unknown>,
  wire: number,
  out: Record<string, unknown>,
  key: string,
  depth: number,
): void {
  if (field.kind === 'scalar') {
    const scalar = field.scalar!;
    const expected = wireTypeOf(scalar);
    if (field.repeated && expected === WIRE_VARINT && wire === WIRE_LENGTH) {
      const n = r.length();
      const packed = new Reader(r.buf, r.pos, r.pos + n);
      const list = out[key] as unknown[];
      while (packed.pos < packed.end) list.push(readScalar(packed, scalar));
      r.pos += n;
      return;
    }
    if (wire !== expected) r.fail(`wire type ${wire}, expected ${expected}`);
    const value = readScalar(r, scalar);
    if (field.repeated) (out[key] as unknown[]).push(value);
    else out[key] = value;
    return;
  }
  if (wire !== WIRE_LENGTH) r.fail(`wire type ${wire}, expected ${WIRE_LENGTH}`);
  const n = r.length();
  const sub = new Reader(r.buf, r.pos, r.pos + n);
  r.pos += n;
  if (field.kind === 'message') {
    const schema = field.message!();
    if (field.repeated) {
      (out[key] as unknown[]).push(readMessage(sub, schema, depth + 1));
    } else {
      // A singular message seen twice is merged into the first (the protobuf rule).
      const previous = out[key] as Record<string, unknown> | undefined;
      out[key] = readMessage(sub, schema, depth + 1, previous);
    }
    return;
  }
  // A map entry: key = 1, value = 2, either may be missing (then its default).
  const keyType = field.mapKey!;
  const valueType = field.mapValue!;
  let entryKey: unknown = defaultScalar(keyType);
  let entryValue: unknown =
    typeof valueType === 'string' ? defaultScalar(valueType) : newMessageObject(valueType());
  while (sub.pos < sub.end) {
    const tag = sub.varint32();
    const no = Math.floor(tag / 8);
    const w = tag % 8;
    if (no === 1) {
      if (w !== wireTypeOf(keyType)) sub.fail(`map key wire type ${w}`);
      entryKey = readScalar(sub, keyType);
    } else if (no === 2) {
      if (typeof valueType === 'string') {
        if (w !== wireTypeOf(valueType)) sub.fail(`map value wire type ${w}`);
        entryValue = readScalar(sub, valueType);
      } else {
        if (w !== WIRE_LENGTH) sub.fail(`map value wire type ${w}`);
        const len = sub.length();
        entryValue = readMessage(new Reader(sub.buf, sub.pos, sub.pos + len), valueType(), depth + 2);
        sub.pos += len;
      }
    } else {
      sub.skip(w);
    }
  }
  (out[key] as Record<string, unknown>)[String(entryKey)] = entryValue;
}
