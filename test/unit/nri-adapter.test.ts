/**
 * NriAdapter's contract with plugins, driven by a scriptable TypeScript plugin over a real
 * unix socket: registration and its timeout, Configure, Synchronize (split when big, and
 * never losing a container created meanwhile), event order and subscription, vetoes,
 * timeouts, crashes and garbage (the plugin is dropped, the runtime goes on), UpdateContainers
 * and evictions, StateChange for old plugins, shutdown.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { NriAdapter, type NriAdapterOptions } from '../../src/nri/adapter.js';
import { NriEvent, VALID_EVENTS_MASK } from '../../src/nri/api.js';
import { encodeMuxMessage } from '../../src/nri/mux.js';
import type { NriOciSpec } from '../../src/nri/oci-spec.js';
import type {
  NriContainer,
  NriContainerEviction,
  NriContainerUpdate,
  NriPod,
} from '../../src/nri/runtime-view.js';
import { StatusCode } from '../../src/nri/ttrpc.js';
import { FakeNriPlugin } from '../fakes/fake-nri-plugin.js';

const scratch = mkdtempSync(join(tmpdir(), 'nri-adapter-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const pod: NriPod = { id: 'p1', name: 'pod', uid: 'u1', namespace: 'ns' };
const ctr = (id: string): NriContainer => ({ id, podSandboxId: 'p1', name: `ctr-${id}`, state: 'created' });
const spec = (): NriOciSpec => ({ process: { args: ['sh'], env: ['A=1'] } });

interface Setup {
  adapter: NriAdapter;
  socket: string;
  pods: NriPod[];
  containers: NriContainer[];
  updates: NriContainerUpdate[][];
  evictions: NriContainerEviction[][];
  plugins: FakeNriPlugin[];
  ready(name: string): Promise<void>;
  gone(name: string): Promise<void>;
  /** Register a fake plugin and wait until it is synchronized. */
  plugin(
    name: string,
    idx: string,
    events?: number,
    setup?: (p: FakeNriPlugin) => void,
  ): Promise<FakeNriPlugin>;
}

let active: Setup | undefined;

afterEach(async () => {
  const s = active;
  active = undefined;
  if (!s) return;
  for (const p of s.plugins) p.close();
  await s.adapter.stop();
});

async function setup(options: Partial<NriAdapterOptions> = {}): Promise<Setup> {
  const socket = join(mkdtempSync(join(scratch, 'run-')), 'nri', 'nri.sock');
  const waiters = { ready: new Map<string, () => void>(), disconnected: new Map<string, () => void>() };
  const seen = { ready: new Set<string>(), disconnected: new Set<string>() };
  const s: Setup = {
    socket,
    pods: [],
    containers: [],
    updates: [],
    evictions: [],
    plugins: [],
    adapter: undefined as unknown as NriAdapter,
    ready: (name) => wait('ready', name),
    gone: (name) => wait('disconnected', name),
    plugin: async (name, idx, events = 0, configure) => {
      const p = await FakeNriPlugin.connect(socket);
      p.handlers.set('Configure', () => ({ events }));
      configure?.(p);
      s.plugins.push(p);
      await p.registerAs(name, idx);
      await s.ready(name);
      return p;
    },
  };
  function wait(change: 'ready' | 'disconnected', name: string): Promise<void> {
    if (seen[change].has(name)) return Promise.resolve();
    return new Promise((resolve) => waiters[change].set(name, resolve));
  }
  s.adapter = new NriAdapter({
    socketPath: socket,
    runtimeName: 'rootless-cri',
    runtimeVersion: 'test',
    registrationTimeoutMs: 2000,
    requestTimeoutMs: 1000,
    logger: silentLogger(),
    state: { listPodsAndContainers: async () => ({ pods: [...s.pods], containers: [...s.containers] }) },
    updateContainers: async (updates) => {
      s.updates.push(updates);
      return [];
    },
    evictContainers: async (evictions) => {
      s.evictions.push(evictions);
    },
    onPluginChange: (change, plugin) => {
      seen[change].add(plugin.name);
      waiters[change].get(plugin.name)?.();
    },
    ...options,
  });
  await s.adapter.start();
  active = s;
  return s;
}

