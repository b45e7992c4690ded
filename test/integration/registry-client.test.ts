import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, NotFoundError } from '../../src/errors.js';
import { ContentStore } from '../../src/image/content-store.js';
import { MEDIA_TYPE } from '../../src/image/media-types.js';
import { parseImageReference } from '../../src/image/reference.js';
import { RegistryClient } from '../../src/image/registry-client.js';
import { parseRegistryHostsConfig } from '../../src/image/registry-hosts.js';

/**
 * The registry client against Debian's real `docker-registry` (distribution 2.8) on
 * 127.0.0.1: one open registry and one behind htpasswd Basic auth. The test pushes its
 * own tiny image with the plain HTTP upload API, then pulls it back by tag, by digest,
 * as an index, through a mirror and with credentials.
 */

interface RunningRegistry {
  url: string;
  host: string;
  process: ChildProcess;
  log: string;
}

const USER = 'tester';
const PASSWORD = 'correct horse';

let workDir: string;
const registries: RunningRegistry[] = [];
let open: RunningRegistry;
let secured: RunningRegistry;

// Any host name lookup fails: IP literals need none, and a mistaken fallback to a public
// registry must not leave the machine.
const noDns = ((hostname: string, _options: unknown, callback: (err: Error) => void) => {
  callback(Object.assign(new Error(`DNS disabled in this test (${hostname})`), { code: 'ENOTFOUND' }));
}) as unknown as import('node:net').LookupFunction;

function sha256(data: Uint8Array): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

async function startRegistry(name: string, htpasswd?: string): Promise<RunningRegistry> {
  const dir = join(workDir, name);
  const port = await freePort();
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${join(dir, 'data')}`,
    'http:',
    `  addr: 127.0.0.1:${port}`,
  ];
  if (htpasswd !== undefined) {
    await writeFile(join(workDir, `${name}.htpasswd`), htpasswd);
    lines.push(
      'auth:',
      '  htpasswd:',
      '    realm: test-realm',
      `    path: ${join(workDir, `${name}.htpasswd`)}`,
    );
  }
  const configPath = join(workDir, `${name}.yml`);
  await writeFile(configPath, `${lines.join('\n')}\n`);
  const child = spawn('docker-registry', ['serve', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  const running: RunningRegistry = {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    process: child,
    log: '',
  };
  child.stdout?.on('data', (d: Buffer) => {
    running.log += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    running.log += d.toString();
  });
  registries.push(running);
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) break;
    try {
      const response = await fetch(`${running.url}/v2/`);
      if (response.status === 200 || response.status === 401) return running;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`docker-registry did not start: ${running.log}`);
}

function basic(): Record<string, string> {
  return { authorization: `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}` };
}

/** Monolithic blob upload: POST an upload session, PUT the bytes with ?digest=. */
async function pushBlob(
  registry: RunningRegistry,
  repo: string,
  data: Buffer,
  headers = {},
): Promise<string> {
  const digest = sha256(data);
  const start = await fetch(`${registry.url}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers });
  expect(start.status).toBe(202);
  const location = new URL(start.headers.get('location')!, registry.url);
  location.searchParams.set('digest', digest);
  const put = await fetch(location, {
    method: 'PUT',
    headers: { ...headers, 'content-type': 'application/octet-stream' },
    body: data,
  });
  expect(put.status, await put.text()).toBe(201);
  return digest;
}

async function pushManifest(
  registry: RunningRegistry,
  repo: string,
  reference: string,
  body: Buffer,
  mediaType: string,
  headers = {},
): Promise<string> {
  const put = await fetch(`${registry.url}/v2/${repo}/manifests/${reference}`, {
    method: 'PUT',
    headers: { ...headers, 'content-type': mediaType },
    body,
  });
  expect(put.status, await put.text()).toBe(201);
  return sha256(body);
}

interface TinyImage {
  digest: string;
  manifest: Buffer;
  config: Buffer;
  layers: Buffer[];
}

