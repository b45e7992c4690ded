/**
 * Pods' TCP host ports forwarded by the daemon (src/rootless/host-port-forwarder.ts), with real
 * loopback sockets: the PortManager contract, bytes and half-closes both ways, the connection
 * limits under a flood (silent connections evicted, sessions kept, new ones served again once
 * the flood ends), UDP left to rootlesskit, errors that name the port, and the table a restarted
 * daemon of the same node opens again.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { HostListenError, type HostListenerSource } from '../../src/rootless/host-listeners.js';
import { FORWARD_ID_BASE, HostPortForwarder } from '../../src/rootless/host-port-forwarder.js';
import { runContract } from '../contracts/contract.js';
import { portManagerContract } from '../contracts/port-manager-contract.js';
import { FakePortManager } from '../fakes/fake-port-manager.js';

/** Binds real listeners, as the supervisor would; can be told to fail. */
class LoopbackSource implements HostListenerSource {
  failWith: string | undefined;
  async open(host: string, port: number): Promise<net.Server> {
    if (this.failWith) throw new HostListenError(this.failWith, `bind: ${this.failWith}`);
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new HostListenError(err.code ?? 'EIO', err.message)),
      );
      server.listen(port, host, () => resolve());
    });
    return server;
  }
}

let runDir: string;
let backend: net.Server;
let backendPort = 0;
const forwarders: HostPortForwarder[] = [];

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

function forwarder(options: Partial<ConstructorParameters<typeof HostPortForwarder>[0]> = {}) {
  const f = new HostPortForwarder({
    source: new LoopbackSource(),
    fallback: new FakePortManager(),
    runDir,
    nodeId: 'node-a',
    logger: silentLogger(),
    ...options,
  });
  forwarders.push(f);
  return f;
}

async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met within 5 s');
    await new Promise((resolve) => setImmediate(resolve));
  }
}

function tcp(parentPort: number) {
  return {
    protocol: 'tcp' as const,
    parentIP: '127.0.0.1',
    parentPort,
    childIP: '127.0.0.1',
    childPort: backendPort,
  };
}

/** Sends `text`, half-closes, and returns all that comes back. */
function exchange(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let got = '';
    s.on('data', (d) => {
      got += d.toString();
    });
    s.on('error', reject);
    s.on('close', () => resolve(got));
    s.on('connect', () => s.end(text));
  });
}

beforeEach(async () => {
  runDir = await mkdtemp(path.join(tmpdir(), 'host-ports-'));
  // The "pod": answers after the client half-closed, then closes.
  backend = net.createServer({ allowHalfOpen: true }, (socket) => {
    let got = '';
    socket.on('data', (d) => {
      got += d.toString();
    });
    socket.on('end', () => socket.end(`echo:${got}`));
  });
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', () => resolve()));
  backendPort = (backend.address() as net.AddressInfo).port;
});

afterEach(async () => {
  for (const f of forwarders.splice(0)) await f.close();
  await new Promise<void>((resolve) => backend.close(() => resolve()));
  await rm(runDir, { recursive: true, force: true });
});