/** Let the event loop run a few turns (no timers involved). */
async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe('NriAdapter: registration', () => {
  it('configures a registered plugin with the runtime, timeouts and NRI version, then synchronizes it', async () => {
    const s = await setup();
    s.pods.push(pod);
    s.containers.push({ ...ctr('c0'), state: 'running', pid: 77 });
    const p = await s.plugin('first', '10');
    const configure = (await p.waitFor('Configure')).request;
    expect(configure).toMatchObject({
      runtimeName: 'rootless-cri',
      runtimeVersion: 'test',
      registrationTimeout: 2000n,
      requestTimeout: 1000n,
      nriVersion: 'v0.12.2',
    });
    const sync = (await p.waitFor('Synchronize')).request;
    expect(sync.pods.map((x: { id: string }) => x.id)).toEqual(['p1']);
    expect(sync.containers).toMatchObject([{ id: 'c0', state: 3, pid: 77 }]);
    expect(sync.more).toBe(false);
    expect(s.adapter.listPlugins()).toEqual([
      {
        name: 'first',
        index: '10',
        events: Object.keys(NriEvent)
          .slice(1, -1)
          .sort((a, b) => NriEvent[a as keyof typeof NriEvent] - NriEvent[b as keyof typeof NriEvent]),
      },
    ]);
  });

  it.each([
    ['an empty name', '', '10', /invalid plugin name ""/],
    ['a name with a slash', 'a/b', '10', /invalid plugin name "a\/b"/],
    ['a one-digit index', 'ok', '1', /invalid plugin index "1"/],
    ['a non-numeric index', 'ok', 'ab', /invalid plugin index "ab"/],
  ])('refuses %s and hangs up', async (_what, name, idx, message) => {
    const s = await setup();
    const p = await FakeNriPlugin.connect(s.socket);
    s.plugins.push(p);
    await expect(p.registerAs(name, idx)).rejects.toMatchObject({
      code: StatusCode.InvalidArgument,
      message,
    });
    await p.closed;
    expect(s.adapter.listPlugins()).toEqual([]);
  });

  it('disconnects a plugin that does not register in time', async () => {
    const s = await setup({ registrationTimeoutMs: 50 });
    const p = await FakeNriPlugin.connect(s.socket);
    s.plugins.push(p);
    expect((await p.closed).message).toMatch(/closed/);
  });

  it('refuses a second registration on the same connection', async () => {
    const s = await setup();
    const p = await s.plugin('once', '10');
    await expect(p.registerAs('twice', '11')).rejects.toMatchObject({ message: /already registered/ });
    await p.closed;
    await s.gone('once');
  });

  it('drops a plugin that subscribes to events that do not exist', async () => {
    const s = await setup();
    const p = await FakeNriPlugin.connect(s.socket);
    s.plugins.push(p);
    p.handlers.set('Configure', () => ({ events: VALID_EVENTS_MASK + 1 }));
    await p.registerAs('greedy', '10');
    await p.closed;
    expect(p.methods()).toEqual(['Configure']);
  });

  it('drops a plugin whose Configure fails', async () => {
    const s = await setup();
    const p = await FakeNriPlugin.connect(s.socket);
    s.plugins.push(p);
    p.handlers.set('Configure', () => {
      throw new Error('bad config');
    });
    await p.registerAs('broken', '10');
    await p.closed;
  });
});

