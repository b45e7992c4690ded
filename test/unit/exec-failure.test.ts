/**
 * Reading why a container never ran its entrypoint from its CRI log (src/os/exec-failure.ts):
 * crun's messages as crun 1.8.1 writes them, logs that must not be read as one, and the file
 * opened without following a link.
 */
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFailureInLog, readExecFailure } from '../../src/os/exec-failure.js';

const TS = '2026-12-07T07:57:27.920528189+00:00';
const line = (stream: string, text: string, tag = 'F') => `${TS} ${stream} ${tag} ${text}\n`;

describe('execFailureInLog', () => {
  it.each([
    [
      'exec container process `/bin/true`: Argument list too long',
      '/bin/true',
      /E2BIG.*environment variables/,
    ],
    [
      'exec container process `/noshebang`: Exec format error',
      '/noshebang',
      /another architecture, or a script without a #! line/,
    ],
    [
      'exec container process (missing dynamic library?) `/crlf`: No such file or directory',
      '/crlf',
      /Windows line endings/,
    ],
    ['exec container process `/x`: Permission denied', '/x', /noexec/],
    ['exec container process `/x`: Something new', '/x', /could not execute \/x: Something new$/],
  ])('%s', (text, program, hint) => {
    const failure = execFailureInLog(line('stderr', text));
    expect(failure?.path).toBe(program);
    expect(failure?.message).toMatch(
      /^the container exited before its entrypoint ran: the OCI runtime could not execute /,
    );
    expect(failure?.message).toMatch(hint);
  });

  it('joins partial lines, and takes the last message after runtime warnings', () => {
    const log =
      line('stderr', 'cannot set HOME environment variable') +
      line('stderr', 'exec container process `/bin/', 'P') +
      line('stderr', 'true`: Argument list too long');
    expect(execFailureInLog(log)?.path).toBe('/bin/true');
  });

  it('is not fooled by a process that ran: stdout output, other last lines, other formats', () => {
    const message = 'exec container process `/bin/true`: Argument list too long';
    expect(execFailureInLog(line('stdout', 'started') + line('stderr', message))).toBeNull();
    expect(execFailureInLog(line('stderr', message) + line('stderr', 'after'))).toBeNull();
    expect(execFailureInLog(`${message}\n`)).toBeNull();
    expect(execFailureInLog('')).toBeNull();
  });
});

describe('readExecFailure', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'exec-failure-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads a small log; never a link, a big file or a missing one', async () => {
    const text = line('stderr', 'exec container process `/bin/true`: Argument list too long');
    const log = path.join(dir, 'c.log');
    await writeFile(log, text);
    expect((await readExecFailure(log))?.error).toBe('Argument list too long');
    const link = path.join(dir, 'link.log');
    await symlink(log, link);
    expect(await readExecFailure(link)).toBeNull();
    const big = path.join(dir, 'big.log');
    await writeFile(big, line('stderr', 'x'.repeat(70 * 1024)) + text);
    expect(await readExecFailure(big)).toBeNull();
    expect(await readExecFailure(path.join(dir, 'missing.log'))).toBeNull();
  });
});
