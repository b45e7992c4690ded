/**
 * The container service over fakes of crun/conmon (FakeOciRuntime), the snapshotter, the
 * image service, the pods and the OS files: states and transitions, rollback completeness per
 * failing step, name reservation under concurrency, idempotent stop/remove, filters, status
 * fields, exits and OOM, update warnings, log reopen, stats, events, pod-wide stop/remove and
 * recovery after a simulated daemon kill.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ContainerConfig__Output, ContainerEventResponse } from '../../src/api/proto.js';
import { type ContainerService, createContainerService } from '../../src/container/container-service.js';
import type { RuntimeCore } from '../../src/core/runtime-core.js';
import { FailedPreconditionError, InvalidArgumentError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import {
  containerConfig,
  hostFacts,
  resources,
  sandboxRecord,
  seedSandbox,
} from '../fakes/container-fixtures.js';
import { FakeCgroupManager } from '../fakes/fake-cgroup-manager.js';
import { FakeContainerOs, FakeImages } from '../fakes/fake-container-os.js';
import { fakeCore } from '../fakes/fake-core.js';
import { FakeOciRuntime } from '../fakes/fake-oci-runtime.js';
import { FakeSandboxOs } from '../fakes/fake-sandbox-os.js';
import { FakeSnapshotter } from '../fakes/fake-snapshotter.js';

const IMAGE_ID = `sha256:${'1'.repeat(64)}`;
const ctx = { logger: silentLogger() };

interface World {
  dir: string;
  runtime: FakeOciRuntime;
  snapshotter: FakeSnapshotter;
  images: FakeImages;
  os: FakeContainerOs;
  cgroups: FakeCgroupManager;
  node: FakeSandboxOs;
  core: RuntimeCore;
  service: ContainerService;
  facts: ReturnType<typeof hostFacts>;
}

let w: World;
let clock = 1_700_000_000_000_000_000n;

/** A daemon over the world's disk and fakes: its core, and the container RPCs over it. */
function makeService(world: Omit<World, 'service' | 'core'>): {
  core: RuntimeCore;
  service: ContainerService;
} {
  const { core } = fakeCore({
    rootDir: path.join(world.dir, 'root'),
    runtime: world.runtime,
    cgroups: world.cgroups,
    sandboxOs: world.node,
    images: world.images,
    snapshotter: world.snapshotter,
    now: () => clock++,
  });
  const service = createContainerService({
    core,
    logger: silentLogger(),
    hostFacts: world.facts,
    os: world.os,
    overrides: { undoTimeoutMs: 1000 },
  });
  return { core, service };
}

beforeEach(async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'ctr-unit-'));
  const images = new FakeImages();
  images.add({
    id: IMAGE_ID,
    config: { config: { Cmd: ['sleep', '1000'], StopSignal: 'SIGUSR1' } },
    layerDirs: ['/layers/top', '/layers/base'],
    repoTags: ['registry.local/busybox:1'],
    repoDigests: [`registry.local/busybox@sha256:${'2'.repeat(64)}`],
  });
  const base = {
    dir,
    runtime: new FakeOciRuntime(),
    snapshotter: new FakeSnapshotter('fuse-overlayfs', path.join(dir, 'snap')),
    images,
    os: new FakeContainerOs(),
    cgroups: new FakeCgroupManager(),
    node: new FakeSandboxOs(),
    facts: hostFacts(),
  };
  w = { ...base, ...makeService(base) };
  await w.core.recover();
  await seedSandbox(w.core.sandboxes, w.node, sandboxRecord());
});

afterEach(async () => {
  await w.core.close();
  await rm(w.dir, { recursive: true, force: true });
});

const POD = 'a'.repeat(64);

function config(overrides: Partial<ContainerConfig__Output> = {}, sc = {}): ContainerConfig__Output {
  return containerConfig(
    { image: { ...containerConfig().image!, image: 'registry.local/busybox:1' }, ...overrides },
    sc,
  );
}

async function create(overrides: Partial<ContainerConfig__Output> = {}, sc = {}, pod = POD): Promise<string> {
  const r = await w.service.handlers.CreateContainer!(
    { pod_sandbox_id: pod, config: config(overrides, sc), sandbox_config: null },
    ctx as never,
  );
  return r.container_id!;
}

async function status(id: string, verbose = false) {
  return w.service.handlers.ContainerStatus!({ container_id: id, verbose }, ctx as never);
}

async function start(id: string) {
  await w.service.handlers.StartContainer!({ container_id: id }, ctx as never);
}

async function records(): Promise<string[]> {
  return (await readdir(path.join(w.dir, 'root', 'containers'))).filter((f) => f.endsWith('.json'));
}

/** Everything a container can hold: empty = clean. */
async function leftovers(): Promise<string[]> {
  const left: string[] = [];
  for (const r of await records()) left.push(`record ${r}`);
  for (const id of w.snapshotter.snapshots.keys()) left.push(`snapshot ${id}`);
  for (const id of w.runtime.containers.keys()) left.push(`runtime ${id}`);
  for (const [image, holders] of w.images.holders) for (const h of holders) left.push(`hold ${image} ${h}`);
  return left;
}