describe('NriAdapter: synchronization', () => {
  it('splits a state too big for one message, and drops a plugin that cannot take it split', async () => {
    const s = await setup();
    const big = 'x'.repeat(3 << 20);
    s.pods.push({ ...pod, id: 'big1', annotations: { big } }, { ...pod, id: 'big2', annotations: { big } });
    const p = await FakeNriPlugin.connect(s.socket);
    s.plugins.push(p);
    p.handlers.set('Synchronize', (request: { more: boolean }) => ({ more: request.more }));
    await p.registerAs('patient', '10');
    await s.ready('patient');
    const syncs = p.calls.filter((c) => c.method === 'Synchronize').map((c) => c.request);
    expect(syncs.map((r) => [r.pods.map((x: { id: string }) => x.id), r.more])).toEqual([
      [['big1'], true],
      [['big2'], false],
    ]);

    const q = await FakeNriPlugin.connect(s.socket);
    s.plugins.push(q);
    q.handlers.set('Synchronize', () => ({ more: false }));
    await q.registerAs('impatient', '20');
    await q.closed;
    expect(s.adapter.listPlugins().map((x) => x.name)).toEqual(['patient']);
  });

  it('never loses a container created while a plugin synchronizes: creation waits, then the plugin sees it', async () => {
    const s = await setup();
    s.containers.push(ctr('before'));
    const p = await FakeNriPlugin.connect(s.socket);
    s.plugins.push(p);
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    p.handlers.set('Synchronize', async () => {
      await released;
      return {};
    });
    await p.registerAs('late', '10');
    await p.waitFor('Synchronize');

    // A creation starts while Synchronize is blocked: it must wait for it.
    let blocked = true;
    const creation = s.adapter.withPluginSyncBlocked(async () => {
      blocked = false;
      const result = await s.adapter.createContainer(pod, ctr('during'), spec());
      s.containers.push(ctr('during'));
      return result;
    });
    await turns();
    expect(blocked).toBe(true);
    release();
    await creation;
    await s.ready('late');
    const seen = p.calls.filter((c) => c.method === 'CreateContainer').map((c) => c.request.container.id);
    expect(seen).toEqual(['during']);
    expect(
      p.calls.find((c) => c.method === 'Synchronize')!.request.containers.map((c: { id: string }) => c.id),
    ).toEqual(['before']);
  });

  it('takes the snapshot only after lifecycle changes in flight are visible', async () => {
    const s = await setup();
    const block = await s.adapter.blockPluginSync();
    const p = await FakeNriPlugin.connect(s.socket);
    s.plugins.push(p);
    await p.registerAs('waiting', '10');
    await p.waitFor('Configure');
    await turns();
    expect(p.methods()).toEqual(['Configure']);
    s.containers.push(ctr('landed'));
    block.release();
    const sync = await p.waitFor('Synchronize');
    expect(sync.request.containers.map((c: { id: string }) => c.id)).toEqual(['landed']);
  });

  it('applies the updates a plugin asks for in its Synchronize answer', async () => {
    const s = await setup();
    s.containers.push(ctr('c1'));
    await s.plugin('tuner', '10', 0, (p) =>
      p.handlers.set('Synchronize', () => ({
        update: [{ containerId: 'c1', linux: { resources: { cpu: { shares: { value: 5n } } } } }],
      })),
    );
    await expect.poll(() => s.updates).toHaveLength(1);
    expect(s.updates[0]).toEqual([
      { containerId: 'c1', resources: { cpu: { shares: 5 } }, ignoreFailure: false, warnings: [] },
    ]);
  });
});

