/**
 * stopContainer over the fake runtime, the fake's own behaviour (so tests above it can trust
 * it), and the node-fact parsing of host-facts.ts. The real CrunConmonRuntime is exercised in
 * test/integration/container-runtime.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { mappedFromZero } from '../../src/container/host-facts.js';
import { deviceNumbers } from '../../src/container/spec-files.js';
import { stopContainer } from '../../src/core/container-lifecycle.js';
import { InternalError, NotFoundError } from '../../src/errors.js';
import { FakeOciRuntime } from '../fakes/fake-oci-runtime.js';

async function running(runtime: FakeOciRuntime, id = 'c1'): Promise<string> {
  await runtime.create({
    id,
    spec: {} as never,
    logPath: '/l',
    stdin: false,
    stdinOnce: false,
  });
  await runtime.start(id);
  return id;
}

describe('stopContainer', () => {
  it('sends the stop signal and returns when the container exits', async () => {
    const runtime = new FakeOciRuntime();
    const id = await running(runtime);
    runtime.handles(id, 'SIGQUIT', 0);
    const exit = await stopContainer(runtime, id, 'SIGQUIT', 5000);
    expect(exit?.exitCode).toBe(0);
    const kills = runtime.calls.filter((c) => c.method === 'kill').map((c) => c.args);
    expect(kills).toEqual([[id, 'SIGQUIT', false]]);
  });

  it('kills with SIGKILL (all processes) when the signal is ignored', async () => {
    const runtime = new FakeOciRuntime();
    const id = await running(runtime);
    const exit = await stopContainer(runtime, id, 'SIGTERM', 5000);
    expect(exit?.exitCode).toBe(137);
    expect(runtime.calls.filter((c) => c.method === 'kill').map((c) => c.args)).toEqual([
      [id, 'SIGTERM', false],
      [id, 'SIGKILL', true],
    ]);
  });

  it('timeout 0 goes straight to SIGKILL', async () => {
    const runtime = new FakeOciRuntime();
    const id = await running(runtime);
    await stopContainer(runtime, id, 'SIGTERM', 0);
    expect(runtime.calls.filter((c) => c.method === 'kill').map((c) => c.args)).toEqual([
      [id, 'SIGKILL', true],
    ]);
  });

  it('an exited container is not signalled', async () => {
    const runtime = new FakeOciRuntime();
    const id = await running(runtime);
    runtime.exitNow(id, 7);
    expect((await stopContainer(runtime, id, 'SIGTERM', 5000))?.exitCode).toBe(7);
    expect(runtime.methods()).not.toContain('kill');
  });

  it('a container the runtime no longer knows is not an error', async () => {
    const runtime = new FakeOciRuntime();
    expect(await stopContainer(runtime, 'gone', 'SIGTERM', 5000)).toBeNull();
  });

  it('falls back to signalling init alone when kill --all fails', async () => {
    const runtime = new FakeOciRuntime();
    const id = await running(runtime);
    runtime.failNext('kill', new NotFoundError('x'));
    // The first kill (SIGTERM) fails as NotFound: the container is treated as gone.
    expect(await stopContainer(runtime, id, 'SIGTERM', 5000)).toBeNull();

    const other = await running(runtime, 'c2');
    const original = runtime.kill.bind(runtime);
    let first = true;
    runtime.kill = async (cid, signal, all) => {
      if (all && first) {
        first = false;
        throw new InternalError('no cgroup');
      }
      return original(cid, signal, all);
    };
    expect((await stopContainer(runtime, other, 'SIGKILL', 5000))?.exitCode).toBe(137);
  });

  it('propagates other kill failures', async () => {
    const runtime = new FakeOciRuntime();
    const id = await running(runtime);
    runtime.failNext('kill', new InternalError('crun broke'));
    await expect(stopContainer(runtime, id, 'SIGTERM', 5000)).rejects.toThrow(/crun broke/);
  });
});

describe('FakeOciRuntime', () => {
  it('follows created → running → stopped and forgets deleted containers', async () => {
    const runtime = new FakeOciRuntime();
    const { pid } = await runtime.create({
      id: 'a',
      spec: {} as never,
      logPath: '',
      stdin: false,
      stdinOnce: false,
    });
    expect(await runtime.state('a')).toEqual({ status: 'created', pid });
    await runtime.start('a');
    expect((await runtime.state('a'))?.status).toBe('running');
    await expect(runtime.delete('a', false)).rejects.toThrow(/running/);
    await runtime.delete('a', true);
    expect(await runtime.state('a')).toBeNull();
    await expect(runtime.start('a')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('fails the chosen call once', async () => {
    const runtime = new FakeOciRuntime();
    runtime.failNext('create', new InternalError('boom'));
    await expect(
      runtime.create({ id: 'a', spec: {} as never, logPath: '', stdin: false, stdinOnce: false }),
    ).rejects.toThrow('boom');
    await expect(
      runtime.create({ id: 'a', spec: {} as never, logPath: '', stdin: false, stdinOnce: false }),
    ).resolves.toBeDefined();
  });
});

describe('node facts', () => {
  it('counts ids mapped from 0 across ranges', () => {
    expect(mappedFromZero('         0       1001          1\n         1     100000      65536\n')).toBe(
      65537,
    );
    expect(mappedFromZero('0 0 4294967295')).toBe(4294967295);
    expect(mappedFromZero('1 100000 65536')).toBe(0);
    expect(mappedFromZero('')).toBe(0);
  });

  it('decodes dev_t like glibc', () => {
    expect(deviceNumbers(BigInt((1 << 8) | 3))).toEqual({ major: 1, minor: 3 });
    // major 259, minor 65537 (large numbers use the high bits).
    const rdev = ((259n & 0xfffn) << 8n) | (65537n & 0xffn) | ((65537n & ~0xffn) << 12n);
    expect(deviceNumbers(rdev)).toEqual({ major: 259, minor: 65537 });
  });
});
