/**
 * Sandboxes in memory, backed by one crash-safe record file each. Every change goes to disk
 * before the in-memory copy is replaced, so what a request sees is what a restart would load.
 * Read access (get, list) is what the container layer uses.
 */
import { InvalidArgumentError } from '../errors.js';
import { RecordStore } from '../store/record-store.js';
import { parseSandboxRecord, SANDBOX_RECORD_VERSION, type SandboxRecord } from './sandbox-record.js';

export interface SandboxReader {
  get(id: string): SandboxRecord | undefined;
  list(): SandboxRecord[];
}

export class SandboxStore implements SandboxReader {
  readonly #records = new Map<string, SandboxRecord>();
  readonly #disk: RecordStore<SandboxRecord>;

  constructor(dir: string) {
    this.#disk = new RecordStore(dir, SANDBOX_RECORD_VERSION, parseSandboxRecord);
  }

  get dir(): string {
    return this.#disk.dir;
  }

  async load() {
    await this.#disk.init();
    const loaded = await this.#disk.load();
    for (const record of loaded.records) this.#records.set(record.id, record);
    return loaded;
  }

  get(id: string): SandboxRecord | undefined {
    const record = this.#records.get(id);
    return record ? structuredClone(record) : undefined;
  }

  list(): SandboxRecord[] {
    return [...this.#records.values()].map((r) => structuredClone(r));
  }

  async put(record: SandboxRecord): Promise<void> {
    await this.#disk.write(record);
    this.#records.set(record.id, structuredClone(record));
  }

  async delete(id: string): Promise<void> {
    await this.#disk.remove(id);
    this.#records.delete(id);
  }

  /**
   * The full id for a full id or a unique prefix; undefined when nothing matches. An empty
   * id or an ambiguous prefix is InvalidArgument (catalog row 32).
   */
  resolve(idOrPrefix: string): string | undefined {
    if (idOrPrefix === '') throw new InvalidArgumentError('the pod sandbox id must not be empty');
    if (this.#records.has(idOrPrefix)) return idOrPrefix;
    const matches = [...this.#records.keys()].filter((id) => id.startsWith(idOrPrefix));
    if (matches.length > 1) {
      throw new InvalidArgumentError(
        `pod sandbox id prefix ${JSON.stringify(idOrPrefix)} matches ${matches.length} sandboxes; give more of the id`,
      );
    }
    return matches[0];
  }
}
