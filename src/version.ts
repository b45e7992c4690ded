/**
 * Where rootless-cri is installed and which version it is. Modules run from src/ (vitest) and
 * from dist/src/ (compiled), so both are found by walking up to rootless-cri's package.json.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InternalError } from './errors.js';

const PACKAGE_NAME = 'rootless-cri';

let cached: { root: string; version: string } | undefined;

function findPackage(startDir: string): { root: string; version: string } {
  let dir = startDir;
  for (;;) {
    try {
      const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
        name?: unknown;
        version?: unknown;
      };
      if (manifest.name === PACKAGE_NAME && typeof manifest.version === 'string') {
        return { root: dir, version: manifest.version };
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new InternalError(`cannot read ${join(dir, 'package.json')}; reinstall rootless-cri`, {
          cause: err,
        });
      }
    }
    const parent = dirname(dir);
    if (parent === dir) {
      throw new InternalError(`no package.json of ${PACKAGE_NAME} above ${startDir}; reinstall rootless-cri`);
    }
    dir = parent;
  }
}

function installed(): { root: string; version: string } {
  cached ??= findPackage(dirname(fileURLToPath(import.meta.url)));
  return cached;
}

/** The directory holding rootless-cri's package.json (and proto/, deploy/, native/). */
export function packageRoot(startDir?: string): string {
  return startDir === undefined ? installed().root : findPackage(startDir).root;
}

/** The version in package.json, read once. */
export function packageVersion(): string {
  return installed().version;
}
