/**
 * Containers for real: the daemon as the unprivileged test user inside its rootless node,
 * conmon + crun, fuse-overlayfs rootfs, images pulled from a local registry (busybox and the
 * http-server test image), driven by crictl and the CRI client. Checks the CRI log format,
 * `crictl logs -f`, ReopenContainerLog after a rename, stats, cgroup membership and the cgroup
 * files written for the requested resources (or the warning where a controller is missing),
 * survival of `kill -9` of the daemon, exits while the daemon is down, a dead conmon, an HTTP
 * server on a host port, and bad input leaving nothing behind.
 */
import { spawn } from 'node:child_process';
import { chown, mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { exposeInNode, type NodeBridge } from '../fixtures/hostile-registry.js';
import { freePort, type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, HTTP_SERVER_INDEX_HTML, pushCatalogue } from '../fixtures/test-images.js';
import { grpcCode } from '../harness/cri-client.js';
import { APP_DIR, mirrorConfig, sleep, TEST_USER, TestDaemon } from '../harness/daemon.js';

const RUN_AS_USER_SCRIPT = path.join(APP_DIR, 'deploy/run-as-user.sh');

const BUSYBOX = 'registry.k8s.io/e2e-test-images/busybox:1.29-2';
let HTTP_SERVER = '';
const CRI_LOG_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) (stdout|stderr) (P|F) (.*)$/;

let daemon: TestDaemon;
let registry: RunningRegistry;
let bridge: NodeBridge | undefined;
let files = 0;
let logRoot: string;
/** Pods a test made and has not removed: afterEach removes them, so one failure does not cascade. */
const pods = new Set<string>();

async function asJsonFile(value: unknown): Promise<string> {
  const file = path.join(daemon.tmp, `cfg-${files++}.json`);
  await writeFile(file, JSON.stringify(value));
  await chown(file, daemon.user.uid, daemon.user.gid);
  return file;
}

async function crictl(args: string[]): Promise<string> {
  const r = await daemon.crictl(args);
  if (r.exitCode !== 0) {
    throw new Error(
      `crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}\n${await daemon.logTail(30)}`,
    );
  }
  return r.stdout.trim();
}

function podConfig(name: string, extra: Record<string, unknown> = {}) {
  return {
    metadata: { name, namespace: 'ctr', uid: `uid-${name}`, attempt: 0 },
    hostname: name,
    log_directory: path.join(logRoot, name),
    linux: {},
    ...extra,
  };
}

async function runPod(name: string, extra: Record<string, unknown> = {}) {
  const config = podConfig(name, extra);
  await mkdir(config.log_directory, { recursive: true });
  await chown(config.log_directory, daemon.user.uid, daemon.user.gid);
  const file = await asJsonFile(config);
  const id = await crictl(['runp', file]);
  pods.add(id);
  return { id, configFile: file, config };
}

async function createContainer(
  pod: { id: string; configFile: string },
  name: string,
  extra: Record<string, unknown> = {},
  image = BUSYBOX,
): Promise<string> {
  const file = await asJsonFile({
    metadata: { name },
    image: { image },
    log_path: `${name}.log`,
    linux: {},
    ...extra,
  });
  return crictl(['create', '--no-pull', pod.id, file, pod.configFile]);
}

interface Inspect {
  status: {
    id: string;
    state: string;
    exitCode: number;
    reason: string;
    message: string;
    logPath: string;
    imageRef: string;
    image: { image: string };
    createdAt: string;
    startedAt: string;
  };
  info: { pid: number; cgroupPath: string | null; warnings: string[]; bundleDir: string };
}

async function inspect(id: string): Promise<Inspect> {
  return JSON.parse(await crictl(['inspect', '-o', 'json', id])) as Inspect;
}

async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  ms = 20_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined && value !== false) return value as T;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function removePod(id: string): Promise<void> {
  await crictl(['stopp', id]);
  await crictl(['rmp', id]);
  pods.delete(id);
}

