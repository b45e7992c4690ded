import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CachedRecordStore } from '../../src/store/cached-record-store.js';
import { RecordStore } from '../../src/store/record-store.js';

interface Thing {
  version: number;
  id: string;
  labels: Record<string, string>;
  bytes?: Uint8Array;
}

const parseThing = (value: unknown) => value as Thing;

let dir: string;
let store: CachedRecordStore<Thing>;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'rcri-cached-store-'));
  store = new CachedRecordStore<Thing>(path.join(dir, 'things'), 1, parseThing, 'thing', 'things');
  await store.load();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('CachedRecordStore shared reads', () => {
  it('peek and peekAll hand out the stored records frozen, deep: a reader cannot change them', async () => {
    const written: Thing = { version: 1, id: 'a', labels: { app: 'x' } };
    await store.put(written);
    written.labels.app = 'changed by the writer after put';
    const peeked = store.peek('a')!;
    expect(peeked.labels.app).toBe('x');
    expect(store.peekAll()).toEqual([peeked]);
    expect(Object.isFrozen(peeked) && Object.isFrozen(peeked.labels)).toBe(true);
    expect(() => {
      (peeked.labels as Record<string, string>).app = 'y';
    }).toThrow(TypeError);
    // get and list still give copies the caller may change.
    const copy = store.get('a')!;
    copy.labels.app = 'mine';
    expect(store.list()[0]!.labels.app).toBe('x');
    expect(store.peek('a')!.labels.app).toBe('x');
  });

  it('a put replaces the stored record: one peeked before stays as it was', async () => {
    await store.put({ version: 1, id: 'a', labels: { n: '1' } });
    const before = store.peek('a')!;
    await store.put({ version: 1, id: 'a', labels: { n: '2' } });
    expect(before.labels.n).toBe('1');
    expect(store.peek('a')!.labels.n).toBe('2');
    await store.delete('a');
    expect(store.peek('a')).toBeUndefined();
    expect(store.peekAll()).toEqual([]);
  });

  it('records loaded from disk are frozen copies; the loaded ones stay the caller’s to change', async () => {
    await new RecordStore<Thing>(path.join(dir, 'things'), 1, parseThing).write({
      version: 1,
      id: 'b',
      labels: { k: 'v' },
    });
    const fresh = new CachedRecordStore<Thing>(path.join(dir, 'things'), 1, parseThing, 'thing', 'things');
    const { records } = await fresh.load();
    records[0]!.labels.k = 'changed by recovery';
    expect(fresh.peek('b')!.labels.k).toBe('v');
    expect(Object.isFrozen(fresh.peek('b'))).toBe(true);
  });

  it('byte arrays in a record (bad input on its way to being refused) do not break a put', async () => {
    await store.put({ version: 1, id: 'c', labels: {}, bytes: new Uint8Array([1, 2]) });
    expect(Object.isFrozen(store.peek('c'))).toBe(true);
    expect(store.peek('c')!.bytes).toEqual(new Uint8Array([1, 2]));
  });
});
