import { chown, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { status as grpcStatus } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createImageService } from '../../src/image/image-service.js';
import { silentLogger } from '../../src/log.js';
import * as evil from '../fixtures/evil-tars.js';
import { exposeInNode, HostileRegistry, type NodeBridge } from '../fixtures/hostile-registry.js';
import { TEST_USER, TestDaemon } from '../harness/daemon.js';

/**
 * Hostile images and registry answers (security reference §5a rows 1–19 that concern
 * images), each served by the hostile registry and pulled through the real daemon's
 * PullImage. Every case checks: the answer (a clear gRPC error, or a pull whose files all
 * landed inside the layer), sentinel files outside the layer untouched, no partial layer,
 * blob or temp file left, and the daemon still answering.
 */

let daemon: TestDaemon;
let hostile: HostileRegistry;
let bridge: NodeBridge;
let sentinelDir: string;
let imageDir: string;

const SENTINEL_FILES = { passwd: 'root:x:0:0:sentinel:/root:/bin/sh\n', x: 'sentinel x\n' };

interface Snapshot {
  files: Record<string, { content: string; mode: number }>;
  names: string[];
}

async function sentinelSnapshot(): Promise<Snapshot> {
  const names = (await readdir(sentinelDir, { recursive: true })).map(String).sort();
  const files: Snapshot['files'] = {};
  for (const name of Object.keys(SENTINEL_FILES)) {
    const file = path.join(sentinelDir, 'etc', name);
    files[name] = { content: await readFile(file, 'utf8'), mode: (await stat(file)).mode };
  }
  return { files, names };
}

async function storeSnapshot(): Promise<{
  blobs: string[];
  layers: string[];
  ingest: string[];
  images: string[];
}> {
  const list = (dir: string) =>
    readdir(path.join(imageDir, dir)).then(
      (n) => n.sort(),
      () => [],
    );
  return {
    blobs: await list('content/sha256'),
    layers: await list('layers'),
    ingest: await list('content/ingest'),
    images: await list('images'),
  };
}

async function pull(reference: string): Promise<{ code: number; message: string; imageRef?: string }> {
  try {
    const r = await daemon.client.image('PullImage', { image: { image: reference } }, { timeoutMs: 60_000 });
    return { code: grpcStatus.OK, message: '', imageRef: r.image_ref };
  } catch (err) {
    const e = err as { code: number; details?: string; message: string };
    return { code: e.code, message: e.details ?? e.message };
  }
}

/** Pulls and checks the invariants every case shares; returns the outcome for the case's own checks. */
async function pullHostile(reference: string) {
  const sentinels = await sentinelSnapshot();
  const before = await storeSnapshot();
  const outcome = await pull(reference);
  expect(await sentinelSnapshot()).toEqual(sentinels);
  const after = await storeSnapshot();
  expect(after.ingest).toEqual([]);
  expect(after.layers.filter((n) => n.startsWith('.'))).toEqual([]);
  if (outcome.code !== grpcStatus.OK) {
    // A failed pull leaves nothing: no blob, layer or record it did not find there.
    expect(after).toEqual(before);
    const status = await daemon.client.image('ImageStatus', { image: { image: reference } }).then(
      (r) => r.image,
      (err: { code: number }) => (err.code === grpcStatus.INVALID_ARGUMENT ? null : err),
    );
    expect(status).toBeNull();
  }
  const version = await daemon.client.runtime('Version', {});
  expect(version.runtime_name).toBe('rootless-cri');
  return outcome;
}

/** The layer dirs of a pulled image (top first), read from ImageStatus verbose info. */
async function layerDirs(reference: string): Promise<string[]> {
  const s = await daemon.client.image('ImageStatus', { image: { image: reference }, verbose: true });
  const info = JSON.parse(s.info.info!) as { layers: { chainId: string }[] };
  return info.layers.map((l) => path.join(imageDir, 'layers', l.chainId.slice('sha256:'.length))).reverse();
}

async function expectRejected(reference: string, code: grpcStatus, pattern: RegExp): Promise<void> {
  const outcome = await pullHostile(reference);
  expect(grpcStatus[outcome.code], outcome.message).toBe(grpcStatus[code]);
  expect(outcome.message).toMatch(pattern);
}

