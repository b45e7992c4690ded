import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { type Logger, silentLogger } from '../log.js';
import { type Digest, digestHex, isDigest } from './digest.js';
import { Quarantine } from './quarantine.js';

/**
 * Image records: one JSON file per image, `<imageDir>/images/<config digest hex>.json`,
 * and in-memory indexes by repo tag and repo digest.
 *
 * An image is identified by its config digest (the CRI image id, critest's
 * `image_ref == Image.id`). A record names everything the image needs on disk: its blobs
 * (config, manifest, index) and its layers by chain ID; garbage collection keeps exactly
 * what some record names.
 *
 * Lifecycle of a record:
 *
 *   (absent) --pull--> tagged --RemoveImage / last tag moved away--> (absent)
 *                        |                                            ^
 *                        | RemoveImage while held by a container      | last holder released
 *                        v                                            |
 *                      removed (no tags, invisible to the CRI, data kept) --
 *
 * Writes are crash-safe (temp file → fsync → rename → fsync of the directory), and every
 * record carries a version so a later format can be told apart. All mutations of records go
 * through `exclusive`, one at a time, so concurrent RPCs never interleave a read-modify-write.
 */

export const IMAGE_RECORD_VERSION = 1;

export interface LayerRecord {
  /** Compressed blob digest. */
  digest: Digest;
  mediaType: string;
  /** Compressed size, from the manifest. */
  size: number;
  diffId: Digest;
  chainId: Digest;
}

export interface ImageRecord {
  version: typeof IMAGE_RECORD_VERSION;
  /** Config digest: the image id. */
  id: Digest;
  /** `registry/repo:tag`, sorted. */
  repoTags: string[];
  /** `registry/repo@sha256:<top-level manifest or index digest>`, sorted. */
  repoDigests: string[];
  manifestDigest: Digest;
  manifestMediaType: string;
  /** The index the manifest was picked from, when the pulled reference named one. */
  indexDigests: Digest[];
  configSize: number;
  layers: LayerRecord[];
  /** Compressed size of config + layers: what ImageStatus reports. */
  size: number;
  /** The config's `config.User`, kept so status never re-reads the config. */
  user: string;
  /** Who uses the image (container ids); a held image is never deleted. */
  holders: string[];
  /** Untagged by RemoveImage while held: invisible to the CRI, data kept. */
  removed: boolean;
  pulledAt: string;
}

const RECORD_SUFFIX = '.json';
const TEMP_PREFIX = '.tmp-';
const MAX_RECORD_BYTES = 4 * 1024 * 1024;

export class ImageStore {
  readonly recordsDir: string;
  private readonly logger: Logger;
  private readonly records = new Map<Digest, ImageRecord>();
  private readonly byTag = new Map<string, Digest>();
  private readonly byDigest = new Map<string, Digest>();
  private queue: Promise<unknown> = Promise.resolve();
  private readonly quarantine: Quarantine;

  constructor(imageDir: string, logger?: Logger, quarantine?: Quarantine) {
    this.recordsDir = join(imageDir, 'images');
    this.logger = logger ?? silentLogger();
    this.quarantine = quarantine ?? new Quarantine(imageDir, this.logger);
  }

  /**
   * Loads every record from disk, replacing what is in memory. A record that cannot be read
   * or fails validation is quarantined (moved aside, logged), never fatal: one bad file must
   * not stop the daemon from starting.
   */
  async load(): Promise<{ loaded: number; dropped: string[] }> {
    await mkdir(this.recordsDir, { recursive: true, mode: 0o700 });
    this.records.clear();
    this.byTag.clear();
    this.byDigest.clear();
    const dropped: string[] = [];
    for (const name of (await readdir(this.recordsDir)).sort()) {
      const file = join(this.recordsDir, name);
      if (name.startsWith(TEMP_PREFIX)) {
        await rm(file, { force: true, recursive: true }).catch((err: unknown) =>
          this.quarantine.moveAside(file, 'unfinished image record write', err),
        );
        continue;
      }
      if (!name.endsWith(RECORD_SUFFIX)) continue;
      let record: ImageRecord;
      try {
        const text = await readFile(file, 'utf8');
        if (text.length > MAX_RECORD_BYTES) throw new Error('record is too large');
        record = validateRecord(JSON.parse(text));
        if (`${digestHex(record.id)}${RECORD_SUFFIX}` !== name)
          throw new Error('file name does not match the id');
      } catch (err) {
        this.logger.warn(
          { file, err: err instanceof Error ? err.message : String(err) },
          'dropping an unreadable image record; pull the image again',
        );
        await this.quarantine.moveAside(file, `image record ${name}`, err);
        dropped.push(name);
        continue;
      }
      this.index(record);
    }
    return { loaded: this.records.size, dropped };
  }

  /** Runs `task` after every earlier task has finished: one record mutation at a time. */
  exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  get(id: string): ImageRecord | undefined {
    return isDigest(id) ? this.records.get(id) : undefined;
  }

  idByTag(repoTag: string): Digest | undefined {
    return this.byTag.get(repoTag);
  }

  idByDigest(repoDigest: string): Digest | undefined {
    return this.byDigest.get(repoDigest);
  }

