/**
 * Crash-safe JSON records, one file per object: `<dir>/<id>.json`.
 *
 * Every record carries a `version` (the schema version of its kind); `load()` refuses
 * records from a newer schema rather than misreading them. A record that cannot be parsed
 * (truncated by a dying disk, edited by hand) is reported and moved aside to
 * `<id>.json.corrupt` so one bad object never stops the daemon from starting (STYLE.md,
 * containerd's recover()).
 */
import { mkdir, readdir, readFile, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { InternalError } from '../errors.js';
import { isAtomicTempName, syncDirectory, writeFileAtomic } from './atomic-file.js';

export interface VersionedRecord {
  version: number;
  id: string;
}

export interface LoadProblem {
  file: string;
  message: string;
}

export interface LoadResult<T> {
  records: T[];
  problems: LoadProblem[];
}

// Record ids become file names: only plain ids, never a path.
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export class RecordStore<T extends VersionedRecord> {
  constructor(
    readonly dir: string,
    private readonly currentVersion: number,
    /** Checks the parsed JSON and returns a record, or throws describing what is wrong. */
    private readonly parse: (value: unknown) => T,
  ) {}

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  fileOf(id: string): string {
    if (!ID_PATTERN.test(id) || id.includes('..')) {
      throw new InternalError(`record id ${JSON.stringify(id)} cannot be used as a file name`);
    }
    return path.join(this.dir, `${id}.json`);
  }

  async write(record: T): Promise<void> {
    if (record.version !== this.currentVersion) {
      throw new InternalError(
        `record ${record.id} has version ${record.version}, expected ${this.currentVersion}`,
      );
    }
    await writeFileAtomic(this.fileOf(record.id), `${JSON.stringify(record, null, 1)}\n`);
  }

  async remove(id: string): Promise<void> {
    try {
      await unlink(this.fileOf(id));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    await syncDirectory(this.dir);
  }

  async load(): Promise<LoadResult<T>> {
    const records: T[] = [];
    const problems: LoadProblem[] = [];
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { records, problems };
      throw err;
    }
    for (const name of names.sort()) {
      const file = path.join(this.dir, name);
      if (isAtomicTempName(name)) {
        // A write that never reached its rename: the record it was replacing is still whole.
        await unlink(file).catch(() => undefined);
        continue;
      }
      if (!name.endsWith('.json')) continue;
      try {
        const value: unknown = JSON.parse(await readFile(file, 'utf8'));
        const version = (value as { version?: unknown } | null)?.version;
        if (typeof version !== 'number') throw new Error('no "version" field');
        if (version > this.currentVersion) {
          throw new Error(
            `written by a newer rootless-cri (record version ${version}, this one reads up to ${this.currentVersion})`,
          );
        }
        const record = this.parse(value);
        if (`${record.id}.json` !== name) throw new Error(`its id ${record.id} does not match the file name`);
        records.push(record);
      } catch (err) {
        const message = (err as Error).message;
        problems.push({ file, message });
        await rename(file, `${file}.corrupt`).catch(() => undefined);
      }
    }
    return { records, problems };
  }
}