/** Container leftovers in the daemon's dirs: records, bundles, exit files, snapshots. */
async function containerLeftovers(): Promise<string[]> {
  const left: string[] = [];
  const list = async (dir: string) =>
    (await readdir(dir).catch(() => [] as string[])).filter((f) => !f.startsWith('.'));
  for (const f of await list(path.join(daemon.rootDir, 'containers'))) left.push(`record ${f}`);
  for (const f of await list(path.join(daemon.runDir, 'containers'))) left.push(`bundle ${f}`);
  for (const f of await list(path.join(daemon.runDir, 'exits'))) left.push(`exit ${f}`);
  for (const f of await list(path.join(daemon.rootDir, 'snapshots', 'fuse-overlayfs', 'snapshots')))
    left.push(`snapshot ${f}`);
  const ps = await daemon.enter(['ps', '-eo', 'comm=']);
  for (const comm of ps.stdout.split('\n')) if (comm.trim() === 'conmon') left.push('conmon process');
  return left;
}

beforeAll(async () => {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  const built = await buildCatalogue({ cacheDir, names: ['busybox', 'http-server'] });
  registry = await startRegistry();
  await pushCatalogue(registry.url, built.images);
  HTTP_SERVER = `${registry.host}/rootless-cri/http-server:1`;
  daemon = await TestDaemon.start({ extraConfig: mirrorConfig(registry.url) });
  bridge = await exposeInNode(await daemon.nodePid(), registry.port);
  logRoot = path.join(daemon.tmp, 'logs');
  await mkdir(logRoot);
  await chown(logRoot, daemon.user.uid, daemon.user.gid);
  await crictl(['pull', BUSYBOX]);
  await crictl(['pull', HTTP_SERVER]);
}, 300_000);

afterEach(async () => {
  for (const id of [...pods]) await removePod(id).catch(() => undefined);
});

afterAll(async () => {
  await bridge?.close();
  await daemon?.stop();
  await registry?.stop();
});

