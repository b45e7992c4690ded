/**
 * Another local user, and workloads, against a real node (issue 12 items 3 and 4):
 *
 *  - log files (catalogue row 50): another user (ROOTLESS_CRI_ATTACKER_USER, default
 *    rcri-test2) plants `<ctr>.log -> a file of the runtime's user` in a world-writable,
 *    non-sticky log directory: CreateContainer is refused with an error naming the directory,
 *    and the file is untouched. A link planted before the directory was made private is still
 *    not followed; a private directory works; the `.tmp` name conmon uses on ReopenContainerLog
 *    is checked the same way;
 *  - ExecSync of a command that forks (row 49): `sh -c 'sleep 100000 & echo started'` with
 *    timeout 5 answers at once when sh exits, and the background sleep does not survive it; one
 *    whose main process outlives the timeout is DEADLINE_EXCEEDED at 5 s, every process of it
 *    killed.
 */
import { execFile } from 'node:child_process';
import { chmod, chown, lstat, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, catalogueEntry, pushCatalogue } from '../fixtures/test-images.js';
import { grpcCode } from '../harness/cri-client.js';
import { APP_DIR, TestDaemon } from '../harness/daemon.js';

const execFileAsync = promisify(execFile);
const ATTACKER = process.env.ROOTLESS_CRI_ATTACKER_USER ?? 'rcri-test2';
const RUN_AS_USER = path.join(APP_DIR, 'deploy/run-as-user.sh');

let daemon: TestDaemon;
let registry: RunningRegistry;
let busybox = '';
/** Directories outside the daemon's temp root (the attacker cannot enter that one). */
const shared: string[] = [];

async function asAttacker(command: string[]): Promise<void> {
  await execFileAsync('bash', [RUN_AS_USER, ATTACKER, '--', ...command]);
}

/** A directory in /tmp owned by the daemon's user, with `mode`. */
async function ownedDir(mode: number): Promise<string> {
  const dir = await mkdtemp('/tmp/rcri-neighbours-');
  shared.push(dir);
  await chown(dir, daemon.user.uid, daemon.user.gid);
  await chmod(dir, mode);
  return dir;
}

function podConfig(name: string, logDirectory: string) {
  return {
    metadata: { name, namespace: 'neighbours', uid: `uid-${name}`, attempt: 0 },
    log_directory: logDirectory,
    linux: {},
  };
}

async function withPod<T>(
  name: string,
  logDirectory: string,
  body: (pod: { id: string; config: object }) => Promise<T>,
) {
  const config = podConfig(name, logDirectory);
  const { pod_sandbox_id: id } = await daemon.client.runtime('RunPodSandbox', { config } as never);
  try {
    return await body({ id: id!, config });
  } finally {
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: id });
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: id });
  }
}

function createContainer(
  pod: { id: string; config: object },
  name: string,
  command: string[],
  logPath = `${name}.log`,
) {
  return daemon.client.runtime('CreateContainer', {
    pod_sandbox_id: pod.id,
    config: { metadata: { name }, image: { image: busybox }, command, log_path: logPath, linux: {} },
    sandbox_config: pod.config,
  } as never);
}

async function until<T>(
  what: string,
  probe: () => Promise<T>,
  ok: (v: T) => boolean,
  ms = 20_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (ok(value)) return value;
    if (Date.now() > deadline) throw new Error(`${what}: still ${JSON.stringify(value)} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The daemon user's processes whose command line matches (host view). */
async function processes(pattern: string): Promise<string[]> {
  const r = await daemon.asUser(['pgrep', '-u', String(daemon.user.uid), '-af', pattern]);
  return r.stdout.split('\n').filter((l) => l.trim() !== '' && !l.includes('pgrep'));
}

beforeAll(async () => {
  await execFileAsync('id', [ATTACKER]).catch(() => {
    throw new Error(
      `the attacker user ${ATTACKER} does not exist; run \`sudo deploy/setup-host.sh --user ${ATTACKER}\``,
    );
  });
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  const { images } = await buildCatalogue({ cacheDir, names: ['busybox'] });
  registry = await startRegistry();
  await pushCatalogue(registry.url, images);
  daemon = await TestDaemon.start();
  const entry = catalogueEntry('busybox');
  busybox = `${registry.host}/${entry.repository}:${entry.tags[0]}`;
  await daemon.client.image('PullImage', { image: { image: busybox } }, { timeoutMs: 120_000 });
}, 300_000);

