/**
 * Exec, attach, port-forward and ExecSync for real: the daemon as the unprivileged test user
 * in its rootless node, containers from the project's test images (a local registry bridged
 * into the node), and the real crictl on the host talking SPDY and WebSocket to the streaming
 * port the daemon published on the host's 127.0.0.1. The daemon pulls from the registry on
 * the host's 127.0.0.1 through its supervisor's host dialer.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chown, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import {
  buildCatalogue,
  type CatalogueImage,
  catalogueEntry,
  HTTP_SERVER_INDEX_HTML,
  HTTP_SERVER_PORT,
  pushCatalogue,
} from '../fixtures/test-images.js';
import { crictlPortForward } from '../harness/crictl-port-forward.js';
import { crictlCommand, type RunResult, sleep, TestDaemon } from '../harness/daemon.js';

let daemon: TestDaemon;
let registry: RunningRegistry;
let images: CatalogueImage[];
let files = 0;
let podId: string;
let hostPodId: string;
/** busybox: `tail -f /dev/null` (no sleep of its own, so pgrep sleep finds only ours). */
let idle: string;
/** busybox sh with stdin + stdin_once, no tty (critest's attach container). */
let onceShell: string;
/** busybox sh with stdin and no stdin_once. */
let keptShell: string;

function ref(name: string): string {
  const entry = catalogueEntry(name);
  return `${registry.host}/${entry.repository}:${entry.tags[0]}`;
}

async function userFile(name: string, content: string | Buffer): Promise<string> {
  const file = path.join(daemon.tmp, `${files++}-${name}`);
  await writeFile(file, content);
  await chown(file, daemon.user.uid, daemon.user.gid);
  return file;
}

async function crictlOk(args: string[]): Promise<string> {
  const r = await daemon.crictl(args);
  if (r.exitCode !== 0) {
    throw new Error(
      `crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}\n${await daemon.logTail()}`,
    );
  }
  return r.stdout.trim();
}

/** A shell command line for crictl with this daemon's config, as the test user would type it. */
function crictlLine(args: string[]): string {
  return crictlCommand(daemon.crictlConfig, args).map(shellQuote).join(' ');
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

function bash(line: string, input?: string): Promise<RunResult> {
  return daemon.asUser(['bash', '-c', line], input);
}

async function createContainer(pod: string, podConfig: string, config: Record<string, unknown>) {
  const file = await userFile('ctr.json', JSON.stringify(config));
  const id = await crictlOk(['create', pod, file, podConfig]);
  await crictlOk(['start', id]);
  return id;
}

async function runPod(
  name: string,
  extra: Record<string, unknown> = {},
): Promise<{ id: string; file: string }> {
  const file = await userFile(
    'pod.json',
    JSON.stringify({
      metadata: { name, namespace: 'streaming', uid: `uid-${name}`, attempt: 0 },
      log_directory: path.join(daemon.tmp, `logs-${name}`),
      ...extra,
    }),
  );
  return { id: await crictlOk(['runp', file]), file };
}

beforeAll(async () => {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  images = (await buildCatalogue({ cacheDir, names: ['busybox', 'http-server'] })).images;
  registry = await startRegistry();
  await pushCatalogue(registry.url, images);
  daemon = await TestDaemon.start();
  await crictlOk(['pull', ref('busybox')]);
  await crictlOk(['pull', ref('http-server')]);

  const pod = await runPod('streams');
  podId = pod.id;
  const base = (name: string, extra: Record<string, unknown>) => ({
    metadata: { name },
    image: { image: ref('busybox') },
    log_path: `${name}.log`,
    ...extra,
  });
  idle = await createContainer(podId, pod.file, base('idle', { command: ['tail', '-f', '/dev/null'] }));
  onceShell = await createContainer(
    podId,
    pod.file,
    base('once-shell', { command: ['sh'], stdin: true, stdin_once: true }),
  );
  keptShell = await createContainer(podId, pod.file, base('kept-shell', { command: ['sh'], stdin: true }));
  await createContainer(podId, pod.file, {
    metadata: { name: 'web' },
    image: { image: ref('http-server') },
    log_path: 'web.log',
  });

  const hostPod = await runPod('streams-host', {
    linux: { security_context: { namespace_options: { network: 2 } } },
  });
  hostPodId = hostPod.id;
  await createContainer(hostPodId, hostPod.file, {
    metadata: { name: 'host-web' },
    image: { image: ref('http-server') },
    log_path: 'host-web.log',
  });
}, 300_000);

afterAll(async () => {
  for (const pod of [podId, hostPodId]) {
    if (pod) {
      await daemon?.crictl(['stopp', pod]);
      await daemon?.crictl(['rmp', pod]);
    }
  }
  await daemon?.stop();
  await registry?.stop();
}, 120_000);

describe('ExecSync (crictl exec -s)', () => {
  it('returns stdout and stderr, and a non-zero exit code as an error naming it', async () => {
    // crictl prints stdout then stderr on success; on a non-zero exit the CRI client turns the
    // response into an error carrying the code and stderr.
    const ok = await daemon.crictl(['exec', '-s', idle, 'sh', '-c', 'echo out; echo err >&2']);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout).toBe('out\n\nerr\n');
    const failed = await daemon.crictl(['exec', '-s', idle, 'sh', '-c', 'echo out; echo oops >&2; exit 3']);
    expect(failed.exitCode).not.toBe(0);
    expect(failed.stderr).toMatch(/exited with 3: oops/);
  });

  it('times out with DeadlineExceeded and leaves no process behind', async () => {
    const started = Date.now();
    const r = await daemon.crictl(['exec', '-s', '--timeout', '1', idle, 'sleep', '4321']);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/DeadlineExceeded|timed out|deadline/i);
    expect(Date.now() - started).toBeLessThan(15_000);
    const left = await daemon.crictl(['exec', '-s', idle, 'sh', '-c', 'pgrep sleep || true']);
    expect(left.exitCode, left.stderr).toBe(0);
    expect(left.stdout.trim()).toBe('');
  });

  it('refuses an unknown container with NotFound', async () => {
    const r = await daemon.crictl(['exec', '-s', 'f'.repeat(64), 'true']);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/NotFound|not found|does not exist/i);
  });
});

