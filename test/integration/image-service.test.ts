import { lstat, readFile, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exposeInNode, type NodeBridge } from '../fixtures/hostile-registry.js';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import {
  buildCatalogue,
  type CatalogueImage,
  catalogueEntry,
  pushCatalogue,
} from '../fixtures/test-images.js';
import { TestDaemon } from '../harness/daemon.js';

/**
 * The image RPCs for real: Debian's docker-registry on 127.0.0.1 (open, and one behind
 * htpasswd), the project's test images pushed to it, the daemon inside its rootless node
 * (reaching the registries through a netns bridge), driven by crictl and the CRI client.
 */

const USER = 'puller';
const PASSWORD = 'pull secret';

let daemon: TestDaemon;
let open: RunningRegistry;
let secured: RunningRegistry;
const bridges: NodeBridge[] = [];
let images: CatalogueImage[];

const NAMES = [
  'busybox',
  'pause',
  'test-image-tags',
  'test-image-user-uid',
  'test-image-user-username',
  'layers',
];

interface CrictlImage {
  id: string;
  repoTags: string[];
  repoDigests: string[];
  size: string;
  uid: { value: string } | null;
  username: string;
}

async function crictl(args: string[]): Promise<string> {
  const r = await daemon.crictl(args);
  if (r.exitCode !== 0) throw new Error(`crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}`);
  return r.stdout;
}

async function crictlImages(): Promise<CrictlImage[]> {
  return (JSON.parse(await crictl(['images', '-o', 'json'])) as { images: CrictlImage[] }).images;
}

async function inspecti(name: string): Promise<{ status: CrictlImage; info: Record<string, unknown> }> {
  return JSON.parse(await crictl(['inspecti', '-o', 'json', name])) as {
    status: CrictlImage;
    info: Record<string, unknown>;
  };
}

function ref(registry: RunningRegistry, name: string, tag?: string): string {
  const entry = catalogueEntry(name);
  return `${registry.host}/${entry.repository}:${tag ?? entry.tags[0]}`;
}

beforeAll(async () => {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  images = (await buildCatalogue({ cacheDir, names: NAMES })).images;
  open = await startRegistry();
  secured = await startRegistry({
    auth: { kind: 'htpasswd', users: [{ username: USER, password: PASSWORD }] },
  });
  await pushCatalogue(open.url, images);
  await pushCatalogue(
    secured.url,
    images.filter((i) => i.entry.name === 'busybox'),
    { username: USER, password: PASSWORD },
  );
  const mirror = `mirrors = ["http://${open.host}"]`;
  daemon = await TestDaemon.start({
    extraConfig: ['registry.k8s.io', 'k8s.gcr.io', 'gcr.io']
      .map((host) => `[image.registry."${host}"]\n${mirror}\n`)
      .join('\n'),
  });
  for (const registry of [open, secured])
    bridges.push(await exposeInNode(await daemon.nodePid(), registry.port));
}, 120_000);

afterAll(async () => {
  for (const bridge of bridges) await bridge.close();
  await daemon?.stop();
  await open?.stop();
  await secured?.stop();
});

describe('crictl pull, images, inspecti, rmi', () => {
  it('pulls from 127.0.0.1:PORT and answers image_ref = id = config digest', async () => {
    const busybox = images.find((i) => i.entry.name === 'busybox')!;
    const out = await crictl(['pull', ref(open, 'busybox')]);
    expect(out).toContain(`Image is up to date for ${busybox.image.config.digest}`);
    const listed = (await crictlImages()).find((i) => i.repoTags.includes(ref(open, 'busybox')));
    expect(listed?.id).toBe(busybox.image.config.digest);
    expect(listed?.repoDigests).toEqual([
      `${open.host}/${busybox.entry.repository}@${busybox.image.manifest.digest}`,
    ]);
    const size = busybox.image.config.size + busybox.image.layers.reduce((n, l) => n + l.size, 0);
    expect(listed?.size).toBe(String(size));
  });

  it('inspecti gives the same status by tag, id and repo digest, with verbose info', async () => {
    const byTag = await inspecti(ref(open, 'busybox'));
    const byId = await inspecti(byTag.status.id);
    const byDigest = await inspecti(byTag.status.repoDigests[0]!);
    expect(byId.status).toEqual(byTag.status);
    expect(byDigest.status).toEqual(byTag.status);
    const info = byTag.info as { imageSpec: { rootfs: { diff_ids: string[] } }; layers: unknown[] };
    expect(info.layers.length).toBe(info.imageSpec.rootfs.diff_ids.length);
  });

  it('unpacks layer dirs holding the image files, owned by mapped IDs', async () => {
    const layers = images.find((i) => i.entry.name === 'layers')!;
    await crictl(['pull', ref(open, 'layers')]);
    const s = await inspecti(ref(open, 'layers'));
    const info = s.info as { layers: { chainId: string }[] };
    const dirs = info.layers.map((l) => path.join(daemon.rootDir, 'image', 'layers', l.chainId.slice(7)));
    expect(dirs.length).toBe(layers.image.layers.length);
    const base = dirs[0]!;
    const busybox = await stat(path.join(base, 'bin', 'busybox'));
    // uid 0 in the image is uid 0 in the node: the test user on the host.
    expect(busybox.uid).toBe(daemon.user.uid);
    const withOwner = dirs[1]!;
    const owned = await stat(path.join(withOwner, 'data', 'owned.txt'));
    expect(await readFile(path.join(withOwner, 'data', 'owned.txt'), 'utf8')).toBe('owned by 1000:1000\n');
    // 1000 in the node is the test user's subuid base + 999: never the host's uid 1000.
    expect(owned.uid).not.toBe(1000);
    expect(owned.uid).not.toBe(daemon.user.uid);
    expect((await lstat(path.join(withOwner, 'data', 'symlink-to-keep'))).isSymbolicLink()).toBe(true);
  });

  it('reports uid for a numeric USER and username otherwise', async () => {
    await crictl(['pull', ref(open, 'test-image-user-uid')]);
    await crictl(['pull', ref(open, 'test-image-user-username')]);
    expect((await inspecti(ref(open, 'test-image-user-uid'))).status.uid).toEqual({ value: '1002' });
    expect((await inspecti(ref(open, 'test-image-user-username'))).status.username).toBe('www-data');
  });

  it('rmi removes the image and imagefsinfo reports real usage', async () => {
    // ImageFsInfo caches a walk for 5 s (kubelet polls it); wait out what earlier calls cached.
    await new Promise((r) => setTimeout(r, 5500));
    const before = JSON.parse(await crictl(['imagefsinfo', '-o', 'json'])) as {
      status: { imageFilesystems: { usedBytes: { value: string }; inodesUsed: { value: string } }[] };
    };
    expect(Number(before.status.imageFilesystems[0]!.usedBytes.value)).toBeGreaterThan(1_000_000);
    await crictl(['rmi', ref(open, 'test-image-user-uid')]);
    expect((await crictlImages()).some((i) => i.repoTags.includes(ref(open, 'test-image-user-uid')))).toBe(
      false,
    );
    const r = await daemon.crictl(['inspecti', ref(open, 'test-image-user-uid')]);
    expect(r.exitCode).not.toBe(0);
  });
});

