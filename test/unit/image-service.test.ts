import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CallContext } from '../../src/api/handlers.js';
import type { Config } from '../../src/config.js';
import { CancelledError, InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import { contiguousIdMax, createImageService, type ImageService } from '../../src/image/image-service.js';
import { chainIds, type LayerUnpacker } from '../../src/image/layer-store.js';
import { silentLogger } from '../../src/log.js';
import type { ImagePullMetrics, PullSummary } from '../../src/metrics.js';
import { FakeRegistry, sha256 } from '../fakes/fake-registry.js';
import { makeDeepTree } from '../fixtures/deep-tree.js';
import { caught } from '../harness/caught.js';

/**
 * The image service end to end against the in-process fake registry, with a fake layer
 * unpacker (the real one needs root and the native helper; it is covered by the
 * integration tests): records, lookups, tags, removal, holds, GC, restart, cancellation.
 */

let root: string;
let registry: FakeRegistry;
let service: ImageService;
let unpackCalls: string[];
let unpackDelayMs: number;

const noDns = ((hostname: string, _o: unknown, callback: (err: Error) => void) => {
  callback(Object.assign(new Error(`DNS disabled (${hostname})`), { code: 'ENOTFOUND' }));
}) as unknown as import('node:net').LookupFunction;

/** Writes the uncompressed layer as one file and checks the diff_id, as the real unpacker does. */
const fakeUnpacker: LayerUnpacker = async (options) => {
  unpackCalls.push(options.layerDigest);
  // Injected unpackers are given the stored blob (streaming is for the real unpacker only).
  const tar = gunzipSync(await readFile(options.blobPath!));
  await mkdir(options.destDir);
  const wait = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(resolve, unpackDelayMs);
    options.signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(new CancelledError('fake unpack cancelled'));
    });
  });
  const diffId = `sha256:${createHash('sha256').update(tar).digest('hex')}`;
  try {
    await wait;
    if (diffId !== options.diffId)
      throw new InvalidArgumentError(`layer ${options.layerDigest} diff_id mismatch`);
    await writeFile(join(options.destDir, 'content'), tar);
  } catch (err) {
    await rm(options.destDir, { recursive: true, force: true });
    throw err;
  }
  return { entries: 1, bytes: tar.length, diffId, warnings: [] };
};

function config(extra: Partial<Config['image']> = {}): Pick<Config, 'rootDir' | 'image'> {
  return {
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
      registries: {
        'registry.k8s.io': { mirrors: [registry.url], insecure: false, caFile: undefined },
        'k8s.gcr.io': { mirrors: [registry.url], insecure: false, caFile: undefined },
      },
      ...extra,
    },
  };
}

async function startService(metrics?: ImagePullMetrics): Promise<ImageService> {
  const s = createImageService({
    config: config(),
    logger: silentLogger(),
    idMap: { uidMax: 65536, gidMax: 65536 },
    unpacker: fakeUnpacker,
    lookup: noDns,
    metrics,
  });
  await s.recover();
  return s;
}

function ctx(signal: AbortSignal = new AbortController().signal): CallContext {
  return { method: 'test', requestId: 'test', logger: silentLogger(), signal, deadline: undefined };
}

/** Pushes an image whose layers are the given texts (gzip), with a valid config. */
function push(repo: string, tag: string | undefined, layers: string[], user?: string, marker = repo) {
  const raw = layers.map((l) => Buffer.from(l));
  return registry.pushImage(repo, tag, {
    layers: raw.map((r) => gzipSync(r)),
    config: {
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['sh'], ...(user === undefined ? {} : { User: user }), Labels: { marker } },
      rootfs: { type: 'layers', diff_ids: raw.map((r) => sha256(r)) },
    },
  });
}

async function pull(image: string, signal?: AbortSignal): Promise<string> {
  const r = await service.handlers.PullImage(
    { image: { image } as never, auth: null, sandbox_config: null },
    ctx(signal),
  );
  return String(r.image_ref);
}

async function status(image: string, verbose = false) {
  return service.handlers.ImageStatus({ image: { image } as never, verbose }, ctx());
}

async function remove(image: string): Promise<void> {
  await service.handlers.RemoveImage({ image: { image } as never }, ctx());
}

