/**
 * Records in memory, each backed by one crash-safe file (RecordStore). Every change goes to
 * disk before the in-memory copy is replaced, so what a request sees is what a restart would
 * load; readers get copies, or (peek, peekAll) the stored record itself, deep-frozen: List and
 * stats read every record on each call (kubelet polls them), and copying 110 records per pod
 * made ListPodSandboxStats quadratic. A stored record is never changed in place (put replaces
 * it), so a frozen one stays what it was when read. Ids resolve from a full id or a unique
 * prefix, as crictl sends.
 */
import { InvalidArgumentError } from '../errors.js';
import { RecordStore, type VersionedRecord } from './record-store.js';

export class CachedRecordStore<T extends VersionedRecord> {
  readonly #records = new Map<string, T>();
  readonly #disk: RecordStore<T>;

  /** `noun`/`plural` name the objects in error messages ("pod sandbox", "sandboxes"). */
  constructor(
    dir: string,
    version: number,
    parse: (value: unknown) => T,
    private readonly noun: string,
    private readonly plural: string,
  ) {
    this.#disk = new RecordStore(dir, version, parse);
  }

  get dir(): string {
    return this.#disk.dir;
  }

  async load() {
    await this.#disk.init();
    const loaded = await this.#disk.load();
    // Copies: the caller (recovery) keeps and may change the records it was handed.
    for (const record of loaded.records) this.#records.set(record.id, deepFreeze(structuredClone(record)));
    return loaded;
  }

  get(id: string): T | undefined {
    const record = this.#records.get(id);
    return record ? structuredClone(record) : undefined;
  }

  list(): T[] {
    return [...this.#records.values()].map((r) => structuredClone(r));
  }

  /** The stored record, frozen, not a copy: for reads that neither change nor keep it. */
  peek(id: string): Readonly<T> | undefined {
    return this.#records.get(id);
  }

  /** Every stored record, frozen, not copies: for reads that neither change nor keep them. */
  peekAll(): Readonly<T>[] {
    return [...this.#records.values()];
  }

  async put(record: T): Promise<void> {
    await this.#disk.write(record);
    this.#records.set(record.id, deepFreeze(structuredClone(record)));
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
    if (idOrPrefix === '') throw new InvalidArgumentError(`the ${this.noun} id must not be empty`);
    if (this.#records.has(idOrPrefix)) return idOrPrefix;
    const matches = [...this.#records.keys()].filter((id) => id.startsWith(idOrPrefix));
    if (matches.length > 1) {
      throw new InvalidArgumentError(
        `${this.noun} id prefix ${JSON.stringify(idOrPrefix)} matches ${matches.length} ${this.plural}; give more of the id`,
      );
    }
    return matches[0];
  }
}

/**
 * Freezes a record and everything in it, so a shared read cannot change it. Byte arrays cannot
 * be frozen (a request's bytes may reach a record before validation refuses them): left as are.
 */
function deepFreeze<V>(value: V): V {
  if (typeof value === 'object' && value !== null && !ArrayBuffer.isView(value) && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