describe.each(['spdy', 'websocket'] as const)('crictl exec over %s', (transport) => {
  it('streams stdout and stderr and returns the exit code', async () => {
    const ok = await daemon.crictl(['exec', '-r', transport, idle, 'sh', '-c', 'echo out; echo err >&2']);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout).toBe('out');
    expect(ok.stderr).toBe('err');
    // crictl reports a non-zero exit (from the v4/v5 status) as an error naming the code.
    const r = await daemon.crictl(['exec', '-r', transport, idle, 'sh', '-c', 'echo out; exit 4']);
    expect(r.stdout).toBe('out');
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/command terminated with exit code 4/);
  });

  it('pipes 10 MB through cat byte-exact (exec -i)', async () => {
    const data = randomBytes(10 * 1024 * 1024);
    const input = await userFile('input.bin', data);
    const output = `${input}.out`;
    const r = await bash(
      `${crictlLine(['exec', '-i', '-r', transport, idle, 'cat'])} < ${input} > ${output}`,
    );
    expect(r.exitCode, r.stderr).toBe(0);
    const got = await readFile(output);
    expect(got.length).toBe(data.length);
    expect(createHash('sha256').update(got).digest('hex')).toBe(
      createHash('sha256').update(data).digest('hex'),
    );
  }, 120_000);

  it('gives exec -it a terminal of the client’s size', async () => {
    // script(1) makes a pty for crictl; its size is set first, and crictl sends it as a resize.
    const inner = `stty rows 33 cols 111; ${crictlLine(['exec', '-it', '-r', transport, idle, 'sh', '-c', 'sleep 1; stty size; tty; exit 7'])}`;
    const r = await daemon.asUser(['script', '-qec', inner, '/dev/null']);
    expect(r.stdout, r.stderr).toContain('33 111');
    expect(r.stdout).toMatch(/\/dev\/pts\/\d+/);
    expect(r.stdout).toMatch(/command terminated with exit code 7/);
  });

  it('shows the runtime’s error on the terminal for a command that does not exist (exec -it)', async () => {
    const r = await daemon.asUser([
      'script',
      '-qec',
      crictlLine(['exec', '-it', '-r', transport, idle, '/does-not-exist']),
      '/dev/null',
    ]);
    expect(r.stdout).toMatch(/does-not-exist.*(not found|No such file)/);
  });

  it('refuses an exec in a stopped container', async () => {
    const { id, file } = await runPod(`stopped-${transport}`);
    const ctr = await createContainer(id, file, {
      metadata: { name: 'short' },
      image: { image: ref('busybox') },
      command: ['true'],
    });
    for (let i = 0; i < 50; i++) {
      const state = await crictlOk(['inspect', '-o', 'go-template', '--template', '{{.status.state}}', ctr]);
      if (state === 'CONTAINER_EXITED') break;
      await sleep(100);
    }
    const r = await daemon.crictl(['exec', '-r', transport, ctr, 'true']);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/not running|exited/i);
    await crictlOk(['rmp', '-f', id]);
  });
});