async function list(filter?: string) {
  const r = await service.handlers.ListImages(
    { filter: filter === undefined ? null : { image: { image: filter } as never } },
    ctx(),
  );
  return r.images ?? [];
}

async function dirNames(...parts: string[]): Promise<string[]> {
  return readdir(join(root, 'image', ...parts)).catch(() => []);
}

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'image-service-'));
  registry = await FakeRegistry.start();
  unpackCalls = [];
  unpackDelayMs = 0;
  service = await startService();
});

afterEach(async () => {
  await service.close();
  await registry.close();
  await rm(root, { recursive: true, force: true });
});

describe('PullImage and ImageStatus', () => {
  it('returns the config digest and records the image under the pulled name', async () => {
    const image = push('app', 'v1', ['layer one', 'layer two'], '1002');
    const id = await pull(`${registry.host}/app:v1`);
    expect(id).toBe(image.config.digest);
    const s = await status(`${registry.host}/app:v1`);
    expect(s.image).toEqual({
      id,
      repo_tags: [`${registry.host}/app:v1`],
      repo_digests: [`${registry.host}/app@${image.digest}`],
      size: String(image.config.size + image.layers[0]!.size + image.layers[1]!.size),
      uid: { value: '1002' },
      username: '',
      spec: { image: id, annotations: {} },
      pinned: false,
    });
    // Layers are unpacked once each, under their chain IDs.
    const chains = chainIds([sha256('layer one'), sha256('layer two')] as `sha256:${string}`[]);
    expect((await dirNames('layers')).sort()).toEqual(chains.map((c) => c.slice(7)).sort());
    expect(await readFile(join(root, 'image', 'layers', chains[1]!.slice(7), 'content'), 'utf8')).toBe(
      'layer two',
    );
  });

  it('finds the same image by id, bare id, tag, repo digest and id prefix, with equal answers', async () => {
    const image = push('app', 'v1', ['x']);
    const id = await pull(`${registry.host}/app:v1`);
    const names = [
      id,
      id.slice('sha256:'.length),
      `${registry.host}/app:v1`,
      `${registry.host}/app@${image.digest}`,
      id.slice('sha256:'.length, 'sha256:'.length + 12),
    ];
    const answers = await Promise.all(names.map((n) => status(n)));
    for (const a of answers) expect(a).toEqual(answers[0]);
    expect(answers[0]!.image?.id).toBe(id);
  });

  it('answers image null for an absent image, and InvalidArgument for a malformed name', async () => {
    expect((await status(`${registry.host}/nothing:here`)).image).toBeNull();
    expect((await status('0'.repeat(64))).image).toBeNull();
    expect(await caught(status('UPPER/Case:tag'))).toBeInstanceOf(InvalidArgumentError);
  });

  it('normalises short names: busybox is docker.io/library/busybox:latest', async () => {
    // The service never reaches docker.io here: the record is made by pulling a mirror name.
    const s = createImageService({
      config: config({
        registries: { 'docker.io': { mirrors: [registry.url], insecure: false, caFile: undefined } },
      }),
      logger: silentLogger(),
      idMap: { uidMax: 0, gidMax: 0 },
      unpacker: fakeUnpacker,
      lookup: noDns,
    });
    await s.recover();
    push('library/busybox', 'latest', ['bb']);
    const r = await s.handlers.PullImage(
      { image: { image: 'busybox' } as never, auth: null, sandbox_config: null },
      ctx(),
    );
    const a = await s.handlers.ImageStatus({ image: { image: 'busybox' } as never, verbose: false }, ctx());
    const b = await s.handlers.ImageStatus(
      { image: { image: 'docker.io/library/busybox:latest' } as never, verbose: false },
      ctx(),
    );
    expect(a.image?.id).toBe(r.image_ref);
    expect(a.image?.repo_tags).toEqual(['docker.io/library/busybox:latest']);
    expect(b).toEqual(a);
    await s.close();
  });

  it('reports username for a non-numeric USER and nothing for an empty one', async () => {
    push('named', 'v1', ['n'], 'www-data:1004');
    push('nouser', 'v1', ['u']);
    await pull(`${registry.host}/named:v1`);
    await pull(`${registry.host}/nouser:v1`);
    const named = (await status(`${registry.host}/named:v1`)).image!;
    expect(named.uid).toBeNull();
    expect(named.username).toBe('www-data');
    const none = (await status(`${registry.host}/nouser:v1`)).image!;
    expect(none.uid).toBeNull();
    expect(none.username).toBe('');
  });

  it('gives verbose info with the config, manifest digest and layers', async () => {
    const image = push('app', 'v1', ['x'], '7');
    await pull(`${registry.host}/app:v1`);
    const s = await status(`${registry.host}/app:v1`, true);
    const info = JSON.parse(s.info!.info!) as Record<string, unknown>;
    expect(info.manifestDigest).toBe(image.digest);
    expect((info.layers as unknown[]).length).toBe(1);
    expect((info.imageSpec as { config: { User: string } }).config.User).toBe('7');
  });

  it('records the index digest as the repo digest when the tag names an index', async () => {
    const image = push('multi', undefined, ['m']);
    const index = registry.pushIndex('multi', 'v1', [
      { image, platform: { os: 'linux', architecture: 'amd64' } },
      { image, platform: { os: 'linux', architecture: 'arm64' } },
    ]);
    const id = await pull(`${registry.host}/multi:v1`);
    const s = await status(`${registry.host}/multi@${index.digest}`);
    expect(s.image?.id).toBe(id);
    expect(s.image?.repo_digests).toEqual([`${registry.host}/multi@${index.digest}`]);
  });

  it('adds a second tag of the same image to the one record', async () => {
    const image = push('tags', '1', ['same']);
    registry.addManifest('tags', '2', image.manifest, image.mediaType);
    registry.addManifest('tags', '3', image.manifest, image.mediaType);
    for (const t of ['1', '2', '3'])
      expect(await pull(`${registry.host}/tags:${t}`)).toBe(image.config.digest);
    const images = await list();
    expect(images).toHaveLength(1);
    expect(images[0]!.repo_tags).toEqual(['1', '2', '3'].map((t) => `${registry.host}/tags:${t}`));
    expect(unpackCalls).toHaveLength(1);
  });

  it('moves a tag to the newly pulled image; the old one keeps its digest', async () => {
    const first = push('moving', 'v1', ['first'], undefined, 'first');
    const firstId = await pull(`${registry.host}/moving:v1`);
    const second = push('moving', 'v1', ['second'], undefined, 'second');
    const secondId = await pull(`${registry.host}/moving:v1`);
    expect(secondId).not.toBe(firstId);
    expect((await status(`${registry.host}/moving:v1`)).image?.id).toBe(secondId);
    const old = (await status(firstId)).image!;
    expect(old.repo_tags).toEqual([]);
    expect(old.repo_digests).toEqual([`${registry.host}/moving@${first.digest}`]);
    expect(second.digest).not.toBe(first.digest);
  });

  it('pulls through a mirror and records the requested name', async () => {
    push('e2e-test-images/busybox', '1.29-2', ['bb']);
    const id = await pull('registry.k8s.io/e2e-test-images/busybox:1.29-2');
    const s = await status('registry.k8s.io/e2e-test-images/busybox:1.29-2');
    expect(s.image?.id).toBe(id);
    expect(s.image?.repo_tags).toEqual(['registry.k8s.io/e2e-test-images/busybox:1.29-2']);
    expect((await status(`${registry.host}/e2e-test-images/busybox:1.29-2`)).image).toBeNull();
  });

  it('unpacks a layer once when the same image is pulled concurrently', async () => {
    push('concurrent', 'v1', ['a', 'b']);
    unpackDelayMs = 50;
    const ids = await Promise.all(Array.from({ length: 5 }, () => pull(`${registry.host}/concurrent:v1`)));
    expect(new Set(ids).size).toBe(1);
    expect(unpackCalls).toHaveLength(2);
  });

  it('refuses a layer whose content does not match the diff_id and leaves no layer', async () => {
    registry.pushImage('lying', 'v1', {
      layers: [gzipSync(Buffer.from('real'))],
      config: {
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: [sha256('claimed')] },
      },
    });
    const err = await caught(pull(`${registry.host}/lying:v1`));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(await dirNames('layers')).toEqual([]);
    expect((await status(`${registry.host}/lying:v1`)).image).toBeNull();
  });

  it('refuses a config whose diff_ids do not match the layer count', async () => {
    registry.pushImage('short', 'v1', {
      layers: [gzipSync(Buffer.from('a')), gzipSync(Buffer.from('b'))],
      config: { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256('a')] } },
    });
    const err = await caught(pull(`${registry.host}/short:v1`));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err.message).toMatch(/1 diff_ids but the manifest has 2 layers/);
  });

  it('refuses a blob longer than its descriptor without crashing or leaving files', async () => {
    const image = push('long', 'v1', ['long layer']);
    const layer = image.layers[0]!;
    registry.intercept((req, res, url) => {
      if (!url.pathname.endsWith(`/blobs/${layer.digest}`)) return false;
      // Chunked, no Content-Length: the excess shows only while reading.
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(layer.bytes);
      res.end(Buffer.alloc(4096, 0x41));
      req.resume();
      return true;
    });
    const err = await caught(pull(`${registry.host}/long:v1`));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err.message).toMatch(/size mismatch/);
    expect(await dirNames('content', 'ingest')).toEqual([]);
    expect(await dirNames('content', 'sha256')).toEqual([]);
    expect(await dirNames('layers')).toEqual([]);
  });

  it('aborts a cancelled pull and leaves no temp file, blob or layer of it', async () => {
    const image = push('slow', 'v1', ['slow layer']);
    const layerDigest = image.layers[0]!.digest;
    let release: () => void = () => {};
    const started = new Promise<void>((resolve) => {
      registry.intercept(async (req, res, url) => {
        if (!url.pathname.endsWith(`/blobs/${layerDigest}`)) return false;
        res.writeHead(200, { 'content-length': String(image.layers[0]!.size) });
        res.write(image.layers[0]!.bytes.subarray(0, 5));
        resolve();
        await new Promise<void>((r) => {
          release = r;
          req.on('close', () => r());
        });
        res.destroy();
        return true;
      });
    });
    const controller = new AbortController();
    const pulling = pull(`${registry.host}/slow:v1`, controller.signal);
    await started;
    controller.abort(new CancelledError('client cancelled'));
    const err = await caught(pulling);
    release();
    expect(err).toBeInstanceOf(CancelledError);
    expect(await dirNames('content', 'ingest')).toEqual([]);
    expect(await dirNames('content', 'sha256')).not.toContain(layerDigest.slice(7));
    expect((await dirNames('layers')).filter((n) => n.startsWith('.tmp'))).toEqual([]);
    expect((await status(`${registry.host}/slow:v1`)).image).toBeNull();
    // The service still pulls after that.
    registry.clearIntercepts();
    expect(await pull(`${registry.host}/slow:v1`)).toBe(image.config.digest);
  });
});