describe('create, start, stop, remove', () => {
  it('creates a container from the image by tag, id or digest, with the image held and a writable layer', async () => {
    const id = await create();
    expect(id).toMatch(/^[0-9a-f]{64}$/);
    expect(w.images.holdersOf(IMAGE_ID)).toEqual([id]);
    expect(w.snapshotter.snapshots.get(id)?.lowerDirs).toEqual(['/layers/top', '/layers/base']);
    const created = w.runtime.calls.find((c) => c.method === 'create')!.args[0] as {
      spec: { process: { args: string[] }; linux: { cgroupsPath: string }; root: { path: string } };
      logPath: string;
      conmonCgroup: string;
    };
    expect(created.spec.process.args).toEqual(['sleep', '1000']);
    expect(created.spec.linux.cgroupsPath).toBe(`/pods/pod1/${id}`);
    expect(created.spec.root.path).toBe(w.snapshotter.rootfsOf(id));
    expect(created.logPath).toBe('/var/log/pods/x/app/0.log');
    expect(created.conmonCgroup).toBe('/sys/fs/cgroup/pods/pod1/conmon');
    expect(w.os.calls).toContain('prepareLogDirectory /var/log/pods/x/app/0.log');

    const s = (await status(id)).status!;
    expect(s.state).toBe('CONTAINER_CREATED');
    expect(s.image_id).toBe(IMAGE_ID);
    expect(s.image_ref).toBe(`registry.local/busybox@sha256:${'2'.repeat(64)}`);
    expect(s.image?.image).toBe('registry.local/busybox:1');
    expect(s.log_path).toBe('/var/log/pods/x/app/0.log');
    expect(BigInt(s.created_at as string)).toBeGreaterThan(0n);
    expect(s.started_at).toBe('0');

    const byId = await create({
      metadata: { name: 'b', attempt: 0 },
      image: { ...config().image!, image: IMAGE_ID },
    });
    expect((await status(byId)).status!.image_id).toBe(IMAGE_ID);
    const byDigest = await create({
      metadata: { name: 'c', attempt: 0 },
      image: { ...config().image!, image: `registry.local/busybox@sha256:${'2'.repeat(64)}` },
    });
    expect((await status(byDigest)).status!.image_id).toBe(IMAGE_ID);
  });

  it('starts, stops with the image stop signal then SIGKILL at the timeout, and removes everything', async () => {
    const id = await create();
    await start(id);
    let s = (await status(id)).status!;
    expect(s.state).toBe('CONTAINER_RUNNING');
    expect(BigInt(s.started_at as string)).toBeGreaterThan(BigInt(s.created_at as string));

    await w.service.handlers.StopContainer!({ container_id: id, timeout: '2' }, ctx as never);
    const kills = w.runtime.calls.filter((c) => c.method === 'kill').map((c) => c.args.slice(1));
    expect(kills).toEqual([
      ['SIGUSR1', false],
      ['SIGKILL', true],
    ]);
    s = (await status(id)).status!;
    expect(s.state).toBe('CONTAINER_EXITED');
    expect(s.exit_code).toBe(137);
    expect(s.reason).toBe('Error');
    expect(BigInt(s.finished_at as string)).toBeGreaterThan(0n);

    // Stop again, stop and remove of unknown ids: OK.
    await w.service.handlers.StopContainer!({ container_id: id, timeout: '2' }, ctx as never);
    await w.service.handlers.StopContainer!({ container_id: 'f'.repeat(64), timeout: '2' }, ctx as never);
    await w.service.handlers.RemoveContainer!({ container_id: 'f'.repeat(64) }, ctx as never);

    await w.service.handlers.RemoveContainer!({ container_id: id }, ctx as never);
    expect(await leftovers()).toEqual([]);
    await w.service.handlers.RemoveContainer!({ container_id: id }, ctx as never);
    // The name is free again.
    await create();
  });

  it('a handled stop signal ends the container with its own code (Completed for 0)', async () => {
    const id = await create();
    await start(id);
    w.runtime.handles(id, 'SIGUSR1', 0);
    await w.service.handlers.StopContainer!({ container_id: id, timeout: '30' }, ctx as never);
    const s = (await status(id)).status!;
    expect([s.state, s.exit_code, s.reason]).toEqual(['CONTAINER_EXITED', 0, 'Completed']);
    expect(w.runtime.calls.filter((c) => c.method === 'kill').map((c) => c.args[1])).toEqual(['SIGUSR1']);
  });

  it('the request stop_signal wins over the image one', async () => {
    const id = await create({ stop_signal: 'SIGNAL_SIGINT' });
    await start(id);
    w.runtime.handles(id, 'SIGINT', 130);
    await w.service.handlers.StopContainer!({ container_id: id, timeout: '30' }, ctx as never);
    expect((await status(id)).status!.exit_code).toBe(130);
  });

  it('RemoveContainer force-kills a running container', async () => {
    const id = await create();
    await start(id);
    await w.service.handlers.RemoveContainer!({ container_id: id }, ctx as never);
    expect(w.runtime.calls.some((c) => c.method === 'kill' && c.args[1] === 'SIGKILL')).toBe(true);
    expect(await leftovers()).toEqual([]);
    await expect(status(id)).rejects.toMatchObject({ kind: 'NotFound' });
  });

  it('an exited container lets go of its runtime state and mount at once, and keeps its layer until removed', async () => {
    const stopped = await create({ metadata: { name: 'stopped', attempt: 0 } });
    const ended = await create({ metadata: { name: 'ended', attempt: 0 } });
    await start(stopped);
    await start(ended);
    await w.service.handlers.StopContainer!({ container_id: stopped, timeout: '0' }, ctx as never);
    w.runtime.exitNow(ended, 3);
    await w.core.exitsRecorded();
    for (const id of [stopped, ended]) {
      expect(w.runtime.containers.has(id)).toBe(false);
      expect(w.runtime.calls.filter((c) => c.method === 'delete' && c.args[0] === id)).toHaveLength(1);
      expect(w.snapshotter.snapshots.get(id)?.mounted).toBe(false);
      expect((await status(id)).status!.state).toBe('CONTAINER_EXITED');
    }
    expect((await status(ended)).status!.exit_code).toBe(3);
    // The writable layer is still measured (kubelet counts exited containers' layers).
    const stats = await w.service.handlers.ContainerStats!({ container_id: ended }, ctx as never);
    expect(stats.stats?.writable_layer?.used_bytes?.value).toBe('4096');
    await w.service.handlers.RemoveContainer!({ container_id: stopped }, ctx as never);
    await w.service.handlers.RemoveContainer!({ container_id: ended }, ctx as never);
    expect(await leftovers()).toEqual([]);
  });

  it('an exit whose release fails is still recorded, and RemoveContainer finishes the release', async () => {
    const id = await create();
    await start(id);
    w.runtime.failNext('delete', new Error('crun delete: busy'));
    w.runtime.exitNow(id, 1);
    await w.core.exitsRecorded();
    expect((await status(id)).status!.state).toBe('CONTAINER_EXITED');
    expect(w.runtime.containers.has(id)).toBe(true);
    await w.service.handlers.RemoveContainer!({ container_id: id }, ctx as never);
    expect(await leftovers()).toEqual([]);
  });

  it('an exited container whose cgroup still holds processes keeps its state and mount; RemoveContainer kills them and removes the cgroup', async () => {
    const id = await create();
    await start(id);
    const cgroup = w.core.containers.get(id)!.cgroupPath!;
    expect(cgroup.endsWith(`/${id}`)).toBe(true);
    // A process of the container outlived its init (a pod-wide pid namespace): populated.
    w.cgroups.setFile(cgroup, 'cgroup.events', 'populated 1\nfrozen 0\n');
    w.runtime.exitNow(id, 0);
    await w.core.exitsRecorded();
    expect((await status(id)).status!.state).toBe('CONTAINER_EXITED');
    expect(w.runtime.containers.has(id)).toBe(true);
    expect(w.snapshotter.snapshots.get(id)?.mounted).toBe(true);
    expect(w.cgroups.calls.filter((c) => c.startsWith('remove'))).toEqual([]);
    await w.service.handlers.RemoveContainer!({ container_id: id }, ctx as never);
    expect(w.cgroups.calls).toContain(`remove ${cgroup}`);
    expect(await leftovers()).toEqual([]);
  });

  it('a created container that is stopped gets SIGKILL at once', async () => {
    const id = await create();
    await w.service.handlers.StopContainer!({ container_id: id, timeout: '30' }, ctx as never);
    expect(w.runtime.calls.filter((c) => c.method === 'kill').map((c) => c.args[1])).toEqual(['SIGKILL']);
    expect((await status(id)).status!.state).toBe('CONTAINER_EXITED');
  });

  it('empty ids are InvalidArgument; unknown ids NotFound for status and start', async () => {
    await expect(
      w.service.handlers.StopContainer!({ container_id: '', timeout: '0' }, ctx as never),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(status('0123')).rejects.toMatchObject({ kind: 'NotFound' });
    await expect(start('0123')).rejects.toMatchObject({ kind: 'NotFound' });
  });

  it('starting twice is FailedPrecondition; a failed start leaves the container EXITED with StartError', async () => {
    const id = await create();
    await start(id);
    await expect(start(id)).rejects.toBeInstanceOf(FailedPreconditionError);

    const other = await create({ metadata: { name: 'other', attempt: 0 } });
    w.runtime.failNext('start', new FailedPreconditionError('exec: "nope": executable file not found'));
    await expect(start(other)).rejects.toThrow(/executable file not found/);
    const s = (await status(other)).status!;
    expect([s.state, s.reason]).toEqual(['CONTAINER_EXITED', 'StartError']);
    expect(s.message).toMatch(/executable file not found/);
  });
});

describe('CreateContainer failures leave nothing behind', () => {
  const cases: [string, () => void, RegExp][] = [
    ['image hold', () => w.images.markInUse !== undefined && failImages(), /image hold failed/],
    ['snapshot', () => w.snapshotter.failNext('prepare', new Error('mount failed')), /mount failed/],
    [
      'runtime create',
      () => w.runtime.failNext('create', new FailedPreconditionError('crun: no such file')),
      /crun/,
    ],
  ];
  function failImages() {
    const original = w.images.markInUse.bind(w.images);
    w.images.markInUse = async (id, holder) => {
      w.images.markInUse = original;
      await original(id, holder);
      throw new Error('image hold failed');
    };
  }
  for (const [what, inject, message] of cases) {
    it(`rolls back when the ${what} step fails, and the same request then succeeds`, async () => {
      inject();
      await expect(create()).rejects.toThrow(message);
      expect(await leftovers()).toEqual([]);
      const id = await create();
      expect((await status(id)).status!.state).toBe('CONTAINER_CREATED');
    });
  }

  it('runs the adjust stage between building the spec and creating the container; a failing adjuster rolls back', async () => {
    const seen: string[] = [];
    const service = createContainerService({
      core: w.core,
      logger: silentLogger(),
      hostFacts: w.facts,
      os: w.os,
      overrides: { undoTimeoutMs: 1000 },
      adjusters: [
        {
          name: 'first',
          async adjust(spec, context) {
            seen.push(`first ${context.config.metadata!.name} ${context.sandbox.id.slice(0, 4)}`);
            return {
              spec: { ...spec, process: { ...spec.process, env: [...spec.process.env, 'ADJUSTED=1'] } },
              warnings: ['added ADJUSTED'],
            };
          },
        },
        {
          name: 'second',
          async adjust(spec) {
            seen.push(`second ${spec.process.env.includes('ADJUSTED=1')}`);
            if (seen.length > 2) throw new FailedPreconditionError('plugin refused the container');
            return {
              spec: { ...spec, annotations: { ...spec.annotations, 'example.com/x': 'y' } },
              warnings: [],
            };
          },
        },
      ],
    });
    const r = await service.handlers.CreateContainer!(
      { pod_sandbox_id: POD, config: config(), sandbox_config: null },
      ctx as never,
    );
    expect(seen).toEqual(['first app aaaa', 'second true']);
    const created = w.runtime.calls.find((c) => c.method === 'create')!.args[0] as {
      spec: { process: { env: string[] }; annotations: Record<string, string> };
    };
    expect(created.spec.process.env).toContain('ADJUSTED=1');
    expect(created.spec.annotations['example.com/x']).toBe('y');
    const info = JSON.parse((await status(r.container_id!, true)).info!.info!) as { warnings: string[] };
    expect(info.warnings).toContain('first: added ADJUSTED');
    // The second time the second adjuster refuses: nothing of that container is left.
    await service.handlers.RemoveContainer!({ container_id: r.container_id! }, ctx as never);
    await expect(
      service.handlers.CreateContainer!(
        { pod_sandbox_id: POD, config: config(), sandbox_config: null },
        ctx as never,
      ),
    ).rejects.toMatchObject({ kind: 'FailedPrecondition' });
    expect(await leftovers()).toEqual([]);
  });

  it('bad input is rejected with a clear error and nothing leaked (catalog 17, 20, 22, 23, 26, 27)', async () => {
    const bad: [Partial<ContainerConfig__Output>, object, RegExp][] = [
      [{ log_path: '../../../.bashrc' }, {}, /leaves the pod's log_directory/],
      [{ log_path: '/etc/passwd' }, {}, /relative path/],
      [{}, { run_as_group: { value: '10' } }, /run_as_group|RunAsGroup|group/i],
      [{}, { run_as_user: { value: '4294967296' } }, /4294967296|uid/],
      [{}, { run_as_username: 'nobody-here' }, /nobody-here/],
      [{ working_dir: '/proc/self/fd/7' }, {}, /under \/proc/],
      [{ envs: [{ key: 'HOME', value: Buffer.from('/root\nroot::0:0::/:/bin/sh') }] }, {}, /HOME/],
      [{ mounts: [{ ...mountOf(''), container_path: '' }] }, {}, /absolute/],
      [{ mounts: [{ ...mountOf('/data'), host_path: 'relative' }] }, {}, /absolute/],
      [{ mounts: [{ ...mountOf('/data'), host_path: '/nonexistent-ctr-test' }] }, {}, /does not exist/],
      [{ metadata: { name: '', attempt: 0 } }, {}, /metadata.name/],
      [{ image: { ...containerConfig().image!, image: 'nope:1' } }, {}, /not present/],
    ];
    for (const [overrides, sc, message] of bad) {
      await expect(create(overrides, sc), JSON.stringify(overrides) + JSON.stringify(sc)).rejects.toThrow(
        message,
      );
      expect(await leftovers()).toEqual([]);
    }
    // The name is not left reserved by any of them.
    await create();
  });

  it('a pod that is missing or not ready is refused', async () => {
    await expect(create({}, {}, 'b'.repeat(64))).rejects.toMatchObject({ kind: 'NotFound' });
    await w.core.sandboxes.put({ ...sandboxRecord(), state: 'notready' });
    await expect(create()).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(await leftovers()).toEqual([]);
  });

  it('10 concurrent identical requests create exactly one container', async () => {
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => create()));
    const ok = results.filter((r) => r.status === 'fulfilled');
    expect(ok).toHaveLength(1);
    for (const r of results.filter((x) => x.status === 'rejected')) {
      expect((r as PromiseRejectedResult).reason).toMatchObject({ kind: 'AlreadyExists' });
    }
    expect(await records()).toHaveLength(1);
    expect(w.snapshotter.snapshots.size).toBe(1);
  });
});

