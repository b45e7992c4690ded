/** crun's temporary files: in the daemon's run dir, what a killed crun left cleared at start. */
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { useCrunScratchDir } from '../../src/os/crun-scratch.js';

let runDir: string;
beforeEach(async () => {
  runDir = await mkdtemp(path.join(tmpdir(), 'rcri-crun-scratch-'));
});
afterEach(() => rm(runDir, { recursive: true, force: true }));

describe('useCrunScratchDir', () => {
  it('points _LIBCONTAINER_STATEDIR at <runDir>/crun-tmp and removes only old leftovers', async () => {
    const dir = path.join(runDir, 'crun-tmp');
    await mkdir(dir);
    await writeFile(path.join(dir, 'crun.old111'), '', { mode: 0 });
    await writeFile(path.join(dir, 'crun.new222'), '', { mode: 0 });
    const hourAgo = new Date(Date.now() - 3_600_000);
    await utimes(path.join(dir, 'crun.old111'), hourAgo, hourAgo);
    const env: NodeJS.ProcessEnv = {};
    expect(await useCrunScratchDir(runDir, env)).toBe(dir);
    expect(env._LIBCONTAINER_STATEDIR).toBe(dir);
    expect(await readdir(dir)).toEqual(['crun.new222']);
  });

  it('makes the directory when it is not there', async () => {
    const env: NodeJS.ProcessEnv = {};
    await useCrunScratchDir(runDir, env);
    expect(await readdir(runDir)).toEqual(['crun-tmp']);
  });
});
