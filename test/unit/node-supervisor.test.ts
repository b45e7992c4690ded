/**
 * native/node-supervisor (what `rootless-cri serve` becomes on the host side) against the
 * daemon's side of its two channels: the host dialer client (src/os/host-dialer.ts) in this
 * process, and a stand-in daemon (test/fixtures/supervised-daemon.mjs) that asks for host
 * listeners over fd 3 as src/rootless/host-listeners.ts does. `sh -c 'node …; exit $?'` plays
 * nsenter: the daemon is the command's first child, as under nsenter.
 *
 * The node's pids are a pid that cannot exist (no node: the uplink watch has nothing to
 * connect), except in the uplink test, which gives this process as the node and a fake
 * slirp4netns that records its arguments and waits for its --exit-fd to close.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/errors.js';
import { hostDialer } from '../../src/os/host-dialer.js';
import { nativeHelperPath } from '../../src/os/native-helpers.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/supervised-daemon.mjs', import.meta.url));
const NO_PID = '2147483646';

interface Supervised {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  waitFor(match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
}

function supervise(
  dir: string,
  requests: [string, number][],
  dials: [string, number][] = [],
  node: { rootlesskit: string; child: string; slirp4netns: string } = {
    rootlesskit: NO_PID,
    child: NO_PID,
    slirp4netns: '/bin/false',
  },
): Supervised {
  const child = spawn(
    nativeHelperPath('node-supervisor'),
    [
      '--run-dir',
      dir,
      '--dial-socket',
      path.join(dir, 'dial.sock'),
      '--rootlesskit-pid',
      node.rootlesskit,
      '--child-pid',
      node.child,
      '--slirp4netns',
      node.slirp4netns,
      '--mtu',
      '1500',
      '--disable-host-loopback',
      '--',
      '/bin/sh',
      '-c',
      '"$0" "$1" "$2" "$3"; exit $?',
      process.execPath,
      FIXTURE,
      JSON.stringify(requests),
      JSON.stringify(dials),
    ],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  const lines: Record<string, unknown>[] = [];
  const waiters: {
    match: (l: Record<string, unknown>) => boolean;
    resolve: (l: Record<string, unknown>) => void;
  }[] = [];
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    partial += d.toString();
    const parts = partial.split('\n');
    partial = parts.pop()!;
    for (const text of parts) {
      const line = JSON.parse(text) as Record<string, unknown>;
      lines.push(line);
      for (const w of waiters.filter((w) => w.match(line))) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  child.stderr!.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    lines,
    exited,
    waitFor: (match) =>
      new Promise((resolve) => {
        const seen = lines.find(match);
        if (seen) resolve(seen);
        else waiters.push({ match, resolve });
      }),
  };
}

async function waitForFile(file: string): Promise<string> {
  for (;;) {
    const text = await readFile(file, 'utf8').catch(() => null);
    if (text?.endsWith('\n')) return text;
    await new Promise((r) => setTimeout(r, 20));
  }
}

function greeting(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    socket.on('data', (d: Buffer) => {
      text += d.toString();
    });
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
  });
}

describe('node-supervisor', () => {
  let dir: string;
  let busy: net.Server;
  let busyPort: number;
  let echo: net.Server;
  let echoPort: number;
  let sup: Supervised;
  let refusedPort: number;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'node-supervisor-'));
    echo = net.createServer((s) => s.pipe(s));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', () => r()));
    echoPort = (echo.address() as net.AddressInfo).port;
    busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
    busyPort = (busy.address() as net.AddressInfo).port;
    const refused = net.createServer();
    await new Promise<void>((r) => refused.listen(0, '127.0.0.1', () => r()));
    refusedPort = (refused.address() as net.AddressInfo).port;
    await new Promise<void>((r) => refused.close(() => r()));
    sup = supervise(
      dir,
      [
        ['127.0.0.1', 0],
        ['127.0.0.1', 0],
        ['127.0.0.1', busyPort],
        ['localhost', 0],
        ['127.0.0.1', 0],
      ],
      [
        ['127.0.0.1', echoPort],
        ['127.0.0.1', refusedPort],
        ['registry.example', 443],
        ['127.0.0.1', echoPort],
      ],
    );
    await sup.waitFor((l) => l.event === 'ready');
  });

  afterAll(async () => {
    if (sup.child.exitCode === null && sup.child.signalCode === null) sup.child.kill('SIGKILL');
    echo.close();
    busy.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('hands the daemon a listening socket per request, each in order, several in flight', async () => {
    const handed = sup.lines.filter((l) => l.type === 'rcri:listener');
    expect(handed.map((l) => l.id)).toEqual([1, 2, 5]);
    const ports = handed.map((l) => l.port as number);
    expect(new Set(ports).size).toBe(3);
    for (const [i, port] of ports.entries())
      expect(await greeting(port)).toBe(`hello from listener ${handed[i]!.id}\n`);
  });

  it('answers a bind failure with its errno name and a refused name with EINVAL', () => {
    const errors = sup.lines.filter((l) => l.type === 'rcri:listener-error');
    expect(errors).toEqual([
      expect.objectContaining({
        id: 3,
        code: 'EADDRINUSE',
        message: expect.stringContaining(`:${busyPort}`),
      }),
      expect.objectContaining({
        id: 4,
        code: 'EINVAL',
        message: expect.stringContaining('IP addresses only'),
      }),
    ]);
  });

  it('hands the daemon connected sockets to the host, and says why one could not be made', () => {
    const dialed = sup.lines.filter((l) => String(l.type).startsWith('rcri:dial'));
    expect(dialed).toEqual([
      { id: 6, type: 'rcri:dialed', answer: 'ping\n' },
      expect.objectContaining({
        id: 7,
        type: 'rcri:dial-error',
        code: 'ECONNREFUSED',
        message: `connect ECONNREFUSED 127.0.0.1:${refusedPort}`,
      }),
      expect.objectContaining({ id: 8, type: 'rcri:dial-error', code: 'EINVAL' }),
      { id: 9, type: 'rcri:dialed', answer: 'ping\n' },
    ]);
  });

  it("writes the daemon's pid (the command's first child) to rootless-cri.pid", async () => {
    const ready = await sup.waitFor((l) => l.event === 'ready');
    expect(Number((await readFile(path.join(dir, 'rootless-cri.pid'), 'utf8')).trim())).toBe(ready.pid);
  });

  it('serves a dialer socket only its owner can use', async () => {
    expect((await stat(path.join(dir, 'dial.sock'))).mode & 0o777).toBe(0o600);
  });

  it('dials a connection that carries bytes both ways, including a large payload', async () => {
    const socket = await hostDialer(path.join(dir, 'dial.sock'))('127.0.0.1', echoPort);
    const payload = Buffer.alloc(4 * 1024 * 1024, 7);
    const received: Buffer[] = [];
    let total = 0;
    const done = new Promise<void>((resolve) =>
      socket.on('data', (d: Buffer) => {
        received.push(d);
        total += d.length;
        if (total >= payload.length) resolve();
      }),
    );
    socket.write(payload);
    await done;
    expect(Buffer.concat(received).equals(payload)).toBe(true);
    socket.destroy();
  });

  it('passes a half-close on: the upstream sees the end and its answer still arrives', async () => {
    const upstream = net.createServer((s) => {
      let got = '';
      s.on('data', (d: Buffer) => {
        got += d.toString();
      });
      s.on('end', () => s.end(`got ${got.length} bytes`));
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
    const socket = await hostDialer(path.join(dir, 'dial.sock'))(
      '127.0.0.1',
      (upstream.address() as net.AddressInfo).port,
    );
    let answer = '';
    socket.on('data', (d: Buffer) => {
      answer += d.toString();
    });
    const ended = new Promise<void>((r) => socket.on('end', () => r()));
    socket.end('12345');
    await ended;
    expect(answer).toBe('got 5 bytes');
    upstream.close();
  });

  it('reports a refused connection as Unavailable with the reason', async () => {
    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const attempt = hostDialer(path.join(dir, 'dial.sock'))('127.0.0.1', port);
    await expect(attempt).rejects.toBeInstanceOf(UnavailableError);
    await expect(attempt).rejects.toThrow(/ECONNREFUSED/);
  });

  it('answers a malformed request with an error and keeps serving', async () => {
    for (const bad of ['CONNECT 127.0.0.1 99999\n', 'CONNECT a;b 80\n', 'GET / HTTP/1.1\n']) {
      const raw = net.connect(path.join(dir, 'dial.sock'));
      raw.write(bad);
      const answer = await new Promise<string>((resolve) =>
        raw.on('data', (d: Buffer) => resolve(d.toString())),
      );
      expect(answer).toBe('ERR malformed request\n');
      raw.destroy();
    }
    const again = await hostDialer(path.join(dir, 'dial.sock'))('127.0.0.1', echoPort);
    again.destroy();
  });

  it('fails clearly when nothing serves the dialer socket', async () => {
    await expect(hostDialer(path.join(dir, 'missing.sock'))('127.0.0.1', echoPort)).rejects.toThrow(
      /host dialer/,
    );
  });

  it('forwards SIGTERM to the daemon, exits as it did and removes its files', async () => {
    await writeFile(path.join(dir, 'supervisor.pid'), `${sup.child.pid}\n`);
    sup.child.kill('SIGTERM');
    expect(await sup.exited).toEqual({ code: 0, signal: null });
    expect(sup.lines.some((l) => l.event === 'sigterm')).toBe(true);
    for (const gone of ['dial.sock', 'rootless-cri.pid', 'supervisor.pid'])
      await expect(stat(path.join(dir, gone))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('node-supervisor exit status and uplink', () => {
  it("exits with the daemon's own exit code", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'node-supervisor-'));
    try {
      const sup = supervise(dir, []);
      await sup.waitFor((l) => l.event === 'ready');
      sup.child.stdin!.write('exit 7\n');
      expect(await sup.exited).toEqual({ code: 7, signal: null });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('starts a replacement uplink for a node whose slirp4netns is gone, and ends it when it ends', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'node-supervisor-'));
    try {
      const fake = path.join(dir, 'fake-slirp4netns');
      await writeFile(
        fake,
        `#!/bin/sh\necho "$@" > "${dir}/args.tmp"; mv "${dir}/args.tmp" "${dir}/args"\n` +
          `cat <&3 >/dev/null\necho gone > "${dir}/gone.tmp"; mv "${dir}/gone.tmp" "${dir}/gone"\n`,
      );
      await chmod(fake, 0o755);
      const sup = supervise(dir, [], [], {
        rootlesskit: NO_PID,
        child: String(process.pid),
        slirp4netns: fake,
      });
      await sup.waitFor((l) => l.event === 'ready');
      expect(await waitForFile(path.join(dir, 'args'))).toBe(
        `--configure --mtu=1500 --disable-host-loopback --exit-fd=3 ${process.pid} tap0\n`,
      );
      await expect(stat(path.join(dir, 'gone'))).rejects.toMatchObject({ code: 'ENOENT' });
      sup.child.stdin!.write('exit 0\n');
      expect(await sup.exited).toEqual({ code: 0, signal: null });
      expect(await waitForFile(path.join(dir, 'gone'))).toBe('gone\n');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