describe('credentials and mirrors', () => {
  it('pulls with --creds from the htpasswd registry, and fails clearly without', async () => {
    const without = await daemon.crictl(['pull', ref(secured, 'busybox')]);
    expect(without.exitCode).not.toBe(0);
    expect(without.stderr).toMatch(/denied access|credentials|401/);
    const withCreds = await daemon.crictl([
      'pull',
      '--creds',
      `${USER}:${PASSWORD}`,
      ref(secured, 'busybox'),
    ]);
    expect(withCreds.exitCode, withCreds.stderr).toBe(0);
    expect((await inspecti(ref(secured, 'busybox'))).status.repoTags).toContain(ref(secured, 'busybox'));
  });

  it('pulls registry.k8s.io/e2e-test-images/busybox:1.29-2 through the mirror under that name', async () => {
    await crictl(['pull', 'registry.k8s.io/e2e-test-images/busybox:1.29-2']);
    const s = await inspecti('registry.k8s.io/e2e-test-images/busybox:1.29-2');
    expect(s.status.repoTags).toContain('registry.k8s.io/e2e-test-images/busybox:1.29-2');
    const busybox = images.find((i) => i.entry.name === 'busybox')!;
    expect(s.status.id).toBe(busybox.image.config.digest);
    expect(s.status.repoDigests).toContain(
      `registry.k8s.io/e2e-test-images/busybox@${busybox.image.manifest.digest}`,
    );
  });

  it('records three tags of one image as one image', async () => {
    const tags = ['1', '2', '3'].map((t) => `gcr.io/k8s-staging-cri-tools/test-image-tags:${t}`);
    for (const t of tags) await crictl(['pull', t]);
    const s = await inspecti(tags[0]!);
    expect(s.status.repoTags).toEqual(tags);
    await crictl(['rmi', tags[1]!]);
    for (const t of tags) expect((await daemon.crictl(['inspecti', t])).exitCode).not.toBe(0);
  });

  it('removes pause under both registry names at once', async () => {
    const a = await daemon.client.image('PullImage', { image: { image: 'registry.k8s.io/pause:3.9' } });
    const b = await daemon.client.image('PullImage', { image: { image: 'k8s.gcr.io/pause:3.9' } });
    expect(a.image_ref).toBe(b.image_ref);
    await daemon.client.image('RemoveImage', { image: { image: a.image_ref } });
    for (const name of ['registry.k8s.io/pause:3.9', 'k8s.gcr.io/pause:3.9']) {
      expect((await daemon.client.image('ImageStatus', { image: { image: name } })).image).toBeNull();
    }
    // critest: RemoveImage of 64 zeros (no sha256:) twice, and five concurrent removals.
    await daemon.client.image('RemoveImage', { image: { image: '0'.repeat(64) } });
    await daemon.client.image('RemoveImage', { image: { image: '0'.repeat(64) } });
    const again = await daemon.client.image('PullImage', { image: { image: 'registry.k8s.io/pause:3.9' } });
    await Promise.all(
      Array.from({ length: 5 }, () =>
        daemon.client.image('RemoveImage', { image: { image: again.image_ref } }),
      ),
    );
  });

  it('answers DeadlineExceeded to a 1 ms deadline and keeps serving', async () => {
    const err = await daemon.client
      .image('PullImage', { image: { image: ref(open, 'pause') } }, { timeoutMs: 1 })
      .catch((e: { code: number }) => e);
    expect((err as { code: number }).code).toBe(4);
    const v = await daemon.client.runtime('Version', {});
    expect(v.version).toBe('0.1.0');
  });
});

describe('restart', () => {
  it('keeps every image across kill -9 and a new serve', async () => {
    const before = await crictlImages();
    expect(before.length).toBeGreaterThan(2);
    await daemon.kill9();
    await daemon.serve();
    expect(await crictlImages()).toEqual(before);
  });
});
