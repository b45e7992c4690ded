import { createHash } from 'node:crypto';
import { access, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DOCKER_MANIFEST_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE } from '../fixtures/image-builder.js';
import {
  getBlob,
  getManifest,
  pushImage,
  type RunningRegistry,
  startRegistry,
} from '../fixtures/registry.js';
import { type BuiltCatalogue, buildCatalogue, type CatalogueImage } from '../fixtures/test-images.js';
import { type RunningTokenServer, startTokenServer } from '../fixtures/token-server.js';

const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const alice = { username: 'alice', password: 'correct horse' };

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

let cacheDir: string;
let catalogue: BuiltCatalogue;
const image = (name: string): CatalogueImage => catalogue.images.find((i) => i.entry.name === name)!;

beforeAll(async () => {
  cacheDir = await mkdtemp(path.join(os.tmpdir(), 'rcri-registry-test-'));
  catalogue = await buildCatalogue({ cacheDir, names: ['busybox', 'test-image-tags', 'busybox-docker'] });
});

afterAll(async () => {
  await rm(cacheDir, { recursive: true, force: true });
});

describe('anonymous registry', () => {
  let registry: RunningRegistry;

  beforeAll(async () => {
    registry = await startRegistry();
  });

  afterAll(async () => {
    await registry.stop();
    expect(processAlive(registry.pid)).toBe(false);
    expect(await exists(registry.configDir)).toBe(false);
  });

  it('listens on a free 127.0.0.1 port', () => {
    expect(registry.host).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(registry.port).toBeGreaterThan(0);
  });

  it('serves busybox back with the digests that were pushed', async () => {
    const { entry, image: built } = image('busybox');
    const pushed = await pushImage(registry.host, entry.repository, entry.tags, built);
    expect(pushed.manifestDigest).toBe(built.manifest.digest);
    expect(pushed.uploadedBlobs).toBe(built.layers.length + 1);

    const manifest = await getManifest(registry.url, entry.repository, entry.tags[0]!);
    expect(manifest.digest).toBe(built.manifest.digest);
    expect(sha256(manifest.body)).toBe(built.manifest.digest);
    expect(manifest.mediaType).toBe(OCI_MANIFEST_MEDIA_TYPE);
    const parsed = JSON.parse(manifest.body.toString()) as {
      config: { digest: string };
      layers: { digest: string }[];
    };
    expect(parsed.config.digest).toBe(built.config.digest);
    expect(parsed.layers.map((l) => l.digest)).toEqual(built.layers.map((l) => l.digest));

    const config = await getBlob(registry.host, entry.repository, built.config.digest);
    expect(sha256(config)).toBe(built.config.digest);
    const byDigest = await getManifest(registry.host, entry.repository, built.manifest.digest);
    expect(byDigest.body.equals(manifest.body)).toBe(true);
  });

  it('skips blobs the repository already has on a second push', async () => {
    const { entry, image: built } = image('busybox');
    const again = await pushImage(registry.host, entry.repository, entry.tags, built);
    expect(again.uploadedBlobs).toBe(0);
    expect(again.skippedBlobs).toBe(built.layers.length + 1);
  });

  it('resolves the three test-image-tags tags to one manifest digest', async () => {
    const { entry, image: built } = image('test-image-tags');
    await pushImage(registry.host, entry.repository, entry.tags, built);
    const digests = await Promise.all(
      ['1', '2', '3'].map(async (tag) => (await getManifest(registry.host, entry.repository, tag)).digest),
    );
    expect(digests).toEqual([built.manifest.digest, built.manifest.digest, built.manifest.digest]);
    expect(built.manifest.digest).not.toBe(image('busybox').image.manifest.digest);
  });

  it('pushes the Docker schema2 variant with its own media type and the same config', async () => {
    const { entry, image: built } = image('busybox-docker');
    const pushed = await pushImage(registry.host, entry.repository, entry.tags, built, undefined, {
      format: 'docker',
    });
    const manifest = await getManifest(registry.host, entry.repository, entry.tags[0]!);
    expect(manifest.mediaType).toBe(DOCKER_MANIFEST_MEDIA_TYPE);
    expect(manifest.digest).toBe(pushed.manifestDigest);
    expect(manifest.digest).not.toBe(built.manifest.digest);
    expect((JSON.parse(manifest.body.toString()) as { config: { digest: string } }).config.digest).toBe(
      built.config.digest,
    );
  });

  it('answers 404 for a tag that was never pushed', async () => {
    await expect(getManifest(registry.host, 'e2e-test-images/busybox', 'missing')).rejects.toMatchObject({
      kind: 'NotFound',
    });
  });
});

