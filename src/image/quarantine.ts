/**
 * Where the image store puts what it can neither read nor remove: a record that does not
 * parse, a temp directory a crash left that even the fd-relative removal cannot delete.
 * Such an object is moved aside (a rename, which works whatever the tree below looks like)
 * into `<imageDir>/quarantine/`, logged, and listed for verbose Status, so that one bad
 * object never stops recovery, pulls, garbage collection or ImageFsInfo. Each recovery
 * tries to remove what is in quarantine again; what still resists stays listed.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { type Logger, silentLogger } from '../log.js';
import { removeTree } from '../os/remove-tree.js';

export interface QuarantinedObject {
  /** What it was, e.g. "image record 1a2b….json" or "unfinished layer unpack". */
  what: string;
  /** Where it is now (or still is, if even the move failed). */
  path: string;
  reason: string;
  at: string;
}

export class Quarantine {
  readonly dir: string;
  private readonly logger: Logger;
  private readonly objects = new Map<string, QuarantinedObject>();

  constructor(imageDir: string, logger?: Logger) {
    this.dir = join(imageDir, 'quarantine');
    this.logger = logger ?? silentLogger();
  }

  /** Everything in quarantine now, oldest first. */
  list(): QuarantinedObject[] {
    return [...this.objects.values()];
  }

  /** Moves `path` aside and reports it. Never throws. */
  async moveAside(path: string, what: string, reason: unknown): Promise<QuarantinedObject> {
    const why = describe(reason);
    const target = join(this.dir, `${basename(path)}-${Date.now()}-${randomBytes(4).toString('hex')}`);
    let where = path;
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      await rename(path, target);
      where = target;
    } catch (err) {
      this.logger.error(
        { what, path, reason: why, err: describe(err) },
        'cannot move a damaged object aside; it stays where it is',
      );
    }
    const object: QuarantinedObject = { what, path: where, reason: why, at: new Date().toISOString() };
    this.objects.set(where, object);
    this.logger.warn(
      { what, from: path, to: where, reason: why },
      'quarantined a damaged image-store object; inspect or delete it by hand',
    );
    return object;
  }

  /**
   * Removes what earlier runs put in quarantine, where that works now; lists the rest
   * (they are reported again). Never throws.
   */
  async sweep(): Promise<void> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        this.logger.warn({ dir: this.dir, err: describe(err) }, 'cannot list the image quarantine');
      return;
    }
    for (const name of names) {
      const path = join(this.dir, name);
      try {
        await removeTree(path);
        this.objects.delete(path);
      } catch (err) {
        if (!this.objects.has(path)) {
          this.objects.set(path, {
            what: 'object quarantined by an earlier run',
            path,
            reason: describe(err),
            at: new Date().toISOString(),
          });
        }
        this.logger.warn({ path, err: describe(err) }, 'a quarantined object still cannot be removed');
      }
    }
  }
}

function describe(value: unknown): string {
  const text = value instanceof Error ? value.message : String(value);
  // Messages from the OS can carry a whole overlong path; a report needs its gist.
  return text.length > 500 ? `${text.slice(0, 500)}…` : text;
}
