/**
 * run()'s contract, held by both ways of starting a program: the daemon's own spawn
 * (spawnAndRun) and native/run-server (RunServer.run), so that handing runs to the server
 * changes nothing a caller can see.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { CancelledError, UnavailableError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import {
  type DetachedOptions,
  type DetachedProcess,
  ProcessTimeoutError,
  ProgramNotFoundError,
  type ReportingOptions,
  type ReportingProcess,
  type RunOptions,
  type RunResult,
  spawnAndRun,
  startDetached,
  startReporting,
} from '../../src/os/process-runner.js';
import { RunServer } from '../../src/os/run-server.js';
import { isAlive } from '../../src/rootless/node.js';

const server = new RunServer(silentLogger());
afterAll(() => server.close());

type Runner = (program: string, args: readonly string[], options?: RunOptions) => Promise<RunResult>;
const runners: [string, Runner][] = [
  ['spawnAndRun', spawnAndRun],
  ['RunServer', (p, a, o) => server.run(p, a, o)],
];

/**
 * SIGKILL to a pid a test read from a program's output. Refuses anything but a real other
 * process: Number('') is 0, and kill(0) would end this process's whole group (the test run,
 * and `make test` with it).
 */
function killPid(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (!Number.isSafeInteger(pid) || pid <= 1 || pid === process.pid)
    throw new Error(`refusing to kill pid ${pid}`);
  process.kill(pid, signal);
}

async function gone(pid: number): Promise<void> {
  while (isAlive(pid)) await new Promise((r) => setTimeout(r, 10));
}

describe.each(runners)('run() by %s', (_name, run) => {
  it('passes arguments as they are and collects stdout, stderr and the exit code', async () => {
    const r = await run('/bin/sh', [
      '-c',
      'printf "%s|" "$@"; echo oops >&2; exit 3',
      'sh',
      'a b',
      '',
      '"q"',
    ]);
    expect(r.stdout.toString()).toBe('a b||"q"|');
    expect(r.stderr.toString()).toBe('oops\n');
    expect(r).toMatchObject({ exitCode: 3, signal: null, truncated: false, program: '/bin/sh' });
  });

  it('reports death by a signal', async () => {
    const r = await run('/bin/sh', ['-c', 'kill -TERM $$']);
    expect(r).toMatchObject({ exitCode: null, signal: 'SIGTERM' });
  });

  it('feeds binary input on stdin and gives /dev/null without it', async () => {
    const input = randomBytes(300 * 1024);
    const r = await run('/bin/cat', [], { input });
    expect(r.stdout.equals(input)).toBe(true);
    const none = await run('/bin/cat', []);
    expect(none.stdout.length).toBe(0);
  });

  it('uses exactly the environment and working directory given, PATH of that environment included', async () => {
    const r = await run('sh', ['-c', 'echo "$A|$HOME|$(pwd)"'], {
      env: { A: 'x=y', PATH: '/usr/bin:/bin' },
      cwd: '/tmp',
    });
    expect(r.stdout.toString()).toBe('x=y||/tmp\n');
  });

  it('rejects a program that cannot start with ProgramNotFoundError', async () => {
    await expect(run('/nonexistent/program', [])).rejects.toBeInstanceOf(ProgramNotFoundError);
    await expect(run('/bin/true', [], { cwd: '/nonexistent-dir' })).rejects.toBeInstanceOf(
      ProgramNotFoundError,
    );
  });

  it('keeps output up to the cap and says it dropped the rest', async () => {
    const r = await run('/bin/sh', ['-c', 'head -c 200000 /dev/zero'], { maxOutputBytes: 1000 });
    expect(r.stdout.length).toBe(1000);
    expect(r.truncated).toBe(true);
    expect(r.exitCode).toBe(0);
  });

  it('ends the whole process group at the timeout and rejects with ProcessTimeoutError', async () => {
    const err = await run('/bin/sh', ['-c', 'sleep 1000 & echo $!; wait'], { timeoutMs: 300 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ProcessTimeoutError);
    const background = Number((err as ProcessTimeoutError).result.stdout.toString().trim());
    expect(background).toBeGreaterThan(1);
    await gone(background);
  });

  it('kills the process group when aborted and rejects with the reason', async () => {
    const controller = new AbortController();
    const running = run('/bin/sh', ['-c', 'sleep 1000 & echo $! ; wait'], { signal: controller.signal });
    setTimeout(() => controller.abort(new CancelledError('client went away')), 100);
    await expect(running).rejects.toThrow('client went away');
  });

  it('with settleOnExit, ends when the program exits though a grandchild holds its stdout', async () => {
    const r = await run('/bin/sh', ['-c', '(exec sleep 1000) & echo $!'], {
      settleOnExit: true,
      timeoutMs: 5_000,
    });
    const grandchild = Number(r.stdout.toString().trim());
    expect(r.exitCode).toBe(0);
    expect(r.outputHeld).toBe(true);
    expect(isAlive(grandchild)).toBe(true);
    killPid(grandchild);
    await gone(grandchild);
  });

  it('with settleOnExit, says nothing held the output when the pipes closed with the exit', async () => {
    const r = await run('/bin/sh', ['-c', 'echo done'], { settleOnExit: true });
    expect(r.stdout.toString()).toBe('done\n');
    expect(r.outputHeld).toBe(false);
  });

  it('takes a timeout longer than a timer can wait as "very long", not as "at once"', async () => {
    const r = await run('/bin/sh', ['-c', 'echo ok'], { timeoutMs: 2 ** 31 + 30_000 });
    expect(r.stdout.toString()).toBe('ok\n');
  });

  it('tells the pid once the program runs, before the run settles', async () => {
    let pid: number | undefined;
    const r = await run('/bin/sh', ['-c', 'echo $$'], { onStarted: (p) => (pid = p) }).then((result) => {
      expect(pid).toBeDefined();
      return result;
    });
    expect(pid).toBe(Number(r.stdout.toString().trim()));
  });

  it('runs many at once, each with its own output', async () => {
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) => run('/bin/sh', ['-c', `echo ${i}; exit ${i % 3}`])),
    );
    results.forEach((r, i) => {
      expect(r.stdout.toString()).toBe(`${i}\n`);
      expect(r.exitCode).toBe(i % 3);
    });
  });
});