beforeAll(async () => {
  hostile = await HostileRegistry.start();
  daemon = await TestDaemon.start();
  bridge = await exposeInNode(await daemon.nodePid(), hostile.port);
  imageDir = path.join(daemon.rootDir, 'image');
  // Sentinels the test user could write to, so only the unpacker's confinement protects them.
  sentinelDir = path.join(daemon.tmp, 'sentinel');
  await mkdir(path.join(sentinelDir, 'etc'), { recursive: true });
  for (const [name, content] of Object.entries(SENTINEL_FILES)) {
    await writeFile(path.join(sentinelDir, 'etc', name), content, { mode: 0o644 });
  }
  for (const p of [
    sentinelDir,
    path.join(sentinelDir, 'etc'),
    ...Object.keys(SENTINEL_FILES).map((n) => path.join(sentinelDir, 'etc', n)),
  ]) {
    await chown(p, daemon.user.uid, daemon.user.gid);
  }
});

afterAll(async () => {
  await bridge?.close();
  await daemon?.stop();
  await hostile?.close();
});

describe('hostile layer contents (rows 1–11)', () => {
  it('row 1: traversal names land inside the layer', async () => {
    const ref = hostile.serveTars('traversal', [evil.traversalNames()]);
    const outcome = await pullHostile(ref.reference);
    if (outcome.code === grpcStatus.OK) {
      const [dir] = await layerDirs(ref.reference);
      expect(await readFile(path.join(dir!, 'v'), 'utf8')).toBe('v1');
      expect(await readFile(path.join(dir!, 'etc', 'x'), 'utf8')).toBe('x');
    } else {
      expect(outcome.message).toMatch(/layer sha256:[a-f0-9]{64}/);
    }
  });

  it('row 2: a symlink pointing out, then a write through it, stays in the layer', async () => {
    const ref = hostile.serveTars('symlink-escape', [
      evil.symlinkThenWriteThrough(path.join(sentinelDir, 'etc')),
    ]);
    const outcome = await pullHostile(ref.reference);
    if (outcome.code === grpcStatus.OK) {
      const [dir] = await layerDirs(ref.reference);
      expect((await lstat(path.join(dir!, 'l'))).isSymbolicLink()).toBe(true);
    }
  });

  it('row 3: a hardlink to a host file is refused', async () => {
    const ref = hostile.serveTars('hardlink-escape', [
      evil.hardlinkOut(path.join(sentinelDir, 'etc', 'passwd')),
    ]);
    await expectRejected(ref.reference, grpcStatus.INVALID_ARGUMENT, /not a valid tar|hardlink|link/i);
  });

  it('row 4: a directory swapped for an outward symlink does not redirect later entries', async () => {
    const ref = hostile.serveTars('dir-swap', [
      evil.dirSwappedForSymlink(path.join(sentinelDir, 'etc'), 'x'),
    ]);
    await pullHostile(ref.reference);
  });

  it('row 5: a hardlink to an outward symlink never chmods the host file', async () => {
    const ref = hostile.serveTars('hardlink-symlink', [
      evil.hardlinkToOutwardSymlink(path.join(sentinelDir, 'etc', 'x')),
    ]);
    await pullHostile(ref.reference);
  });

  it('row 6: symlinks named ".", "/.", ".." and "" never replace the layer root', async () => {
    const ref = hostile.serveTars('root-symlinks', [evil.rootSymlinks(path.join(sentinelDir, 'etc'))]);
    const outcome = await pullHostile(ref.reference);
    if (outcome.code === grpcStatus.OK) {
      const [dir] = await layerDirs(ref.reference);
      expect((await lstat(dir!)).isDirectory()).toBe(true);
      expect(await readFile(path.join(dir!, 'after'), 'utf8')).toBe('still written into the real root');
    }
  });

  it('row 7: whiteouts of ".", ".." and through a symlink are refused', async () => {
    for (const [name, tar] of [
      ['wh-dotdot', evil.whiteoutTraversal('.wh..')],
      ['wh-dotdotdot', evil.whiteoutTraversal('.wh...')],
      ['wh-etc-dotdot', evil.whiteoutTraversal('etc/.wh..')],
      ['wh-symlink', evil.whiteoutThroughSymlink()],
    ] as const) {
      const ref = hostile.serveTars(name, [tar]);
      const outcome = await pullHostile(ref.reference);
      if (name !== 'wh-symlink') {
        expect(grpcStatus[outcome.code], outcome.message).toBe('INVALID_ARGUMENT');
        expect(outcome.message).toMatch(/whiteout/i);
      }
    }
  });

  it('row 9: device nodes are skipped, IDs outside the subuid range refused', async () => {
    const devices = hostile.serveTars('devices', [evil.deviceNodes()]);
    expect((await pullHostile(devices.reference)).code).toBe(grpcStatus.OK);
    const foreign = hostile.serveTars('foreign-owner', [evil.foreignOwner(4_000_000)]);
    await expectRejected(foreign.reference, grpcStatus.INVALID_ARGUMENT, /4000000|outside|range|mapped/i);
  });

  it('row 9: file ownership lands on mapped IDs (uid 1000 in the layer)', async () => {
    const ref = hostile.serveTars('owned', [evil.normalLayer()]);
    expect((await pullHostile(ref.reference)).code).toBe(grpcStatus.OK);
    const [dir] = await layerDirs(ref.reference);
    const notes = await stat(path.join(dir!, 'home', 'user', 'notes'));
    // uid 1000 inside the node is subuid base + 999 on the host, never the host's uid 1000.
    const subuidBase = Number(
      (await readFile('/etc/subuid', 'utf8'))
        .split('\n')
        .find((l) => l.startsWith(`${daemon.user.uid}:`) || l.startsWith(`${TEST_USER}:`))!
        .split(':')[1],
    );
    expect(notes.uid).toBe(subuidBase + 999);
    const tool = await stat(path.join(dir!, 'bin', 'tool'));
    expect(tool.uid).toBe(daemon.user.uid);
  });

  it('row 10: a path deeper than the cap is refused and the partial layer removed', async () => {
    const ref = hostile.serveTars('deep', [evil.deepPath(300)]);
    await expectRejected(ref.reference, grpcStatus.RESOURCE_EXHAUSTED, /limit/i);
  });

  it('row 11: truncated, non-tar, bad-checksum and forged-size layers are refused without hanging', async () => {
    const cases: [string, Buffer][] = [
      ['truncated', evil.truncatedInData()],
      ['not-a-tar', evil.notATar()],
      ['bad-checksum', evil.badChecksum()],
      ['negative-size', evil.forgedSize('negative')],
    ];
    for (const [name, tar] of cases) {
      const ref = hostile.serveTars(name, [tar]);
      await expectRejected(ref.reference, grpcStatus.INVALID_ARGUMENT, /layer sha256:[a-f0-9]{64}/);
    }
    const garbage = hostile.serveRawLayer('not-gzip', Buffer.from('this is not gzip data at all'));
    await expectRejected(
      garbage.reference,
      grpcStatus.INVALID_ARGUMENT,
      /not valid .*gzip|incorrect header/i,
    );
  });
});