function mountOf(containerPath: string) {
  return {
    container_path: containerPath,
    host_path: '/tmp',
    readonly: false,
    selinux_relabel: false,
    propagation: 'PROPAGATION_PRIVATE' as const,
    uidMappings: [],
    gidMappings: [],
    recursive_read_only: false,
    image: null,
    image_sub_path: '',
    mount_options: [],
  };
}

describe('status, exits and lists', () => {
  it('takes in exits conmon recorded: Completed, Error, OOMKilled (conmon or memory.events)', async () => {
    const ids: string[] = [];
    for (const name of ['ok', 'err', 'oom', 'oomcg']) {
      const id = await create({ metadata: { name, attempt: 0 } });
      await start(id);
      ids.push(id);
    }
    w.runtime.exitNow(ids[0]!, 0);
    w.runtime.exitNow(ids[1]!, 3);
    w.runtime.exitNow(ids[2]!, 137, true);
    w.cgroups.setFile(`/pods/pod1/${ids[3]}`, 'memory.events', 'low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n');
    w.runtime.exitNow(ids[3]!, 137);
    await w.core.exitsRecorded();
    const got = [];
    for (const id of ids) {
      const s = (await status(id)).status!;
      got.push([s.state, s.exit_code, s.reason]);
    }
    expect(got).toEqual([
      ['CONTAINER_EXITED', 0, 'Completed'],
      ['CONTAINER_EXITED', 3, 'Error'],
      ['CONTAINER_EXITED', 137, 'OOMKilled'],
      ['CONTAINER_EXITED', 137, 'OOMKilled'],
    ]);
  });

  it('a process that failed at execve after start is EXITED with StartError and why (issue 12 item 5)', async () => {
    const failed = await create({ metadata: { name: 'e2big', attempt: 0 } });
    const crashed = await create({ metadata: { name: 'crashed', attempt: 0 } });
    await start(failed);
    await start(crashed);
    const message =
      'the container exited before its entrypoint ran: the OCI runtime could not execute /bin/true: Argument list too long';
    w.runtime.execFailures.set(failed, { path: '/bin/true', error: 'Argument list too long', message });
    w.runtime.exitNow(failed, 1);
    w.runtime.exitNow(crashed, 1);
    await w.core.exitsRecorded();
    expect((await status(failed)).status).toMatchObject({ exit_code: 1, reason: 'StartError', message });
    expect((await status(crashed)).status).toMatchObject({ exit_code: 1, reason: 'Error', message: '' });
    // Asked with the container's log; a container that exits 0 is not looked at.
    const asked = w.runtime.calls.filter((c) => c.method === 'execFailure').map((c) => c.args[0]);
    expect(asked.sort()).toEqual([failed, crashed].sort());
  });

  it('ListContainers filters by id prefix, pod, state and labels', async () => {
    const other = 'c'.repeat(64);
    await seedSandbox(w.core.sandboxes, w.node, sandboxRecord({ id: other, cgroupParent: '/pods/pod2' }));
    const a = await create({ metadata: { name: 'a', attempt: 0 }, labels: { tier: 'web' } });
    const b = await create({ metadata: { name: 'b', attempt: 0 }, labels: { tier: 'db' } });
    const c = await create({ metadata: { name: 'c', attempt: 0 }, labels: { tier: 'web' } }, {}, other);
    await start(b);
    const list = async (filter: object | null) =>
      (await w.service.handlers.ListContainers!({ filter } as never, ctx as never)).containers!.map(
        (x) => x.id,
      );
    expect(await list(null)).toEqual([a, b, c]);
    expect(await list({ id: a.slice(0, 8), pod_sandbox_id: '', state: null, label_selector: {} })).toEqual([
      a,
    ]);
    expect(
      await list({ id: '', pod_sandbox_id: other.slice(0, 5), state: null, label_selector: {} }),
    ).toEqual([c]);
    expect(
      await list({ id: '', pod_sandbox_id: '', state: { state: 'CONTAINER_RUNNING' }, label_selector: {} }),
    ).toEqual([b]);
    expect(await list({ id: '', pod_sandbox_id: '', state: null, label_selector: { tier: 'web' } })).toEqual([
      a,
      c,
    ]);
    const listed = (await w.service.handlers.ListContainers!({ filter: null } as never, ctx as never))
      .containers![0]!;
    expect(listed).toMatchObject({ pod_sandbox_id: POD, image_id: IMAGE_ID, labels: { tier: 'web' } });
  });

  it('verbose status shows dropped limits; status reports the user and resources', async () => {
    w.facts.controllers = ['pids'];
    const id = await create(
      { linux: { resources: resources({ memory_limit_in_bytes: '10485760' }), security_context: null } },
      {},
    );
    const r = await status(id, true);
    const info = JSON.parse(r.info!.info!) as { warnings: string[]; pid: number };
    expect(info.warnings.join('\n')).toMatch(
      /memory limit dropped: the memory cgroup controller is not delegated/,
    );
    expect(info.pid).toBeGreaterThan(0);
    expect(r.status!.resources?.linux?.memory_limit_in_bytes).toBe('10485760');
    expect(r.status!.user?.linux).toMatchObject({ uid: '0', gid: '0' });
  });

  it('verbose status shows environment values as text, not as Buffer objects', async () => {
    const id = await create({ envs: [{ key: 'GREETING', value: Buffer.from('hello') }] as never });
    const info = JSON.parse((await status(id, true)).info!.info!) as { config: { envs: unknown[] } };
    expect(info.config.envs).toEqual([{ key: 'GREETING', value: 'hello' }]);
  });
});

