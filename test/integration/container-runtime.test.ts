/**
 * The container driver end to end, without the CRI, image or sandbox layers: a rootless node
 * from TestDaemon (used only as "a node to run commands in"), a busybox-static rootfs, a spec
 * from the spec builder, and CrunConmonRuntime running it with the real conmon and crun.
 *
 * The driver (test/fixtures/container-runtime-driver.ts) is compiled here and run inside the
 * node with nsenter, after root put it in a cgroup inside the node's delegated subtree (the
 * daemon's own situation), so crun can place containers under the node cgroup.
 */
import { chown, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestDaemon } from '../harness/daemon.js';
import {
  busyboxRootfs,
  compileDriver,
  driverCgroup as makeDriverCgroup,
  runDriver,
} from '../harness/node-driver.js';

const BUSYBOX_APPLETS = ['sh', 'echo', 'sleep', 'printf', 'tr', 'cat', 'id', 'ls', 'true'];

let daemon: TestDaemon;
let work: string;
let driverJs: string;
let driverCgroup: string;
let counter = 0;

interface DriverResult {
  fatal?: string;
  error?: string;
  errorKind?: string;
  warnings: string[];
  logPath: string;
  pid?: number;
  createdState?: { status: string; pid: number } | null;
  runningState?: { status: string; pid: number } | null;
  stoppedState?: { status: string } | null;
  deletedState?: unknown;
  stateAfterError?: unknown;
  exit?: { exitCode: number; exitedAt: string; oomKilled: boolean } | null;
  stopMs?: number;
  pidAlive?: boolean;
  conmonsLeft: number[];
  cgroup?: string;
  execOk?: { exitCode: number; stdout: string; stderr: string };
  execTimeout?: string;
  execTimeoutMs?: number;
  pidsAfterTimeout?: number[];
}

async function runScenario(scenario: string): Promise<DriverResult> {
  counter += 1;
  const id = `${scenario}-${counter}-${Date.now().toString(36)}`;
  const jobFile = path.join(work, `${id}.json`);
  await writeFile(
    jobFile,
    JSON.stringify({
      scenario,
      workDir: path.join(work, 'state'),
      rootfs: path.join(work, 'rootfs'),
      cgroupParent: '/itest',
      id,
    }),
  );
  await chown(jobFile, daemon.user.uid, daemon.user.gid);
  const run = await runDriver(daemon, {
    cgroup: driverCgroup,
    workdir: work,
    driverJs,
    jobFile,
    timeoutMs: 90_000,
  });
  const parsed = run.value as DriverResult;
  if (parsed.fatal) throw new Error(`driver failed: ${parsed.fatal}\n${run.stderr}`);
  return parsed;
}

/** CRI log lines: <RFC3339Nano> <stdout|stderr> <P|F> <content>. */
const CRI_LINE = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(?:Z|[+-]\d\d:\d\d)) (stdout|stderr) ([PF]) (.*)$/;

beforeAll(async () => {
  daemon = await TestDaemon.start();
  work = await mkdtemp(path.join(daemon.tmp, 'ctr-it-'));
  driverJs = await compileDriver('container-runtime-driver', 'container-it');
  await busyboxRootfs(daemon, work, BUSYBOX_APPLETS);
  driverCgroup = await makeDriverCgroup(daemon, 'itest-driver');
}, 180_000);

afterAll(async () => {
  await daemon?.stop();
});