describe('crictl create/start/ps/inspect/logs/stats/stop/rm', () => {
  it('runs busybox, writes the CRI log format, reports status and stats, stops and removes cleanly', async () => {
    const pod = await runPod('basic');
    const id = await createContainer(pod, 'talker', {
      command: [
        'sh',
        '-c',
        'echo hello World; echo oops >&2; echo; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done',
      ],
      labels: { suite: 'containers' },
    });
    let s = await inspect(id);
    expect(s.status.state).toBe('CONTAINER_CREATED');
    expect(s.status.logPath).toBe(path.join(pod.config.log_directory, 'talker.log'));
    const pulled = JSON.parse(await crictl(['inspecti', '-o', 'json', BUSYBOX])) as {
      status: { id: string };
    };
    expect((await daemon.client.runtime('ContainerStatus', { container_id: id })).status?.image_id).toBe(
      pulled.status.id,
    );

    await crictl(['start', id]);
    s = await inspect(id);
    expect(s.status.state).toBe('CONTAINER_RUNNING');
    expect(s.info.pid).toBeGreaterThan(0);
    const ps = JSON.parse(await crictl(['ps', '-o', 'json', '--label', 'suite=containers'])) as {
      containers: { id: string; state: string }[];
    };
    expect(ps.containers.map((c) => [c.id, c.state])).toEqual([[id, 'CONTAINER_RUNNING']]);

    const log = await waitFor('log lines', async () => {
      const text = await readFile(s.status.logPath, 'utf8');
      return text.includes('line 2') ? text : undefined;
    });
    const lines = log.split('\n').filter(Boolean);
    for (const line of lines) expect(line, line).toMatch(CRI_LOG_LINE);
    expect(lines.some((l) => / stdout F hello World$/.test(l))).toBe(true);
    expect(lines.some((l) => / stderr F oops$/.test(l))).toBe(true);
    // An empty line still has four fields: "<ts> stdout F ".
    expect(lines.some((l) => / stdout F $/.test(l))).toBe(true);
    const logs = await daemon.crictl(['logs', id]);
    expect(logs.stdout).toContain('hello World');
    expect(logs.stderr).toContain('oops');

    const stats = JSON.parse(await crictl(['stats', '-o', 'json', '--id', id])) as {
      stats: {
        attributes: { id: string };
        cpu: { timestamp: string };
        memory: { timestamp: string };
        writableLayer: { usedBytes: { value: string } };
      }[];
    };
    expect(stats.stats).toHaveLength(1);
    expect(BigInt(stats.stats[0]!.cpu.timestamp)).toBeGreaterThan(0n);
    expect(BigInt(stats.stats[0]!.memory.timestamp)).toBeGreaterThan(0n);
    expect(BigInt(stats.stats[0]!.writableLayer.usedBytes.value)).toBeGreaterThan(0n);
    const podStats = await daemon.client.runtime('PodSandboxStats', { pod_sandbox_id: pod.id });
    expect(podStats.stats?.linux?.containers?.map((c) => c.attributes?.id)).toEqual([id]);

    // sh as PID 1 has no SIGTERM handler, so the kernel drops SIGTERM: SIGKILL at once,
    // without sitting out the 2 s timeout.
    const before = Date.now();
    await crictl(['stop', '-t', '2', id]);
    expect(Date.now() - before).toBeLessThan(1900);
    s = await inspect(id);
    expect([s.status.state, s.status.exitCode, s.status.reason]).toEqual(['CONTAINER_EXITED', 137, 'Error']);
    await crictl(['stop', id]);

    await crictl(['rm', id]);
    await expect(daemon.client.runtime('ContainerStatus', { container_id: id })).rejects.toSatisfy(
      (e: unknown) => grpcCode(e) === status.NOT_FOUND,
    );
    await crictl(['rm', id]).catch(() => undefined);
    await removePod(pod.id);
    expect(await containerLeftovers()).toEqual([]);
  });

  it('a container that exits on its own is EXITED with its code and reason Completed or Error', async () => {
    const pod = await runPod('exits');
    const ok = await createContainer(pod, 'ok', { command: ['true'] });
    const bad = await createContainer(pod, 'bad', { command: ['sh', '-c', 'exit 3'] });
    await crictl(['start', ok]);
    await crictl(['start', bad]);
    const done = async (id: string) =>
      waitFor(`exit of ${id}`, async () => {
        const s = await inspect(id);
        return s.status.state === 'CONTAINER_EXITED' ? s : undefined;
      });
    expect((await done(ok)).status).toMatchObject({ exitCode: 0, reason: 'Completed' });
    expect((await done(bad)).status).toMatchObject({ exitCode: 3, reason: 'Error' });
    // An exited container lets go of its mount (its fuse-overlayfs process) and crun's state
    // at once, as containerd deletes the task; the writable layer stays until it is removed.
    const ids = [ok, bad];
    await waitFor('the exited containers released', async () => {
      const mounts = (await daemon.enter(['cat', '/proc/self/mountinfo'])).stdout;
      const known = await daemon.enter(['crun', '--root', path.join(daemon.runDir, 'crun'), 'list', '-q']);
      expect(known.exitCode, known.stderr).toBe(0);
      return ids.every((id) => !mounts.includes(`${id}/merged`) && !known.stdout.includes(id)) || undefined;
    });
    const daemons = (await daemon.enter(['ps', '-eo', 'args='])).stdout
      .split('\n')
      .filter((line) => line.includes('fuse-overlayfs') && ids.some((id) => line.includes(id)));
    expect(daemons).toEqual([]);
    const snapshots = path.join(daemon.rootDir, 'snapshots', 'fuse-overlayfs', 'snapshots');
    for (const id of ids) expect((await stat(path.join(snapshots, id, 'upper'))).isDirectory()).toBe(true);
    expect((await inspect(bad)).status).toMatchObject({ state: 'CONTAINER_EXITED', exitCode: 3 });
    await removePod(pod.id);
    expect(await containerLeftovers()).toEqual([]);
  });
});

