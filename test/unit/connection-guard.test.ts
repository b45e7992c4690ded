/**
 * Connection limits of the daemon's listeners (src/streaming/connection-guard.ts) on real
 * loopback sockets: caps per source and in all, eviction of the oldest handshaking
 * connection, the handshake and idle timeouts.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { ConnectionGuard, type ConnectionLimits } from '../../src/os/connection-guard.js';

let server: net.Server | undefined;
const clients: net.Socket[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

/** A server whose connections go through a guard; `accepted` holds the admitted server sides. */
async function guarded(limits: Partial<ConnectionLimits>) {
  const guard = new ConnectionGuard(
    { maxConnections: 100, maxPerSource: 100, handshakeTimeoutMs: 60_000, idleTimeoutMs: 0, ...limits },
    silentLogger(),
    'test',
  );
  const accepted: net.Socket[] = [];
  server = net.createServer((socket) => {
    if (guard.admit(socket)) accepted.push(socket);
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  return { guard, accepted, port };
}

/** Connects from `from` (a loopback address); resolves once connected (or already reset). */
function connect(port: number, from = '127.0.0.1'): Promise<{ socket: net.Socket; closed: Promise<void> }> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress: from });
    clients.push(socket);
    socket.on('error', () => {});
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.once('connect', () => resolve({ socket, closed }));
    socket.once('close', () => resolve({ socket, closed }));
  });
}

async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('ConnectionGuard', () => {
  it('closes the oldest handshaking connection of a source at its cap, keeping other sources', async () => {
    const { guard, accepted, port } = await guarded({ maxPerSource: 3 });
    const first = await connect(port, '127.0.0.2');
    for (let i = 0; i < 2; i++) await connect(port, '127.0.0.2');
    const other = await connect(port, '127.0.0.3');
    await until(() => accepted.length === 4);
    await connect(port, '127.0.0.2');
    await first.closed;
    await until(() => guard.stats().evicted === 1 && accepted.length === 5);
    expect(guard.stats()).toMatchObject({ open: 4, evicted: 1, refused: 0 });
    expect(other.socket.destroyed).toBe(false);
  });

  it('refuses a new connection only when every connection is a session', async () => {
    const { guard, accepted, port } = await guarded({ maxConnections: 2 });
    await connect(port);
    await connect(port);
    await until(() => accepted.length === 2);
    for (const socket of accepted) guard.upgraded(socket);
    const third = await connect(port);
    await third.closed;
    await until(() => guard.stats().refused === 1);
    expect(guard.stats()).toMatchObject({ open: 2, sessions: 2, refused: 1, evicted: 0 });
  });

  it('closes a connection that does not upgrade in time, and a session idle too long', async () => {
    const { guard, accepted, port } = await guarded({ handshakeTimeoutMs: 100, idleTimeoutMs: 150 });
    const slow = await connect(port);
    await slow.closed;
    await until(() => guard.stats().open === 0);
    expect(guard.stats().handshakeTimeouts).toBe(1);
    const session = await connect(port);
    await until(() => accepted.length === 2);
    guard.upgraded(accepted[1]!);
    // Activity keeps it; silence ends it.
    for (let i = 0; i < 3; i++) {
      session.socket.write('x');
      await new Promise((resolve) => setTimeout(resolve, 80));
    }
    expect(session.socket.destroyed).toBe(false);
    await session.closed;
    await until(() => guard.stats().open === 0);
    expect(guard.stats()).toMatchObject({ idleTimeouts: 1, open: 0, sessions: 0 });
  });
});