/** A two-layer image whose "layers" are small byte strings (the client does not unpack). */
async function pushTinyImage(
  registry: RunningRegistry,
  repo: string,
  tag: string | undefined,
  architecture = 'amd64',
  headers = {},
): Promise<TinyImage> {
  const layers = [Buffer.from(`first layer of ${repo} ${architecture}`), Buffer.alloc(300_000, architecture)];
  const layerDigests: string[] = [];
  for (const layer of layers) layerDigests.push(await pushBlob(registry, repo, layer, headers));
  const config = Buffer.from(
    JSON.stringify({
      architecture,
      os: 'linux',
      config: { Cmd: ['sh'] },
      rootfs: { type: 'layers', diff_ids: [] },
    }),
  );
  const configDigest = await pushBlob(registry, repo, config, headers);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE.ociManifest,
      config: { mediaType: MEDIA_TYPE.ociConfig, digest: configDigest, size: config.length },
      layers: layers.map((l, i) => ({
        mediaType: MEDIA_TYPE.ociLayerGzip,
        digest: layerDigests[i],
        size: l.length,
      })),
    }),
  );
  const digest = await pushManifest(
    registry,
    repo,
    tag ?? sha256(manifest),
    manifest,
    MEDIA_TYPE.ociManifest,
    headers,
  );
  return { digest, manifest, config, layers };
}

beforeAll(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'registry-client-it-'));
  const htpasswd = execFileSync('htpasswd', ['-Bbn', USER, PASSWORD], { encoding: 'utf8' });
  [open, secured] = await Promise.all([startRegistry('open'), startRegistry('secured', htpasswd)]);
});

afterAll(async () => {
  for (const registry of registries) {
    if (registry.process.exitCode === null) {
      const exited = new Promise((resolve) => registry.process.once('exit', resolve));
      registry.process.kill('SIGTERM');
      await exited;
    }
  }
  await rm(workDir, { recursive: true, force: true });
});

