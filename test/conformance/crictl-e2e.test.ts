/**
 * crictl end to end, from the host (not inside the node), as the unprivileged test user, the
 * way an operator drives a node: pull (with and without auth), runp, create, start, ps,
 * inspect, logs, exec, attach, port-forward, stats, statsp, events, update, stop, rm, rmp,
 * rmi, info, imagefsinfo. Each step asserts on crictl's output; the daemon's stop() at the end
 * fails the suite if anything of the test user is left behind.
 */
import { spawn } from 'node:child_process';
import { chown, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import {
  buildCatalogue,
  catalogueEntry,
  HTTP_SERVER_INDEX_HTML,
  HTTP_SERVER_PORT,
  pushCatalogue,
} from '../fixtures/test-images.js';
import { crictlPortForward } from '../harness/crictl-port-forward.js';
import { APP_DIR, crictlCommand, mirrorConfig, sleep, TEST_USER, TestDaemon } from '../harness/daemon.js';

const REPORT_DIR =
  process.env.ROOTLESS_CRI_REPORT_DIR ?? path.resolve(import.meta.dirname, '../../.work/reports');
const USER = 'e2e';
const PASSWORD = 'e2e-secret';

describe('crictl end to end from the host', () => {
  let daemon: TestDaemon;
  let open: RunningRegistry;
  let secured: RunningRegistry;
  let busybox: string;
  let httpServer: string;
  let podId = '';
  let serverId = '';
  let echoId = '';

  const crictl = async (args: string[], input?: string) => {
    const r = await daemon.asUser(crictlCommand(daemon.crictlConfig, args), input);
    if (r.exitCode !== 0) throw new Error(`crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}`);
    return r.stdout;
  };
  const writeJson = async (name: string, value: unknown) => {
    const file = path.join(daemon.tmp, name);
    await writeFile(file, JSON.stringify(value));
    await chown(file, daemon.user.uid, daemon.user.gid);
    return file;
  };

  beforeAll(async () => {
    const cacheDir = path.join(REPORT_DIR, '..', 'test-images');
    const { images } = await buildCatalogue({ cacheDir, names: ['busybox', 'http-server'] });
    open = await startRegistry();
    secured = await startRegistry({
      auth: { kind: 'htpasswd', users: [{ username: USER, password: PASSWORD }] },
    });
    await pushCatalogue(open.host, images);
    await pushCatalogue(secured.host, images, { username: USER, password: PASSWORD });
    const bb = catalogueEntry('busybox');
    const hs = catalogueEntry('http-server');
    busybox = `registry.k8s.io/${bb.repository}:${bb.tags[0]}`;
    httpServer = `${secured.host}/${hs.repository}:${hs.tags[0]}`;
    daemon = await TestDaemon.start({ extraConfig: mirrorConfig(open.url) });
  }, 180_000);

  afterAll(async () => {
    await daemon?.stop();
    await open?.stop();
    await secured?.stop();
  }, 120_000);

  it('info and imagefsinfo', async () => {
    const info = JSON.parse(await crictl(['info', '-o', 'json'])) as {
      status: { conditions: { type: string; status: boolean }[] };
    };
    expect(info.status.conditions.every((c) => c.status)).toBe(true);
    const fs = JSON.parse(await crictl(['imagefsinfo', '-o', 'json'])) as {
      status: { imageFilesystems: { fsId: { mountpoint: string } }[] };
    };
    expect(fs.status.imageFilesystems[0]?.fsId.mountpoint).toContain(daemon.rootDir);
  });

  it('pulls without auth (through the registry.k8s.io mirror) and with --creds', async () => {
    expect(await crictl(['pull', busybox])).toMatch(/^Image is up to date for sha256:[0-9a-f]{64}$/m);
    const denied = await daemon.asUser(crictlCommand(daemon.crictlConfig, ['pull', httpServer]));
    expect(denied.exitCode).not.toBe(0);
    expect(denied.stderr).toMatch(/denied|unauthori[sz]ed|401/i);
    expect(await crictl(['pull', '--creds', `${USER}:${PASSWORD}`, httpServer])).toMatch(
      /Image is up to date/,
    );
    const images = await crictl(['images']);
    expect(images).toContain('registry.k8s.io/e2e-test-images/busybox');
    expect(images).toContain(`${secured.host}/rootless-cri/http-server`);
  });

  it('runp, create, start, ps, inspect', async () => {
    const pod = await writeJson('pod.json', {
      metadata: { name: 'e2e', namespace: 'default', uid: 'e2e-uid', attempt: 0 },
      hostname: 'e2e-pod',
      log_directory: path.join(daemon.tmp, 'logs'),
      port_mappings: [{ protocol: 0, container_port: HTTP_SERVER_PORT, host_port: 0 }],
      linux: {},
    });
    await chown(daemon.tmp, daemon.user.uid, daemon.user.gid);
    podId = (await crictl(['runp', pod])).trim();
    expect(podId).toMatch(/^[0-9a-f]{64}$/);
    const server = await writeJson('server.json', {
      metadata: { name: 'server' },
      image: { image: httpServer },
      log_path: 'server.log',
      labels: { role: 'server' },
    });
    serverId = (await crictl(['create', podId, server, pod])).trim();
    const echo = await writeJson('echo.json', {
      metadata: { name: 'echo' },
      image: { image: busybox },
      command: ['sh', '-c', 'echo started; while read line; do echo "got $line"; done'],
      stdin: true,
      // The first attach that closes stdin closes the container's stdin: the loop ends.
      stdin_once: true,
      log_path: 'echo.log',
    });
    echoId = (await crictl(['create', podId, echo, pod])).trim();
    await crictl(['start', serverId]);
    await crictl(['start', echoId]);
    const ps = JSON.parse(await crictl(['ps', '-o', 'json'])) as {
      containers: { id: string; state: string; labels: Record<string, string> }[];
    };
    const mine = ps.containers.filter((c) => c.id === serverId || c.id === echoId);
    expect(mine.map((c) => c.state)).toEqual(['CONTAINER_RUNNING', 'CONTAINER_RUNNING']);
    expect(await crictl(['ps', '-q', '--label', 'role=server'])).toContain(serverId);
    const inspect = JSON.parse(await crictl(['inspect', serverId])) as {
      status: { state: string; logPath: string; imageRef: string };
    };
    expect(inspect.status.state).toBe('CONTAINER_RUNNING');
    expect(inspect.status.logPath).toBe(path.join(daemon.tmp, 'logs', 'server.log'));
    const inspectp = JSON.parse(await crictl(['inspectp', podId])) as {
      status: { state: string; network: { ip: string } };
    };
    expect(inspectp.status.state).toBe('SANDBOX_READY');
    expect(inspectp.status.network.ip).toMatch(/^10\.88\./);
  });

  it('logs and exec (sync and streaming)', async () => {
    await waitFor(async () => (await crictl(['logs', echoId])).includes('started'));
    // The harness drops one final newline from crictl's output (execa's default); crictl
    // prints ExecSync output followed by a newline of its own.
    expect(await crictl(['exec', '-s', serverId, 'echo', '-n', 'hello from exec'])).toBe('hello from exec\n');
    expect(await crictl(['exec', serverId, 'sh', '-c', 'echo $((6*7)); echo done >&2'])).toBe('42');
    const failed = await daemon.asUser(
      crictlCommand(daemon.crictlConfig, ['exec', serverId, 'sh', '-c', 'exit 3']),
    );
    // The v4 status carries the exit code; crictl reports it and fails.
    expect(failed.exitCode).not.toBe(0);
    expect(failed.stderr).toMatch(/exit code 3/);
  });

  it('attach sends stdin to the container (stdin_once: it exits when attach closes stdin)', async () => {
    const r = await daemon.asUser(crictlCommand(daemon.crictlConfig, ['attach', '-i', echoId]), 'ping\n');
    expect(r.stdout).toContain('got ping');
    await waitFor(async () => (await crictl(['logs', echoId])).includes('got ping'));
    await waitFor(async () => (await crictl(['inspect', echoId])).includes('CONTAINER_EXITED'));
  });

  it('port-forward reaches the pod HTTP server from the host', async () => {
    const forward = await crictlPortForward(daemon.crictlConfig, podId, HTTP_SERVER_PORT);
    try {
      const page = await fetch(`http://127.0.0.1:${forward.localPort}/`, {
        signal: AbortSignal.timeout(10_000),
      });
      expect(await page.text()).toBe(HTTP_SERVER_INDEX_HTML);
    } finally {
      await forward.stop();
    }
  });

  it('stats, statsp and update', async () => {
    const stats = JSON.parse(await crictl(['stats', '-o', 'json', serverId])) as {
      stats: { attributes: { id: string }; cpu: { timestamp: string } }[];
    };
    expect(stats.stats[0]?.attributes.id).toBe(serverId);
    expect(Number(stats.stats[0]?.cpu.timestamp)).toBeGreaterThan(0);
    const statsp = JSON.parse(await crictl(['statsp', '-o', 'json', podId])) as {
      stats: { attributes: { id: string } }[];
    };
    expect(statsp.stats[0]?.attributes.id).toBe(podId);
    await crictl(['update', '--cpu-share', '512', '--memory', '67108864', serverId]);
    const after = JSON.parse(await crictl(['inspect', serverId])) as { status: { state: string } };
    expect(after.status.state).toBe('CONTAINER_RUNNING');
  });

  it('events stream container and sandbox lifecycle changes', async () => {
    const events = spawn(
      'bash',
      [
        path.join(APP_DIR, 'deploy/run-as-user.sh'),
        TEST_USER,
        '--',
        ...crictlCommand(daemon.crictlConfig, ['events', '-o', 'json']),
      ],
      { stdio: ['ignore', 'pipe', 'ignore'], detached: true },
    );
    let out = '';
    events.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
    });
    try {
      // The stream is open once the daemon counts a subscriber (verbose Status, crictl info).
      await waitFor(async () => {
        const info = JSON.parse(await crictl(['info', '-o', 'json'])) as {
          events?: { subscribers?: number };
        };
        return (info.events?.subscribers ?? 0) >= 1;
      });
      await crictl(['stop', serverId]);
      await waitFor(async () => out.includes(serverId) && /CONTAINER_STOPPED_EVENT/.test(out));
      // Sandbox events: container_id is the pod's id (as containerd sends them).
      const config = await writeJson('events-pod.json', {
        metadata: { name: 'events-pod', namespace: 'e2e', uid: 'uid-events-pod', attempt: 0 },
        log_directory: '',
        linux: {},
      });
      const eventsPod = await crictl(['runp', config]);
      await crictl(['stopp', eventsPod]);
      await crictl(['rmp', eventsPod]);
      // crictl prints each event as an indented JSON object, one after the other.
      const kindsFor = (id: string) =>
        jsonObjects(out)
          .filter((e) => e.containerId === id)
          .map((e) => String(e.containerEventType));
      await waitFor(async () => kindsFor(eventsPod).length >= 4);
      expect(kindsFor(eventsPod)).toEqual([
        'CONTAINER_CREATED_EVENT',
        'CONTAINER_STARTED_EVENT',
        'CONTAINER_STOPPED_EVENT',
        'CONTAINER_DELETED_EVENT',
      ]);
    } finally {
      process.kill(-events.pid!, 'SIGTERM');
    }
  });

  it('stop, rm, stopp, rmp, rmi', async () => {
    await crictl(['stop', serverId]);
    await crictl(['rm', serverId, echoId]);
    expect(await crictl(['ps', '-a', '-q'])).not.toContain(serverId);
    await crictl(['stopp', podId]);
    await crictl(['rmp', podId]);
    expect(await crictl(['pods', '-q'])).toBe('');
    await crictl(['rmi', busybox, httpServer]);
    expect(await crictl(['images', '-q'])).toBe('');
  });
});

/** The complete JSON objects in a stream of concatenated (indented) objects. */
function jsonObjects(text: string): Record<string, unknown>[] {
  const objects: Record<string, unknown>[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{') {
      if (depth === 0) start = i;
      depth++;
    } else if (c === '}') {
      depth--;
      if (depth === 0 && start >= 0)
        objects.push(JSON.parse(text.slice(start, i + 1)) as Record<string, unknown>);
    }
  }
  return objects;
}

async function waitFor(check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(200);
  }
  throw new Error(`condition not met within ${timeoutMs} ms`);
}