describe('htpasswd registry', () => {
  let registry: RunningRegistry;

  beforeAll(async () => {
    registry = await startRegistry({ auth: { kind: 'htpasswd', users: [alice] } });
  });

  afterAll(async () => {
    await registry.stop();
    expect(processAlive(registry.pid)).toBe(false);
  });

  it('rejects anonymous requests with 401 and a Basic challenge', async () => {
    const response = await fetch(`${registry.url}/v2/`);
    await response.arrayBuffer();
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toMatch(/^Basic /);
  });

  it('refuses anonymous push and pull, and a wrong password', async () => {
    const { entry, image: built } = image('busybox');
    await expect(pushImage(registry.host, entry.repository, entry.tags, built)).rejects.toMatchObject({
      kind: 'FailedPrecondition',
    });
    await expect(
      pushImage(registry.host, entry.repository, entry.tags, built, { username: 'alice', password: 'wrong' }),
    ).rejects.toMatchObject({ kind: 'FailedPrecondition' });
    await expect(getManifest(registry.host, entry.repository, entry.tags[0]!)).rejects.toMatchObject({
      kind: 'FailedPrecondition',
    });
  });

  it('accepts push and pull with the credentials', async () => {
    const { entry, image: built } = image('busybox');
    const pushed = await pushImage(registry.host, entry.repository, entry.tags, built, alice);
    expect(pushed.uploadedBlobs).toBe(built.layers.length + 1);
    const manifest = await getManifest(registry.host, entry.repository, entry.tags[0]!, alice);
    expect(manifest.digest).toBe(built.manifest.digest);
  });
});

describe('token-auth registry', () => {
  let tokens: RunningTokenServer;
  let registry: RunningRegistry;

  beforeAll(async () => {
    tokens = await startTokenServer({ users: { [alice.username]: alice.password } });
    registry = await startRegistry({ auth: { kind: 'token', ...tokens.auth } });
  });

  afterAll(async () => {
    await registry.stop();
    await tokens.stop();
    expect(processAlive(registry.pid)).toBe(false);
  });

  it('challenges with the token server as realm', async () => {
    const response = await fetch(`${registry.url}/v2/`);
    await response.arrayBuffer();
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toContain(`Bearer realm="${tokens.realm}"`);
  });

  it('lets alice push, lets anyone pull, and refuses anonymous push', async () => {
    const { entry, image: built } = image('test-image-tags');
    await expect(pushImage(registry.host, entry.repository, entry.tags, built)).rejects.toMatchObject({
      kind: 'FailedPrecondition',
    });
    const pushed = await pushImage(registry.host, entry.repository, entry.tags, built, alice);
    expect(pushed.manifestDigest).toBe(built.manifest.digest);
    const anonymous = await getManifest(registry.host, entry.repository, '2');
    expect(anonymous.digest).toBe(built.manifest.digest);

    const scope = `repository:${entry.repository}:pull,push`;
    expect(tokens.requests).toContainEqual(
      expect.objectContaining({ user: 'alice', scopes: [scope], status: 200 }),
    );
    expect(tokens.requests).toContainEqual(
      expect.objectContaining({ user: null, scopes: [`repository:${entry.repository}:pull`], status: 200 }),
    );
  });

  it('refuses a token for a wrong password', async () => {
    const { entry, image: built } = image('test-image-tags');
    await expect(
      pushImage(registry.host, entry.repository, entry.tags, built, { username: 'alice', password: 'nope' }),
    ).rejects.toThrow(/refused a token/);
    expect(tokens.requests.at(-1)).toMatchObject({ status: 401 });
  });
});