describe('registry client against docker-registry', () => {
  it('pulls an image by tag into the content store', async () => {
    const image = await pushTinyImage(open, 'tests/tiny', 'v1');
    const client = new RegistryClient({ lookup: noDns });
    const session = client.session(parseImageReference(`${open.host}/tests/tiny:v1`));
    const resolved = await session.resolve();
    expect(resolved.digest).toBe(image.digest);
    expect(resolved.manifestBytes.equals(image.manifest)).toBe(true);
    expect((await session.readBlob(resolved.manifest.config)).equals(image.config)).toBe(true);

    const store = new ContentStore({ root: join(workDir, 'store-by-tag'), downloadConcurrency: 2 });
    await store.init();
    const results = await Promise.all(
      resolved.manifest.layers.map((layer) =>
        store.downloads.run(() =>
          store.ingest(layer.digest, layer.size, (signal) => session.openBlob(layer, { signal })),
        ),
      ),
    );
    for (const [i, result] of results.entries()) {
      expect((await readFile(result.path)).equals(image.layers[i]!)).toBe(true);
    }
    expect((await store.list()).length).toBe(2);
  });

  it('pulls by digest and picks linux/amd64 from an OCI index', async () => {
    const amd = await pushTinyImage(open, 'tests/multi', undefined, 'amd64');
    const arm = await pushTinyImage(open, 'tests/multi', undefined, 'arm64');
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.ociIndex,
        manifests: [
          {
            mediaType: MEDIA_TYPE.ociManifest,
            digest: arm.digest,
            size: arm.manifest.length,
            platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
          },
          {
            mediaType: MEDIA_TYPE.ociManifest,
            digest: amd.digest,
            size: amd.manifest.length,
            platform: { os: 'linux', architecture: 'amd64' },
          },
        ],
      }),
    );
    const indexDigest = await pushManifest(open, 'tests/multi', 'latest', index, MEDIA_TYPE.ociIndex);
    const client = new RegistryClient({ lookup: noDns });

    const byTag = await client
      .session(parseImageReference(`${open.host}/tests/multi`))
      .resolve({ platform: { os: 'linux', architecture: 'amd64' } });
    expect(byTag.digest).toBe(indexDigest);
    expect(byTag.manifestDigest).toBe(amd.digest);

    const byDigest = await client
      .session(parseImageReference(`${open.host}/tests/multi@${indexDigest}`))
      .resolve({ platform: { os: 'linux', architecture: 'arm64' } });
    expect(byDigest.digest).toBe(indexDigest);
    expect(byDigest.manifestDigest).toBe(arm.digest);

    const manifestByDigest = await client
      .session(parseImageReference(`${open.host}/tests/multi@${amd.digest}`))
      .resolve();
    expect(manifestByDigest.manifestBytes.equals(amd.manifest)).toBe(true);

    const head = await client.session(parseImageReference(`${open.host}/tests/multi`)).headManifest('latest');
    expect(head.digest).toBe(indexDigest);
    expect(head.mediaType).toBe(MEDIA_TYPE.ociIndex);
  });

  it('reports an absent image as NotFound', async () => {
    const client = new RegistryClient({ lookup: noDns });
    const error = await client
      .session(parseImageReference(`${open.host}/tests/absent:v1`))
      .resolve()
      .catch((err: Error) => err);
    expect(error).toBeInstanceOf(NotFoundError);
    expect((error as Error).message).toContain(
      `image ${open.host}/tests/absent:v1 not found in registry ${open.url}`,
    );
  });

  it('serves registry.k8s.io names from a configured mirror, keeping the requested name', async () => {
    const image = await pushTinyImage(open, 'e2e-test-images/tiny', '1.0');
    const deadPort = await freePort();
    const hosts = parseRegistryHostsConfig({
      'registry.k8s.io': { mirrors: [`http://127.0.0.1:${deadPort}`, open.url] },
    });
    const client = new RegistryClient({ hosts, lookup: noDns });
    const session = client.session(parseImageReference('registry.k8s.io/e2e-test-images/tiny:1.0'));
    const resolved = await session.resolve();
    expect(resolved.digest).toBe(image.digest);
    expect(resolved.endpoint.mirror).toBe(true);
    expect(resolved.endpoint.baseUrl.origin).toBe(open.url);
    expect(resolved.reference.toString()).toBe('registry.k8s.io/e2e-test-images/tiny:1.0');
    const layer = resolved.manifest.layers[1]!;
    const chunks: Buffer[] = [];
    for await (const chunk of await session.openBlob(layer)) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).equals(image.layers[1]!)).toBe(true);
  });

  it('pulls from an htpasswd registry with credentials, and refuses without', async () => {
    const image = await pushTinyImage(secured, 'private/app', 'v1', 'amd64', basic());
    const client = new RegistryClient({ lookup: noDns });
    const reference = parseImageReference(`${secured.host}/private/app:v1`);

    const withPassword = client.session(reference, { username: USER, password: PASSWORD });
    const resolved = await withPassword.resolve();
    expect(resolved.digest).toBe(image.digest);
    expect((await withPassword.readBlob(resolved.manifest.config)).equals(image.config)).toBe(true);

    const withAuthField = client.session(reference, {
      auth: Buffer.from(`${USER}:${PASSWORD}`).toString('base64'),
    });
    expect((await withAuthField.resolve()).digest).toBe(image.digest);

    const anonymous = await client
      .session(reference)
      .resolve()
      .catch((err: Error) => err);
    expect(anonymous).toBeInstanceOf(FailedPreconditionError);
    expect((anonymous as Error).message).toContain('requires a username and password');

    const wrong = await client
      .session(reference, { username: USER, password: 'wrong' })
      .resolve()
      .catch((err: Error) => err);
    expect(wrong).toBeInstanceOf(FailedPreconditionError);
  });
});
