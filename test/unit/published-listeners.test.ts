/**
 * The daemon's published listeners (src/rootless/published-listeners.ts): handoff through
 * a host listener source, the port-driver fallback, and the watchdog that publishes a
 * lost one again, with real loopback sockets and the fake port manager.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { HostListenError, type HostListenerSource } from '../../src/rootless/host-listeners.js';
import { ListenerPublisher, type PublishableListener } from '../../src/rootless/published-listeners.js';
import { FakePortManager } from '../fakes/fake-port-manager.js';

let runDir: string;
let publisher: ListenerPublisher | undefined;

beforeEach(async () => {
  runDir = await mkdtemp(join(tmpdir(), 'published-listeners-'));
});

afterEach(async () => {
  await publisher?.close();
  publisher = undefined;
  await rm(runDir, { recursive: true, force: true });
});

/** Binds real loopback listeners, as the supervisor would; can be told to fail. */
class LoopbackSource implements HostListenerSource {
  opened: net.Server[] = [];
  failWith: string | undefined;
  async open(host: string, port: number): Promise<net.Server> {
    if (this.failWith) throw new HostListenError(this.failWith, `bind: ${this.failWith}`);
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.opened.push(server);
    return server;
  }
}

/** A listener that records the host connections handed to it. */
function listener(port: number): PublishableListener & { accepted: net.Socket[] } {
  const accepted: net.Socket[] = [];
  return {
    port,
    accepted,
    accept: (socket) => {
      accepted.push(socket);
      socket.end('hello\n');
    },
    close: async () => {},
  };
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

async function greeting(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let text = '';
    s.on('data', (d) => (text += d));
    s.on('end', () => resolve(text));
    s.on('error', reject);
  });
}

describe('ListenerPublisher', () => {
  it('hands host connections to the listener and publishes a lost host listener again', async () => {
    const source = new LoopbackSource();
    const metrics = new Registry();
    publisher = new ListenerPublisher({
      runDir,
      source,
      ports: null,
      mode: 'handoff',
      logger: silentLogger(),
      metrics,
    });
    const port = await freePort();
    const l = listener(port);
    await publisher.publish('streaming', l);
    expect(await greeting(port)).toBe('hello\n');
    expect(publisher.status()).toEqual([
      { name: 'streaming', port, via: 'handoff', listening: true, republished: 0 },
    ]);
    // The host listener goes away (closed under us): the watchdog opens a new one.
    await new Promise<void>((resolve) => source.opened[0]!.close(() => resolve()));
    await publisher.check();
    expect(source.opened).toHaveLength(2);
    expect(await greeting(port)).toBe('hello\n');
    expect(publisher.status()[0]).toMatchObject({
      listening: true,
      republished: 1,
      lastLoss: { reason: 'the host listener stopped listening' },
    });
    expect(
      await metrics.getSingleMetricAsString('rootless_cri_published_listener_republished_total'),
    ).toContain('listener="streaming"} 1');
  });

  it('backs off while publishing again fails, and says why', async () => {
    const source = new LoopbackSource();
    publisher = new ListenerPublisher({
      runDir,
      source,
      ports: null,
      mode: 'handoff',
      logger: silentLogger(),
    });
    const port = await freePort();
    await publisher.publish('metrics', listener(port));
    source.failWith = 'EMFILE';
    await new Promise<void>((resolve) => source.opened[0]!.close(() => resolve()));
    await publisher.check();
    await publisher.check();
    // The second round is within the backoff: no second attempt.
    expect(publisher.status()[0]).toMatchObject({
      listening: false,
      republished: 0,
      lastError: expect.stringMatching(/bind: EMFILE/),
    });
    expect(source.opened).toHaveLength(1);
  });

  it('turns a host port in use into FailedPrecondition, so another port can be tried', async () => {
    const source = new LoopbackSource();
    source.failWith = 'EADDRINUSE';
    publisher = new ListenerPublisher({
      runDir,
      source,
      ports: null,
      mode: 'handoff',
      logger: silentLogger(),
    });
    await expect(publisher.publish('streaming', listener(1234))).rejects.toMatchObject({
      kind: 'FailedPrecondition',
      message: expect.stringMatching(/already in use/),
    });
  });

  it('falls back to the port driver without a supervisor channel, records the ids, and adds a port it lost again', async () => {
    const ports = new FakePortManager();
    publisher = new ListenerPublisher({
      runDir,
      source: null,
      ports,
      mode: 'handoff',
      logger: silentLogger(),
    });
    await publisher.publish('streaming', listener(4567));
    expect(publisher.status()[0]).toMatchObject({ via: 'port-driver', listening: true });
    expect(JSON.parse(await readFile(join(runDir, 'daemon-ports.json'), 'utf8'))).toEqual([1]);
    // Someone removed it (rootlessctl remove-ports): published again under a new id.
    await ports.remove(1);
    await publisher.check();
    expect([...ports.published.values()].map((p) => [p.id, p.parentPort])).toEqual([[2, 4567]]);
    expect(publisher.status()[0]).toMatchObject({
      republished: 1,
      lastLoss: { reason: 'rootlesskit no longer lists port 1' },
    });
    expect(JSON.parse(await readFile(join(runDir, 'daemon-ports.json'), 'utf8'))).toEqual([2]);
    // A daemon killed with -9 leaves them; the next one removes them first.
    const next = new ListenerPublisher({
      runDir,
      source: null,
      ports,
      mode: 'port-driver',
      logger: silentLogger(),
    });
    await next.removeStale();
    expect(ports.published.size).toBe(0);
  });
});