describe('update, reopen, stats, events', () => {
  it('UpdateContainerResources applies delegated limits and warns about the rest', async () => {
    w.facts.controllers = ['cpu'];
    const id = await create();
    await start(id);
    await w.service.handlers.UpdateContainerResources!(
      {
        container_id: id,
        linux: resources({ cpu_quota: '50000', cpu_period: '100000', memory_limit_in_bytes: '1000000' }),
        windows: null,
        annotations: {},
      },
      ctx as never,
    );
    const update = w.runtime.calls.find((c) => c.method === 'update')!;
    expect(update.args[1]).toEqual({ cpu: { quota: 50000, period: 100000 } });
    const info = JSON.parse((await status(id, true)).info!.info!) as { warnings: string[] };
    expect(info.warnings.join('\n')).toMatch(/memory limit dropped/);
    w.runtime.exitNow(id, 0);
    await expect(
      w.service.handlers.UpdateContainerResources!(
        { container_id: id, linux: resources(), windows: null, annotations: {} },
        ctx as never,
      ),
    ).rejects.toBeInstanceOf(FailedPreconditionError);
  });

  it('ReopenContainerLog asks conmon over its ctl FIFO and returns once the new file exists', async () => {
    const id = await create();
    await start(id);
    const log = (w.runtime.calls.find((c) => c.method === 'create')!.args[0] as { logPath: string }).logPath;
    // conmon reopens the log (a new file at the same path) a moment after the request.
    const control = w.runtime.control.bind(w.runtime);
    w.runtime.control = async (cid, message) => {
      const answered = await control(cid, message);
      setTimeout(() => void mkdir(path.dirname(log), { recursive: true }).then(() => writeFile(log, '')), 30);
      return answered;
    };
    await w.service.handlers.ReopenContainerLog!({ container_id: id }, ctx as never);
    expect(existsSync(log)).toBe(true);
    // The directory and the .tmp name conmon uses were checked first.
    expect(w.os.calls).toContain(`checkLogReopen ${log}`);
    expect(w.runtime.calls.filter((c) => c.method === 'control').map((c) => c.args)).toEqual([
      [id, 'reopen-log'],
    ]);

    w.runtime.killMonitor(id);
    await expect(w.service.handlers.ReopenContainerLog!({ container_id: id }, ctx as never)).rejects.toThrow(
      /does not answer/,
    );
    w.runtime.exitNow(id, 0);
    await expect(
      w.service.handlers.ReopenContainerLog!({ container_id: id }, ctx as never),
    ).rejects.toBeInstanceOf(FailedPreconditionError);
  });

  it('stats come from the cgroup files and the writable layer, with timestamps', async () => {
    const id = await create({ labels: { app: 'x' } });
    await start(id);
    const cg = `/pods/pod1/${id}`;
    w.cgroups.setFile(cg, 'cpu.stat', 'usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n');
    w.cgroups.setFile(cg, 'memory.current', '8192000\n');
    w.cgroups.setFile(cg, 'memory.stat', 'anon 4096000\ninactive_file 1000\npgfault 7\npgmajfault 1\n');
    w.snapshotter.snapshots.get(id)!.usage = { bytes: 12288n, inodes: 3n };
    const stats = (await w.service.handlers.ContainerStats!({ container_id: id }, ctx as never)).stats!;
    expect(stats.attributes).toMatchObject({ id, metadata: { name: 'app' }, labels: { app: 'x' } });
    expect(stats.cpu?.usage_core_nano_seconds?.value).toBe('2500000');
    expect(BigInt(stats.cpu!.timestamp as string)).toBeGreaterThan(0n);
    expect(stats.memory?.usage_bytes?.value).toBe('8192000');
    expect(stats.memory?.working_set_bytes?.value).toBe('8191000');
    expect(stats.memory?.rss_bytes?.value).toBe('4096000');
    expect(stats.writable_layer?.used_bytes?.value).toBe('12288');
    expect(stats.writable_layer?.inodes_used?.value).toBe('3');

    // Without the memory controller, memory has a timestamp and no value.
    w.cgroups.files.get(cg)!.delete('memory.current');
    const again = (await w.service.handlers.ContainerStats!({ container_id: id }, ctx as never)).stats!;
    expect(again.memory?.usage_bytes ?? null).toBeNull();
    expect(BigInt(again.memory!.timestamp as string)).toBeGreaterThan(0n);

    const list = await w.service.handlers.ListContainerStats!(
      { filter: { id: '', pod_sandbox_id: '', label_selector: { app: 'x' } } },
      ctx as never,
    );
    expect(list.stats!.map((s) => s.attributes?.id)).toEqual([id]);
    const none = await w.service.handlers.ListContainerStats!(
      { filter: { id: '', pod_sandbox_id: '', label_selector: { app: 'y' } } },
      ctx as never,
    );
    expect(none.stats).toEqual([]);

    w.cgroups.setFile('/pods/pod1', 'cpu.stat', 'usage_usec 9000\n');
    w.cgroups.setFile('/pods/pod1', 'pids.current', '3\n');
    const pod = (await w.service.handlers.PodSandboxStats!({ pod_sandbox_id: POD }, ctx as never)).stats!;
    expect(pod.attributes?.id).toBe(POD);
    expect(pod.linux?.cpu?.usage_core_nano_seconds?.value).toBe('9000000');
    expect(pod.linux?.process?.process_count?.value).toBe('3');
    expect(pod.linux?.containers?.map((c) => c.attributes?.id)).toEqual([id]);
    const pods = await w.service.handlers.ListPodSandboxStats!({ filter: null }, ctx as never);
    expect(pods.stats).toHaveLength(1);
  });

  it('GetContainerEvents streams created, started, stopped, deleted to every subscriber', async () => {
    const abort = new AbortController();
    const seen: [ContainerEventResponse[], ContainerEventResponse[]] = [[], []];
    const streams = seen.map((list) =>
      w.service.handlers.GetContainerEvents!(
        {},
        async (e) => {
          list.push(e);
        },
        { ...ctx, signal: abort.signal } as never,
      ),
    );
    await new Promise((r) => setTimeout(r, 5));
    const id = await create();
    await start(id);
    await w.service.handlers.StopContainer!({ container_id: id, timeout: '0' }, ctx as never);
    await w.service.handlers.RemoveContainer!({ container_id: id }, ctx as never);
    await new Promise((r) => setTimeout(r, 20));
    for (const list of seen) {
      expect(list.map((e) => e.container_event_type)).toEqual([
        'CONTAINER_CREATED_EVENT',
        'CONTAINER_STARTED_EVENT',
        'CONTAINER_STOPPED_EVENT',
        'CONTAINER_DELETED_EVENT',
      ]);
      expect(list.every((e) => e.container_id === id && BigInt(e.created_at as string) > 0n)).toBe(true);
      expect(list[2]!.containers_statuses?.[0]?.state).toBe('CONTAINER_EXITED');
    }
    w.core.publishSandbox('CONTAINER_STOPPED_EVENT', POD);
    await new Promise((r) => setTimeout(r, 20));
    expect(seen[0].at(-1)).toMatchObject({
      container_id: POD,
      container_event_type: 'CONTAINER_STOPPED_EVENT',
    });
    abort.abort();
    await Promise.all(streams);
    // Gone subscribers are dropped: publishing afterwards reaches nobody and does not throw.
    w.core.publishSandbox('CONTAINER_DELETED_EVENT', POD);
    expect(seen[0].at(-1)?.container_event_type).toBe('CONTAINER_STOPPED_EVENT');
  });
});