type Detacher = (program: string, args: readonly string[], options?: DetachedOptions) => DetachedProcess;
const detachers: [string, Detacher][] = [
  ['startDetached', startDetached],
  ['RunServer', (p, a, o) => server.startDetached(p, a, o ?? {})],
];

describe.each(detachers)('a detached process by %s', (_name, detach) => {
  it('reports its pid at once and, when it ends early, its status and stderr', async () => {
    const proc = detach('/bin/sh', ['-c', 'echo oops >&2; exit 3']);
    expect(await proc.started).toBeGreaterThan(1);
    expect(await proc.exited).toEqual({ exitCode: 3, signal: null, stderr: 'oops\n' });
  });

  it('lives on after the call; kill ends its process group', async () => {
    const proc = detach('/bin/sh', ['-c', 'sleep 1000 & exec sleep 1000'], {
      env: { PATH: '/usr/bin:/bin' },
    });
    const pid = await proc.started;
    proc.release();
    expect(isAlive(pid)).toBe(true);
    proc.kill('SIGKILL');
    expect(await proc.exited).toMatchObject({ exitCode: null, signal: 'SIGKILL' });
    await gone(pid);
  });

  it('rejects a program that cannot start with ProgramNotFoundError', async () => {
    const proc = detach('/nonexistent/program', []);
    await expect(proc.started).rejects.toBeInstanceOf(ProgramNotFoundError);
  });
});

type Reporter = (program: string, args: readonly string[], options?: ReportingOptions) => ReportingProcess;
const reporters: [string, Reporter][] = [
  ['startReporting', startReporting],
  ['RunServer', (p, a, o) => server.startReporting(p, a, o ?? {})],
];

