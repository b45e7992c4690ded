/**
 * Crash-safe JSON records, one file per object: `<dir>/<id>.json`.
 *
 * A full disk must not stop the runtime from recording what it did to free it (a container
 * stopped, a pod removed). Each store keeps a space reserve, `<dir>/.space-reserve` (1 MiB of
 * allocated blocks and one inode): when a write fails for lack of space or inodes the reserve
 * is given back to the filesystem and the write tried once more; it is re-made when space
 * returns. A write that still fails is ResourceExhausted naming the file, and nothing changes.
 *
 * Every record carries a `version` (the schema version of its kind); `load()` refuses
 * records from a newer schema rather than misreading them. A record that cannot be parsed
 * (truncated by a dying disk, edited by hand) is reported and moved aside to
 * `<id>.json.corrupt` so one bad object never stops the daemon from starting (STYLE.md,
 * containerd's recover()).
 */
import { mkdir, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { describeSystemError, InternalError, ResourceExhaustedError, systemErrorIn } from '../errors.js';
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

export const SPACE_RESERVE_NAME = '.space-reserve';
const SPACE_RESERVE_BYTES = 1024 * 1024;
/** How often a used-up reserve is tried again (it needs free space to come back). */
const RESERVE_RETRY_MS = 30_000;

function outOfSpace(err: unknown): boolean {
  const code = systemErrorIn(err)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

export class RecordStore<T extends VersionedRecord> {
  constructor(
    readonly dir: string,
    private readonly currentVersion: number,
    /** Checks the parsed JSON and returns a record, or throws describing what is wrong. */
    private readonly parse: (value: unknown) => T,
  ) {}

  /** Times a write needed the space reserve (for Status and tests). */
  reserveUsed = 0;
  #reserveMissingSince: number | null = null;

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await this.#makeReserve();
  }

  get #reserve(): string {
    return path.join(this.dir, SPACE_RESERVE_NAME);
  }

  /** Allocates the reserve (best effort: on a full disk it is simply not there yet). */
  async #makeReserve(): Promise<void> {
    const existing = await stat(this.#reserve).catch(() => null);
    if (existing && existing.size >= SPACE_RESERVE_BYTES) {
      this.#reserveMissingSince = null;
      return;
    }
    try {
      const handle = await open(this.#reserve, 'w', 0o600);
      try {
        // Real blocks (not a sparse file): zeros written, then made durable.
        await handle.write(Buffer.alloc(SPACE_RESERVE_BYTES), 0, SPACE_RESERVE_BYTES, 0);
        await handle.sync();
      } finally {
        await handle.close();
      }
      this.#reserveMissingSince = null;
    } catch {
      await unlink(this.#reserve).catch(() => undefined);
      this.#reserveMissingSince = Date.now();
    }
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
    const file = this.fileOf(record.id);
    const text = `${JSON.stringify(record, null, 1)}\n`;
    try {
      await writeFileAtomic(file, text);
    } catch (err) {
      if (!outOfSpace(err)) throw err;
      // Give the reserve back and try once more: what is being recorded is usually what
      // frees the disk (a container stopped, a pod removed).
      const freed = await unlink(this.#reserve).then(
        () => true,
        () => false,
      );
      if (freed) {
        this.reserveUsed += 1;
        this.#reserveMissingSince = Date.now();
      }
      try {
        if (!freed) throw err;
        await writeFileAtomic(file, text);
      } catch (again) {
        const system = systemErrorIn(again) ?? systemErrorIn(err);
        throw new ResourceExhaustedError(
          `cannot save ${file}: ${system ? (describeSystemError({ ...system, path: this.dir } as NodeJS.ErrnoException) ?? system.message) : String(again)}`,
          { cause: again },
        );
      }
      return;
    }
    if (this.#reserveMissingSince !== null && Date.now() - this.#reserveMissingSince > RESERVE_RETRY_MS) {
      await this.#makeReserve();
    }
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
