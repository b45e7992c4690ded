import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../../src/store/atomic-file.js';
import { RecordStore } from '../../src/store/record-store.js';

interface Thing {
  version: number;
  id: string;
  value: number;
}

function parseThing(value: unknown): Thing {
  const v = value as Thing;
  if (typeof v.value !== 'number') throw new Error('no value');
  return v;
}

let dir: string;
let store: RecordStore<Thing>;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'rcri-store-'));
  store = new RecordStore<Thing>(path.join(dir, 'things'), 2, parseThing);
  await store.init();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('RecordStore', () => {
  it('writes, replaces, loads and removes records', async () => {
    await store.write({ version: 2, id: 'a', value: 1 });
    await store.write({ version: 2, id: 'b', value: 2 });
    await store.write({ version: 2, id: 'a', value: 3 });
    const { records, problems } = await store.load();
    expect(problems).toEqual([]);
    expect(records).toEqual([
      { version: 2, id: 'a', value: 3 },
      { version: 2, id: 'b', value: 2 },
    ]);
    await store.remove('a');
    await store.remove('a');
    expect((await store.load()).records.map((r) => r.id)).toEqual(['b']);
    expect(await readdir(store.dir)).toEqual(['.space-reserve', 'b.json']);
  });

  it('moves aside truncated, foreign, mismatched and newer-version records, keeping the good ones', async () => {
    await store.write({ version: 2, id: 'good', value: 1 });
    await writeFile(path.join(store.dir, 'torn.json'), '{"version":2,"id":"to');
    await writeFile(path.join(store.dir, 'noversion.json'), '{"id":"noversion","value":1}');
    await writeFile(path.join(store.dir, 'future.json'), '{"version":3,"id":"future","value":1}');
    await writeFile(path.join(store.dir, 'other.json'), '{"version":2,"id":"elsewhere","value":1}');
    await writeFile(path.join(store.dir, 'bad.json'), '{"version":2,"id":"bad"}');
    const { records, problems } = await store.load();
    expect(records.map((r) => r.id)).toEqual(['good']);
    expect(problems.map((p) => path.basename(p.file)).sort()).toEqual([
      'bad.json',
      'future.json',
      'noversion.json',
      'other.json',
      'torn.json',
    ]);
    expect(problems.find((p) => p.file.endsWith('future.json'))?.message).toMatch(/newer rootless-cri/);
    expect((await readdir(store.dir)).filter((f) => f.endsWith('.corrupt'))).toHaveLength(5);
  });

  it('drops temp files of writes that never reached their rename', async () => {
    await store.write({ version: 2, id: 'a', value: 1 });
    await writeFile(path.join(store.dir, '.a.json.123456.tmp'), '{"version":2,"id":"a","value":99}');
    const { records } = await store.load();
    expect(records).toEqual([{ version: 2, id: 'a', value: 1 }]);
    expect(await readdir(store.dir)).toEqual(['.space-reserve', 'a.json']);
  });

  it('refuses ids that are not plain file names and records of another version', async () => {
    await expect(store.write({ version: 2, id: '../x', value: 1 })).rejects.toThrow(
      /cannot be used as a file name/,
    );
    await expect(store.write({ version: 2, id: 'a/b', value: 1 })).rejects.toThrow(/file name/);
    await expect(store.write({ version: 1, id: 'a', value: 1 })).rejects.toThrow(/version 1/);
  });

  it('writeFileAtomic replaces the whole file and leaves no temp file', async () => {
    const file = path.join(dir, 'f');
    await writeFileAtomic(file, 'first');
    await writeFileAtomic(file, 'second');
    expect(await readFile(file, 'utf8')).toBe('second');
    expect(await readdir(dir)).toEqual(['f', 'things']);
  });
});
