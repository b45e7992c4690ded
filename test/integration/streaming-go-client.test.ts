/**
 * The streaming server against the real Kubernetes Go client code (client-go
 * remotecommand SPDY and WebSocket executors, portforward over SPDY and SPDY-over-
 * WebSocket), with fake targets: host processes for exec/attach and 127.0.0.1 for
 * port-forward. Containers come later; the protocols are what is checked here.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { createStreamingService, type StreamingService } from '../../src/streaming/server.js';
import { type SpdyFrame, SpdyFrameParser } from '../../src/streaming/spdy-frames.js';
import {
  buildGoStreamClient,
  FakeLoopbackPortForwardTarget,
  FakeProcessExecTarget,
  startEchoServer,
} from '../fixtures/go-stream-client/harness.js';

let client: string;
let service: StreamingService;
let fake: FakeProcessExecTarget;
let ports: FakeLoopbackPortForwardTarget;
let echo: { server: Server; port: number; connections: () => number };
let now = Date.now();
const scratch = mkdtempSync(join(tmpdir(), 'streaming-go-client-'));

beforeAll(async () => {
  client = buildGoStreamClient();
  fake = new FakeProcessExecTarget();
  ports = new FakeLoopbackPortForwardTarget();
  echo = await startEchoServer();
  service = await createStreamingService({
    address: '127.0.0.1',
    port: 0,
    exec: fake,
    attach: fake,
    portForward: ports,
    logger: silentLogger(),
    now: () => now,
    clientCloseTimeoutMs: 10_000,
  });
}, 300_000);

afterAll(async () => {
  await service?.close();
  echo?.server.close();
});

interface RunResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
  result: { exitCode?: number; error?: string };
}

let runs = 0;
function runExec(
  url: string,
  args: string[],
  input?: Buffer | 'keep-open',
): { child: ChildProcess; done: Promise<RunResult> } {
  const resultFile = join(scratch, `result-${runs++}.json`);
  const child = spawn(client, ['exec', '-url', url, '-result', resultFile, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  let err = '';
  child.stdout!.on('data', (c: Buffer) => out.push(c));
  child.stderr!.on('data', (c: Buffer) => {
    err += c.toString();
  });
  if (input instanceof Buffer) child.stdin!.end(input);
  else if (input === undefined) child.stdin!.end();
  const done = new Promise<RunResult>((resolve) => {
    child.once('close', (code) => {
      let result = {};
      try {
        result = JSON.parse(readFileSync(resultFile, 'utf8'));
      } catch {}
      resolve({ code, stdout: Buffer.concat(out), stderr: err, result });
    });
  });
  return { child, done };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function waitFor(check: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

for (const transport of ['spdy', 'websocket'] as const) {
  describe(`exec over ${transport}`, () => {
    it('delivers stdout and stderr byte-exact and the exit code through the v4 status', async () => {
      const { url } = await service.handlers.exec({
        container_id: 'c1',
        cmd: ['sh', '-c', 'printf "hello\\0world"; printf "oops" >&2; exit 7'],
        stdout: true,
        stderr: true,
      });
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]{16}$/);
      const r = await runExec(url, ['-transport', transport, '-stdout', '-stderr']).done;
      expect(r.stdout).toEqual(Buffer.from('hello\0world'));
      expect(r.stderr).toBe('oops');
      expect(r.result).toEqual({ exitCode: 7 });
    });

    it('reports exit code 0 as success', async () => {
      const { url } = await service.handlers.exec({
        container_id: 'c1',
        cmd: ['echo', '-n', 'hello'],
        stdout: true,
      });
      const r = await runExec(url, ['-transport', transport, '-stdout']).done;
      expect(r.stdout.toString()).toBe('hello');
      expect(r.result).toEqual({ exitCode: 0 });
    });

    it('pipes 10 MB of stdin through cat byte-exact, stdin EOF closing cat', async () => {
      const input = randomBytes(10 * 1024 * 1024);
      const { url } = await service.handlers.exec({
        container_id: 'c1',
        cmd: ['cat'],
        stdin: true,
        stdout: true,
      });
      const r = await runExec(url, ['-transport', transport, '-stdin', '-stdout'], input).done;
      expect(r.result).toEqual({ exitCode: 0 });
      expect(r.stdout.length).toBe(input.length);
      expect(sha(r.stdout)).toBe(sha(input));
    });

    it('runs a tty session: resize messages reach the target and the session ends while client stdin stays open', async () => {
      const { url } = await service.handlers.exec({
        container_id: 'c1',
        cmd: ['sh', '-c', 'sleep 1; printf hello'],
        tty: true,
        stdin: true,
        stdout: true,
      });
      const before = fake.calls.length;
      const { child, done } = runExec(
        url,
        ['-transport', transport, '-tty', '-stdin', '-stdout', '-resize', '80x24,100x40'],
        'keep-open',
      );
      const r = await done;
      child.stdin!.destroy();
      expect(r.stdout.toString()).toContain('hello');
      expect(r.result).toEqual({ exitCode: 0 });
      const call = fake.calls[before]!;
      expect(call.options).toEqual({ tty: true, stdin: true, stdout: true, stderr: false });
      expect(call.resizes).toEqual([
        { width: 80, height: 24 },
        { width: 100, height: 40 },
      ]);
    });

    it('attaches: input reaches the target, closing stdin ends it', async () => {
      fake.attachCommand = ['cat'];
      const { url } = await service.handlers.attach({
        container_id: 'c2',
        stdin: true,
        stdout: true,
        stderr: true,
      });
      expect(url).toContain('/attach/');
      const r = await runExec(
        url,
        ['-transport', transport, '-stdin', '-stdout', '-stderr'],
        Buffer.from('hello\n'),
      ).done;
      expect(r.stdout.toString()).toBe('hello\n');
      expect(r.result).toEqual({ exitCode: 0 });
    });

    it('reports a target that cannot start as an error, then keeps serving', async () => {
      fake.failNext = new Error('container "gone" not found');
      const { url } = await service.handlers.exec({ container_id: 'gone', cmd: ['true'], stdout: true });
      const r = await runExec(url, ['-transport', transport, '-stdout']).done;
      expect(r.result.error).toContain('container "gone" not found');
      const again = await service.handlers.exec({
        container_id: 'c1',
        cmd: ['echo', '-n', 'ok'],
        stdout: true,
      });
      expect((await runExec(again.url, ['-transport', transport, '-stdout']).done).stdout.toString()).toBe(
        'ok',
      );
    });

    it('kills the process when the client disappears mid-stream', async () => {
      const { url } = await service.handlers.exec({
        container_id: 'c1',
        cmd: ['sleep', '60'],
        stdin: true,
        stdout: true,
      });
      const before = fake.calls.length;
      const { child, done } = runExec(url, ['-transport', transport, '-stdin', '-stdout'], 'keep-open');
      await waitFor(() => fake.calls.length > before);
      child.kill('SIGKILL');
      await done;
      await waitFor(() => fake.calls[before]!.killed && fake.running().length === 0);
    });

    it('refuses a used token and an expired one with an HTTP error', async () => {
      const { url } = await service.handlers.exec({ container_id: 'c1', cmd: ['true'], stdout: true });
      expect((await runExec(url, ['-transport', transport, '-stdout']).done).result).toEqual({ exitCode: 0 });
      const calls = fake.calls.length;
      const reused = await runExec(url, ['-transport', transport, '-stdout']).done;
      expect(reused.result.error).toBeDefined();
      const expiring = await service.handlers.exec({ container_id: 'c1', cmd: ['true'], stdout: true });
      now += 61_000;
      const expired = await runExec(expiring.url, ['-transport', transport, '-stdout']).done;
      expect(expired.result.error).toBeDefined();
      // client-go's SPDY upgrader shows the body; its WebSocket one only says the upgrade failed.
      if (transport === 'spdy') expect(expired.result.error).toMatch(/token not found or expired/);
      expect(fake.calls.length).toBe(calls);
    });
  });

  describe(`port-forward over ${transport}`, () => {
    async function startForward(
      remotePort: number,
    ): Promise<{ child: ChildProcess; localPort: number; stderr: () => string }> {
      const { url } = await service.handlers.portForward({ pod_sandbox_id: 'pod1', port: [remotePort] });
      const child = spawn(
        client,
        ['portforward', '-url', url, '-transport', transport, '-port', String(remotePort)],
        {
          stdio: ['pipe', 'pipe', 'pipe'],
        },
      );
      let err = '';
      child.stderr!.on('data', (c: Buffer) => {
        err += c.toString();
      });
      const line = await new Promise<string>((resolve, reject) => {
        let out = '';
        child.stdout!.on('data', (c: Buffer) => {
          out += c.toString();
          if (out.includes('\n')) resolve(out.split('\n')[0]!);
        });
        child.once('exit', () => reject(new Error(`port-forward client exited: ${err}`)));
      });
      const localPort = (JSON.parse(line) as { ports: { local: number }[] }).ports[0]!.local;
      return { child, localPort, stderr: () => err };
    }

    function roundTrip(port: number, payload: Buffer): Promise<Buffer> {
      return new Promise((resolve, reject) => {
        const socket = connect(port, '127.0.0.1');
        const got: Buffer[] = [];
        socket.on('data', (c: Buffer) => got.push(c));
        socket.on('end', () => resolve(Buffer.concat(got)));
        socket.on('error', reject);
        // Half-close after sending: the echo server sees EOF, finishes echoing, closes.
        socket.end(payload);
      });
    }

    it('forwards several concurrent connections byte-exact with half-close both ways', async () => {
      const forward = await startForward(echo.port);
      try {
        const payloads = Array.from({ length: 6 }, (_, i) => randomBytes(300_000 + i * 1000));
        const echoed = await Promise.all(payloads.map((p) => roundTrip(forward.localPort, p)));
        for (let i = 0; i < payloads.length; i++) expect(sha(echoed[i]!)).toBe(sha(payloads[i]!));
        expect(ports.dials.filter((d) => d.port === echo.port).length).toBeGreaterThanOrEqual(6);
        // A second round on the same SPDY connection still works.
        expect((await roundTrip(forward.localPort, Buffer.from('again'))).toString()).toBe('again');
        await waitFor(() => ports.open.size === 0 && echo.connections() === 0);
      } finally {
        forward.child.kill();
      }
    });

    it('reports a port nobody listens on on the error stream and keeps serving', async () => {
      const forward = await startForward(await unusedPort());
      try {
        const result = await new Promise<string>((resolve) => {
          const socket = connect(forward.localPort, '127.0.0.1');
          const got: Buffer[] = [];
          socket.on('data', (c: Buffer) => got.push(c));
          socket.on('close', () => resolve(Buffer.concat(got).toString()));
          socket.on('error', () => resolve('error'));
        });
        expect(result === '' || result === 'error').toBe(true);
        await waitFor(() => forward.stderr().includes('failed to connect to localhost'));
      } finally {
        forward.child.kill();
      }
      const again = await startForward(echo.port);
      try {
        expect((await roundTrip(again.localPort, Buffer.from('still here'))).toString()).toBe('still here');
      } finally {
        again.child.kill();
      }
    });
  });
}

/** A loopback port that was free a moment ago (bound, then released). */
async function unusedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const { port } = probe.address() as { port: number };
  await new Promise<void>((r) => probe.close(() => r()));
  return port;
}

