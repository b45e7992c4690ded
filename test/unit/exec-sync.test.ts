/**
 * ExecSync: request checks and container state over fakes, and the behaviour that matters to
 * critest (output caps, exit codes, the timeout killing the process before the RPC answers,
 * nothing left in the bundle) through the real CrunConmonRuntime.exec with a stand-in for
 * `crun exec` that runs the command as a plain child process.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createExecSync, execSyncTimeoutMs } from '../../src/container/exec-sync.js';
import { CriError, DeadlineExceededError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { CrunConmonRuntime, EXEC_OUTPUT_CAP } from '../../src/os/oci-runtime.js';
import { FakeOciRuntime } from '../fakes/fake-oci-runtime.js';
import { FakeContainers } from '../fakes/fake-streamable-containers.js';

const FAKE_CRUN = path.resolve(import.meta.dirname, '../fixtures/fake-crun-exec.mjs');

async function kindOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return error instanceof CriError ? error.kind : `not a CriError: ${String(error)}`;
  }
  return 'resolved';
}

describe('ExecSync over fakes', () => {
  it('returns the runtime’s stdout, stderr and exit code and passes the command and timeout', async () => {
    const runtime = new FakeOciRuntime();
    const containers = new FakeContainers();
    containers.add('c1');
    runtime.containers.set('c1', {} as never);
    runtime.execResults.set('echo', { exitCode: 3, stdout: Buffer.from('out'), stderr: Buffer.from('err') });
    const execSync = createExecSync({ containers, runtime });
    const response = await execSync({ container_id: 'c1', cmd: ['echo', 'hi'], timeout: '7' });
    expect(response).toEqual({ stdout: Buffer.from('out'), stderr: Buffer.from('err'), exit_code: 3 });
    expect(runtime.calls.filter((c) => c.method === 'exec')).toEqual([
      { method: 'exec', args: ['c1', { args: ['echo', 'hi'] }, 7000] },
    ]);
  });

  it('resolves a unique id prefix to the full id', async () => {
    const runtime = new FakeOciRuntime();
    const containers = new FakeContainers();
    containers.add('abcdef0123');
    runtime.containers.set('abcdef0123', {} as never);
    await createExecSync({ containers, runtime })({ container_id: 'abcd', cmd: ['true'], timeout: '0' });
    expect(runtime.calls.find((c) => c.method === 'exec')?.args[0]).toBe('abcdef0123');
  });

  it('rejects bad requests and containers that are missing or not running, without running anything', async () => {
    const runtime = new FakeOciRuntime();
    const containers = new FakeContainers();
    containers.add('running');
    containers.add('exited', { state: 'CONTAINER_EXITED', exitCode: 0 });
    containers.add('created', { state: 'CONTAINER_CREATED' });
    const execSync = createExecSync({ containers, runtime });
    expect(await kindOf(execSync({ container_id: 'missing', cmd: ['true'], timeout: '1' }))).toBe('NotFound');
    expect(await kindOf(execSync({ container_id: 'exited', cmd: ['true'], timeout: '1' }))).toBe(
      'FailedPrecondition',
    );
    expect(await kindOf(execSync({ container_id: 'created', cmd: ['true'], timeout: '1' }))).toBe(
      'FailedPrecondition',
    );
    expect(await kindOf(execSync({ container_id: '', cmd: ['true'], timeout: '1' }))).toBe('InvalidArgument');
    expect(await kindOf(execSync({ container_id: 'running', cmd: [], timeout: '1' }))).toBe(
      'InvalidArgument',
    );
    expect(await kindOf(execSync({ container_id: 'running', cmd: [''], timeout: '1' }))).toBe(
      'InvalidArgument',
    );
    expect(await kindOf(execSync({ container_id: 'running', cmd: ['true'], timeout: '-1' }))).toBe(
      'InvalidArgument',
    );
    expect(runtime.calls).toEqual([]);
  });

  it('passes the runtime’s DeadlineExceeded through', async () => {
    const runtime = new FakeOciRuntime();
    const containers = new FakeContainers();
    containers.add('c1');
    runtime.containers.set('c1', {} as never);
    runtime.failNext('exec', new DeadlineExceededError('timed out'));
    const execSync = createExecSync({ containers, runtime });
    expect(await kindOf(execSync({ container_id: 'c1', cmd: ['sleep', '9'], timeout: '1' }))).toBe(
      'DeadlineExceeded',
    );
  });

  it('maps CRI seconds to milliseconds, 0 to no timeout', () => {
    expect(execSyncTimeoutMs('0')).toBe(2 ** 31 - 1);
    expect(execSyncTimeoutMs(undefined)).toBe(2 ** 31 - 1);
    expect(execSyncTimeoutMs('1')).toBe(1000);
    expect(execSyncTimeoutMs(30)).toBe(30_000);
    expect(execSyncTimeoutMs('99999999999')).toBe(2 ** 31 - 1);
    expect(() => execSyncTimeoutMs('1.5')).toThrow(/whole number/);
    expect(() => execSyncTimeoutMs('abc')).toThrow(/whole number/);
  });
});

describe('ExecSync through CrunConmonRuntime.exec (stand-in crun)', () => {
  let dir: string;
  let runtime: CrunConmonRuntime;
  const containers = new FakeContainers();
  const id = 'ctr1';

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'exec-sync-'));
    const bundle = path.join(dir, 'state', id);
    await mkdir(bundle, { recursive: true });
    await writeFile(
      path.join(bundle, 'config.json'),
      JSON.stringify({ process: { terminal: false, args: ['sh'], env: ['MARK=from-spec'], cwd: '/' } }),
    );
    runtime = new CrunConmonRuntime({
      conmonPath: '/nonexistent/conmon',
      crunPath: FAKE_CRUN,
      crunRoot: path.join(dir, 'crun'),
      stateDir: path.join(dir, 'state'),
      exitDir: path.join(dir, 'exits'),
      socketDir: path.join(dir, 'sockets'),
      logger: silentLogger(),
    });
    containers.add(id, { bundleDir: bundle });
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('returns output and exit code, with the container’s env, and leaves only config.json in the bundle', async () => {
    const execSync = createExecSync({ containers, runtime });
    const r = await execSync({
      container_id: id,
      cmd: ['sh', '-c', 'echo "out $MARK"; echo err >&2; exit 5'],
      timeout: '10',
    });
    expect(r.exit_code).toBe(5);
    expect(String(r.stdout)).toBe('out from-spec\n');
    expect(String(r.stderr)).toBe('err\n');
    expect(await readdir(path.join(dir, 'state', id))).toEqual(['config.json']);
  });

  it('keeps 16 MiB of each stream and discards the rest without blocking the command', async () => {
    const execSync = createExecSync({ containers, runtime });
    const r = await execSync({
      container_id: id,
      cmd: ['sh', '-c', 'head -c 20000000 /dev/zero; head -c 17000000 /dev/zero >&2; echo done >&2; exit 4'],
      timeout: '60',
    });
    expect(r.exit_code).toBe(4);
    expect(Buffer.from(r.stdout as Buffer).length).toBe(EXEC_OUTPUT_CAP);
    expect(Buffer.from(r.stderr as Buffer).length).toBe(EXEC_OUTPUT_CAP);
  }, 60_000);

  it('at the timeout kills the process and answers DeadlineExceeded; no process is left', async () => {
    const execSync = createExecSync({ containers, runtime });
    // A duration nobody else uses, so pgrep finds only ours.
    const marker = `4321.${Math.floor(Math.random() * 1e6)}`;
    const started = Date.now();
    expect(await kindOf(execSync({ container_id: id, cmd: ['sleep', marker], timeout: '1' }))).toBe(
      'DeadlineExceeded',
    );
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThan(5000);
    expect(pgrep(`sleep ${marker}`)).toEqual([]);
    expect(await readdir(path.join(dir, 'state', id))).toEqual(['config.json']);
  });

  it('answers when the command exits even if a child keeps its stdout open, and kills that child', async () => {
    const execSync = createExecSync({ containers, runtime });
    const marker = `4322.${Math.floor(Math.random() * 1e6)}`;
    const started = Date.now();
    const r = await execSync({
      container_id: id,
      cmd: ['sh', '-c', `sleep ${marker} & echo started`],
      timeout: '5',
    });
    expect(Date.now() - started).toBeLessThan(3000);
    expect(r.exit_code).toBe(0);
    expect(String(r.stdout)).toBe('started\n');
    expect(pgrep(`sleep ${marker}`)).toEqual([]);
  });

  it('at the timeout kills every process of the session, background children too, and says how long it took', async () => {
    const execSync = createExecSync({ containers, runtime });
    const marker = `4323.${Math.floor(Math.random() * 1e6)}`;
    const err = await execSync({
      container_id: id,
      cmd: ['sh', '-c', `sleep ${marker} & sleep ${marker}`],
      timeout: '1',
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'DeadlineExceeded' });
    // How long it took is said, and it is at least the timeout (a loaded machine adds to it).
    const took = Number(/timed out after (\d+) ms/.exec(String(err))?.[1]);
    expect(took).toBeGreaterThanOrEqual(1000);
    expect(pgrep(`sleep ${marker}`)).toEqual([]);
  });

  it('a client that goes away (abort) kills the session at once', async () => {
    const execSync = createExecSync({ containers, runtime });
    const marker = `4324.${Math.floor(Math.random() * 1e6)}`;
    const abort = new AbortController();
    const pending = execSync(
      { container_id: id, cmd: ['sleep', marker], timeout: '60' },
      { signal: abort.signal },
    ).catch((e: unknown) => e);
    await waitFor(() => pgrep(`sleep ${marker}`).length > 0);
    abort.abort(new DeadlineExceededError('client deadline'));
    expect(await pending).toMatchObject({ kind: 'DeadlineExceeded' });
    expect(pgrep(`sleep ${marker}`)).toEqual([]);
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

function pgrep(pattern: string): string[] {
  try {
    return execFileSync('pgrep', ['-f', pattern], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}
