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
 *
 * The same walk measures one container's writable layer for the stats RPCs (the snapshotter's
 * usage). Two ways to reach the filesystem (WalkAccess): the image store's big, possibly cold
 * tree through the libuv pool; the writable layers, small and in the kernel's caches, with
 * synchronous calls that yield to the event loop every few calls.
 */
import { type BigIntStats, lstatSync, readdirSync, statSync } from 'node:fs';
import { lstat, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ImageHandlers } from '../api/handlers.js';
import type { Logger } from '../log.js';
import { syncCallTurn } from '../os/kernel-file.js';

export interface DirectoryUsage {
  /** Allocated bytes, a decimal string (uint64 on the wire). */
  bytes: bigint;
  inodes: bigint;
  /** Entries that could not be read (not counted); with the first such error. */
  skipped?: number;
  firstSkipError?: string;
}

const IGNORED_WALK_ERRORS = new Set(['ENOENT', 'ENOTDIR', 'EACCES', 'EPERM']);

function ignorable(err: unknown): boolean {
  return IGNORED_WALK_ERRORS.has((err as NodeJS.ErrnoException).code ?? '');
}

function shortError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return `${e.code ?? 'error'} on ${e.syscall ?? 'walk'} (${(e.path ?? '').length} byte path)`;
}

/**
 * How a walk reaches the filesystem. Each call throws the syscall's error; `lstatEach` hands
 * each entry's error to `onError` and leaves its slot undefined.
 */
export interface WalkAccess {
  stat(path: string): Promise<BigIntStats>;
  readdir(dir: string): Promise<string[]>;
  lstatEach(
    paths: readonly string[],
    onError: (err: unknown) => undefined,
  ): Promise<(BigIntStats | undefined)[]>;
}

const LSTAT_BATCH = 64;

/**
 * Through the libuv pool, up to LSTAT_BATCH lstat calls at once: for big trees that may be cold
 * on a disk (the image store, ImageFsInfo's walk), where the pool overlaps the disk's waits and
 * the event loop never waits on one.
 */
export const poolAccess: WalkAccess = {
  stat: (path) => stat(path, { bigint: true }),
  readdir: (dir) => readdir(dir),
  async lstatEach(paths, onError) {
    const infos: (BigIntStats | undefined)[] = [];
    for (let i = 0; i < paths.length; i += LSTAT_BATCH) {
      const batch = paths.slice(i, i + LSTAT_BATCH);
      infos.push(...(await Promise.all(batch.map((path) => lstat(path, { bigint: true }).catch(onError)))));
    }
    return infos;
  },
};

/**
 * Synchronous calls, yielding to the event loop every 32 calls as kernel-file.ts's reads do (one
 * budget for both): for the writable layers, which every stats RPC walks once per container
 * (kubelet polls them every few seconds; at 110 pods a call walks 110 layers). Their entries
 * are in the kernel's dentry and inode caches (the containers made them), so an lstat is ~2 µs
 * of CPU there, while a round trip through the pool costs the event loop 10-20 µs and the call
 * its hand-offs. The price: a walk over a cold spinning disk holds the loop for one seek per
 * call, at most.
 */
export const turnTakingSyncAccess: WalkAccess = {
  async stat(path) {
    await syncCallTurn();
    return statSync(path, { bigint: true });
  },
  async readdir(dir) {
    await syncCallTurn();
    return readdirSync(dir);
  },
  async lstatEach(paths, onError) {
    const infos: (BigIntStats | undefined)[] = [];
    for (const path of paths) {
      await syncCallTurn();
      try {
        infos.push(lstatSync(path, { bigint: true }));
      } catch (err) {
        infos.push(onError(err));
      }
    }
    return infos;
  },
};

/** Walks `dir` (see the module comment for what counts). Entries vanishing or unreadable mid-walk are skipped. */
export async function measureDirectory(
  dir: string,
  access: WalkAccess = poolAccess,
): Promise<DirectoryUsage> {
  return (await measureExistingDirectory(dir, access)) ?? { bytes: 0n, inodes: 0n };
}

/**
 * measureDirectory, but undefined when `dir` is absent or not a directory: a writable layer's
 * usage is asked for every container on every stats call, and this spares its own stat.
 */
export async function measureExistingDirectory(
  dir: string,
  access: WalkAccess = poolAccess,
): Promise<DirectoryUsage | undefined> {
  // The configured directory itself may be a symlink to another disk: that one link is followed.
  const root = await access.stat(dir).catch((err: unknown) => {
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
      names = await access.readdir(current);
    } catch (err) {
      skip(err);
      continue;
    }
    const paths = names.map((name) => join(current, name));
    const infos = await access.lstatEach(paths, skip);
    infos.forEach((info, index) => {
      if (info === undefined || info.dev !== root.dev) return;
      count(info);
      if (info.isDirectory()) pending.push(paths[index]!);
    });
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
