/**
 * readFileInRoot: a file of an image's rootfs read whole up to a limit, by a path resolved
 * inside the rootfs.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { readFileInRoot } from '../../src/os/in-root.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'rcri-in-root-'));
  await mkdir(path.join(root, 'etc'));
});
afterEach(() => rm(root, { recursive: true, force: true }));

describe('readFileInRoot', () => {
  it('reads files of every size up to the limit byte-exact', async () => {
    for (const size of [0, 1, 100, 4096, 65_537, 100_000]) {
      const content = randomBytes(size);
      await writeFile(path.join(root, 'etc/f'), content);
      expect((await readFileInRoot(root, '/etc/f', 100_000))?.equals(content)).toBe(true);
    }
  });

  it('refuses a file one byte over the limit', async () => {
    await writeFile(path.join(root, 'etc/f'), randomBytes(1001));
    await expect(readFileInRoot(root, '/etc/f', 1000)).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('follows a symlink inside the root, never out of it, and gives null for a missing file', async () => {
    await writeFile(path.join(root, 'etc/real'), 'inside\n');
    await symlink('/etc/real', path.join(root, 'etc/link'));
    expect((await readFileInRoot(root, '/etc/link', 100))?.toString()).toBe('inside\n');
    await symlink('../../../../../../etc/hostname', path.join(root, 'etc/out'));
    expect(await readFileInRoot(root, '/etc/out', 100)).toBeNull();
    expect(await readFileInRoot(root, '/etc/none', 100)).toBeNull();
  });

  it('refuses a directory', async () => {
    await expect(readFileInRoot(root, '/etc', 100)).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});
