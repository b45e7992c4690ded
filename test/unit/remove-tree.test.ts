/**
 * The fd-relative tree removal (native/remove-tree.c through src/os/remove-tree.ts):
 * trees deeper than PATH_MAX, symlinks that must not be followed, directories without
 * permissions, wide directories, and a missing path.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/errors.js';
import { removeTree } from '../../src/os/remove-tree.js';
import { withRunsFailing } from '../fakes/failing-runs.js';
import { makeDeepTree } from '../fixtures/deep-tree.js';

let work: string;

beforeAll(() => {
  execFileSync('make', ['-C', fileURLToPath(new URL('../../native', import.meta.url)), '--quiet'], {
    stdio: 'inherit',
  });
});

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'remove-tree-'));
});

afterEach(async () => {
  await removeTree(work);
});

describe('removeTree', () => {
  it('removes a tree far deeper than PATH_MAX, which fs.rm cannot', async () => {
    const top = join(work, 'top');
    await mkdir(top);
    makeDeepTree(top, 150);
    await expect(rm(top, { recursive: true, force: true })).rejects.toMatchObject({ code: 'ENAMETOOLONG' });
    expect(await removeTree(top)).toBeGreaterThan(150);
    expect(existsSync(top)).toBe(false);
  });

  it('never follows a symlink out of the tree', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside);
    await writeFile(join(outside, 'sentinel'), 'keep');
    const top = join(work, 'top');
    await mkdir(join(top, 'sub'), { recursive: true });
    await symlink(outside, join(top, 'sub', 'link-dir'));
    await symlink(join(outside, 'sentinel'), join(top, 'link-file'));
    await removeTree(top);
    expect(existsSync(top)).toBe(false);
    expect(await readFile(join(outside, 'sentinel'), 'utf8')).toBe('keep');
  });

  it('removes directories without permissions and wide directories', async () => {
    const top = join(work, 'top');
    await mkdir(join(top, 'locked', 'inner'), { recursive: true });
    await writeFile(join(top, 'locked', 'inner', 'f'), 'x');
    await chmod(join(top, 'locked', 'inner'), 0);
    await chmod(join(top, 'locked'), 0);
    await mkdir(join(top, 'wide'));
    for (let i = 0; i < 3000; i++) await writeFile(join(top, 'wide', `f${i}`), '');
    for (let i = 0; i < 300; i++) await mkdir(join(top, 'wide', `d${i}`));
    await removeTree(top);
    expect(existsSync(top)).toBe(false);
  });

  it('removes a small tree in-process (no helper), never following a symlink out of it', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside);
    await writeFile(join(outside, 'sentinel'), 'keep');
    const top = join(work, 'top');
    await mkdir(join(top, 'upper', 'etc'), { recursive: true });
    await mkdir(join(top, 'work', 'work'), { recursive: true });
    await writeFile(join(top, 'upper', 'etc', 'hostname'), 'x');
    await symlink(outside, join(top, 'upper', 'link-dir'));
    const noHelper = { helperPath: '/nonexistent/remove-tree', inProcessUpTo: 16 };
    expect(await removeTree(top, noHelper)).toBe(7);
    expect(existsSync(top)).toBe(false);
    expect(await readFile(join(outside, 'sentinel'), 'utf8')).toBe('keep');
    expect(await removeTree(top, noHelper)).toBe(0);
    // A symlink (conmon links its socket dir entry to the bundle) goes itself, its target stays.
    await symlink(outside, join(work, 'link'));
    expect(await removeTree(join(work, 'link'), noHelper)).toBe(1);
    expect(existsSync(join(work, 'link'))).toBe(false);
    expect(await readFile(join(outside, 'sentinel'), 'utf8')).toBe('keep');
  });

  it('leaves a tree past the in-process bound (entries or path length) to the helper, untouched until then', async () => {
    const wide = join(work, 'wide');
    await mkdir(wide);
    for (let i = 0; i < 20; i++) await writeFile(join(wide, `f${i}`), '');
    const noHelper = { helperPath: '/nonexistent/remove-tree', inProcessUpTo: 16 };
    await expect(removeTree(wide, noHelper)).rejects.toThrow(/cannot start the remove-tree helper/);
    expect(await readdir(wide)).toHaveLength(20);
    const deep = join(work, 'deep');
    await mkdir(deep);
    makeDeepTree(deep, 150);
    await expect(removeTree(deep, { ...noHelper, inProcessUpTo: 1_000 })).rejects.toThrow(
      /remove-tree helper/,
    );
    expect(existsSync(deep)).toBe(true);
    expect(await removeTree(deep, { inProcessUpTo: 1_000 })).toBeGreaterThan(150);
    expect(existsSync(deep)).toBe(false);
  });

  it('is fine with a missing path and removes a single file', async () => {
    expect(await removeTree(join(work, 'absent'))).toBe(0);
    await writeFile(join(work, 'file'), 'x');
    expect(await removeTree(join(work, 'file'))).toBe(1);
    expect(await readdir(work)).toEqual([]);
  });

  it('says clearly when the helper is missing', async () => {
    await expect(removeTree(work, { helperPath: join(work, 'none') })).rejects.toMatchObject({
      kind: 'Internal',
      message: expect.stringMatching(/npm run build/),
    });
  });

  it('keeps the kind of a run that failed for another reason (the run server ended under it)', async () => {
    const gone = new UnavailableError('remove-tree was started but the run server ended before it reported');
    await withRunsFailing(gone, () => expect(removeTree(join(work, 'x'))).rejects.toBe(gone));
  });
});