describe('hostile clients', () => {
  async function upgradeRaw(): Promise<{ socket: Socket; frames: SpdyFrame[]; closed: Promise<void> }> {
    const { url } = await service.handlers.exec({ container_id: 'c1', cmd: ['sleep', '60'], stdout: true });
    const { port, pathname } = new URL(url);
    const socket = connect(Number(port), '127.0.0.1');
    const frames: SpdyFrame[] = [];
    const parser = new SpdyFrameParser(
      (f) => frames.push(f),
      () => {},
    );
    let head = Buffer.alloc(0);
    let upgraded = false;
    const ready = new Promise<void>((resolve, reject) => {
      socket.on('data', (chunk: Buffer) => {
        if (upgraded) return parser.push(chunk);
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        const status = head.subarray(0, end).toString();
        if (!status.startsWith('HTTP/1.1 101')) reject(new Error(status));
        expect(status).toMatch(/X-Stream-Protocol-Version: v4.channel.k8s.io/i);
        upgraded = true;
        parser.push(head.subarray(end + 4));
        resolve();
      });
    });
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.write(
      `POST ${pathname} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n` +
        'X-Stream-Protocol-Version: v5.channel.k8s.io\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n',
    );
    await ready;
    return { socket, frames, closed };
  }

  it('answers a malformed frame with GOAWAY and closes; the server keeps serving', async () => {
    const { socket, frames, closed } = await upgradeRaw();
    socket.write(
      Buffer.from([0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0a, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    );
    await closed;
    expect(frames.some((f) => f.type === 'goaway' && f.status === 1)).toBe(true);
    const { url } = await service.handlers.exec({
      container_id: 'c1',
      cmd: ['echo', '-n', 'ok'],
      stdout: true,
    });
    expect((await runExec(url, ['-stdout']).done).stdout.toString()).toBe('ok');
  });

  it('answers an oversized control frame with GOAWAY without reading it', async () => {
    const { socket, frames, closed } = await upgradeRaw();
    socket.write(Buffer.from([0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff]));
    await closed;
    expect(frames.some((f) => f.type === 'goaway')).toBe(true);
  });

  it('drops a client that upgrades and never opens its streams (no process started)', async () => {
    const calls = fake.calls.length;
    const { socket, closed } = await upgradeRaw();
    socket.end();
    await closed;
    expect(fake.calls.length).toBe(calls);
  });

  it('answers 403 with the accepted versions when no protocol matches, 404 for a bad token', async () => {
    const { url } = await service.handlers.exec({ container_id: 'c1', cmd: ['true'], stdout: true });
    const { port, pathname } = new URL(url);
    const ask = (path: string, version: string): Promise<string> =>
      new Promise((resolve) => {
        const socket = connect(Number(port), '127.0.0.1');
        let text = '';
        socket.on('data', (c: Buffer) => {
          text += c.toString();
        });
        socket.on('close', () => resolve(text));
        socket.write(
          `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: ${version}\r\n\r\n`,
        );
      });
    const forbidden = await ask(pathname, 'v9.channel.k8s.io');
    expect(forbidden).toMatch(/^HTTP\/1.1 403/);
    expect(forbidden).toMatch(
      /X-Accepted-Stream-Protocol-Versions: v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io/,
    );
    expect(await ask('/exec/AAAAAAAAAAAAAAAA', 'v4.channel.k8s.io')).toMatch(/^HTTP\/1.1 404/);
  });

  it('leaves no process or connection behind', async () => {
    await waitFor(() => fake.running().length === 0);
    await waitFor(() => service.activeConnections === 0);
    expect(fake.running()).toEqual([]);
    expect(ports.open.size).toBe(0);
  });
});
