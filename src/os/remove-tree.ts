/**
 * Removes a directory tree with the native `remove-tree` helper (native/remove-tree.c), which
 * works one name at a time relative to directory fds. Node's fs.rm joins names into absolute
 * paths, so a tree deeper than PATH_MAX (a hostile layer, a container's upper dir) fails
 * with ENAMETOOLONG and could never be removed. The helper never follows a symlink and
 * stops at a mount point below the tree. A missing path is fine.
 */
import { spawn } from 'node:child_process';
import { FailedPreconditionError, InternalError, ResourceExhaustedError } from '../errors.js';
import { nativeHelperPath } from './native-helpers.js';

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
export function removeTree(path: string, options: RemoveTreeOptions = {}): Promise<number> {
  const helper = options.helperPath ?? nativeHelperPath('remove-tree');
  return new Promise<number>((resolve, reject) => {
    const child = spawn(helper, [path], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      if (stdout.length < OUTPUT_CAP) stdout += chunk;
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      if (stderr.length < OUTPUT_CAP) stderr += chunk;
    });
    child.once('error', (err) =>
      reject(
        new InternalError(
          `cannot start the remove-tree helper ${helper}: ${err.message} (run npm run build)`,
          {
            cause: err,
          },
        ),
      ),
    );
    child.once('close', (code, signal) => {
      const report = parseReport(stdout);
      if (report?.ok === true && code === 0) {
        resolve(report.removed ?? 0);
        return;
      }
      if (report?.ok === false) {
        reject(reportError(report, path));
        return;
      }
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      reject(new InternalError(`remove-tree helper ${how} removing ${path}: ${stderr.trim().slice(0, 500)}`));
    });
  });
}

function parseReport(stdout: string): Report | undefined {
  const line = stdout.trim().split('\n').pop();
  if (!line) return undefined;
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === 'object' && value !== null && 'ok' in value ? (value as Report) : undefined;
  } catch {
    return undefined;
  }
}

function reportError(report: Report, path: string): Error {
  const why = `cannot remove ${path}: ${report.error ?? 'unknown error'}`;
  if (report.kind === 'mount') return new FailedPreconditionError(why);
  if (report.errno === 'ENOSPC' || report.errno === 'EDQUOT') return new ResourceExhaustedError(why);
  return new InternalError(why);
}
