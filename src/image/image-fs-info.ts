/**
 * ImageFsInfo: how much of its filesystem the image store (and, if configured apart, the
 * containers' writable layers) uses. kubelet's image garbage collection and disk-pressure
 * eviction act on these numbers, so they come from a real walk of the directories.
 *
 * What is counted:
 * - bytes: allocated space, st_blocks × 512 of each distinct inode, as `du` reports it.
 *   Allocated rather than apparent size because disk pressure is about blocks in use:
 *   sparse files count what they occupy, and small files their full blocks.
 * - inodes: distinct (device, inode) pairs, so a hard-linked file counts once in both.
 * - The walk never follows symlinks (a link counts as itself) and stays on the directory's
 *   own filesystem, like `du -x`: a fuse-overlayfs rootfs mounted below the
 *   writable-layers dir must not be counted through its mount.
 * - A directory that does not exist yet (fresh node, nothing pulled) counts as 0.
 * - One entry that cannot be read (vanished, no permission, a path longer than PATH_MAX
 *   in a tree an older version left) is skipped and counted in `skipped`, never an error:
 *   kubelet's image GC and every crictl image command depend on this RPC.
 */
import { lstat, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ImageHandlers } from '../api/handlers.js';
import type { Logger } from '../log.js';

export interface DirectoryUsage {
  /** Allocated bytes, a decimal string (uint64 on the wire). */
  bytes: bigint;
  inodes: bigint;
  /** Entries that could not be read (not counted); with the first such error. */
  skipped?: number;
  firstSkipError?: string;
}

const LSTAT_BATCH = 64;
const IGNORED_WALK_ERRORS = new Set(['ENOENT', 'ENOTDIR', 'EACCES', 'EPERM']);

function ignorable(err: unknown): boolean {
  return IGNORED_WALK_ERRORS.has((err as NodeJS.ErrnoException).code ?? '');
}

function shortError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return `${e.code ?? 'error'} on ${e.syscall ?? 'walk'} (${(e.path ?? '').length} byte path)`;
}

/** Walks `dir` (see the module comment for what counts). Entries vanishing or unreadable mid-walk are skipped. */
export async function measureDirectory(dir: string): Promise<DirectoryUsage> {
  return (await measureExistingDirectory(dir)) ?? { bytes: 0n, inodes: 0n };
}

/**
 * measureDirectory, but undefined when `dir` is absent or not a directory: a writable layer's
 * usage is asked for every container on every stats call, and this spares its own stat.
 */
export async function measureExistingDirectory(dir: string): Promise<DirectoryUsage | undefined> {
  // The configured directory itself may be a symlink to another disk: that one link is followed.
  const root = await stat(dir, { bigint: true }).catch((err: unknown) => {
    if (ignorable(err)) return undefined;
    throw err;
  });
  if (root === undefined || !root.isDirectory()) return undefined;

  const seen = new Set<string>();
  let bytes = 0n;
  let skipped = 0;
  let firstSkipError: string | undefined;
  const skip = (err: unknown): undefined => {
    // Vanishing entries are the normal race of a walk; anything else is reported.
    if (!ignorable(err) || (err as NodeJS.ErrnoException).code === 'EACCES') {
      skipped += 1;
      firstSkipError ??= shortError(err);
    }
    return undefined;
  };
  const count = (info: { dev: bigint; ino: bigint; blocks: bigint }) => {
    const key = `${info.dev}:${info.ino}`;
    if (seen.has(key)) return;
    seen.add(key);
    bytes += info.blocks * 512n;
  };
  count(root);

  const pending = [dir];
  while (pending.length > 0) {
    const current = pending.pop()!;
    let names: string[];
    try {
      names = await readdir(current);
    } catch (err) {
      skip(err);
      continue;
    }
    for (let i = 0; i < names.length; i += LSTAT_BATCH) {
      const paths = names.slice(i, i + LSTAT_BATCH).map((name) => join(current, name));
      const infos = await Promise.all(paths.map((path) => lstat(path, { bigint: true }).catch(skip)));
      infos.forEach((info, index) => {
        if (info === undefined || info.dev !== root.dev) return;
        count(info);
        if (info.isDirectory()) pending.push(paths[index]!);
      });
    }
  }
  const usage: DirectoryUsage = { bytes, inodes: BigInt(seen.size) };
  if (skipped > 0) {
    usage.skipped = skipped;
    usage.firstSkipError = firstSkipError!;
  }
  return usage;
}

export interface ImageFsInfoOptions {
  /** The image store's directory (layers and content). */
  imageDir: string;
  /** The containers' writable layers, when kept apart from the image store. */
  containerDir?: string;
  /** How long a walk's result is reused; kubelet asks every 10 s or so. Default 5 s. */
  cacheTtlMs?: number;
  now?: () => number;
  measure?: (dir: string) => Promise<DirectoryUsage>;
  /** Where skipped entries are reported (once per walk). */
  logger?: Logger;
}

interface Measurement {
  usage: DirectoryUsage;
  /** Wall-clock time of the walk, ns since the epoch. */
  timestampNs: bigint;
  takenAtMs: number;
}

/** Caches one directory's usage for `ttlMs`; concurrent callers share one walk. */
class CachedUsage {
  #last: Measurement | undefined;
  #inFlight: Promise<Measurement> | undefined;

  constructor(
    readonly dir: string,
    private readonly ttlMs: number,
    private readonly now: () => number,
    private readonly measure: (dir: string) => Promise<DirectoryUsage>,
  ) {}

  get(): Promise<Measurement> {
    const last = this.#last;
    if (last !== undefined && this.now() - last.takenAtMs < this.ttlMs) return Promise.resolve(last);
    if (this.#inFlight === undefined) {
      const takenAtMs = this.now();
      this.#inFlight = this.measure(this.dir)
        .then((usage) => {
          this.#last = { usage, takenAtMs, timestampNs: BigInt(Math.round(takenAtMs)) * 1_000_000n };
          return this.#last;
        })
        .finally(() => {
          this.#inFlight = undefined;
        });
    }
    return this.#inFlight;
  }
}

function filesystemUsage(dir: string, m: Measurement) {
  return {
    timestamp: m.timestampNs.toString(),
    fs_id: { mountpoint: dir },
    used_bytes: { value: m.usage.bytes.toString() },
    inodes_used: { value: m.usage.inodes.toString() },
  };
}

export function createImageFsInfoHandler(options: ImageFsInfoOptions): ImageHandlers['ImageFsInfo'] {
  const ttl = options.cacheTtlMs ?? 5_000;
  const now = options.now ?? Date.now;
  const walk = options.measure ?? measureDirectory;
  const measure = async (dir: string) => {
    const usage = await walk(dir);
    if (usage.skipped)
      options.logger?.warn(
        { dir, skipped: usage.skipped, first: usage.firstSkipError },
        'ImageFsInfo skipped entries it cannot read; the figures leave them out',
      );
    return usage;
  };
  const images = new CachedUsage(options.imageDir, ttl, now, measure);
  const containers =
    options.containerDir === undefined ? undefined : new CachedUsage(options.containerDir, ttl, now, measure);
  return async () => {
    const [imageUsage, containerUsage] = await Promise.all([images.get(), containers?.get()]);
    return {
      image_filesystems: [filesystemUsage(images.dir, imageUsage)],
      container_filesystems:
        containers === undefined || containerUsage === undefined
          ? []
          : [filesystemUsage(containers.dir, containerUsage)],
    };
  };
}