describe('HostPortForwarder', () => {
  it('passes the PortManager contract', async () => {
    const results = await runContract(portManagerContract({ ports: forwarder(), freePort }));
    expect(results.filter((r) => r.error !== null)).toEqual([]);
  });

  it('forwards bytes both ways, half-close included; removing the port closes it', async () => {
    const f = forwarder();
    const port = await freePort();
    const published = await f.add(tcp(port));
    expect(published.id).toBeGreaterThanOrEqual(FORWARD_ID_BASE);
    expect(await exchange(port, 'hello')).toBe('echo:hello');
    await f.remove(published.id);
    await expect(exchange(port, 'again')).rejects.toThrow(/ECONNREFUSED/);
  });

  it('leaves UDP and the port driver’s ids to rootlesskit', async () => {
    const fallback = new FakePortManager();
    const f = forwarder({ fallback });
    const udp = await f.add({ ...tcp(await freePort()), protocol: 'udp' });
    expect(udp.id).toBeLessThan(FORWARD_ID_BASE);
    expect((await fallback.list()).map((p) => p.id)).toEqual([udp.id]);
    expect((await f.list()).map((p) => p.protocol)).toEqual(['udp']);
    await f.remove(udp.id);
    expect(await fallback.list()).toEqual([]);
  });

  it('names the port when it cannot be bound', async () => {
    const source = new LoopbackSource();
    const f = forwarder({ source });
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', () => resolve()));
    const taken = (blocker.address() as net.AddressInfo).port;
    await expect(f.add(tcp(taken))).rejects.toMatchObject({
      kind: 'FailedPrecondition',
      message: `host port 127.0.0.1:${taken}/tcp is already in use`,
    });
    blocker.close();
    source.failWith = 'EACCES';
    await expect(f.add(tcp(80))).rejects.toThrow(/ip_unprivileged_port_start=80/);
    source.failWith = 'EADDRNOTAVAIL';
    await expect(f.add(tcp(81))).rejects.toMatchObject({ kind: 'InvalidArgument' });
  });

  it('under a flood: silent connections are evicted, sessions kept, new clients served after it', async () => {
    const limits = { maxConnections: 64, maxPerSource: 32, handshakeTimeoutMs: 60_000, idleTimeoutMs: 0 };
    const f = forwarder({ limits });
    const port = await freePort();
    await f.add(tcp(port));
    const open = (): Promise<net.Socket> =>
      new Promise((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        s.on('error', () => {});
        s.on('connect', () => resolve(s));
      });
    // A session that has talked: it survives the flood.
    const session = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    session.on('error', () => {});
    await new Promise((resolve) => session.once('connect', resolve));
    session.write('first');
    await until(() => f.stats().connections.sessions === 1);
    // 200 silent connections: never more than the per-source cap are held.
    const flood = await Promise.all(Array.from({ length: 200 }, open));
    // Every one of them was either held or evicted (the accepts can trail the client's connects).
    await until(() => f.stats().connections.evicted + f.stats().connections.open >= 201);
    expect(f.stats().connections.open).toBeLessThanOrEqual(32);
    expect(f.stats().connections.sessions).toBe(1);
    // A client that talks gets through while the silent ones are still there, and the session lives.
    expect(await exchange(port, 'during')).toBe('echo:during');
    const answer = new Promise<string>((resolve) => {
      let got = '';
      session.on('data', (d) => {
        got += d.toString();
      });
      session.on('close', () => resolve(got));
    });
    session.end('-second');
    expect(await answer).toBe('echo:first-second');
    for (const s of flood) s.destroy();
    expect(await exchange(port, 'after')).toBe('echo:after');
  });

  it('a daemon of the same node opens the recorded ports again; another node’s are dropped', async () => {
    const port = await freePort();
    const first = forwarder();
    const published = await first.add(tcp(port));
    await first.close();
    await expect(exchange(port, 'down')).rejects.toThrow(/ECONNREFUSED/);

    const again = forwarder();
    await again.open();
    expect((await again.list()).map((p) => p.id)).toEqual([published.id]);
    expect(await exchange(port, 'back')).toBe('echo:back');
    // Ids go on from where they were.
    expect((await again.add(tcp(await freePort()))).id).toBeGreaterThan(published.id);
    await again.close();

    const otherNode = forwarder({ nodeId: 'node-b' });
    await otherNode.open();
    expect(await otherNode.list()).toEqual([]);
    await expect(exchange(port, 'gone')).rejects.toThrow(/ECONNREFUSED/);
    const state = JSON.parse(await readFile(path.join(runDir, 'host-ports.json'), 'utf8'));
    expect(state).toMatchObject({ nodeId: 'node-b', ports: [] });
  });
});
