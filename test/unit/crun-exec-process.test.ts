/** CrunExec's container process specs: read from the bundle once, kept until forgotten, bounded. */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { CrunExec } from '../../src/os/crun-exec.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'rcri-crun-exec-'));
});
afterEach(() => rm(root, { recursive: true, force: true }));

function crunExec(): CrunExec {
  return new CrunExec({
    crunPath: '/nonexistent/crun',
    crunRoot: path.join(root, 'crun'),
    consoleRelayPath: '/nonexistent/console-relay',
    logger: silentLogger(),
  });
}

async function bundle(name: string, args: string[]): Promise<string> {
  const dir = path.join(root, name);
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'config.json'), JSON.stringify({ process: { args, cwd: '/' } }));
  return dir;
}

describe('CrunExec.baseProcess', () => {
  it('reads the bundle once and answers from memory until the bundle is forgotten', async () => {
    const exec = crunExec();
    const dir = await bundle('a', ['first']);
    expect((await exec.baseProcess(dir, 'a')).args).toEqual(['first']);
    // A rewrite is not seen (the process section never changes after create) …
    await bundle('a', ['second']);
    expect((await exec.baseProcess(dir, 'a')).args).toEqual(['first']);
    // … until create or delete forgets the bundle.
    exec.forget(dir);
    expect((await exec.baseProcess(dir, 'a')).args).toEqual(['second']);
  });

  it('fails with FailedPrecondition for a forgotten bundle that is gone', async () => {
    const exec = crunExec();
    const dir = await bundle('gone', ['sh']);
    await exec.baseProcess(dir, 'gone');
    await rm(dir, { recursive: true });
    exec.forget(dir);
    await expect(exec.baseProcess(dir, 'gone')).rejects.toBeInstanceOf(FailedPreconditionError);
    await expect(exec.baseProcess(dir, 'gone')).rejects.toThrow(/cannot read its bundle/);
  });

  it('keeps at most 1024 bundles, dropping the oldest first', async () => {
    const exec = crunExec();
    const first = await bundle('b0', ['old']);
    await exec.baseProcess(first, 'b0');
    for (let i = 1; i <= 1024; i++) await exec.baseProcess(await bundle(`b${i}`, ['x']), `b${i}`);
    await bundle('b0', ['new']);
    expect((await exec.baseProcess(first, 'b0')).args).toEqual(['new']);
    // The newest of the rest is still kept.
    await bundle('b1024', ['changed']);
    expect((await exec.baseProcess(path.join(root, 'b1024'), 'b1024')).args).toEqual(['x']);
  });
});