describe('hostile registry answers (rows 12–16)', () => {
  it('row 12: a blob whose digest does not match is refused before commit', async () => {
    // Content of its own: a blob already in the store would never be downloaded again.
    const ref = hostile.serveDigestMismatch(
      'digest-mismatch',
      evil.buildTar([{ name: 'f', content: 'digest case' }]),
    );
    await expectRejected(ref.reference, grpcStatus.INVALID_ARGUMENT, /digest mismatch/);
  });

  it('row 12: a blob larger than its descriptor is refused', async () => {
    const ref = hostile.serveSizeMismatch(
      'size-mismatch',
      evil.buildTar([{ name: 'f', content: 'size case' }]),
    );
    await expectRejected(ref.reference, grpcStatus.INVALID_ARGUMENT, /size mismatch/);
  });

  it('row 12: a layer whose content does not match its diff_id is refused', async () => {
    const tar = evil.normalLayer();
    const ref = hostile.serveRawLayer(
      'diffid-mismatch',
      (await import('node:zlib')).gzipSync(tar),
      evil.notATar(),
    );
    await expectRejected(ref.reference, grpcStatus.INVALID_ARGUMENT, /diff_id/);
  });

  it('row 13: an oversized manifest and an oversized config are refused at the limits', async () => {
    const manifest = hostile.serveOversizedManifest('big-manifest', 5 * 1024 * 1024);
    await expectRejected(manifest.reference, grpcStatus.INVALID_ARGUMENT, /limit/);
    const config = hostile.serveOversizedConfig('big-config', 9 * 1024 * 1024);
    await expectRejected(config.reference, grpcStatus.INVALID_ARGUMENT, /limit/);
  });

  it('row 13: a redirect loop stops after 10 redirects', async () => {
    const ref = hostile.serveRedirectLoop('redirect-loop');
    await expectRejected(ref.reference, grpcStatus.UNAVAILABLE, /more than 10 redirects/);
  });

  it('row 14: a document that is both index and manifest is refused', async () => {
    const ref = hostile.serveMediaTypeConfusion('confused');
    await expectRejected(ref.reference, grpcStatus.INVALID_ARGUMENT, /mediaType confusion/);
  });

  it('row 14: a layer with a non-layer media type is refused', async () => {
    const ref = hostile.serveLayerMediaType('not-a-layer', 'application/vnd.oci.image.config.v1+json');
    await expectRejected(ref.reference, grpcStatus.INVALID_ARGUMENT, /not an image layer|media type/);
  });

  it('row 15: malformed digests are refused before any path or URL use', async () => {
    for (const [name, digest] of [
      ['digest-traversal', 'sha256:../../../../etc/passwd'],
      ['digest-upper', `sha256:${'A'.repeat(64)}`],
      ['digest-short', 'sha256:abc'],
    ] as const) {
      const ref = hostile.serveMalformedDigest(name, digest);
      await expectRejected(ref.reference, grpcStatus.INVALID_ARGUMENT, /digest/);
    }
    const requests = hostile.fake.requests.filter((r) => r.path.includes('..') || /[A-F]{64}/.test(r.path));
    expect(requests).toEqual([]);
  });

  it('rows 15/1: malformed references are refused', async () => {
    for (const reference of [`${hostile.host}/../etc:v1`, `${hostile.host}/x@sha256:../../x`, 'UPPER/Case']) {
      await expectRejected(reference, grpcStatus.INVALID_ARGUMENT, /invalid image reference/);
    }
  });
});