  /** Every record, removed ones included, in id order. */
  all(): ImageRecord[] {
    return [...this.records.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Writes the record (crash-safe) and updates the indexes. Call inside `exclusive`. */
  async put(record: ImageRecord): Promise<void> {
    const normal = normalised(record);
    await writeAtomically(this.recordPath(record.id), `${JSON.stringify(normal, null, 1)}\n`);
    this.unindex(record.id);
    this.index(normal);
  }

  /**
   * Updates the record in memory only; its file keeps the old content until the record's next
   * put. Only for changes a restart redoes by itself (a dropped hold: recovery drops the holds
   * of containers that are gone). Call inside `exclusive`.
   */
  replaceInMemory(record: ImageRecord): void {
    this.unindex(record.id);
    this.index(normalised(record));
  }

  /** Removes the record file and its index entries. Call inside `exclusive`. */
  async delete(id: Digest): Promise<void> {
    await rm(this.recordPath(id), { force: true });
    await syncDir(this.recordsDir);
    this.unindex(id);
  }

  private recordPath(id: Digest): string {
    return join(this.recordsDir, `${digestHex(id)}${RECORD_SUFFIX}`);
  }

  private index(record: ImageRecord): void {
    this.records.set(record.id, record);
    for (const tag of record.repoTags) this.byTag.set(tag, record.id);
    for (const digest of record.repoDigests) this.byDigest.set(digest, record.id);
  }

  private unindex(id: Digest): void {
    const old = this.records.get(id);
    if (old === undefined) return;
    for (const tag of old.repoTags) if (this.byTag.get(tag) === id) this.byTag.delete(tag);
    for (const digest of old.repoDigests) if (this.byDigest.get(digest) === id) this.byDigest.delete(digest);
    this.records.delete(id);
  }
}

/** Tags, digests and holders sorted and without duplicates, as records are written. */
function normalised(record: ImageRecord): ImageRecord {
  return {
    ...record,
    repoTags: [...new Set(record.repoTags)].sort(),
    repoDigests: [...new Set(record.repoDigests)].sort(),
    holders: [...new Set(record.holders)].sort(),
  };
}

/** temp file → write → fsync → rename → fsync of the directory. */
export async function writeAtomically(file: string, content: string): Promise<void> {
  const dir = join(file, '..');
  const temp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
  const handle = await open(temp, 'wx', 0o600);
  try {
    await handle.writeFile(content);
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => {});
    await rm(temp, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await rename(temp, file);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  await syncDir(dir);
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function fail(why: string): never {
  throw new Error(why);
}

function digestField(value: unknown, name: string): Digest {
  if (!isDigest(value)) fail(`${name} is not a sha256 digest`);
  return value;
}

function stringList(value: unknown, name: string): string[] {
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string'))
    fail(`${name} is not a list of strings`);
  return value as string[];
}

function count(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) fail(`${name} is not a size`);
  return value;
}

/** Checks a record read from disk field by field (it names paths and blobs GC keeps). */
export function validateRecord(raw: unknown): ImageRecord {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('not a JSON object');
  const r = raw as Record<string, unknown>;
  if (r.version !== IMAGE_RECORD_VERSION) {
    fail(`unknown record version ${JSON.stringify(r.version)} (this daemon writes ${IMAGE_RECORD_VERSION})`);
  }
  if (!Array.isArray(r.layers)) fail('layers is not a list');
  const layers = (r.layers as unknown[]).map((l, i): LayerRecord => {
    if (typeof l !== 'object' || l === null) fail(`layers[${i}] is not an object`);
    const layer = l as Record<string, unknown>;
    if (typeof layer.mediaType !== 'string') fail(`layers[${i}].mediaType is not a string`);
    return {
      digest: digestField(layer.digest, `layers[${i}].digest`),
      mediaType: layer.mediaType,
      size: count(layer.size, `layers[${i}].size`),
      diffId: digestField(layer.diffId, `layers[${i}].diffId`),
      chainId: digestField(layer.chainId, `layers[${i}].chainId`),
    };
  });
  if (typeof r.manifestMediaType !== 'string') fail('manifestMediaType is not a string');
  if (typeof r.user !== 'string') fail('user is not a string');
  if (typeof r.removed !== 'boolean') fail('removed is not a boolean');
  if (typeof r.pulledAt !== 'string') fail('pulledAt is not a string');
  return {
    version: IMAGE_RECORD_VERSION,
    id: digestField(r.id, 'id'),
    repoTags: stringList(r.repoTags, 'repoTags'),
    repoDigests: stringList(r.repoDigests, 'repoDigests'),
    manifestDigest: digestField(r.manifestDigest, 'manifestDigest'),
    manifestMediaType: r.manifestMediaType,
    indexDigests: stringList(r.indexDigests, 'indexDigests').map((d, i) =>
      digestField(d, `indexDigests[${i}]`),
    ),
    configSize: count(r.configSize, 'configSize'),
    layers,
    size: count(r.size, 'size'),
    user: r.user,
    holders: stringList(r.holders, 'holders'),
    removed: r.removed,
    pulledAt: r.pulledAt,
  };
}
