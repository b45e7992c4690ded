/**
 * Reading files of an image rootfs as the container will see them, without ever leaving the
 * rootfs (CVE-2024-9676, CVE-2026-47262: an image's /etc/passwd symlinked to a host file).
 *
 * Node has no openat2(RESOLVE_IN_ROOT), so paths are resolved here one component at a time
 * with lstat/readlink, the way a chroot would: an absolute link target restarts at the root
 * and `..` never climbs above it. The final open uses O_NOFOLLOW and O_NONBLOCK (a FIFO planted
 * at /etc/group must not hang the daemon) and fstat checks it is a regular file.
 *
 * The rootfs belongs to a container that is not running yet (its writable layer is fresh), so
 * nothing swaps components between the resolution and the open; the O_NOFOLLOW open still
 * refuses a final symlink if one appears.
 */
import { constants } from 'node:fs';
import { lstat, open, readlink } from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgumentError } from '../errors.js';

/** As Linux: more than 40 links in one resolution is a loop. */
const MAX_SYMLINKS = 40;

export interface InRootPath {
  /** Where the path lands on the host (always under root). */
  hostPath: string;
  /** The same place as the container sees it (absolute, normalised, no symlinks). */
  containerPath: string;
  /** false when a component does not exist; the rest of the path was then joined lexically. */
  exists: boolean;
}

function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

/** Resolves `p` (absolute or relative to the container's /) inside `root`, following symlinks in-root. */
export async function resolveInRoot(root: string, p: string): Promise<InRootPath> {
  const pending = components(p);
  const resolved: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const name = pending.shift()!;
    if (name === '..') {
      resolved.pop();
      continue;
    }
    const hostPath = path.join(root, ...resolved, name);
    let st: import('node:fs').Stats;
    try {
      st = await lstat(hostPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      // The rest does not exist: finish lexically, still clamped at the root.
      resolved.push(name);
      for (const rest of pending) {
        if (rest === '..') resolved.pop();
        else resolved.push(rest);
      }
      return {
        hostPath: path.join(root, ...resolved),
        containerPath: `/${resolved.join('/')}`,
        exists: false,
      };
    }
    if (st.isSymbolicLink()) {
      links += 1;
      if (links > MAX_SYMLINKS) {
        throw new InvalidArgumentError(`too many levels of symbolic links resolving ${p} in the image`);
      }
      const target = await readlink(hostPath);
      if (target.startsWith('/')) resolved.length = 0;
      pending.unshift(...components(target));
      continue;
    }
    if (pending.length > 0 && !st.isDirectory()) {
      throw new InvalidArgumentError(
        `${p} in the image: /${[...resolved, name].join('/')} is not a directory`,
      );
    }
    resolved.push(name);
  }
  return { hostPath: path.join(root, ...resolved), containerPath: `/${resolved.join('/')}`, exists: true };
}

/**
 * Reads a regular file of the rootfs, at most `maxBytes`. Returns null when it does not exist;
 * throws InvalidArgument when it is larger, not a regular file, or resolves oddly.
 */
export async function readFileInRoot(root: string, p: string, maxBytes: number): Promise<Buffer | null> {
  const where = await resolveInRoot(root, p);
  if (!where.exists) return null;
  let handle: import('node:fs/promises').FileHandle;
  try {
    handle = await open(where.hostPath, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ELOOP')
      throw new InvalidArgumentError(`${p} in the image changed into a symlink`, { cause: err });
    throw new InvalidArgumentError(`cannot open ${p} in the image`, { cause: err });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new InvalidArgumentError(`${p} in the image is not a regular file`);
    if (st.size > maxBytes) {
      throw new InvalidArgumentError(
        `${p} in the image is ${st.size} bytes, more than the ${maxBytes} bytes rootless-cri reads; fix the image`,
      );
    }
    // Room for one byte more than fstat said, grown up to one byte more than allowed: a file
    // that grows between fstat and read is still caught. (Not maxBytes up front: zero-filling
    // that for every CreateContainer's /etc/passwd and /etc/group showed in its CPU profile.)
    let buf = Buffer.allocUnsafe(Math.min(st.size, maxBytes) + 1);
    let total = 0;
    for (;;) {
      if (total === buf.length) {
        const grown = Buffer.allocUnsafe(Math.min(buf.length * 2, maxBytes + 1));
        buf.copy(grown, 0, 0, total);
        buf = grown;
      }
      const { bytesRead } = await handle.read(buf, total, buf.length - total, total);
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > maxBytes) {
        throw new InvalidArgumentError(`${p} in the image is larger than ${maxBytes} bytes; fix the image`);
      }
    }
    return buf.subarray(0, total);
  } finally {
    await handle.close();
  }
}
