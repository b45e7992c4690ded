/**
 * Removes a directory tree with the native `remove-tree` helper (native/remove-tree.c), which
 * works one name at a time relative to directory fds. Node's fs.rm joins names into absolute
 * paths, so a tree deeper than PATH_MAX (a hostile layer, a container's upper dir) fails
 * with ENAMETOOLONG and could never be removed. The helper never follows a symlink and
 * stops at a mount point below the tree. A missing path is fine. A caller that owns its tree
 * outright may let a small one be removed in-process instead (inProcessUpTo), sparing the spawn.
 */
import { type Dirent, lstatSync, readdirSync, rmdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { FailedPreconditionError, InternalError, ResourceExhaustedError } from '../errors.js';
import { syncCallTurn } from './kernel-file.js';
import { decodeHelperReport, nativeHelperPath } from './native-helpers.js';
import { outputTail, ProgramNotFoundError, run } from './process-runner.js';

export interface RemoveTreeOptions {
  helperPath?: string;
  /**
   * A tree of at most this many entries is removed in-process (see removeSmallTree), else by
   * the helper. Only for a tree nothing else can change while it is removed.
   */
  inProcessUpTo?: number;
}

interface Report {
  ok: boolean;
  removed?: number;
  kind?: string;
  errno?: string;
  error?: string;
}

const OUTPUT_CAP = 16 * 1024;

/** Removes `path` and everything below it; resolves with the number of entries removed. */
export async function removeTree(path: string, options: RemoveTreeOptions = {}): Promise<number> {
  if (options.inProcessUpTo !== undefined) {
    const removed = await removeSmallTree(path, options.inProcessUpTo);
    if (removed !== false) return removed;
  }
  const helper = options.helperPath ?? nativeHelperPath('remove-tree');
  // A missing helper is an installation fault; anything else (the run server ended under the
  // run: Unavailable, a timeout) keeps its own kind: RemoveContainer answered INTERNAL for it.
  const r = await run(helper, [path], { maxOutputBytes: OUTPUT_CAP, timeoutMs: 10 * 60_000 }).catch(
    (err: unknown) => {
      if (!(err instanceof ProgramNotFoundError)) throw err;
      throw new InternalError(`cannot start the remove-tree helper ${helper} (run npm run build)`, {
        cause: err,
      });
    },
  );
  const report = decodeHelperReport(r.stdout.toString('utf8')) as Report | undefined;
  if (report?.ok === true && r.exitCode === 0) return report.removed ?? 0;
  if (report?.ok === false) throw reportError(report, path);
  const how = r.signal ? `was killed by ${r.signal}` : `exited with code ${r.exitCode}`;
  throw new InternalError(`remove-tree helper ${how} removing ${path}: ${outputTail(r)}`);
}

function reportError(report: Report, path: string): Error {
  const why = `cannot remove ${path}: ${report.error ?? 'unknown error'}`;
  if (report.kind === 'mount') return new FailedPreconditionError(why);
  if (report.errno === 'ENOSPC' || report.errno === 'EDQUOT') return new ResourceExhaustedError(why);
  return new InternalError(why);
}

/** Paths longer than this go to the helper (it never builds a path at all). */
const IN_PROCESS_MAX_PATH = 1024;

/**
 * Removes a small tree with synchronous calls (taking kernel-file's turns: each is a few µs on a
 * tree the kernel has cached, where the helper's spawn is ~2 ms). Returns false when the tree is
 * not small and simple: more than `maxEntries` entries, a path longer than IN_PROCESS_MAX_PATH,
 * or a directory on another filesystem (a mount below, which the helper reports); nothing is
 * removed then. An entry that vanishes meanwhile is fine (a conmon that is exiting removes its
 * own files); an entry that appears meanwhile gets one more walk; any other failure returns
 * false, and the helper finishes: removal is idempotent. Paths are joined (unlike the helper's
 * fd-relative walk), so the caller must own the tree outright: a container's writable layer once
 * its mount is gone, which no process can reach, or a bundle.
 */
async function removeSmallTree(root: string, maxEntries: number): Promise<number | false> {
  for (let walk = 0; walk < 2; walk++) {
    const removed = await removeSmallTreeOnce(root, maxEntries);
    if (removed !== 'raced') return removed;
  }
  return false;
}

const gone = (err: unknown) => (err as NodeJS.ErrnoException).code === 'ENOENT';

async function removeSmallTreeOnce(root: string, maxEntries: number): Promise<number | false | 'raced'> {
  let dev: number;
  try {
    const top = lstatSync(root);
    if (!top.isDirectory()) {
      // A single file or symlink (conmon's link from the socket dir to the bundle): unlink
      // never follows a link.
      unlinkSync(root);
      return 1;
    }
    dev = top.dev;
  } catch (err) {
    return gone(err) ? 0 : false;
  }
  const dirs = [root];
  const others: string[] = [];
  for (let i = 0; i < dirs.length; i++) {
    await syncCallTurn();
    let entries: Dirent[];
    try {
      entries = readdirSync(dirs[i]!, { withFileTypes: true });
    } catch (err) {
      if (gone(err)) continue;
      return false;
    }
    for (const entry of entries) {
      const path = join(dirs[i]!, entry.name);
      if (dirs.length + others.length >= maxEntries || path.length > IN_PROCESS_MAX_PATH) return false;
      if (!entry.isDirectory()) {
        others.push(path);
        continue;
      }
      await syncCallTurn();
      try {
        if (lstatSync(path).dev !== dev) return false;
      } catch (err) {
        if (gone(err)) continue;
        return false;
      }
      dirs.push(path);
    }
  }
  try {
    for (const path of others) {
      await syncCallTurn();
      try {
        unlinkSync(path);
      } catch (err) {
        if (!gone(err)) throw err;
      }
    }
    for (const dir of dirs.reverse()) {
      await syncCallTurn();
      try {
        rmdirSync(dir);
      } catch (err) {
        if (!gone(err)) throw err;
      }
    }
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOTEMPTY' ? 'raced' : false;
  }
  return dirs.length + others.length;
}