describe('ListImages', () => {
  it('lists every image in id order and filters by any name', async () => {
    push('one', 'v1', ['1']);
    push('two', 'v1', ['2']);
    const a = await pull(`${registry.host}/one:v1`);
    const b = await pull(`${registry.host}/two:v1`);
    const all = await list();
    expect(all.map((i) => i.id)).toEqual([a, b].sort());
    expect((await list(`${registry.host}/two:v1`)).map((i) => i.id)).toEqual([b]);
    expect((await list(a)).map((i) => i.id)).toEqual([a]);
    expect(await list(`${registry.host}/three:v1`)).toEqual([]);
  });
});

describe('RemoveImage and garbage collection', () => {
  it('removes every tag of the image, including the same image under another registry name', async () => {
    push('pause', '3.9', ['pause']);
    const a = await pull('registry.k8s.io/pause:3.9');
    const b = await pull('k8s.gcr.io/pause:3.9');
    expect(a).toBe(b);
    expect((await status(a)).image?.repo_tags).toEqual(['k8s.gcr.io/pause:3.9', 'registry.k8s.io/pause:3.9']);
    await remove('registry.k8s.io/pause:3.9');
    expect((await status('k8s.gcr.io/pause:3.9')).image).toBeNull();
    expect((await status(a)).image).toBeNull();
    expect(await list()).toEqual([]);
    // Blobs and layers went with it.
    expect(await dirNames('content', 'sha256')).toEqual([]);
    expect(await dirNames('layers')).toEqual([]);
    expect(await dirNames('images')).toEqual([]);
  });

  it('keeps layers another image still uses', async () => {
    push('base', 'v1', ['shared base']);
    push('derived', 'v1', ['shared base', 'top']);
    await pull(`${registry.host}/base:v1`);
    const derived = await pull(`${registry.host}/derived:v1`);
    expect(unpackCalls).toHaveLength(2);
    await remove(`${registry.host}/base:v1`);
    expect((await dirNames('layers')).length).toBe(2);
    const resolved = await service.resolveImage(derived);
    expect(resolved.layerDirs).toHaveLength(2);
    expect(await readFile(join(resolved.layerDirs[1]!, 'content'), 'utf8')).toBe('shared base');
    expect(await readFile(join(resolved.layerDirs[0]!, 'content'), 'utf8')).toBe('top');
  });

  it('is OK for an absent image, 64 zeros without sha256:, and 5 concurrent removals', async () => {
    await remove('0'.repeat(64));
    await remove(`${registry.host}/absent:v1`);
    push('app', 'v1', ['x']);
    const id = await pull(`${registry.host}/app:v1`);
    await Promise.all(Array.from({ length: 5 }, () => remove(id)));
    expect((await status(id)).image).toBeNull();
  });

  it('untags an image in use, keeps its data until the last holder releases it', async () => {
    push('used', 'v1', ['in use']);
    const id = await pull(`${registry.host}/used:v1`);
    await service.markInUse(id, 'container-1');
    await service.markInUse(id, 'container-2');
    await remove(id);
    expect((await status(id)).image).toBeNull();
    expect(await list()).toEqual([]);
    const resolved = await service.resolveImage(id);
    expect(await readFile(join(resolved.layerDirs[0]!, 'content'), 'utf8')).toBe('in use');
    await service.release(id, 'container-1');
    expect((await dirNames('layers')).length).toBe(1);
    await service.release(id, 'container-2');
    expect(await dirNames('layers')).toEqual([]);
    expect(await caught(service.resolveImage(id))).toBeInstanceOf(NotFoundError);
  });

  it('drops holds of containers that are gone after recovery', async () => {
    push('used', 'v1', ['held']);
    const id = await pull(`${registry.host}/used:v1`);
    await service.markInUse(id, 'gone');
    await service.markInUse(id, 'alive');
    await remove(id);
    await service.retainHolders(new Set(['alive']));
    expect((await dirNames('layers')).length).toBe(1);
    await service.retainHolders(new Set());
    expect(await dirNames('layers')).toEqual([]);
  });

  it('markInUse of an absent image is NotFound', async () => {
    expect(await caught(service.markInUse(`sha256:${'1'.repeat(64)}`, 'c'))).toBeInstanceOf(NotFoundError);
  });
});