describe('NriAdapter: events', () => {
  it('calls subscribed plugins in index order and skips unsubscribed ones', async () => {
    const s = await setup();
    const bit = (e: number) => 1 << (e - 1);
    const b = await s.plugin('b', '20');
    const a = await s.plugin('a', '05', bit(NriEvent.RunPodSandbox) | bit(NriEvent.StopContainer));
    const order: string[] = [];
    a.handlers.set('RunPodSandbox', () => order.push('a'));
    b.handlers.set('RunPodSandbox', () => order.push('b'));
    await s.adapter.runPodSandbox(pod);
    await s.adapter.createContainer(pod, ctr('c1'), spec());
    expect(order).toEqual(['a', 'b']);
    expect(a.methods()).toEqual(['Configure', 'Synchronize', 'RunPodSandbox']);
    expect(b.methods()).toEqual(['Configure', 'Synchronize', 'RunPodSandbox', 'CreateContainer']);
  });

  it('relays stop once per pod and container until it is removed', async () => {
    const s = await setup();
    const p = await s.plugin('watch', '10');
    await s.adapter.stopContainer(pod, ctr('c1'));
    await s.adapter.stopContainer(pod, ctr('c1'));
    await s.adapter.stopPodSandbox(pod);
    await s.adapter.stopPodSandbox(pod);
    await s.adapter.removeContainer(pod, ctr('c1'));
    await s.adapter.removePodSandbox(pod);
    await s.adapter.runPodSandbox(pod);
    await s.adapter.stopPodSandbox(pod);
    expect(p.methods().slice(2)).toEqual([
      'StopContainer',
      'StopPodSandbox',
      'RemoveContainer',
      'RemovePodSandbox',
      'RunPodSandbox',
      'StopPodSandbox',
    ]);
  });

  it('tells plugins a pod or container whose creation failed later stopped and went away', async () => {
    const s = await setup();
    const p = await s.plugin('watch', '10');
    await s.adapter.createContainer(pod, ctr('c1'), spec());
    await s.adapter.undoCreateContainer(pod, ctr('c1'));
    expect(p.methods().slice(2)).toEqual(['CreateContainer', 'StopContainer', 'RemoveContainer']);
    expect(p.calls.at(-2)!.request.container.state).toBe(4);
    await s.adapter.runPodSandbox(pod);
    await s.adapter.undoRunPodSandbox(pod);
    expect(p.methods().slice(5)).toEqual(['RunPodSandbox', 'StopPodSandbox', 'RemovePodSandbox']);
  });

  it('lets a plugin veto Start and Update, but not Stop or Remove', async () => {
    const s = await setup();
    const p = await s.plugin('strict', '10');
    for (const method of [
      'StartContainer',
      'UpdateContainer',
      'StopContainer',
      'RemoveContainer',
      'PostStartContainer',
    ]) {
      p.handlers.set(method, () => {
        throw new Error(`no ${method}`);
      });
    }
    await expect(s.adapter.startContainer(pod, ctr('c1'))).rejects.toMatchObject({
      kind: 'FailedPrecondition',
      message: 'NRI plugin 10-strict failed StartContainer: no StartContainer (Unknown)',
    });
    await expect(s.adapter.updateContainer(pod, ctr('c1'), { cpu: { shares: 2 } })).rejects.toMatchObject({
      kind: 'FailedPrecondition',
    });
    expect(await s.adapter.postStartContainer(pod, ctr('c1'))).toEqual([
      'NRI plugin 10-strict failed PostStartContainer: no PostStartContainer (Unknown)',
    ]);
    expect((await s.adapter.stopContainer(pod, ctr('c1'))).warnings).toHaveLength(1);
    expect(await s.adapter.removeContainer(pod, ctr('c1'))).toHaveLength(1);
    expect(s.adapter.listPlugins()).toHaveLength(1);
  });

  it('sends StateChange to a plugin that does not implement a notification method', async () => {
    const s = await setup();
    const p = await s.plugin('old', '10', 0, (x) => x.unimplemented.add('RemovePodSandbox'));
    await s.adapter.removePodSandbox(pod);
    const change = await p.waitFor('StateChange');
    expect(change.request.event).toBe(NriEvent.RemovePodSandbox);
    expect(change.request.pod.id).toBe('p1');
  });

  it('returns updates and evictions of other containers from CreateContainer for the runtime to apply', async () => {
    const s = await setup();
    await s.plugin('rebalancer', '10', 0, (p) =>
      p.handlers.set('CreateContainer', () => ({
        adjust: { env: [{ key: 'B', value: '2' }] },
        update: [{ containerId: 'other', linux: { resources: { cpu: { cpus: '1' } } }, ignoreFailure: true }],
        evict: [{ containerId: 'victim', reason: 'make room' }],
      })),
    );
    const result = await s.adapter.createContainer(pod, ctr('c1'), spec());
    expect(result.spec.process?.env).toEqual(['A=1', 'B=2']);
    expect(result.updates).toEqual([
      { containerId: 'other', resources: { cpu: { cpus: '1' } }, ignoreFailure: true, warnings: [] },
    ]);
    expect(result.evictions).toEqual([
      { containerId: 'victim', reason: 'make room', plugin: '10-rebalancer' },
    ]);
  });
});