describe('CrunConmonRuntime in a rootless node', () => {
  it('runs a container whose output lands in the CRI log format, exit code from the exit file', async () => {
    const r = await runScenario('log');
    expect(r.error, r.error).toBeUndefined();
    expect(r.createdState?.status).toBe('created');
    expect(r.createdState?.pid).toBe(r.pid);
    expect(r.exit?.exitCode).toBe(3);
    expect(r.exit?.oomKilled).toBe(false);
    expect(r.stoppedState?.status).toBe('stopped');
    expect(r.deletedState).toBeNull();
    expect(r.conmonsLeft).toEqual([]);
    // The container ran in its own cgroup under the node's /itest.
    expect(r.cgroup).toMatch(/^0::\/itest\/log-/m);

    const log = await readFile(r.logPath, 'utf8');
    const lines = log.split('\n');
    expect(lines.pop()).toBe(''); // every entry ends with a newline
    const entries = lines.map((l) => {
      const m = CRI_LINE.exec(l);
      expect(m, `not a CRI log line: ${JSON.stringify(l.slice(0, 80))}`).not.toBeNull();
      // Four space-separated fields even for an empty line (critest's SplitN(" ", 4)).
      expect(l.split(' ').length).toBeGreaterThanOrEqual(4);
      return { stream: m![2], tag: m![3], content: m![4]! };
    });
    const full = entries.filter((e) => e.stream === 'stdout');
    expect(full[0]).toEqual({ stream: 'stdout', tag: 'F', content: 'hello World' });
    expect(full[1]).toEqual({ stream: 'stdout', tag: 'F', content: '' });
    expect(lines[1]).toMatch(/ stdout F $/);
    // The 20000-byte line arrives as partial chunks closed by one F.
    const longParts: typeof entries = [];
    for (const e of full.slice(2)) {
      longParts.push(e);
      if (e.tag === 'F') break;
    }
    expect(longParts.length).toBeGreaterThan(1);
    expect(longParts.slice(0, -1).every((e) => e.tag === 'P')).toBe(true);
    expect(longParts.map((e) => e.content).join('')).toBe('y'.repeat(20000));
    expect(entries).toContainEqual({ stream: 'stderr', tag: 'F', content: 'oops' });
    expect(entries.filter((e) => e.stream === 'stdout').at(-1)).toEqual({
      stream: 'stdout',
      tag: 'P',
      content: 'partial',
    });
  });

  it('stops a PID 1 that cannot receive SIGTERM (no handler) with SIGKILL at once; delete leaves no process', async () => {
    const r = await runScenario('stop-ignored');
    expect(r.error, r.error).toBeUndefined();
    expect(r.runningState?.status).toBe('running');
    expect(r.exit?.exitCode).toBe(137);
    // The kernel drops SIGTERM for a namespace init without a handler: no 2 s wait.
    expect(r.stopMs).toBeLessThan(1500);
    expect(r.deletedState).toBeNull();
    expect(r.pidAlive).toBe(false);
    expect(r.conmonsLeft).toEqual([]);
  });

  it('stops a container that catches SIGTERM but does not exit with SIGKILL after the timeout', async () => {
    const r = await runScenario('stop-unanswered');
    expect(r.error, r.error).toBeUndefined();
    expect(r.exit?.exitCode).toBe(137);
    expect(r.stopMs).toBeGreaterThanOrEqual(2000);
    expect(r.stopMs).toBeLessThan(8000);
    expect(r.pidAlive).toBe(false);
    expect(r.conmonsLeft).toEqual([]);
  });

  it('stops a container that handles SIGTERM without waiting for the timeout', async () => {
    const r = await runScenario('stop-trapped');
    expect(r.error, r.error).toBeUndefined();
    expect(r.exit?.exitCode).toBe(0);
    expect(r.stopMs).toBeLessThan(5000);
    expect(r.pidAlive).toBe(false);
  });

  it('execs with output and exit code, and kills the exec process at its timeout', async () => {
    const r = await runScenario('exec');
    expect(r.error, r.error).toBeUndefined();
    expect(r.execOk).toEqual({ exitCode: 4, stdout: 'hello', stderr: 'err' });
    // The real elapsed time, and the timeout asked for (issue 12: the answer says how long it took).
    expect(r.execTimeout).toMatch(/timed out after 1\d{3} ms \(timeout 1000 ms\)/);
    expect(r.execTimeoutMs).toBeLessThan(5000);
    // Only the container's own sleep is left: the exec'd `sleep 4321` was killed.
    expect(r.pidsAfterTimeout).toHaveLength(1);
    expect(r.conmonsLeft).toEqual([]);
  });

  it('a command that does not exist is an error and leaves no conmon, pipe or container (catalog 41)', async () => {
    const r = await runScenario('missing-command');
    expect(r.error).toMatch(/does-not-exist/);
    expect(r.errorKind).toBe('FailedPrecondition');
    expect(r.conmonsLeft).toEqual([]);
  });
});
