/**
 * Image volumes (CRI Mount.image) with the real daemon, driven by crictl from the host as the
 * unprivileged user: a four-layer image (whiteouts, an opaque dir, owners) mounted whole and by
 * sub-path into a busybox container; reads, refused writes, the image id in `crictl inspect`,
 * `crictl rmi` while the volume is in use, removal taking every mount and the image's layers
 * with it, the errors for readonly=false / a missing sub-path / an image not pulled, and a
 * daemon kill -9 in between. Mounts live in the node's mount namespace, so they are read there
 * (`rootless-cri enter`); the harness's stop() checks the rest of what could leak.
 */
import { chown, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import {
  buildCatalogue,
  catalogueEntry,
  LAYERED_IMAGE_EXPECTED,
  pushCatalogue,
} from '../fixtures/test-images.js';
import { crictlCommand, mirrorConfig, TestDaemon } from '../harness/daemon.js';

const REPORT_DIR =
  process.env.ROOTLESS_CRI_REPORT_DIR ?? path.resolve(import.meta.dirname, '../../.work/reports');

describe('image volumes through crictl', () => {
  let daemon: TestDaemon;
  let registry: RunningRegistry;
  let busybox: string;
  let layered: string;
  let layeredId: string;
  let podConfig: string;
  let podId: string;

  const crictl = async (args: string[]) => {
    const r = await daemon.asUser(crictlCommand(daemon.crictlConfig, args));
    if (r.exitCode !== 0) throw new Error(`crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}`);
    return r.stdout;
  };
  /** crictl that must fail; returns its stderr. */
  const crictlFails = async (args: string[]) => {
    const r = await daemon.asUser(crictlCommand(daemon.crictlConfig, args));
    expect(r.exitCode, `crictl ${args.join(' ')} succeeded: ${r.stdout}`).not.toBe(0);
    return r.stderr;
  };
  const writeJson = async (name: string, value: unknown) => {
    const file = path.join(daemon.tmp, name);
    await writeFile(file, JSON.stringify(value));
    await chown(file, daemon.user.uid, daemon.user.gid);
    return file;
  };
  const containerJson = (name: string, mounts: unknown[]) =>
    writeJson(`${name}.json`, {
      metadata: { name },
      image: { image: busybox },
      command: ['sleep', '3600'],
      mounts,
    });
  /** The node's mount table, as the daemon and crun see it. */
  const nodeMounts = async () => {
    const r = await daemon.enter(['cat', '/proc/self/mountinfo']);
    expect(r.exitCode).toBe(0);
    return r.stdout.split('\n').filter((l) => l.includes(daemon.rootDir));
  };
  const layerDirs = () => readdir(path.join(daemon.rootDir, 'image', 'layers'));

  beforeAll(async () => {
    const cacheDir = path.join(REPORT_DIR, '..', 'test-images');
    const { images } = await buildCatalogue({ cacheDir, names: ['busybox', 'layers'] });
    registry = await startRegistry();
    await pushCatalogue(registry.host, images);
    const bb = catalogueEntry('busybox');
    const layers = catalogueEntry('layers');
    busybox = `registry.k8s.io/${bb.repository}:${bb.tags[0]}`;
    layered = `${registry.host}/${layers.repository}:${layers.tags[0]}`;
    daemon = await TestDaemon.start({ extraConfig: mirrorConfig(registry.url) });
    await crictl(['pull', busybox]);
    layeredId = (await crictl(['pull', layered])).match(/sha256:[0-9a-f]{64}/)![0];
    podConfig = await writeJson('pod.json', {
      metadata: { name: 'image-volumes', namespace: 'default', uid: 'image-volumes-uid', attempt: 0 },
      linux: {},
    });
    podId = (await crictl(['runp', podConfig])).trim();
  }, 240_000);

  afterAll(async () => {
    if (podId) await crictl(['rmp', '-f', podId]).catch(() => undefined);
    await daemon?.stop();
    await registry?.stop();
  }, 120_000);

  it('mounts the image whole and by sub-path, read-only, with its layers merged; inspect names the image', async () => {
    const config = await containerJson('reader', [
      { container_path: '/vol', image: { image: layeredId }, readonly: true, image_sub_path: 'data' },
      { container_path: '/whole', image: { image: layered }, readonly: true },
    ]);
    const id = (await crictl(['create', podId, config, podConfig])).trim();
    await crictl(['start', id]);
    try {
      for (const [file, content] of Object.entries(LAYERED_IMAGE_EXPECTED.files)) {
        const rel = file.replace(/^\/data\//, '');
        expect(await crictl(['exec', id, 'cat', `/vol/${rel}`])).toBe(content.replace(/\n$/, ''));
        expect(await crictl(['exec', id, 'cat', `/whole${file}`])).toBe(content.replace(/\n$/, ''));
      }
      for (const gone of LAYERED_IMAGE_EXPECTED.absent) {
        await crictlFails(['exec', id, 'ls', `/whole${gone}`]);
      }
      expect(await crictl(['exec', id, 'stat', '-c', '%u:%g %a', '/vol/owned.txt'])).toBe('1000:1000 640');
      // Writes fail: a new file, an existing file, a removal.
      for (const write of ['touch /vol/new', 'echo x > /vol/keep.txt', 'rm /whole/data/keep.txt']) {
        expect(await crictlFails(['exec', id, 'sh', '-c', write])).toMatch(/Read-only file system/);
      }
      expect(await crictl(['exec', id, 'cat', '/vol/keep.txt'])).toBe('keep');

      const inspect = JSON.parse(await crictl(['inspect', id])) as {
        status: {
          mounts: {
            containerPath: string;
            readonly: boolean;
            image?: { image: string; imageRef: string };
            imageSubPath?: string;
          }[];
        };
      };
      const vol = inspect.status.mounts.find((m) => m.containerPath === '/vol');
      expect(vol).toMatchObject({
        readonly: true,
        image: { image: layeredId, imageRef: layeredId },
        imageSubPath: 'data',
      });
      const whole = inspect.status.mounts.find((m) => m.containerPath === '/whole');
      expect(whole?.image).toMatchObject({ image: layered, imageRef: layeredId });

      // Two read-only snapshots in the node, one per volume.
      const volumes = (await nodeMounts()).filter((l) => l.includes(`/snapshots/${id}-iv`));
      expect(volumes).toHaveLength(2);
      for (const line of volumes) expect(line.split(' ')[5]).toMatch(/(^|,)ro(,|$)/);
    } finally {
      await crictl(['rm', '-f', id]);
    }
    expect((await nodeMounts()).filter((l) => l.includes(id))).toEqual([]);
  });

  it('rmi while a volume uses the image untags it; its layers stay until the container is removed', async () => {
    const config = await containerJson('held', [
      { container_path: '/vol', image: { image: layered }, readonly: true, image_sub_path: 'data' },
    ]);
    const id = (await crictl(['create', podId, config, podConfig])).trim();
    await crictl(['start', id]);
    const before = await layerDirs();
    await crictl(['rmi', layered]);
    expect(await crictl(['images'])).not.toContain('rootless-cri/layers');
    // The volume keeps working: nothing under it was deleted.
    expect(await crictl(['exec', id, 'cat', '/vol/added-later.txt'])).toBe('added in layer 4');
    expect(await layerDirs()).toEqual(before);
    // A new container cannot name it by tag any more.
    const again = await containerJson('again', [
      { container_path: '/vol', image: { image: layered }, readonly: true },
    ]);
    expect(await crictlFails(['create', podId, again, podConfig])).toMatch(
      /not present on the node; pull it first/,
    );

    await crictl(['rm', '-f', id]);
    // The last holder is gone: the image's own layers are deleted (busybox's base stays).
    const after = await layerDirs();
    expect(after.length).toBeLessThan(before.length);
    expect(after.length).toBeGreaterThan(0);
    expect((await nodeMounts()).filter((l) => l.includes(id))).toEqual([]);
    layeredId = (await crictl(['pull', layered])).match(/sha256:[0-9a-f]{64}/)![0];
  });

  it('refuses readonly=false, a missing sub-path, a bad sub-path and an image not pulled, leaving nothing', async () => {
    const cases: [string, unknown, RegExp][] = [
      [
        'rw',
        { container_path: '/vol', image: { image: layered }, readonly: false },
        /code = InvalidArgument desc = .*image volumes are read-only; set readonly: true/,
      ],
      [
        'missing-sub',
        { container_path: '/vol', image: { image: layered }, readonly: true, image_sub_path: 'not-existing' },
        /code = NotFound desc = .*image_sub_path .{1,3}not-existing.{1,3} does not exist in image/,
      ],
      [
        'escaping-sub',
        { container_path: '/vol', image: { image: layered }, readonly: true, image_sub_path: '../../etc' },
        /code = InvalidArgument desc = .*must be a relative path inside the image, without/,
      ],
      [
        'not-pulled',
        {
          container_path: '/vol',
          image: { image: `${registry.host}/rootless-cri/nothing:1` },
          readonly: true,
        },
        /not present on the node; pull it first/,
      ],
    ];
    for (const [name, mount, message] of cases) {
      const config = await containerJson(name, [mount]);
      expect(await crictlFails(['create', podId, config, podConfig])).toMatch(message);
    }
    expect(await crictl(['ps', '-a', '-q', '--pod', podId])).toBe('');
    expect((await nodeMounts()).filter((l) => l.includes('-iv'))).toEqual([]);
  });

  it('a volume survives kill -9 of the daemon and goes with its container afterwards', async () => {
    const config = await containerJson('survivor', [
      {
        container_path: '/vol',
        image: { image: layered },
        readonly: true,
        image_sub_path: 'data/opaque-dir',
      },
    ]);
    const id = (await crictl(['create', podId, config, podConfig])).trim();
    await crictl(['start', id]);
    await daemon.kill9();
    await daemon.serve();
    expect(await crictl(['exec', id, 'cat', '/vol/new.txt'])).toBe('new');
    const inspect = JSON.parse(await crictl(['inspect', id])) as {
      status: { mounts: { image?: { imageRef: string }; imageSubPath?: string }[] };
    };
    expect(inspect.status.mounts[0]).toMatchObject({
      image: { imageRef: layeredId },
      imageSubPath: 'data/opaque-dir',
    });
    await crictl(['rm', '-f', id]);
    expect((await nodeMounts()).filter((l) => l.includes(id))).toEqual([]);
    const snapshots = await readdir(path.join(daemon.rootDir, 'snapshots', 'fuse-overlayfs', 'snapshots'));
    expect(snapshots.filter((s) => s.startsWith(id))).toEqual([]);
  });
});