describe('NriAdapter: plugin failures', () => {
  it('drops a plugin that answers garbage and goes on', async () => {
    const s = await setup();
    const bad = await s.plugin('garbage', '10', 0, (p) =>
      p.raw.set('CreateContainer', async () => Buffer.from([0x0a, 0xff])),
    );
    const good = await s.plugin('good', '20', 0, (p) =>
      p.handlers.set('CreateContainer', () => ({ adjust: { annotations: { ok: 'yes' } } })),
    );
    const result = await s.adapter.createContainer(pod, ctr('c1'), spec());
    expect(result.warnings).toEqual([
      expect.stringMatching(
        /^NRI plugin 10-garbage disconnected during CreateContainer: 10-garbage answered CreateContainer with an undecodable message/,
      ),
    ]);
    expect(result.spec.annotations).toEqual({ ok: 'yes' });
    await bad.closed;
    await s.gone('garbage');
    expect(good.methods()).toContain('CreateContainer');
  });

  it('drops a plugin that times out and one that hangs up mid-call', async () => {
    const s = await setup({ requestTimeoutMs: 100 });
    const slow = await s.plugin('slow', '10', 0, (p) =>
      p.handlers.set('RunPodSandbox', () => new Promise(() => {})),
    );
    const quitter = await s.plugin('quitter', '20', 0, (p) =>
      p.handlers.set('RunPodSandbox', () => {
        p.socket.destroy();
        return new Promise(() => {});
      }),
    );
    const warnings = await s.adapter.runPodSandbox(pod);
    expect(warnings).toEqual([
      'NRI plugin 10-slow disconnected during RunPodSandbox: nri.pkg.api.v1alpha1.Plugin/RunPodSandbox: no answer within 100 ms',
      expect.stringMatching(
        /^NRI plugin 20-quitter disconnected during RunPodSandbox: connection to NRI 20-quitter closed/,
      ),
    ]);
    await Promise.all([slow.closed, quitter.closed]);
    expect(s.adapter.listPlugins()).toEqual([]);
  });

  it('survives garbage on the socket and keeps serving other plugins', async () => {
    const s = await setup();
    const junk = [
      Buffer.from('GET / HTTP/1.1\r\n\r\n'),
      encodeMuxMessage(2, Buffer.from([0, 0, 0, 0x20, 0, 0, 0, 2, 1, 0, 1, 2, 3])), // even stream id, truncated
      encodeMuxMessage(2, Buffer.from([0, 0, 0, 2, 0, 0, 0, 1, 9, 0, 0xff, 0xff])), // unknown type
      encodeMuxMessage(2, Buffer.from([0, 0, 0, 3, 0, 0, 0, 1, 1, 0, 0x0a, 0xff, 0x01])), // bad request
      encodeMuxMessage(0, Buffer.from('reserved')),
      Buffer.from([0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]), // oversized mux frame
    ];
    let seed = 7;
    for (let i = 0; i < 20; i++) {
      junk.push(Buffer.from(Array.from({ length: 64 }, () => (seed = (seed * 1103515245 + 12345) & 0xff))));
    }
    for (const bytes of junk) {
      const socket = connect(s.socket);
      await new Promise<void>((resolve) => socket.once('connect', resolve));
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.on('error', () => {});
      socket.resume(); // read (and drop) what the runtime answers, or the socket never sees the end
      socket.write(bytes);
      socket.end();
      await closed;
    }
    const p = await s.plugin('after-junk', '10');
    await s.adapter.runPodSandbox(pod);
    expect(p.methods()).toContain('RunPodSandbox');
  });

  it('answers UpdateContainers from a plugin, and refuses it before registration', async () => {
    const s = await setup();
    const early = await FakeNriPlugin.connect(s.socket);
    s.plugins.push(early);
    await expect(early.updateContainers({ update: [{ containerId: 'x' }] })).rejects.toMatchObject({
      code: StatusCode.FailedPrecondition,
    });
    const p = await s.plugin('updater', '10');
    const answer = await p.updateContainers({
      update: [{ containerId: 'c1', linux: { resources: { memory: { limit: { value: 1n << 20n } } } } }],
      evict: [{ containerId: 'c2', reason: 'noisy' }],
    });
    expect(answer.failed).toEqual([]);
    expect(s.updates).toEqual([
      [{ containerId: 'c1', resources: { memory: { limit: 1 << 20 } }, ignoreFailure: false, warnings: [] }],
    ]);
    expect(s.evictions).toEqual([[{ containerId: 'c2', reason: 'noisy', plugin: '10-updater' }]]);
  });
});

describe('NriAdapter: the socket', () => {
  it('says Shutdown to plugins on stop and removes its socket', async () => {
    const s = await setup();
    const p = await s.plugin('bye', '10');
    await s.adapter.stop();
    expect(p.methods()).toContain('Shutdown');
    await p.closed;
    const { existsSync } = await import('node:fs');
    expect(existsSync(s.socket)).toBe(false);
  });

  it('replaces a stale socket but refuses to remove anything else at its path', async () => {
    const s = await setup();
    await s.adapter.stop();
    active = undefined;
    const again = await setup({ socketPath: s.socket });
    await again.adapter.stop();
    active = undefined;
    writeFileSync(s.socket, 'not a socket');
    const blocked = new NriAdapter({ ...optionsLike(s.socket) });
    await expect(blocked.start()).rejects.toMatchObject({
      kind: 'FailedPrecondition',
      message: expect.stringContaining('exists and is not a socket'),
    });
  });
});

function optionsLike(socketPath: string): NriAdapterOptions {
  return {
    socketPath,
    runtimeName: 'x',
    runtimeVersion: 'y',
    registrationTimeoutMs: 1000,
    requestTimeoutMs: 1000,
    logger: silentLogger(),
    state: { listPodsAndContainers: async () => ({ pods: [], containers: [] }) },
    updateContainers: async () => [],
  };
}