afterAll(async () => {
  // Before the harness looks for files of the test user left outside its temp root.
  for (const dir of shared) await rm(dir, { recursive: true, force: true });
  await daemon?.stop();
  await registry?.stop();
});

describe('log files in a directory another user can write (row 50)', () => {
  let precious = '';

  beforeAll(async () => {
    // A file of the runtime's user that a planted link points at.
    precious = path.join(await ownedDir(0o755), 'precious.txt');
    await writeFile(precious, 'precious\n');
    await chown(precious, daemon.user.uid, daemon.user.gid);
  });

  it('a link planted by another user in a world-writable, non-sticky directory: refused, the file untouched', async () => {
    const logs = await ownedDir(0o777);
    await asAttacker(['ln', '-s', precious, path.join(logs, 'victim.log')]);
    expect((await lstat(path.join(logs, 'victim.log'))).isSymbolicLink()).toBe(true);
    await withPod('planted', logs, async (pod) => {
      const err = await createContainer(pod, 'victim', ['sh', '-c', 'echo pwned']).catch((e: unknown) => e);
      expect(grpcCode(err), String(err)).toBe(status.FAILED_PRECONDITION);
      expect(String(err)).toContain(`${logs} is writable by other users (mode 0777) and has no sticky bit`);
      expect(String(err)).toContain(`chmod go-w ${logs}`);
      expect((await daemon.client.runtime('ListContainers', {})).containers).toEqual([]);
    });
    expect(await readFile(precious, 'utf8')).toBe('precious\n');
  });

  it('made private, the planted link is still not followed; removed, the container logs there', async () => {
    const logs = await ownedDir(0o777);
    await asAttacker(['ln', '-s', precious, path.join(logs, 'victim.log')]);
    await chmod(logs, 0o755);
    await withPod('private', logs, async (pod) => {
      const err = await createContainer(pod, 'victim', ['sh', '-c', 'echo pwned']).catch((e: unknown) => e);
      expect(grpcCode(err), String(err)).toBe(status.FAILED_PRECONDITION);
      expect(String(err)).toContain(`log file ${path.join(logs, 'victim.log')} is a symbolic link`);
      await rm(path.join(logs, 'victim.log'));
      const { container_id: id } = await createContainer(pod, 'victim', ['sh', '-c', 'echo logged']);
      await daemon.client.runtime('StartContainer', { container_id: id });
      const text = await until(
        'the log line',
        () => readFile(path.join(logs, 'victim.log'), 'utf8').catch(() => ''),
        (t) => t.includes('logged'),
      );
      expect(text).toMatch(/ stdout F logged\n$/);
      const st = await lstat(path.join(logs, 'victim.log'));
      expect([st.isFile(), st.mode & 0o777, st.uid]).toEqual([true, 0o600, daemon.user.uid]);
      await daemon.client.runtime('RemoveContainer', { container_id: id });
    });
    expect(await readFile(precious, 'utf8')).toBe('precious\n');
  });

  it('a sticky shared directory is refused as the log directory; a container subdirectory is made private', async () => {
    const sticky = await ownedDir(0o1777);
    await withPod('sticky', sticky, async (pod) => {
      const err = await createContainer(pod, 'c', ['true']).catch((e: unknown) => e);
      expect(grpcCode(err), String(err)).toBe(status.FAILED_PRECONDITION);
      expect(String(err)).toMatch(/even with the sticky bit they can create the names/);
      // kubelet's layout: <log_directory>/<container>/<attempt>.log, the subdirectory made 0755.
      const { container_id: id } = await createContainer(pod, 'c', ['true'], 'c/0.log');
      expect((await lstat(path.join(sticky, 'c'))).mode & 0o7777).toBe(0o755);
      await daemon.client.runtime('RemoveContainer', { container_id: id });
    });
  });

  it('ReopenContainerLog does not let conmon follow a link at the .tmp name it writes', async () => {
    const logs = await ownedDir(0o755);
    await withPod('reopen', logs, async (pod) => {
      const { container_id: id } = await createContainer(pod, 'talker', [
        'sh',
        '-c',
        'i=0; while :; do i=$((i+1)); echo line $i; sleep 0.2; done',
      ]);
      await daemon.client.runtime('StartContainer', { container_id: id });
      const log = path.join(logs, 'talker.log');
      await until(
        'output',
        () => readFile(log, 'utf8').catch(() => ''),
        (t) => t.includes('line 2'),
      );
      // kubelet's rotation: rename, then ask for a new file. A link waits at conmon's .tmp.
      await rename(log, `${log}.1`);
      await daemon.asUser(['ln', '-s', precious, `${log}.tmp`]);
      const err = await daemon.client
        .runtime('ReopenContainerLog', { container_id: id })
        .catch((e: unknown) => e);
      expect(grpcCode(err), String(err)).toBe(status.FAILED_PRECONDITION);
      expect(String(err)).toContain(`${log}.tmp (where conmon writes a reopened log) is a symbolic link`);
      expect(await readFile(precious, 'utf8')).toBe('precious\n');
      // conmon lives on (still writing to the renamed file); without the link the reopen works.
      await rm(`${log}.tmp`);
      await daemon.client.runtime('ReopenContainerLog', { container_id: id });
      await until(
        'output in the new file',
        () => readFile(log, 'utf8').catch(() => ''),
        (t) => /line \d+/.test(t),
      );
      expect((await lstat(log)).isFile()).toBe(true);
      await daemon.client.runtime('StopContainer', { container_id: id, timeout: '0' });
      await daemon.client.runtime('RemoveContainer', { container_id: id });
    });
    expect(await readFile(precious, 'utf8')).toBe('precious\n');
  });
});