describe('an exit whose processes live on', () => {
  it('a container whose child outlives it (pod-wide pid namespace) keeps its mount until removed; its pod is removed whole', async () => {
    const shared = { security_context: { namespace_options: { pid: 0 } } };
    const pod = await runPod('survivor', { linux: shared });
    const id = await createContainer(pod, 'forks', {
      command: ['sh', '-c', 'sleep 1000 & exit 0'],
      linux: shared,
    });
    await crictl(['start', id]);
    await waitFor(
      `exit of ${id}`,
      async () => (await inspect(id)).status.state === 'CONTAINER_EXITED' || undefined,
    );
    const sleepers = async () =>
      (await daemon.enter(['ps', '-eo', 'args='])).stdout
        .split('\n')
        .filter((l) => l.trim() === 'sleep 1000');
    expect(await sleepers()).toHaveLength(1);
    // Its cgroup still holds the sleep: the exit released neither crun's state nor the mount
    // (the sleep's files are on it), and RemovePodSandbox below must still get the pod's cgroup.
    const mounts = (await daemon.enter(['cat', '/proc/self/mountinfo'])).stdout;
    expect(mounts).toContain(`${id}/merged`);
    const known = await daemon.enter(['crun', '--root', path.join(daemon.runDir, 'crun'), 'list', '-q']);
    expect(known.stdout).toContain(id);
    await removePod(pod.id);
    expect(await sleepers()).toEqual([]);
    expect(await containerLeftovers()).toEqual([]);
  });
});