describe('restart', () => {
  it('finds the same images after a restart, holds included', async () => {
    push('keep', 'v1', ['k1', 'k2'], '1002');
    const id = await pull(`${registry.host}/keep:v1`);
    await service.markInUse(id, 'c1');
    const before = await list();
    await service.close();
    service = await startService();
    expect(await list()).toEqual(before);
    await remove(id);
    expect((await dirNames('layers')).length).toBe(2);
  });

  it('a release is not written: the record keeps the hold until a restart drops it (its container is gone)', async () => {
    push('held', 'v1', ['h']);
    const id = await pull(`${registry.host}/held:v1`);
    await service.markInUse(id, 'c1');
    await service.markInUse(id, 'c2');
    const recordFile = join(root, 'image', 'images', `${id.slice('sha256:'.length)}.json`);
    const written = await readFile(recordFile, 'utf8');
    expect(JSON.parse(written).holders).toEqual(['c1', 'c2']);
    await service.release(id, 'c1');
    expect(await readFile(recordFile, 'utf8')).toBe(written);
    // In memory the hold is gone: removing the image while c2 holds it keeps its data, and
    // c2's release then deletes it (that step is written).
    await remove(id);
    expect((await dirNames('layers')).length).toBe(1);
    await service.close();
    service = await startService();
    await service.retainHolders(new Set(['c2']));
    expect(JSON.parse(await readFile(recordFile, 'utf8')).holders).toEqual(['c2']);
    await service.release(id, 'c2');
    expect(await dirNames('layers')).toEqual([]);
    expect(existsSync(recordFile)).toBe(false);
  });

  it('drops a damaged image, stray temp files and unreferenced data at recovery', async () => {
    push('damaged', 'v1', ['d']);
    push('fine', 'v1', ['f']);
    const damaged = await pull(`${registry.host}/damaged:v1`);
    const fine = await pull(`${registry.host}/fine:v1`);
    const resolved = await service.resolveImage(damaged);
    await rm(resolved.layerDirs[0]!, { recursive: true });
    await mkdir(join(root, 'image', 'layers', '.tmp-crashed'));
    await writeFile(join(root, 'image', 'content', 'ingest', 'partial'), 'x');
    await writeFile(join(root, 'image', 'content', 'sha256', 'a'.repeat(64)), 'orphan');
    await writeFile(join(root, 'image', 'images', 'garbage.json'), '{ not json');
    await service.close();
    service = await startService();
    expect((await list()).map((i) => i.id)).toEqual([fine]);
    expect(await dirNames('layers')).toHaveLength(1);
    expect(await dirNames('content', 'ingest')).toEqual([]);
    expect(await dirNames('content', 'sha256')).not.toContain('a'.repeat(64));
    expect(await dirNames('images')).toHaveLength(1);
  });
});

