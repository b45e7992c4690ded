/**
 * The exit watcher over a real directory (fs.watch) and a reader the test controls: exits are
 * delivered once, to waiters and listeners, whether the file came before or after the wait, and
 * a check asked for while a read is under way is not lost.
 */
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type ExitInfo, ExitWatcher } from '../../src/os/exit-watcher.js';

let dir: string;
let watcher: ExitWatcher | undefined;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'exit-watcher-'));
});

afterEach(async () => {
  watcher?.close();
  await rm(dir, { recursive: true, force: true });
});

const info = (exitCode: number): ExitInfo => ({ exitCode, exitedAt: new Date(0), oomKilled: false });

/** Reads `<dir>/<id>` as an exit code; no file (or an empty one) is no exit. */
async function readExit(id: string): Promise<ExitInfo | null> {
  const text = await readFile(path.join(dir, id), 'utf8').catch(() => '');
  return text.trim() === '' ? null : info(Number(text));
}

/** As conmon does: written aside, then renamed into place. */
async function writeExit(id: string, code: number): Promise<void> {
  await writeFile(path.join(dir, `${id}.tmp1`), String(code));
  await rename(path.join(dir, `${id}.tmp1`), path.join(dir, id));
}

describe('ExitWatcher', () => {
  it('delivers an exit that happens after the wait, and one that was there before it, once each', async () => {
    watcher = new ExitWatcher({ exitDir: dir, read: readExit, rescanMs: 0 });
    await writeExit('before', 3);
    await watcher.start();
    const heard: string[] = [];
    // conmon's temporary names are not container ids; the runtime ignores exits it has no record of.
    watcher.onExit((id, i) => {
      if (!id.includes('.')) heard.push(`${id}:${i.exitCode}`);
    });
    expect((await watcher.wait('before', 1000))?.exitCode).toBe(3);
    const waiting = watcher.wait('after', 5000);
    await writeExit('after', 7);
    expect((await waiting)?.exitCode).toBe(7);
    await watcher.check('after');
    expect(heard).toEqual(['after:7']);
  });

  it('a check asked for while a read is under way reads again: the exit is not left to the rescan', async () => {
    // The first read starts before the file is in place and ends after it is: it sees nothing.
    let reads = 0;
    let releaseFirst: () => void = () => undefined;
    const firstStarted = new Promise<void>((started) => {
      const read = async (id: string): Promise<ExitInfo | null> => {
        reads += 1;
        if (reads === 1) {
          const before = await readExit(id);
          started();
          await new Promise<void>((r) => {
            releaseFirst = r;
          });
          return before;
        }
        return readExit(id);
      };
      watcher = new ExitWatcher({ exitDir: dir, read, rescanMs: 0 });
    });
    await watcher!.start();
    const waiting = watcher!.wait('racer', 5000);
    await firstStarted;
    // The file arrives (its event asks for a check) while the first read is still out.
    await writeExit('racer', 5);
    const asked = watcher!.check('racer');
    releaseFirst();
    await asked;
    expect((await waiting)?.exitCode).toBe(5);
    expect(reads).toBeGreaterThanOrEqual(2);
  });
});
