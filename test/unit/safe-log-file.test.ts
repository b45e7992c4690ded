/**
 * Log files in client-named directories (src/os/safe-log-file.ts, catalogue row 50): created
 * without following a link, only in directories nobody else can write or swap, with errors that
 * name the path. Runs on real directories under /tmp (sticky, root's: an ancestor that passes).
 */
import { execFileSync } from 'node:child_process';
import {
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '../../src/errors.js';
import { checkLogReopen, ensureSafeLogDirectory, prepareLogFile } from '../../src/os/safe-log-file.js';

const me = { uid: process.getuid!() };
let root: string;
let victim: string;

beforeEach(async () => {
  root = await mkdtemp('/tmp/safe-log-');
  await chmod(root, 0o755);
  victim = path.join(root, 'victim');
  await writeFile(victim, 'precious\n');
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function dir(name: string, mode: number): Promise<string> {
  const p = path.join(root, name);
  await mkdir(p, { recursive: true });
  await chmod(p, mode);
  return p;
}

async function refusal(p: Promise<unknown>): Promise<string> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FailedPreconditionError);
  return (err as Error).message;
}

describe('prepareLogFile', () => {
  it('creates the file (0600) and the missing directories (0755) in a private directory', async () => {
    const logs = await dir('logs', 0o755);
    const file = path.join(logs, 'ctr', '0.log');
    await prepareLogFile(file, me);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(path.dirname(file))).mode & 0o777).toBe(0o755);
    // Again (a container created twice with one path) appends to the same file.
    await writeFile(file, 'line\n', { flag: 'a' });
    await prepareLogFile(file, me);
    expect(await readFile(file, 'utf8')).toBe('line\n');
  });

  it('refuses a world- or group-writable directory without the sticky bit, naming it', async () => {
    for (const mode of [0o777, 0o775, 0o757]) {
      const shared = await dir(`shared-${mode.toString(8)}`, mode);
      await symlink(victim, path.join(shared, 'ctr.log'));
      const message = await refusal(prepareLogFile(path.join(shared, 'ctr.log'), me));
      expect(message).toContain(
        `${shared} is writable by other users (mode 0${mode.toString(8)}) and has no sticky bit`,
      );
      expect(message).toContain(`chmod go-w ${shared}`);
    }
    expect(await readFile(victim, 'utf8')).toBe('precious\n');
  });

  it('refuses a sticky shared directory as the log directory, accepts one above it', async () => {
    const sticky = await dir('sticky', 0o1777);
    expect(await refusal(prepareLogFile(path.join(sticky, 'ctr.log'), me))).toMatch(
      /even with the sticky bit they can create the names/,
    );
    const mine = path.join(sticky, 'mine');
    await mkdir(mine, { mode: 0o755 });
    await prepareLogFile(path.join(mine, 'ctr.log'), me);
  });

  it('refuses when a directory above is writable by others', async () => {
    const shared = await dir('up', 0o777);
    const below = await dir('up/below', 0o755);
    expect(await refusal(prepareLogFile(path.join(below, 'ctr.log'), me))).toContain(
      `${shared} is writable by other users`,
    );
  });

  it('never follows a link at the file, even in a private directory', async () => {
    const logs = await dir('logs', 0o755);
    await symlink(victim, path.join(logs, 'ctr.log'));
    expect(await refusal(prepareLogFile(path.join(logs, 'ctr.log'), me))).toMatch(
      /ctr\.log is a symbolic link; the runtime never writes a log through a link: remove it/,
    );
    expect(await readFile(victim, 'utf8')).toBe('precious\n');
  });

  it('refuses a FIFO, another user’s file and a file with a second hard link', async () => {
    const logs = await dir('logs', 0o755);
    execFileSync('mkfifo', [path.join(logs, 'fifo.log')]);
    expect(await refusal(prepareLogFile(path.join(logs, 'fifo.log'), me))).toMatch(/not a regular file/);
    await writeFile(path.join(logs, 'theirs.log'), '');
    await chown(path.join(logs, 'theirs.log'), 4242, 4242);
    expect(await refusal(prepareLogFile(path.join(logs, 'theirs.log'), me))).toMatch(
      /belongs to another user \(uid 4242/,
    );
    await link(victim, path.join(logs, 'linked.log'));
    expect(await refusal(prepareLogFile(path.join(logs, 'linked.log'), me))).toMatch(/2 hard links/);
    expect(await readFile(victim, 'utf8')).toBe('precious\n');
  });

  it('refuses a log directory of another user', async () => {
    const theirs = await dir('theirs', 0o755);
    await chown(theirs, 4242, 4242);
    expect(await refusal(prepareLogFile(path.join(theirs, 'ctr.log'), me))).toMatch(
      /belongs to another user \(uid 4242 in the node\)/,
    );
  });

  it('follows directory links component by component, checking where they lead', async () => {
    const logs = await dir('real/logs', 0o755);
    await symlink(logs, path.join(root, 'via-absolute'));
    await symlink('real/logs', path.join(root, 'via-relative'));
    await prepareLogFile(path.join(root, 'via-absolute', 'a.log'), me);
    await prepareLogFile(path.join(root, 'via-relative', 'b.log'), me);
    expect((await lstat(path.join(logs, 'a.log'))).isFile()).toBe(true);
    expect((await lstat(path.join(logs, 'b.log'))).isFile()).toBe(true);
    // A link into a shared directory is judged by the directory it reaches.
    const shared = await dir('shared', 0o777);
    await symlink(shared, path.join(root, 'to-shared'));
    expect(await refusal(prepareLogFile(path.join(root, 'to-shared', 'c.log'), me))).toContain(
      `${shared} is writable by other users`,
    );
    await symlink('loop-b', path.join(root, 'loop-a'));
    await symlink('loop-a', path.join(root, 'loop-b'));
    expect(await refusal(prepareLogFile(path.join(root, 'loop-a', 'd.log'), me))).toMatch(
      /too many symbolic links/,
    );
  });
});

describe('checkLogReopen and ensureSafeLogDirectory', () => {
  it('refuses a planted .tmp link, accepts a free name or a file of our own', async () => {
    const logs = await dir('logs', 0o755);
    const file = path.join(logs, 'ctr.log');
    await prepareLogFile(file, me);
    await checkLogReopen(file, me);
    await writeFile(`${file}.tmp`, '');
    await checkLogReopen(file, me);
    await rm(`${file}.tmp`);
    await symlink(victim, `${file}.tmp`);
    expect(await refusal(checkLogReopen(file, me))).toMatch(
      /ctr\.log\.tmp .* is a symbolic link; conmon would follow it/,
    );
    // A directory that became shared since the container was created is refused too.
    await rm(`${file}.tmp`);
    await chmod(logs, 0o777);
    expect(await refusal(checkLogReopen(file, me))).toContain(`${logs} is writable by other users`);
    expect(await readFile(victim, 'utf8')).toBe('precious\n');
  });

  it('does not create anything when asked only to check', async () => {
    await expect(
      ensureSafeLogDirectory(path.join(root, 'absent'), { create: false, owner: me }),
    ).rejects.toThrow(/cannot look up/);
    expect(await lstat(path.join(root, 'absent')).catch(() => null)).toBeNull();
  });
});