/** The first line a stream carries, or what it had when it ended. */
function firstLine(stream: Readable): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    stream.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n')));
    });
    stream.once('end', () => resolve(text));
    stream.once('close', () => resolve(text));
  });
}

describe.each(reporters)('a process reporting on fd 3 by %s', (_name, startIt) => {
  it('passes on a report written after it exited by a child it left, which keeps every pipe open', async () => {
    // Like conmon: the started process exits at once; its daemonized child reports later and
    // keeps fd 3, stdout and stderr open for as long as it lives. It reports its own pid.
    const proc = startIt('/bin/sh', [
      '-c',
      `(exec /bin/sh -c 'echo "{\\"data\\": $$}" >&3; exec sleep 1000') & exit 0`,
    ]);
    expect(await proc.started).toBeGreaterThan(1);
    const line = await firstLine(proc.report);
    const child = (JSON.parse(line) as { data: number }).data;
    proc.release();
    expect(await proc.exited).toMatchObject({ exitCode: 0, signal: null });
    expect(isAlive(child)).toBe(true);
    killPid(child);
    await gone(child);
  });

  it('ends the report when every writer closed fd 3, and gives the exit status and output', async () => {
    const proc = startIt('/bin/sh', ['-c', 'echo one >&3; echo two >&3; echo said; exit 4']);
    const all: Buffer[] = [];
    proc.report.on('data', (c: Buffer) => all.push(c));
    await new Promise((r) => proc.report.once('end', r));
    expect(Buffer.concat(all).toString()).toBe('one\ntwo\n');
    expect(await proc.exited).toEqual({ exitCode: 4, signal: null, output: 'said' });
  });

  it('rejects a program that cannot start with ProgramNotFoundError', async () => {
    const proc = startIt('/nonexistent/reporter', []);
    await expect(proc.started).rejects.toBeInstanceOf(ProgramNotFoundError);
  });
});

describe('RunServer', () => {
  it('fails the runs in flight when the server dies, and starts a new server for the next', async () => {
    const own = new RunServer(silentLogger());
    const dir = await mkdtemp(path.join(tmpdir(), 'run-server-'));
    let orphan = 0;
    try {
      const pidFile = path.join(dir, 'pid');
      const running = own.run('/bin/sh', [
        '-c',
        `echo $$ > ${pidFile}.tmp; mv ${pidFile}.tmp ${pidFile}; exec sleep 1000`,
      ]);
      running.catch(() => undefined);
      for (;;) {
        orphan = Number(await readFile(pidFile, 'utf8').catch(() => '0'));
        if (orphan > 0) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      const first = own.pid!;
      killPid(first);
      await expect(running).rejects.toBeInstanceOf(UnavailableError);
      const again = await own.run('/bin/echo', ['back']);
      expect(again.stdout.toString()).toBe('back\n');
      expect(own.pid).not.toBe(first);
    } finally {
      if (orphan > 0) killPid(orphan);
      await own.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('ends a report job in flight when the server dies, saying so', async () => {
    const own = new RunServer(silentLogger());
    try {
      const proc = own.startReporting('/bin/sh', ['-c', 'echo $$; exec sleep 1000'], {
        runs: '/usr/bin/conmon',
      });
      const pid = await proc.started;
      killPid(own.pid!);
      const ended = new Promise((r) => proc.report.once('end', r));
      proc.report.resume();
      await ended;
      expect((await proc.exited).output).toBe('the run server ended before conmon reported');
      expect(pid).toBeGreaterThan(1);
      process.kill(-pid, 'SIGKILL');
      await gone(pid);
    } finally {
      await own.close();
    }
  });

  it('gives up after servers that keep dying at once (the daemon then forks for itself)', async () => {
    const own = new RunServer(silentLogger());
    try {
      let starts = 0;
      while (own.available() && starts <= 20) {
        starts += 1;
        const pid = own.pid!;
        killPid(pid);
        await gone(pid);
      }
      expect(starts).toBe(6);
      expect(own.available()).toBe(false);
    } finally {
      await own.close();
    }
  });
});
