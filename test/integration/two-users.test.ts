/**
 * A shared host: two unprivileged users' rootless nodes and daemons side by side (TEST_USER and
 * SECOND_TEST_USER, which run-all.sh sets up), each serving a pod with a host port. Each user
 * sees only their own pods and images, their host port answers with their own container, a host
 * port the other user holds is refused without disturbing it, and neither can reach the other's
 * socket. The same pod name, namespace and uid in both nodes do not clash.
 */
import { chown, mkdir, readlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exposeInNode, type NodeBridge } from '../fixtures/hostile-registry.js';
import { freePort, type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, pushCatalogue } from '../fixtures/test-images.js';
import { SECOND_TEST_USER, sleep, TEST_USER, TestDaemon } from '../harness/daemon.js';

interface Side {
  label: string;
  daemon: TestDaemon;
  bridge: NodeBridge;
  hostPort: number;
  pod: string;
  podFile: string;
}

let registry: RunningRegistry;
let image = '';
const sides: Side[] = [];
let files = 0;

async function crictl(daemon: TestDaemon, args: string[]): Promise<string> {
  const r = await daemon.crictl(args);
  if (r.exitCode !== 0) {
    throw new Error(`crictl ${args.join(' ')} as ${daemon.user.name} failed (${r.exitCode}): ${r.stderr}`);
  }
  return r.stdout.trim();
}

async function asJsonFile(daemon: TestDaemon, value: unknown): Promise<string> {
  const file = path.join(daemon.tmp, `two-users-${files++}.json`);
  await writeFile(file, JSON.stringify(value));
  await chown(file, daemon.user.uid, daemon.user.gid);
  return file;
}

/** The same pod identity on both nodes, with this side's host port. */
async function podFile(daemon: TestDaemon, hostPort: number): Promise<string> {
  const logDirectory = path.join(daemon.tmp, 'pod-logs');
  await mkdir(logDirectory, { recursive: true });
  await chown(logDirectory, daemon.user.uid, daemon.user.gid);
  return asJsonFile(daemon, {
    metadata: { name: 'shared-name', namespace: 'two-users', uid: 'same-uid', attempt: 0 },
    hostname: 'web',
    log_directory: logDirectory,
    port_mappings: [{ container_port: 8080, host_port: hostPort, host_ip: '127.0.0.1' }],
    linux: {},
  });
}

async function httpBody(port: number): Promise<string | undefined> {
  return fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2000) })
    .then((r) => (r.ok ? r.text() : undefined))
    .catch(() => undefined);
}

async function waitForBody(port: number): Promise<string | undefined> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const body = await httpBody(port);
    if (body !== undefined || Date.now() > deadline) return body;
    await sleep(100);
  }
}

beforeAll(async () => {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  const built = await buildCatalogue({ cacheDir, names: ['http-server'] });
  registry = await startRegistry();
  await pushCatalogue(registry.url, built.images);
  image = `${registry.host}/rootless-cri/http-server:1`;
  // One after the other, so a failure to start names the user; then they run side by side.
  for (const user of [TEST_USER, SECOND_TEST_USER]) {
    const daemon = await TestDaemon.start({ user });
    const bridge = await exposeInNode(await daemon.nodePid(), registry.port);
    sides.push({ label: user, daemon, bridge, hostPort: 0, pod: '', podFile: '' });
  }
}, 300_000);

afterAll(async () => {
  const errors: unknown[] = [];
  for (const side of sides) {
    await side.bridge.close().catch((e: unknown) => errors.push(e));
    await side.daemon.stop().catch((e: unknown) => errors.push(e));
  }
  await registry?.stop();
  if (errors.length > 0) throw errors[0];
});

describe('two users on one host', () => {
  it('run separate nodes: different users, user namespaces and sockets', async () => {
    const [a, b] = sides;
    expect(a!.daemon.user.uid).not.toBe(b!.daemon.user.uid);
    const nodeUserNamespace = async (d: TestDaemon) => readlink(`/proc/${await d.nodePid()}/ns/user`);
    expect(await nodeUserNamespace(a!.daemon)).not.toBe(await nodeUserNamespace(b!.daemon));
    expect(a!.daemon.socket).not.toBe(b!.daemon.socket);
  });

  it('both serve a pod with a host port; each user sees only their own, and their port answers with it', async () => {
    for (const side of sides) {
      await crictl(side.daemon, ['pull', image]);
      side.hostPort = await freePort();
      side.podFile = await podFile(side.daemon, side.hostPort);
      side.pod = await crictl(side.daemon, ['runp', side.podFile]);
      // The page names its user, so an answer from the wrong node cannot pass for the right one.
      const ctrFile = await asJsonFile(side.daemon, {
        metadata: { name: 'web' },
        image: { image },
        command: [
          'sh',
          '-c',
          `mkdir -p /tmp/www && echo "${side.label}" > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www`,
        ],
        log_path: 'web.log',
      });
      const ctr = await crictl(side.daemon, ['create', side.pod, ctrFile, side.podFile]);
      await crictl(side.daemon, ['start', ctr]);
    }
    for (const side of sides) expect(await waitForBody(side.hostPort)).toBe(`${side.label}\n`);
    for (const side of sides) {
      expect((await crictl(side.daemon, ['pods', '-q'])).split('\n')).toEqual([side.pod]);
      expect((await crictl(side.daemon, ['ps', '-q'])).split('\n')).toHaveLength(1);
    }
  });

  it("refuses a host port the other user's pod holds, and the other pod keeps serving", async () => {
    const [a, b] = sides;
    const clashFile = await asJsonFile(b!.daemon, {
      metadata: { name: 'clash', namespace: 'two-users', uid: 'clash-uid', attempt: 0 },
      hostname: 'clash',
      log_directory: path.join(b!.daemon.tmp, 'pod-logs'),
      port_mappings: [{ container_port: 8080, host_port: a!.hostPort, host_ip: '127.0.0.1' }],
      linux: {},
    });
    const clash = await b!.daemon.crictl(['runp', clashFile]);
    expect(clash.exitCode).not.toBe(0);
    expect(clash.stderr).toMatch(new RegExp(`FailedPrecondition.*${a!.hostPort}`));
    expect((await crictl(b!.daemon, ['pods', '-q'])).split('\n')).toEqual([b!.pod]);
    expect(await httpBody(a!.hostPort)).toBe(`${a!.label}\n`);
  });

  it("cannot reach the other user's socket", async () => {
    const [a, b] = sides;
    const r = await b!.daemon.asUser([
      'crictl',
      '--runtime-endpoint',
      `unix://${a!.daemon.socket}`,
      '--timeout',
      '5s',
      'version',
    ]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/permission denied/i);
  });

  it('tear down independently: removing one pod leaves the other serving', async () => {
    const [a, b] = sides;
    await crictl(a!.daemon, ['stopp', a!.pod]);
    await crictl(a!.daemon, ['rmp', a!.pod]);
    expect(await httpBody(a!.hostPort)).toBeUndefined();
    expect(await httpBody(b!.hostPort)).toBe(`${b!.label}\n`);
    await crictl(b!.daemon, ['stopp', b!.pod]);
    await crictl(b!.daemon, ['rmp', b!.pod]);
  });
});