describe.each(['spdy', 'websocket'] as const)('crictl attach over %s', (transport) => {
  it('attaches to a stdin_once container: input reaches sh, closing stdin ends it', async () => {
    const r = await daemon.asUser(
      crictlCommand(daemon.crictlConfig, ['attach', '-i', '-r', transport, onceShell]),
      'echo hello-from-attach\n',
    );
    expect(r.stdout).toContain('hello-from-attach');
    // stdin_once: our closed stdin closed the container's; sh exited.
    await waitForState(onceShell, 'CONTAINER_EXITED');
    // The log got the output too.
    const logs = await crictlOk(['logs', onceShell]);
    expect(logs).toContain('hello-from-attach');
    await recreateOnceShell();
  });

  it('keeps the stdin of a container without stdin_once open; a client that leaves only detaches', async () => {
    const marker = `kept-${transport}`;
    // Without stdin_once the attach does not end with the client's stdin: the client leaves
    // (killed by timeout) while the container keeps running.
    const r = await daemon.asUser(
      [
        'timeout',
        '-s',
        'KILL',
        '3',
        ...crictlCommand(daemon.crictlConfig, ['attach', '-i', '-r', transport, keptShell]),
      ],
      `echo ${marker}\n`,
    );
    expect(r.stdout).toContain(marker);
    expect(r.exitCode).not.toBe(0); // killed: the client went away
    await sleep(300);
    const state = await crictlOk([
      'inspect',
      '-o',
      'go-template',
      '--template',
      '{{.status.state}}',
      keptShell,
    ]);
    expect(state).toBe('CONTAINER_RUNNING');
    const again = await daemon.asUser(
      [
        'timeout',
        '-s',
        'KILL',
        '3',
        ...crictlCommand(daemon.crictlConfig, ['attach', '-i', '-r', transport, keptShell]),
      ],
      `echo again-${marker}\n`,
    );
    expect(again.stdout).toContain(`again-${marker}`);
  });

  it('attaches with a terminal to a tty container and resizes it', async () => {
    const podFile = await streamsPodFile();
    const ttyShell = await createContainer(podId, podFile, {
      metadata: { name: `tty-shell-${transport}` },
      image: { image: ref('busybox') },
      log_path: `tty-${transport}.log`,
      command: ['sh'],
      stdin: true,
      tty: true,
    });
    // script(1) gives crictl a terminal (sized first) and forwards our input to it.
    const inner = `stty rows 21 cols 77; ${crictlLine(['attach', '-it', '-r', transport, ttyShell])}`;
    const r = await bash(
      `(sleep 1.5; printf 'stty size; echo attach-$((6*7))\\n'; sleep 1; printf 'exit 0\\n'; sleep 2) | timeout 15 script -qec ${shellQuote(inner)} /dev/null`,
    );
    expect(r.stdout, r.stderr).toContain('attach-42');
    expect(r.stdout).toContain('21 77');
    await waitForState(ttyShell, 'CONTAINER_EXITED');
  });
});

async function waitForState(id: string, state: string): Promise<void> {
  let last = '';
  for (let i = 0; i < 100; i++) {
    last = await crictlOk(['inspect', '-o', 'go-template', '--template', '{{.status.state}}', id]);
    if (last === state) return;
    await sleep(100);
  }
  throw new Error(`container ${id} is ${last}, not ${state}`);
}

/** The streams pod's config again (crictl create wants it). */
function streamsPodFile(): Promise<string> {
  return userFile(
    'pod.json',
    JSON.stringify({
      metadata: { name: 'streams', namespace: 'streaming', uid: 'uid-streams', attempt: 0 },
      log_directory: path.join(daemon.tmp, 'logs-streams'),
    }),
  );
}

async function recreateOnceShell(): Promise<void> {
  await crictlOk(['rm', onceShell]);
  const podFile = await streamsPodFile();
  onceShell = await createContainer(podId, podFile, {
    metadata: { name: `once-shell-${files}` },
    image: { image: ref('busybox') },
    log_path: `once-${files}.log`,
    command: ['sh'],
    stdin: true,
    stdin_once: true,
  });
}

async function httpGet(port: number): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(10_000) });
  return response.text();
}

describe.each(['spdy', 'websocket'] as const)('crictl port-forward over %s', (transport) => {
  it('forwards a host port to the HTTP server in a pod, for several requests', async () => {
    const forward = await crictlPortForward(daemon.crictlConfig, podId, HTTP_SERVER_PORT, { transport });
    const local = forward.localPort;
    try {
      for (let i = 0; i < 3; i++) expect(await httpGet(local)).toBe(HTTP_SERVER_INDEX_HTML);
      // Several at once ride one connection as separate stream pairs.
      const many = await Promise.all(Array.from({ length: 5 }, () => httpGet(local)));
      expect(many).toEqual(Array(5).fill(HTTP_SERVER_INDEX_HTML));
    } finally {
      await forward.stop();
    }
  });

  it('forwards to the node loopback for a host-network pod', async () => {
    const forward = await crictlPortForward(daemon.crictlConfig, hostPodId, HTTP_SERVER_PORT, { transport });
    const local = forward.localPort;
    try {
      expect(await httpGet(local)).toBe(HTTP_SERVER_INDEX_HTML);
    } finally {
      await forward.stop();
    }
  });

  it('reports a port nobody listens on, and keeps serving', async () => {
    const forward = await crictlPortForward(daemon.crictlConfig, podId, 9, { transport });
    const local = forward.localPort;
    try {
      await expect(httpGet(local)).rejects.toThrow();
      // client-go reports the error stream's message (and may give up on the connection).
      for (let i = 0; i < 50 && !/port 9/.test(forward.output()); i++) await sleep(100);
      expect(forward.output()).toMatch(/is anything listening on port 9/);
    } finally {
      await forward.stop();
    }
    // The daemon still serves exec afterwards.
    const r = await daemon.crictl(['exec', idle, 'echo', 'still-here']);
    expect(r.stdout).toBe('still-here');
  });
});