describe('logs', () => {
  it('`crictl logs -f` follows new lines', async () => {
    const pod = await runPod('follow');
    const id = await createContainer(pod, 'ticker', {
      command: ['sh', '-c', 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done'],
    });
    await crictl(['start', id]);
    const child = spawn(
      'bash',
      [RUN_AS_USER_SCRIPT, TEST_USER, '--', 'crictl', '--config', daemon.crictlConfig, 'logs', '-f', id],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    try {
      await waitFor('tick 3 then tick 10 from crictl logs -f', async () => /tick 3\n/.test(out) || undefined);
      const seenAt = out.length;
      await waitFor('more ticks', async () => out.length > seenAt + 20 || undefined);
      expect(out).toMatch(/tick 10\n|tick [4-9]\n/);
    } finally {
      process.kill(-child.pid!, 'SIGTERM');
    }
    await removePod(pod.id);
  });

  it('ReopenContainerLog after a rename: the path exists at once, new lines go there, the old file stops', async () => {
    const pod = await runPod('reopen');
    const id = await createContainer(pod, 'rotating', {
      command: ['sh', '-c', 'i=0; while true; do echo n $i; i=$((i+1)); sleep 0.1; done'],
    });
    await crictl(['start', id]);
    const logPath = (await inspect(id)).status.logPath;
    await waitFor('first lines', async () => (await readFile(logPath, 'utf8')).includes('n 3') || undefined);
    await rename(logPath, `${logPath}.1`);
    await daemon.client.runtime('ReopenContainerLog', { container_id: id });
    expect((await stat(logPath)).isFile()).toBe(true);
    await waitFor(
      'lines in the new file',
      async () => (await readFile(logPath, 'utf8')).split('\n').length > 3 || undefined,
    );
    const oldSize = (await stat(`${logPath}.1`)).size;
    await sleep(1000);
    expect((await stat(`${logPath}.1`)).size).toBe(oldSize);
    for (const line of (await readFile(logPath, 'utf8')).split('\n').filter(Boolean))
      expect(line).toMatch(CRI_LOG_LINE);
    await crictl(['stop', '-t', '0', id]);
    await expect(daemon.client.runtime('ReopenContainerLog', { container_id: id })).rejects.toSatisfy(
      (e: unknown) => grpcCode(e) === status.FAILED_PRECONDITION,
    );
    await removePod(pod.id);
  });
});

describe('resources and cgroups', () => {
  it('the container process sits in its cgroup under the pod, and the cgroup files match (or a warning says why not)', async () => {
    const pod = await runPod('limits');
    const id = await createContainer(pod, 'limited', {
      command: ['sleep', '1000'],
      linux: {
        resources: {
          cpu_quota: 50000,
          cpu_period: 100000,
          memory_limit_in_bytes: 64 * 1024 * 1024,
          unified: { 'pids.max': '77' },
        },
      },
    });
    await crictl(['start', id]);
    const s = await inspect(id);
    const cgroupPath = s.info.cgroupPath!;
    expect(cgroupPath).toMatch(new RegExp(`/${id}$`));
    const membership = await daemon.enter(['cat', `/proc/${s.info.pid}/cgroup`]);
    // On a hybrid host the v1 hierarchies are listed too; the v2 line (0::) is the one crun sets.
    const v2Line = (text: string) => text.split('\n').find((l) => l.startsWith('0::'));
    expect(v2Line(membership.stdout)).toBe(`0::${cgroupPath}`);
    const conmonCgroup = path.posix.join(path.posix.dirname(cgroupPath), 'conmon');
    const conmonPid = (await readFile(path.join(s.info.bundleDir, 'conmon.pid'), 'utf8')).trim();
    expect(v2Line((await daemon.enter(['cat', `/proc/${conmonPid}/cgroup`])).stdout)).toBe(
      `0::${conmonCgroup}`,
    );

    const controllers = (
      await daemon.enter(['cat', `/sys/fs/cgroup${cgroupPath}/cgroup.controllers`])
    ).stdout.split(/\s+/);
    const cgroupFile = async (f: string) =>
      (await daemon.enter(['cat', `/sys/fs/cgroup${cgroupPath}/${f}`])).stdout.trim();
    const warnings = s.info.warnings.join('\n');
    const checks: [string, string, string, string][] = [
      ['cpu', 'cpu.max', '50000 100000', 'cpu shares/quota/period dropped'],
      ['memory', 'memory.max', String(64 * 1024 * 1024), 'memory limit dropped'],
      ['pids', 'pids.max', '77', 'unified pids.max dropped'],
    ];
    for (const [controller, file, expected, warning] of checks) {
      if (controllers.includes(controller)) expect(await cgroupFile(file), file).toBe(expected);
      else expect(warnings, `${controller} missing`).toContain(warning);
    }

    // UpdateContainerResources: new quota in the file, or the warning.
    await daemon.client.runtime('UpdateContainerResources', {
      container_id: id,
      linux: { cpu_quota: 20000, cpu_period: 100000, unified: { 'pids.max': '55' } },
    });
    const after = await inspect(id);
    if (controllers.includes('cpu')) expect(await cgroupFile('cpu.max')).toBe('20000 100000');
    else expect(after.info.warnings.join('\n')).toContain('cpu shares/quota/period dropped');
    if (controllers.includes('pids')) expect(await cgroupFile('pids.max')).toBe('55');
    await removePod(pod.id);
    expect(await containerLeftovers()).toEqual([]);
  });
});

describe('networking', () => {
  it('a container serving HTTP on a host port is reachable from the host 127.0.0.1', async () => {
    const hostPort = await freePort();
    const pod = await runPod('web', {
      port_mappings: [{ container_port: 8080, host_port: hostPort, host_ip: '127.0.0.1' }],
    });
    const id = await createContainer(pod, 'http', {}, HTTP_SERVER);
    await crictl(['start', id]);
    const body = await waitFor('HTTP answer', async () => {
      const r = await fetch(`http://127.0.0.1:${hostPort}/`, { signal: AbortSignal.timeout(2000) });
      return r.ok ? r.text() : undefined;
    });
    expect(body).toBe(HTTP_SERVER_INDEX_HTML);
    // httpd is PID 1 without a SIGTERM handler (the image's STOPSIGNAL): SIGKILL at the timeout.
    await crictl(['stop', '-t', '1', id]);
    expect((await inspect(id)).status).toMatchObject({ state: 'CONTAINER_EXITED', exitCode: 137 });
    await removePod(pod.id);
  });
});

describe('daemon restarts', () => {
  it('a container sleeps through kill -9 of the daemon; one that exits meanwhile is EXITED with its code; a dead conmon is reported', async () => {
    const pod = await runPod('survivor');
    const sleeper = await createContainer(pod, 'sleeper', { command: ['sleep', '1000'] });
    const quitter = await createContainer(pod, 'quitter', { command: ['sh', '-c', 'sleep 3; exit 7'] });
    const orphan = await createContainer(pod, 'orphan', { command: ['sleep', '1000'] });
    for (const id of [sleeper, quitter, orphan]) await crictl(['start', id]);
    const before = await inspect(sleeper);
    const orphanInfo = await inspect(orphan);

    await daemon.kill9();
    const conmonPid = Number(
      (await readFile(path.join(orphanInfo.info.bundleDir, 'conmon.pid'), 'utf8')).trim(),
    );
    await daemon.enter(['kill', '-9', String(conmonPid)]);
    await sleep(4000);
    await daemon.serve();

    const after = await inspect(sleeper);
    expect(after.status.state).toBe('CONTAINER_RUNNING');
    expect(after.info.pid).toBe(before.info.pid);
    expect([after.status.createdAt, after.status.startedAt]).toEqual([
      before.status.createdAt,
      before.status.startedAt,
    ]);
    expect((await daemon.enter(['kill', '-0', String(after.info.pid)])).exitCode).toBe(0);
    const quit = await inspect(quitter);
    expect([quit.status.state, quit.status.exitCode, quit.status.reason]).toEqual([
      'CONTAINER_EXITED',
      7,
      'Error',
    ]);
    const dead = await inspect(orphan);
    expect([dead.status.state, dead.status.reason]).toEqual(['CONTAINER_EXITED', 'ContainerMonitorDied']);
    expect((await daemon.enter(['kill', '-0', String(orphanInfo.info.pid)])).exitCode).not.toBe(0);

    await crictl(['stop', '-t', '0', sleeper]);
    expect((await inspect(sleeper)).status.state).toBe('CONTAINER_EXITED');
    await removePod(pod.id);
    expect(await containerLeftovers()).toEqual([]);
  });
});

describe('bad input', () => {
  it('clear errors, nothing leaked: missing command, escaping log path, RunAsGroup alone, unknown image, bad mount', async () => {
    const pod = await runPod('bad');
    const attempts: [Record<string, unknown>, RegExp][] = [
      [{ command: ['/does/not/exist'] }, /not exist|No such file|executable/i],
      [{ log_path: '../../../escape.log' }, /log_directory/],
      [{ linux: { security_context: { run_as_group: { value: 5 } } } }, /group/i],
      [{ mounts: [{ container_path: 'rel', host_path: '/tmp' }] }, /absolute/],
      [{ envs: [{ key: 'HOME', value: '/x\ny' }] }, /HOME/],
    ];
    for (const [extra, message] of attempts) {
      const file = await asJsonFile({
        metadata: { name: 'x' },
        image: { image: BUSYBOX },
        log_path: 'x.log',
        linux: {},
        ...extra,
      });
      const r = await daemon.crictl(['create', '--no-pull', pod.id, file, pod.configFile]);
      let output = `${r.stdout}\n${r.stderr}`;
      if (r.exitCode === 0) {
        // crun may only find a missing binary at start: then StartContainer fails.
        const start = await daemon.crictl(['start', r.stdout.trim()]);
        expect(start.exitCode, JSON.stringify(extra)).not.toBe(0);
        output = start.stderr;
        await crictl(['rm', r.stdout.trim()]);
      }
      expect(output, JSON.stringify(extra)).toMatch(message);
      expect(await containerLeftovers(), JSON.stringify(extra)).toEqual([]);
    }
    const unknown = await asJsonFile({
      metadata: { name: 'y' },
      image: { image: 'registry.k8s.io/nope:1' },
      linux: {},
    });
    const r = await daemon.crictl(['create', '--no-pull', pod.id, unknown, pod.configFile]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/not present|pull it/);
    await removePod(pod.id);
    expect(await containerLeftovers()).toEqual([]);
    expect(
      await readdir(path.join(daemon.rootDir, 'snapshots', 'fuse-overlayfs', 'snapshots')).catch(() => []),
    ).toEqual([]);
  });
});