describe('recovery never wedges (row 45)', () => {
  it('removes a leftover unpack deeper than PATH_MAX and quarantines an unreadable record', async () => {
    push('fine', 'v1', ['f']);
    const fine = await pull(`${registry.host}/fine:v1`);
    const leftover = join(root, 'image', 'layers', '.tmp-deep');
    await mkdir(leftover);
    makeDeepTree(leftover, 150);
    await writeFile(join(root, 'image', 'images', 'b'.repeat(64) + '.json'), '{ not json');
    await service.close();
    service = await startService();
    expect((await list()).map((i) => i.id)).toEqual([fine]);
    expect((await dirNames('layers')).filter((n) => n.startsWith('.'))).toEqual([]);
    expect(service.quarantined()).toEqual([
      expect.objectContaining({
        what: `image record ${'b'.repeat(64)}.json`,
        reason: expect.stringMatching(/JSON/),
      }),
    ]);
    expect(await dirNames('quarantine')).toEqual([
      expect.stringMatching(new RegExp(`^${'b'.repeat(64)}\\.json-`)),
    ]);
    // The next recovery removes what it can from quarantine.
    await service.close();
    service = await startService();
    expect(service.quarantined()).toEqual([]);
    expect(await dirNames('quarantine')).toEqual([]);
  });
});

