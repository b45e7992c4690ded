/**
 * Image volumes (CRI Mount.image) over the fakes: the request rules, the read-only snapshot per
 * volume with the image held, the sub-path resolved in-root into a read-only bind, the image id
 * in ContainerStatus, removal and rollback taking everything, and recovery undoing a half-made
 * container's volumes and strays no record names.
 */
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Mount__Output } from '../../src/api/proto.js';
import { type ContainerService, createContainerService } from '../../src/container/container-service.js';
import { normaliseSubPath, planImageVolumes } from '../../src/container/image-volumes.js';
import type { RuntimeCore } from '../../src/core/runtime-core.js';
import { FailedPreconditionError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import type { CreateOptions } from '../../src/os/oci-runtime.js';
import {
  containerConfig,
  hostFacts,
  mount,
  sandboxRecord,
  seedSandbox,
} from '../fakes/container-fixtures.js';
import { FakeImages } from '../fakes/fake-container-os.js';
import { fakeCore } from '../fakes/fake-core.js';
import { FakeOciRuntime } from '../fakes/fake-oci-runtime.js';
import { FakeSandboxOs } from '../fakes/fake-sandbox-os.js';
import { FakeSnapshotter } from '../fakes/fake-snapshotter.js';

const APP_IMAGE = `sha256:${'1'.repeat(64)}`;
const DATA_IMAGE = `sha256:${'3'.repeat(64)}`;
const POD = 'a'.repeat(64);
const ctx = { logger: silentLogger() };

let dir: string;
let images: FakeImages;
let snapshotter: FakeSnapshotter;
let runtime: FakeOciRuntime;
let node: FakeSandboxOs;
let core: RuntimeCore;
let service: ContainerService;
let nextId = 0;
const idOf = (n: number) => n.toString(16).padStart(64, 'c');

function build(): void {
  ({ core } = fakeCore({ rootDir: path.join(dir, 'root'), images, snapshotter, runtime, sandboxOs: node }));
  service = createContainerService({
    core,
    logger: silentLogger(),
    hostFacts: hostFacts(),
    overrides: { newId: () => idOf(++nextId), undoTimeoutMs: 1000 },
  });
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'imgvol-unit-'));
  images = new FakeImages();
  images.add({
    id: APP_IMAGE,
    config: { config: { Cmd: ['sleep', '1000'] } },
    layerDirs: ['/layers/app'],
    repoTags: ['registry.local/app:1'],
    repoDigests: [],
  });
  images.add({
    id: DATA_IMAGE,
    config: { config: {} },
    layerDirs: ['/layers/data-top', '/layers/data-base'],
    repoTags: ['registry.local/data:1'],
    repoDigests: [],
  });
  snapshotter = new FakeSnapshotter('fuse-overlayfs', path.join(dir, 'snap'));
  runtime = new FakeOciRuntime();
  node = new FakeSandboxOs();
  build();
  await core.recover();
  await seedSandbox(core.sandboxes, node, sandboxRecord());
});

afterEach(async () => {
  await core.close();
  await rm(dir, { recursive: true, force: true });
});

const imageMount = (overrides: Partial<Mount__Output> = {}): Mount__Output =>
  mount({
    container_path: '/vol',
    host_path: '',
    readonly: true,
    image: {
      image: 'registry.local/data:1',
      annotations: {},
      user_specified_image: '',
      runtime_handler: '',
      image_ref: '',
    },
    ...overrides,
  });