describe('pods, lookup and recovery', () => {
  it('stopPodContainers and removePodContainers act on the pod containers only, and remove the conmon cgroup', async () => {
    const other = 'c'.repeat(64);
    await seedSandbox(w.core.sandboxes, w.node, sandboxRecord({ id: other, cgroupParent: '/pods/pod2' }));
    const a = await create({ metadata: { name: 'a', attempt: 0 } });
    const b = await create({ metadata: { name: 'b', attempt: 0 } });
    const c = await create({ metadata: { name: 'c', attempt: 0 } }, {}, other);
    await start(a);
    await start(c);
    await w.core.stopPodContainers(POD, 0);
    expect((await status(a)).status!.state).toBe('CONTAINER_EXITED');
    expect((await status(b)).status!.state).toBe('CONTAINER_EXITED');
    expect((await status(c)).status!.state).toBe('CONTAINER_RUNNING');
    await w.core.removePodContainers(POD);
    await expect(status(a)).rejects.toMatchObject({ kind: 'NotFound' });
    expect(w.cgroups.calls).toContain('remove /pods/pod1/conmon');
    expect(await records()).toEqual([`${c}.json`]);
  });

  it('containerView gives the streaming layer state, pid and stdio flags', async () => {
    const id = await create({ tty: true, stdin: true, stdin_once: true });
    await start(id);
    const view = await w.core.containerView(id.slice(0, 10));
    expect(view).toMatchObject({
      id,
      podSandboxId: POD,
      state: 'CONTAINER_RUNNING',
      tty: true,
      stdin: true,
      stdinOnce: true,
    });
    expect(view!.pid).toBeGreaterThan(0);
    w.runtime.exitNow(id, 5);
    await w.core.exitsRecorded();
    expect(await w.core.containerView(id)).toMatchObject({
      state: 'CONTAINER_EXITED',
      exitCode: 5,
      pid: 0,
    });
    expect(await w.core.containerView('nope')).toBeUndefined();
    expect(await w.core.containerView('')).toBeUndefined();
  });

  it('recovers running containers as they were, exits while down, dead conmons and half-created ones', async () => {
    const keep = await create({ metadata: { name: 'keep', attempt: 0 } });
    const exits = await create({ metadata: { name: 'exits', attempt: 0 } });
    const orphan = await create({ metadata: { name: 'orphan', attempt: 0 } });
    for (const id of [keep, exits, orphan]) await start(id);
    const before = (await status(keep)).status!;
    const pidBefore = (await w.core.containerView(keep))!.pid;
    // A CreateContainer the daemon died in: its record says `creating`.
    w.runtime.failNext('create', new Error('daemon killed'));
    const storeDir = path.join(w.dir, 'root', 'containers');
    await expect(create({ metadata: { name: 'half', attempt: 0 } })).rejects.toThrow();
    // Simulate the kill: the daemon is gone (it hears nothing more), things happen, a new one starts.
    await w.core.close();
    w.runtime.exitNow(exits, 42);
    w.runtime.killMonitor(orphan);
    const { writeFile } = await import('node:fs/promises');
    const halfId = 'e'.repeat(64);
    const halfRecord = JSON.parse(
      JSON.stringify({
        ...(await readRecord(storeDir, keep)),
        id: halfId,
        state: 'creating',
        reservedName: 'half',
      }),
    );
    await writeFile(path.join(storeDir, `${halfId}.json`), JSON.stringify(halfRecord));
    await w.snapshotter.prepare(halfId, ['/layers/top']);
    await w.images.markInUse(IMAGE_ID, halfId);

    w = { ...w, ...makeService(w) };
    await w.core.recover();
    expect(w.core.recovery?.containers).toMatchObject({
      loaded: 4,
      running: 1,
      exitedWhileDown: 1,
      monitorDied: 1,
      rolledBack: 1,
    });

    const after = (await status(keep)).status!;
    expect(after.state).toBe('CONTAINER_RUNNING');
    expect([after.created_at, after.started_at]).toEqual([before.created_at, before.started_at]);
    expect((await w.core.containerView(keep))!.pid).toBe(pidBefore);
    expect((await status(exits)).status).toMatchObject({
      state: 'CONTAINER_EXITED',
      exit_code: 42,
      reason: 'Error',
    });
    expect((await status(orphan)).status).toMatchObject({
      state: 'CONTAINER_EXITED',
      reason: 'ContainerMonitorDied',
    });
    expect(
      w.runtime.calls.some((c) => c.method === 'kill' && c.args[0] === orphan && c.args[1] === 'SIGKILL'),
    ).toBe(true);
    expect(w.snapshotter.snapshots.has(halfId)).toBe(false);
    expect(w.images.holdersOf(IMAGE_ID).sort()).toEqual([keep, exits, orphan].sort());
    // Names are reserved again: the same name in the same pod is refused.
    await expect(create({ metadata: { name: 'keep', attempt: 0 } })).rejects.toMatchObject({
      kind: 'AlreadyExists',
    });
  });

  it('recovers a container started by the runtime whose start the daemon did not record as running', async () => {
    const id = await create({ metadata: { name: 'started-behind', attempt: 0 } });
    // The daemon died between `crun start` and saving the record: the runtime runs it.
    await w.core.close();
    await w.runtime.start(id);
    w = { ...w, ...makeService(w) };
    await w.core.recover();
    expect(w.core.recovery?.containers).toMatchObject({ running: 1 });
    const after = (await status(id)).status!;
    expect(after.state).toBe('CONTAINER_RUNNING');
    expect(after.started_at).not.toBe('0');
    // It stops like any running container.
    await w.service.handlers.StopContainer!({ container_id: id, timeout: '0' }, ctx as never);
    expect((await status(id)).status!.state).toBe('CONTAINER_EXITED');
  });

  it('a half-created container whose undo fails at recovery is shown EXITED and removable, never hidden', async () => {
    w.runtime.failNext('create', new Error('daemon killed'));
    await expect(create({ metadata: { name: 'half', attempt: 0 } })).rejects.toThrow();
    const storeDir = path.join(w.dir, 'root', 'containers');
    const keep = await create({ metadata: { name: 'keep', attempt: 0 } });
    await w.core.close();
    const { writeFile } = await import('node:fs/promises');
    const halfId = 'f'.repeat(64);
    await writeFile(
      path.join(storeDir, `${halfId}.json`),
      JSON.stringify({
        ...(await readRecord(storeDir, keep)),
        id: halfId,
        state: 'creating',
        reservedName: 'half',
      }),
    );
    await w.snapshotter.prepare(halfId, ['/layers/top']);
    w = { ...w, ...makeService(w) };
    w.runtime.failNext('delete', new Error('crun delete: device or resource busy'));
    await w.core.recover();
    const shown = (await status(halfId)).status!;
    expect(shown).toMatchObject({ state: 'CONTAINER_EXITED', reason: 'CreateContainerError' });
    expect(shown.message).toMatch(/did not finish.*busy/);
    await w.service.handlers.RemoveContainer!({ container_id: halfId }, ctx as never);
    expect(w.snapshotter.snapshots.has(halfId)).toBe(false);
  });

  it('the monitor check finds a conmon that died while the daemon runs', async () => {
    const id = await create();
    await start(id);
    w.runtime.killMonitor(id);
    await w.core.checkNow();
    expect((await status(id)).status).toMatchObject({
      state: 'CONTAINER_EXITED',
      reason: 'ContainerMonitorDied',
    });
  });
});

async function readRecord(dir: string, id: string): Promise<Record<string, unknown>> {
  const { readFile } = await import('node:fs/promises');
  return JSON.parse(await readFile(path.join(dir, `${id}.json`), 'utf8')) as Record<string, unknown>;
}
