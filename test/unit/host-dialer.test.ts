import { mkdtemp, rm, stat } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { type HostDialerServer, hostDialer, startHostDialer } from '../../src/os/host-dialer.js';

describe('host dialer', () => {
  let dir: string;
  let server: HostDialerServer;
  let echo: net.Server;
  let echoPort: number;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'host-dialer-'));
    server = await startHostDialer(path.join(dir, 'dial.sock'), silentLogger());
    echo = net.createServer((s) => s.pipe(s));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', () => r()));
    echoPort = (echo.address() as net.AddressInfo).port;
  });

  afterAll(async () => {
    await server.close();
    echo.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves a socket only its owner can use', async () => {
    expect((await stat(server.socketPath)).mode & 0o777).toBe(0o600);
  });

  it('opens a connection that carries bytes both ways, including a large payload', async () => {
    const socket = await hostDialer(server.socketPath)('127.0.0.1', echoPort);
    const payload = Buffer.alloc(1024 * 1024, 7);
    const received: Buffer[] = [];
    let total = 0;
    const done = new Promise<void>((resolve) =>
      socket.on('data', (d: Buffer) => {
        received.push(d);
        total += d.length;
        if (total >= payload.length) resolve();
      }),
    );
    socket.resume();
    socket.write(payload);
    await done;
    expect(Buffer.concat(received).equals(payload)).toBe(true);
    socket.destroy();
  });

  it('reports a refused connection as Unavailable with the reason', async () => {
    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const attempt = hostDialer(server.socketPath)('127.0.0.1', port);
    await expect(attempt).rejects.toBeInstanceOf(UnavailableError);
    await expect(attempt).rejects.toThrow(/ECONNREFUSED/);
  });

  it('answers a malformed request with an error and keeps serving', async () => {
    const raw = net.connect(server.socketPath);
    raw.write('CONNECT 127.0.0.1 99999\n');
    const answer = await new Promise<string>((resolve) =>
      raw.on('data', (d: Buffer) => resolve(d.toString())),
    );
    expect(answer).toBe('ERR malformed request\n');
    raw.destroy();
    const again = await hostDialer(server.socketPath)('127.0.0.1', echoPort);
    again.destroy();
  });

  it('fails clearly when nothing serves the dialer socket', async () => {
    await expect(hostDialer(path.join(dir, 'missing.sock'))('127.0.0.1', echoPort)).rejects.toThrow(
      /host dialer/,
    );
  });
});