describe('ExecSync of a command that forks (row 49)', () => {
  it('answers when sh exits even though its background child holds stdout, and the child is gone; a main process past the timeout is DEADLINE_EXCEEDED at 5 s', async () => {
    const logs = await ownedDir(0o755);
    await withPod('execs', logs, async (pod) => {
      const { container_id: id } = await createContainer(pod, 'idle', ['tail', '-f', '/dev/null']);
      await daemon.client.runtime('StartContainer', { container_id: id });

      let started = Date.now();
      const forked = await daemon.client.runtime(
        'ExecSync',
        { container_id: id, cmd: ['sh', '-c', 'sleep 100000 & echo started'], timeout: '5' },
        { timeoutMs: 30_000 },
      );
      const forkedMs = Date.now() - started;
      expect([forked.exit_code, forked.stdout!.toString()]).toEqual([0, 'started\n']);
      expect(forkedMs).toBeLessThan(5000);
      expect(await processes('sleep 100000')).toEqual([]);

      started = Date.now();
      const err = await daemon.client
        .runtime(
          'ExecSync',
          { container_id: id, cmd: ['sh', '-c', 'sleep 100000 & echo started; sleep 100001'], timeout: '5' },
          { timeoutMs: 30_000 },
        )
        .catch((e: unknown) => e);
      const timedOutMs = Date.now() - started;
      expect(grpcCode(err), String(err)).toBe(status.DEADLINE_EXCEEDED);
      expect(timedOutMs).toBeGreaterThanOrEqual(5000);
      expect(timedOutMs).toBeLessThan(8000);
      expect(await processes('sleep 10000')).toEqual([]);
      const ps = await daemon.client.runtime('ExecSync', { container_id: id, cmd: ['ps'], timeout: '10' });
      expect(ps.stdout!.toString()).not.toMatch(/sleep 10000/);
      console.log(JSON.stringify({ forkedExecMs: forkedMs, timedOutExecMs: timedOutMs }));
      await daemon.client.runtime('StopContainer', { container_id: id, timeout: '0' });
      await daemon.client.runtime('RemoveContainer', { container_id: id });
    });
  }, 60_000);
});
