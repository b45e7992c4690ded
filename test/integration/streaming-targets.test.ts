/**
 * The streaming targets against real conmon and crun in a rootless node, without the CRI,
 * image or sandbox layers: test/fixtures/streaming-driver.ts creates busybox-static containers
 * with CrunConmonRuntime and drives exec (pipes and pty), attach (conmon's socket, stdin_once,
 * several attachers, tty resize) and ExecSync, as the daemon would. The crictl end-to-end
 * test is streaming-containers.test.ts.
 */
import { chown, mkdtemp, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestDaemon } from '../harness/daemon.js';
import {
  busyboxRootfs,
  compileDriver,
  driverCgroup as makeDriverCgroup,
  runDriver,
} from '../harness/node-driver.js';

const REPO = path.resolve(import.meta.dirname, '../..');
const APPLETS = ['sh', 'echo', 'sleep', 'cat', 'tail', 'stty', 'tty', 'pgrep', 'true'];

let daemon: TestDaemon;
let work: string;
let driverJs: string;
let driverCgroup: string;
let result: Record<string, unknown>;

beforeAll(async () => {
  daemon = await TestDaemon.start();
  work = await mkdtemp(path.join(daemon.tmp, 'stream-it-'));
  driverJs = await compileDriver('streaming-driver', 'streaming-it');
  const rootfs = await busyboxRootfs(daemon, work, APPLETS);
  driverCgroup = await makeDriverCgroup(daemon, 'stream-driver');

  const jobFile = path.join(work, 'job.json');
  await writeFile(
    jobFile,
    JSON.stringify({
      workDir: path.join(work, 'state'),
      rootfs,
      cgroupParent: '/stream-it',
      prefix: `s${Date.now().toString(36)}`,
      relayDir: path.join(REPO, 'native/build'),
    }),
  );
  await chown(jobFile, daemon.user.uid, daemon.user.gid);
  result = (
    await runDriver(daemon, {
      cgroup: driverCgroup,
      workdir: work,
      driverJs,
      jobFile,
      timeoutMs: 150_000,
    })
  ).value as Record<string, unknown>;
  if (result.fatal || result.error)
    throw new Error(`driver failed: ${result.fatal ?? result.error}\n${result.stack}`);
}, 240_000);

afterAll(async () => {
  await daemon?.stop();
});

describe('exec through crun exec', () => {
  it('pipes 10 MB through cat byte-exact', () => {
    expect(result.catExit).toBe(0);
    expect(result.catLength).toBe(10 * 1024 * 1024);
    expect(result.catSame).toBe(true);
  });

  it('keeps stdout and stderr apart and returns the exit code', () => {
    expect(result).toMatchObject({ execExit: 4, execOut: 'out\n', execErr: 'err\n' });
  });

  it('gives a tty exec a real terminal, resized, with TERM set', () => {
    expect(result.ttyExit).toBe(3);
    expect(result.ttyOut).toContain('33 111\r\n');
    expect(result.ttyOut).toMatch(/\/dev\/pts\/\d+\r\n/);
    expect(result.ttyOut).toContain('TERM=xterm');
  });

  it('kills the process in the container when the client goes away, with and without a tty', () => {
    expect(result.pidsDuringSleep).toBe(2);
    expect(result.pidsAfterKill).toBe(1);
    expect(result.pidsAfterTtyKill).toBe(1);
  });
});

describe('ExecSync', () => {
  it('returns output and exit code; a timeout is DeadlineExceeded and leaves no process', () => {
    expect(result.execSyncOk).toEqual({ out: 'hi', code: 2 });
    expect(result.execSyncTimeout).toBe('DeadlineExceeded');
    expect(result.execSyncTimeoutMs).toBeLessThan(5000);
    expect(result.execSyncLeft).toBe('');
  });
});

describe('attach through conmon', () => {
  it('stdin_once: input reaches the container, the writer’s EOF ends it; every attacher and the log see the output', () => {
    expect(result.onceOut).toBe('hello-attach\n');
    expect(result.onceErr).toBe('to-err\n');
    expect(result.onceWatched).toContain('hello-attach\n');
    expect(result.onceWriterExit).toBe(0);
    expect(result.onceWatcherExit).toBe(0);
    expect(result.onceExit).toBe(0);
    expect(result.onceLog).toMatch(/ stdout F hello-attach\n/);
    expect(result.onceLog).toMatch(/ stderr F to-err\n/);
  });

  it('without stdin_once the container’s stdin outlives an attacher', () => {
    expect(result.keptFirst).toBe('one\n');
    expect(result.keptRunningAfterFirst).toBe(true);
    expect(result.keptSecond).toBe('two\n');
    expect(result.keptExit).toBe(5);
  });

  it('attaches to a tty container and resizes it through the ctl FIFO', () => {
    expect(result.ttyAttachOut).toContain('21 77');
    expect(result.ttyAttachOut).toContain('attach-42');
    expect(result.ttyAttachExit).toBe(0);
  });

  it('refuses to attach to an exited container', () => {
    expect(result.attachExited).toBe('FailedPrecondition');
  });
});