describe('contiguousIdMax', () => {
  it('reads the range of IDs mapped from 0 up', () => {
    expect(contiguousIdMax('         0       1000          1\n         1     100000      65536\n')).toBe(
      65536,
    );
    expect(contiguousIdMax('0 0 4294967295\n')).toBe(0xfffffffe);
    expect(contiguousIdMax('0 1000 1\n')).toBe(0);
    expect(contiguousIdMax('0 1000 1\n5 100000 10\n')).toBe(0);
  });
});

describe('pull metrics', () => {
  it('reports what each pull downloaded and found stored, and a failed pull by its kind', async () => {
    const pulls: PullSummary[] = [];
    const failures: string[] = [];
    await service.close();
    service = await startService({ pulled: (p) => pulls.push(p), failed: (r) => failures.push(r) });
    const app = push('app', 'v1', ['layer one', 'layer two']);
    const other = push('other', 'v1', ['layer one', 'layer three']);
    await pull(`${registry.host}/app:v1`);
    await pull(`${registry.host}/other:v1`);
    await pull(`${registry.host}/app:v1`);
    expect(await caught(pull(`${registry.host}/app:missing`))).toBeInstanceOf(NotFoundError);
    const blobBytes = (image: typeof app, layers: number[]) =>
      image.manifest.length + image.config.size + layers.reduce((sum, i) => sum + image.layers[i]!.size, 0);
    expect(pulls).toEqual([
      {
        bytes: blobBytes(app, [0, 1]),
        layersDownloaded: 2,
        layersPresent: 0,
        durationSeconds: expect.any(Number),
      },
      // 'layer one' is stored already: only 'layer three' comes from the registry.
      {
        bytes: blobBytes(other, [1]),
        layersDownloaded: 1,
        layersPresent: 1,
        durationSeconds: expect.any(Number),
      },
      {
        bytes: blobBytes(app, []),
        layersDownloaded: 0,
        layersPresent: 2,
        durationSeconds: expect.any(Number),
      },
    ]);
    expect(failures).toEqual(['NotFound']);
  });
});