describe('hostile image configs (rows 17–19)', () => {
  it('rows 17/19: a hostile USER and Volumes are recorded as data only', async () => {
    const ref = hostile.serveTars('hostile-config', [evil.normalLayer()], {
      User: '4294967296',
      Volumes: { '/../../../etc': {} },
    });
    expect((await pullHostile(ref.reference)).code).toBe(grpcStatus.OK);
    const s = await daemon.client.image('ImageStatus', { image: { image: ref.reference }, verbose: true });
    // Not a uint32: reported as a name, never wrapped to uid 0; CreateContainer rejects it.
    expect(s.image?.uid).toBeNull();
    expect(s.image?.username).toBe('4294967296');
    const spec = (JSON.parse(s.info.info!) as { imageSpec: { config: { Volumes: object } } }).imageSpec;
    expect(spec.config.Volumes).toEqual({ '/../../../etc': {} });
  });

  it('row 18: a hostile /etc/passwd symlink is stored as a link inside the layer', async () => {
    const tar = evil.buildTar([
      { name: 'etc/', type: 'dir' },
      { name: 'etc/passwd', type: 'symlink', linkname: '/proc/self/environ' },
    ]);
    const ref = hostile.serveTars('passwd-link', [tar]);
    expect((await pullHostile(ref.reference)).code).toBe(grpcStatus.OK);
    const [dir] = await layerDirs(ref.reference);
    expect((await lstat(path.join(dir!, 'etc', 'passwd'))).isSymbolicLink()).toBe(true);
  });
});

describe('decompression bomb (row 10) through the image service', () => {
  // The daemon's unpack caps are not configurable yet (16 GiB per layer); this case runs the
  // same PullImage handler in-process with the real helper (as root) and a 4 MiB cap.
  it('stops at the unpack cap and leaves nothing behind', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'rcri-bomb-'));
    const service = createImageService({
      config: {
        rootDir: root,
        image: {
          snapshotter: 'fuse-overlayfs',
          fuseOverlayfs: 'fuse-overlayfs',
          maxConcurrentDownloads: 3,
          maxConcurrentDownloadsPerRegistry: 2,
          downloadProgressWindowSeconds: 30,
          downloadMinBytesPerWindow: 16384,
          pullDeadlineSeconds: 3600,
          maxManifestBytes: 4 * 1024 * 1024,
          maxConfigBytes: 8 * 1024 * 1024,
          registries: {},
        },
      },
      logger: silentLogger(),
      unpackLimits: { maxBytes: 4 * 1024 * 1024, maxEntries: 1000, maxDepth: 64 },
    });
    try {
      await service.recover();
      // 256 MiB of tar from a few hundred KiB of gzip; the cap stops it before the diff_id matters.
      const ref = hostile.serveRawLayer('bomb', evil.gzipBomb(256 * 1024 * 1024), Buffer.from('unused'));
      const controller = new AbortController();
      let error: unknown;
      try {
        await service.handlers.PullImage(
          { image: { image: ref.reference } as never, auth: null, sandbox_config: null },
          {
            method: 'PullImage',
            requestId: 't',
            logger: silentLogger(),
            signal: controller.signal,
            deadline: undefined,
          },
        );
      } catch (err) {
        error = err;
      }
      expect((error as { kind?: string }).kind).toBe('ResourceExhausted');
      expect(await readdir(path.join(root, 'image', 'layers'))).toEqual([]);
      expect(await readdir(path.join(root, 'image', 'content', 'sha256'))).toEqual([]);
      expect(await readdir(path.join(root, 'image', 'content', 'ingest'))).toEqual([]);
    } finally {
      await service.close();
      await rm(root, { recursive: true, force: true });
    }
  });
});
