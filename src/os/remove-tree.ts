/**
 * Removes a directory tree with the native `remove-tree` helper (native/remove-tree.c), which
 * works one name at a time relative to directory fds. Node's fs.rm joins names into absolute
 * paths, so a tree deeper than PATH_MAX (a hostile layer, a container's upper dir) fails
 * with ENAMETOOLONG and could never be removed. The helper never follows a symlink and
 * stops at a mount point below the tree. A missing path is fine.
 */
import { FailedPreconditionError, InternalError, ResourceExhaustedError } from '../errors.js';
import { decodeHelperReport, nativeHelperPath } from './native-helpers.js';
import { outputTail, ProgramNotFoundError, run } from './process-runner.js';

export interface RemoveTreeOptions {
  helperPath?: string;
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