/** What the fake snapshotter's read-only volume `n` of the next container holds. */
async function seedVolumeTree(containerNumber: number, mountIndex: number): Promise<string> {
  const merged = snapshotter.rootfsOf(`${idOf(containerNumber)}-iv${mountIndex}`);
  await mkdir(path.join(merged, 'etc'), { recursive: true });
  await writeFile(path.join(merged, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
  // A link out of the image: in-root it lands on the image's own /etc.
  await symlink('/etc', path.join(merged, 'escape'));
  return merged;
}

async function create(mounts: Mount__Output[]): Promise<string> {
  const config = containerConfig({
    image: { ...containerConfig().image!, image: 'registry.local/app:1' },
    mounts,
  });
  const r = await service.handlers.CreateContainer!(
    { pod_sandbox_id: POD, config, sandbox_config: null },
    ctx as never,
  );
  return r.container_id!;
}

function createdSpec(id: string) {
  const call = runtime.calls.find((c) => c.method === 'create' && (c.args[0] as CreateOptions).id === id);
  return (call!.args[0] as CreateOptions).spec;
}

async function leftovers(): Promise<string[]> {
  const left: string[] = [];
  for (const id of snapshotter.snapshots.keys()) left.push(`snapshot ${id}`);
  for (const [image, holders] of images.holders) for (const h of holders) left.push(`hold ${image} ${h}`);
  for (const id of runtime.containers.keys()) left.push(`runtime ${id}`);
  return left;
}

describe('the request rules', () => {
  it('sub-paths are relative and stay in the image', () => {
    expect(normaliseSubPath(imageMount({ image_sub_path: '' }))).toBe('');
    expect(normaliseSubPath(imageMount({ image_sub_path: 'etc/' }))).toBe('etc');
    expect(normaliseSubPath(imageMount({ image_sub_path: './usr//share' }))).toBe('usr/share');
    expect(normaliseSubPath(imageMount({ image_sub_path: '.' }))).toBe('');
    for (const bad of ['/etc', '../etc', 'a/../../b', 'a\0b']) {
      expect(() => normaliseSubPath(imageMount({ image_sub_path: bad }))).toThrow(
        expect.objectContaining({ kind: 'InvalidArgument' }),
      );
    }
  });

  it('refuses readonly=false, a host path, an empty image, a stray sub-path and an image not pulled', async () => {
    const cases: [Mount__Output, string, RegExp][] = [
      [imageMount({ readonly: false }), 'InvalidArgument', /read-only; set readonly: true/],
      [imageMount({ host_path: '/tmp' }), 'InvalidArgument', /host_path and image are exclusive/],
      [
        imageMount({ image: { ...imageMount().image!, image: '' } }),
        'InvalidArgument',
        /image\.image is empty/,
      ],
      [mount({ image_sub_path: 'etc' }), 'InvalidArgument', /only meaningful for an image volume/],
      [
        imageMount({ image: { ...imageMount().image!, image: 'registry.local/absent:1' } }),
        'NotFound',
        /not present on the node; pull it first/,
      ],
    ];
    for (const [m, kind, message] of cases) {
      await expect(planImageVolumes(images, idOf(1), [m])).rejects.toMatchObject({
        kind,
        message: expect.stringMatching(message),
      });
      await expect(create([m])).rejects.toMatchObject({ kind });
    }
    expect(await leftovers()).toEqual([]);
  });
});

describe('create, status, remove', () => {
  it('mounts a read-only snapshot per volume, holds the image, binds the sub-path read-only', async () => {
    const merged = await seedVolumeTree(nextId + 1, 1);
    await seedVolumeTree(nextId + 1, 2);
    const id = await create([
      mount({ container_path: '/data', host_path: dir }),
      imageMount({ image_sub_path: 'etc' }),
      imageMount({ container_path: '/whole', image: { ...imageMount().image!, image: DATA_IMAGE } }),
    ]);
    expect(snapshotter.snapshots.get(`${id}-iv1`)).toMatchObject({
      readOnly: true,
      mounted: true,
      lowerDirs: ['/layers/data-top', '/layers/data-base'],
    });
    expect(snapshotter.snapshots.get(`${id}-iv2`)).toMatchObject({ readOnly: true });
    expect(snapshotter.snapshots.get(id)?.readOnly).toBe(false);
    expect(images.holdersOf(DATA_IMAGE)).toEqual([id]);
    expect(images.holdersOf(APP_IMAGE)).toEqual([id]);

    const mounts = createdSpec(id).mounts ?? [];
    expect(mounts.find((m) => m.destination === '/vol')).toMatchObject({
      type: 'bind',
      source: path.join(merged, 'etc'),
      options: expect.arrayContaining(['rbind', 'ro']),
    });
    expect(mounts.find((m) => m.destination === '/whole')).toMatchObject({
      source: snapshotter.rootfsOf(`${id}-iv2`),
      options: expect.arrayContaining(['ro']),
    });

    const status = (
      await service.handlers.ContainerStatus!({ container_id: id, verbose: false }, ctx as never)
    ).status!;
    expect(status.mounts?.[0]?.image ?? null).toBeNull();
    expect(status.mounts?.[1]).toMatchObject({
      container_path: '/vol',
      host_path: '',
      readonly: true,
      image_sub_path: 'etc',
      image: { image: 'registry.local/data:1', image_ref: DATA_IMAGE },
    });
    expect(status.mounts?.[2]?.image).toMatchObject({ image: DATA_IMAGE, image_ref: DATA_IMAGE });
    const record = JSON.parse(await readFile(path.join(dir, 'root', 'containers', `${id}.json`), 'utf8'));
    expect(record.imageVolumes).toEqual([
      { mountIndex: 1, snapshotId: `${id}-iv1`, imageId: DATA_IMAGE },
      { mountIndex: 2, snapshotId: `${id}-iv2`, imageId: DATA_IMAGE },
    ]);

    // Once the container has exited its volumes are unmounted; they stay, with their holds,
    // until it is removed.
    await service.handlers.StopContainer!({ container_id: id, timeout: '0' }, ctx as never);
    for (const snapshot of [id, `${id}-iv1`, `${id}-iv2`])
      expect(snapshotter.snapshots.get(snapshot)?.mounted, snapshot).toBe(false);
    expect(images.holdersOf(DATA_IMAGE)).toEqual([id]);

    await service.handlers.RemoveContainer!({ container_id: id }, ctx as never);
    expect(await leftovers()).toEqual([]);
  });

  it('a sub-path symlink resolves inside the image; a missing sub-path is NotFound and leaves nothing', async () => {
    const merged = await seedVolumeTree(nextId + 1, 0);
    const id = await create([imageMount({ image_sub_path: 'escape' })]);
    expect(createdSpec(id).mounts?.find((m) => m.destination === '/vol')?.source).toBe(
      path.join(merged, 'etc'),
    );
    await service.handlers.RemoveContainer!({ container_id: id }, ctx as never);

    await expect(create([imageMount({ image_sub_path: 'not-existing' })])).rejects.toMatchObject({
      kind: 'NotFound',
      message: expect.stringMatching(
        /image_sub_path "not-existing" does not exist in image registry\.local\/data:1/,
      ),
    });
    expect(await leftovers()).toEqual([]);
  });

  it('a failure after the volumes are mounted rolls them back', async () => {
    await seedVolumeTree(nextId + 1, 0);
    runtime.failNext('create', new FailedPreconditionError('crun: no such file'));
    await expect(create([imageMount({ image_sub_path: 'etc' })])).rejects.toThrow(/crun/);
    expect(await leftovers()).toEqual([]);
  });
});

describe('recovery', () => {
  it('undoes the volumes of a half-made container and removes volume snapshots no record names', async () => {
    await seedVolumeTree(nextId + 1, 0);
    const id = await create([imageMount()]);
    // The daemon dies in a CreateContainer: its record says `creating` and names a mounted volume.
    await core.close();
    const storeDir = path.join(dir, 'root', 'containers');
    const half = idOf(99);
    const record = JSON.parse(await readFile(path.join(storeDir, `${id}.json`), 'utf8'));
    await writeFile(
      path.join(storeDir, `${half}.json`),
      JSON.stringify({
        ...record,
        id: half,
        state: 'creating',
        reservedName: 'half',
        imageVolumes: [{ mountIndex: 0, snapshotId: `${half}-iv0`, imageId: DATA_IMAGE }],
      }),
    );
    await snapshotter.prepare(`${half}-iv0`, ['/layers/data-top'], { readOnly: true });
    await images.markInUse(DATA_IMAGE, half);
    // A volume of a container whose record is gone altogether.
    const gone = idOf(98);
    await snapshotter.prepare(`${gone}-iv3`, ['/layers/data-top'], { readOnly: true });

    build();
    await core.recover();
    expect([...snapshotter.snapshots.keys()].sort()).toEqual([id, `${id}-iv0`].sort());
    expect(images.holdersOf(DATA_IMAGE)).toEqual([id]);
    await service.handlers.RemoveContainer!({ container_id: id }, ctx as never);
    expect(await leftovers()).toEqual([]);
  });
});
