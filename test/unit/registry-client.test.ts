import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  CancelledError,
  CriError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../../src/errors.js';
import type { Digest } from '../../src/image/digest.js';
import type { Descriptor } from '../../src/image/manifest.js';
import { MEDIA_TYPE } from '../../src/image/media-types.js';
import { parseImageReference } from '../../src/image/reference.js';
import { parseWwwAuthenticate } from '../../src/image/registry-auth.js';
import { RegistryClient, type RegistryClientOptions } from '../../src/image/registry-client.js';
import { parseRegistryHostsConfig, resolveEndpoints } from '../../src/image/registry-hosts.js';
import {
  DOCKER_LIST,
  DOCKER_MANIFEST,
  FakeRegistry,
  OCI_INDEX,
  OCI_MANIFEST,
  sha256,
  streamBody,
} from '../fakes/fake-registry.js';
import { caught } from '../harness/caught.js';

let registry: FakeRegistry;
let other: FakeRegistry | undefined;

beforeEach(async () => {
  registry = await FakeRegistry.start();
});

afterEach(async () => {
  await registry.close();
  await other?.close();
  other = undefined;
});

function client(options: RegistryClientOptions = {}): RegistryClient {
  return new RegistryClient(options);
}

function ref(path: string, host = registry.host) {
  return parseImageReference(`${host}/${path}`);
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function closedPort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('manifests', () => {
  it('resolves an OCI image by tag, asking for every supported manifest type', async () => {
    const image = registry.pushImage('app/one', 'v1', { layers: ['a', 'bb'] });
    const resolved = await client().session(ref('app/one:v1')).resolve();
    expect(resolved.digest).toBe(image.digest);
    expect(resolved.manifestDigest).toBe(image.digest);
    expect(resolved.mediaType).toBe(OCI_MANIFEST);
    expect(resolved.index).toBeUndefined();
    expect(resolved.manifest.layers.map((l) => l.digest)).toEqual(image.layers.map((l) => l.digest));
    expect(resolved.endpoint.baseUrl.origin).toBe(registry.url);
    const accept = registry.registryRequests()[0]!.accept!;
    for (const type of [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
      expect(accept).toContain(type);
    expect(accept).not.toContain('distribution.manifest.v1');
  });

  it('picks linux/amd64 from a Docker manifest list of schema 2 manifests', async () => {
    const arm = registry.pushImage('multi', undefined, { docker: true, architecture: 'arm64' });
    const amd = registry.pushImage('multi', undefined, { docker: true, architecture: 'amd64' });
    const list = registry.pushIndex(
      'multi',
      'latest',
      [
        { image: arm, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
        { image: amd, platform: { os: 'linux', architecture: 'amd64' } },
      ],
      true,
    );
    const resolved = await client()
      .session(ref('multi'))
      .resolve({ platform: { os: 'linux', architecture: 'amd64' } });
    expect(resolved.digest).toBe(list.digest);
    expect(resolved.mediaType).toBe(DOCKER_LIST);
    expect(resolved.index?.digest).toBe(list.digest);
    expect(resolved.manifestDigest).toBe(amd.digest);
    expect(resolved.manifest.mediaType).toBe(DOCKER_MANIFEST);
    const arm64 = await client()
      .session(ref('multi'))
      .resolve({ platform: { os: 'linux', architecture: 'arm64' } });
    expect(arm64.manifestDigest).toBe(arm.digest);
  });

  it('says which platforms exist when none matches', async () => {
    const arm = registry.pushImage('armonly', undefined, { architecture: 'arm64' });
    registry.pushIndex('armonly', 'latest', [
      { image: arm, platform: { os: 'linux', architecture: 'arm64' } },
    ]);
    const error = await caught(
      client()
        .session(ref('armonly'))
        .resolve({ platform: { os: 'linux', architecture: 'amd64' } }),
    );
    expect(error).toBeInstanceOf(NotFoundError);
    expect(error.message).toContain('no manifest for platform linux/amd64 (available: linux/arm64)');
  });

  it('resolves by digest and by tag+digest, verifying the content against the digest', async () => {
    const image = registry.pushImage('bydigest', 'v1');
    const byDigest = await client()
      .session(ref(`bydigest@${image.digest}`))
      .resolve();
    expect(byDigest.digest).toBe(image.digest);
    const both = await client()
      .session(ref(`bydigest:v1@${image.digest}`))
      .resolve();
    expect(both.digest).toBe(image.digest);
    expect(registry.registryRequests().every((r) => r.path.endsWith(image.digest))).toBe(true);

    // A registry that answers a digest request with other content is caught.
    const wrong = `sha256:${'0'.repeat(64)}`;
    registry.intercept((_req, res, url) => {
      if (!url.pathname.endsWith(wrong)) return false;
      res.writeHead(200, { 'content-type': OCI_MANIFEST }).end(image.manifest);
      return true;
    });
    const error = await caught(
      client()
        .session(ref(`bydigest@${wrong}`))
        .resolve(),
    );
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toContain(`digest mismatch (got ${image.digest})`);
  });

  it('rejects a tag whose Docker-Content-Digest disagrees with the content', async () => {
    const image = registry.pushImage('liar', 'v1');
    registry.intercept((_req, res, url) => {
      if (!url.pathname.endsWith('/manifests/v1')) return false;
      res
        .writeHead(200, { 'content-type': OCI_MANIFEST, 'docker-content-digest': `sha256:${'1'.repeat(64)}` })
        .end(image.manifest);
      return true;
    });
    const error = await caught(client().session(ref('liar:v1')).resolve());
    expect(error.message).toContain('digest mismatch (Docker-Content-Digest says');
  });

  it('reads HEAD answers', async () => {
    const image = registry.pushImage('head', 'v1');
    const head = await client().session(ref('head:v1')).headManifest('v1');
    expect(head).toMatchObject({
      digest: image.digest,
      mediaType: OCI_MANIFEST,
      size: image.manifest.length,
    });
    expect(registry.registryRequests().map((r) => r.method)).toEqual(['HEAD']);
  });

  it('refuses schema1 manifests with a clear message', async () => {
    registry.addManifest(
      'old',
      'v1',
      { schemaVersion: 1, name: 'old', tag: 'v1', fsLayers: [], history: [] },
      MEDIA_TYPE.dockerSchema1SignedManifest,
    );
    const error = await caught(client().session(ref('old:v1')).resolve());
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toContain('schema1 manifests are not supported');
  });

  it('refuses an index entry that turns out to be an index (mediaType confusion)', async () => {
    const inner = registry.pushIndex('confused', undefined, []);
    // The outer index claims the inner document is a manifest.
    registry.pushIndex('confused', 'latest', [
      {
        image: { digest: inner.digest, size: inner.size, mediaType: OCI_MANIFEST },
        platform: { os: 'linux', architecture: 'amd64' },
      },
    ]);
    const error = await caught(client().session(ref('confused')).resolve());
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toContain('mediaType confusion');
  });

  it('refuses a document with both manifests and layers', async () => {
    const image = registry.pushImage('both', undefined);
    const doc = JSON.parse(image.manifest.toString());
    registry.addManifest('both', 'latest', { ...doc, manifests: [] }, OCI_MANIFEST);
    const error = await caught(client().session(ref('both')).resolve());
    expect(error.message).toContain('mediaType confusion');
  });

  it('refuses a manifest whose config is not an image config', async () => {
    const config = registry.addBlob('artifact', '{}');
    registry.addManifest(
      'artifact',
      'latest',
      {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.cncf.helm.config.v1+json', ...config },
        layers: [],
      },
      OCI_MANIFEST,
    );
    const error = await caught(client().session(ref('artifact')).resolve());
    expect(error.message).toContain('is not a container image config');
  });
});

describe('bounded reads', () => {
  it('cuts off a 50 MB chunked manifest at the cap without buffering it', async () => {
    let written = Promise.resolve(0);
    registry.intercept((_req, res, url) => {
      if (!url.pathname.includes('/manifests/')) return false;
      res.writeHead(200, { 'content-type': OCI_MANIFEST });
      written = streamBody(res, 50 * 1024 * 1024);
      return true;
    });
    const before = process.memoryUsage().arrayBuffers;
    const error = await caught(client().session(ref('huge:v1')).resolve());
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toContain('larger than the 4 MiB limit');
    // The server saw the client go away long before 50 MB.
    expect(await written).toBeLessThan(20 * 1024 * 1024);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(30 * 1024 * 1024);
  });

  it('holds an index entry to its declared size and to the manifest cap', async () => {
    const image = registry.pushImage('sized', undefined);
    const platform = { os: 'linux', architecture: 'amd64' };
    registry.pushIndex('sized', 'small', [{ image: { ...image, size: image.size - 1 }, platform }]);
    const small = await caught(client().session(ref('sized:small')).resolve());
    expect(small).toBeInstanceOf(InvalidArgumentError);
    expect(small.message).toContain(`size mismatch (more than the declared ${image.size - 1} bytes`);

    registry.pushIndex('sized', 'huge', [{ image: { ...image, size: 100 * 1024 * 1024 }, platform }]);
    const before = registry.registryRequests().length;
    const huge = await caught(client().session(ref('sized:huge')).resolve());
    expect(huge.message).toContain('is more than the 4 MiB manifest limit');
    // Only the index itself was fetched.
    expect(registry.registryRequests().length - before).toBe(1);
  });

  it('refuses a declared Content-Length over the cap before reading', async () => {
    let written = Promise.resolve(0);
    registry.intercept((_req, res, url) => {
      if (!url.pathname.includes('/manifests/')) return false;
      res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': 50 * 1024 * 1024 });
      written = streamBody(res, 50 * 1024 * 1024);
      return true;
    });
    const error = await caught(
      client({ maxManifestBytes: 1024 * 1024 })
        .session(ref('huge:v1'))
        .resolve(),
    );
    expect(error.message).toContain('larger than the 1 MiB limit (Content-Length 52428800)');
    expect(await written).toBeLessThan(20 * 1024 * 1024);
  });

  it('refuses a config larger than the config cap without fetching it', async () => {
    const session = client({ maxConfigBytes: 1000 }).session(ref('cfg:v1'));
    const descriptor: Descriptor = {
      mediaType: MEDIA_TYPE.ociConfig,
      digest: sha256('x') as Digest,
      size: 100 * 1024 * 1024,
    };
    const error = await caught(session.readBlob(descriptor));
    expect(error.message).toContain('more than the 1000 B limit');
    expect(registry.requests).toHaveLength(0);
  });

  it('reads a config of exactly the declared size, digest checked', async () => {
    const image = registry.pushImage('cfg', 'v1');
    const session = client().session(ref('cfg:v1'));
    const resolved = await session.resolve();
    expect(await session.readBlob(resolved.manifest.config)).toEqual(image.config.bytes);
    // More bytes than the descriptor says: cut off at the declared size.
    registry.intercept((_req, res, url) => {
      if (!url.pathname.includes('/blobs/')) return false;
      res.writeHead(200);
      void streamBody(res, 10 * 1024 * 1024);
      return true;
    });
    const error = await caught(session.readBlob(resolved.manifest.config));
    expect(error.message).toContain(`size mismatch (more than the declared ${image.config.size} bytes)`);
  });

  it('refuses a config whose digest does not match', async () => {
    const image = registry.pushImage('cfgbad', 'v1');
    const session = client().session(ref('cfgbad:v1'));
    const resolved = await session.resolve();
    registry.intercept((_req, res, url) => {
      if (!url.pathname.endsWith(image.config.digest)) return false;
      res.writeHead(200).end(Buffer.alloc(image.config.size, 0x7b));
      return true;
    });
    const error = await caught(session.readBlob(resolved.manifest.config));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toContain('digest mismatch (got sha256:');
  });
});

describe('redirects', () => {
  it('follows up to 10 redirects and fails on the 11th', async () => {
    const image = registry.pushImage('redir', 'v1');
    let hops = 0;
    let limit = 10;
    registry.intercept((_req, res, url) => {
      if (!url.pathname.startsWith('/hop/') && !url.pathname.includes('/blobs/')) return false;
      if (url.pathname.startsWith('/hop/')) hops++;
      const n = url.pathname.startsWith('/hop/') ? Number(url.pathname.split('/')[2]) : 0;
      if (n < limit) {
        res.writeHead(n % 2 === 0 ? 307 : 302, { location: `/hop/${n + 1}` }).end();
        return true;
      }
      res.writeHead(200).end(image.config.bytes);
      return true;
    });
    const session = client().session(ref('redir:v1'));
    const config = image.config as unknown as Descriptor;
    expect(await session.readBlob(config)).toEqual(image.config.bytes);
    expect(hops).toBe(10);

    limit = Number.POSITIVE_INFINITY; // a loop
    hops = 0;
    const error = await caught(session.readBlob(config));
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error.message).toContain('more than 10 redirects');
    expect(hops).toBe(10);
  });

  it('does not send registry credentials to the host a redirect names', async () => {
    other = await FakeRegistry.start('127.0.0.2');
    registry.auth = { kind: 'basic', username: 'user', password: 'secret' };
    const image = registry.pushImage('private', 'v1', { layers: ['layer-bytes'] });
    const layer = image.layers[0]!;
    other.intercept((_req, res) => {
      res.writeHead(200).end(layer.bytes);
      return true;
    });
    registry.intercept((req, res, url) => {
      if (!url.pathname.endsWith(layer.digest) || req.headers.authorization === undefined) return false;
      // Same host first (credentials still due), then the other host.
      if (!url.searchParams.has('again')) {
        res.writeHead(307, { location: `${url.pathname}?again=1` }).end();
      } else {
        res.writeHead(302, { location: `${other!.url}/storage/blob` }).end();
      }
      return true;
    });
    const session = client().session(ref('private:v1'), { username: 'user', password: 'secret' });
    const resolved = await session.resolve();
    const stream = await session.openBlob(resolved.manifest.layers[0]!);
    expect(await readAll(stream)).toEqual(layer.bytes);
    const basic = `Basic ${Buffer.from('user:secret').toString('base64')}`;
    const sameHost = registry.requests.filter((r) => r.path.includes(layer.digest));
    expect(sameHost.map((r) => r.authorization)).toEqual([basic, basic]);
    expect(other.requests).toHaveLength(1);
    expect(other.requests[0]!.authorization).toBeUndefined();
  });

  it('refuses a redirect to a non-HTTP scheme', async () => {
    registry.intercept((_req, res) => {
      res.writeHead(302, { location: 'file:///etc/passwd' }).end();
      return true;
    });
    const error = await caught(client().session(ref('x:v1')).resolve());
    expect(error.message).toContain('non-HTTP URL');
  });
});

describe('HTTPS', () => {
  let tlsDir: string;
  let tls: { key: string; cert: string };

  beforeAll(async () => {
    tlsDir = await mkdtemp(join(tmpdir(), 'fake-registry-tls-'));
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '2',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-keyout',
        join(tlsDir, 'key.pem'),
        '-out',
        join(tlsDir, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    );
    tls = {
      key: await readFile(join(tlsDir, 'key.pem'), 'utf8'),
      cert: await readFile(join(tlsDir, 'cert.pem'), 'utf8'),
    };
  });

  afterAll(async () => {
    await rm(tlsDir, { recursive: true, force: true });
  });

  it('trusts a registry certificate only through the configured CA file', async () => {
    const secure = await FakeRegistry.start('127.0.0.1', tls);
    try {
      const image = secure.pushImage('app', 'v1');
      const reference = parseImageReference(`${secure.host}/app:v1`);
      const hosts = parseRegistryHostsConfig({
        [secure.host]: { insecure: false, ca_file: join(tlsDir, 'cert.pem') },
      });
      const session = client({ hosts }).session(reference);
      expect(session.endpoints.map((e) => [e.baseUrl.origin, e.caFile])).toEqual([
        [secure.url, join(tlsDir, 'cert.pem')],
      ]);
      expect((await session.resolve()).digest).toBe(image.digest);

      const untrusted = client({ hosts: { [secure.host]: { insecure: false } } }).session(reference);
      const error = await caught(untrusted.resolve());
      expect(error).toBeInstanceOf(FailedPreconditionError);
      expect(error.message).toContain('TLS verification failed');
      expect(error.message).toContain('ca_file');

      const missing = client({
        hosts: { [secure.host]: { insecure: false, caFile: join(tlsDir, 'nope.pem') } },
      });
      expect((await caught(missing.session(reference).resolve())).message).toContain(
        'cannot read the registry CA file',
      );
    } finally {
      await secure.close();
    }
  });

  it('refuses a redirect from HTTPS to plain HTTP', async () => {
    const secure = await FakeRegistry.start('127.0.0.1', tls);
    try {
      secure.intercept((_req, res) => {
        res.writeHead(302, { location: `${registry.url}/v2/app/manifests/v1` }).end();
        return true;
      });
      registry.pushImage('app', 'v1');
      const hosts = { [secure.host]: { insecure: false, caFile: join(tlsDir, 'cert.pem') } };
      const error = await caught(
        client({ hosts })
          .session(parseImageReference(`${secure.host}/app:v1`))
          .resolve(),
      );
      expect(error.message).toContain('redirected from HTTPS to plain HTTP');
      expect(registry.requests).toHaveLength(0);
    } finally {
      await secure.close();
    }
  });
});

describe('authentication', () => {
  it('follows the anonymous bearer flow and caches the token per scope', async () => {
    registry.auth = { kind: 'bearer' };
    const image = registry.pushImage('team/app', 'v1', { layers: ['l1'] });
    const session = client().session(ref('team/app:v1'));
    const resolved = await session.resolve();
    expect(resolved.digest).toBe(image.digest);
    await readAll(await session.openBlob(resolved.manifest.layers[0]!));
    expect(registry.tokenRequests).toHaveLength(1);
    const tokenUrl = new URL(registry.tokenRequests[0]!.path, registry.url);
    expect(tokenUrl.searchParams.get('service')).toBe('fake-registry');
    expect(tokenUrl.searchParams.getAll('scope')).toEqual(['repository:team/app:pull']);
    expect(registry.tokenRequests[0]!.authorization).toBeUndefined();
    const registryCalls = registry.registryRequests();
    // 401, retry with token, then the blob with the cached token at once.
    expect(registryCalls.map((r) => r.authorization)).toEqual([
      undefined,
      'Bearer token-1',
      'Bearer token-1',
    ]);
  });

  it('sends username and password to the token endpoint', async () => {
    registry.auth = { kind: 'bearer', username: 'u', password: 'p' };
    registry.pushImage('app', 'v1');
    await client().session(ref('app:v1'), { username: 'u', password: 'p' }).resolve();
    expect(registry.tokenRequests[0]!.authorization).toBe(`Basic ${Buffer.from('u:p').toString('base64')}`);

    const error = await caught(
      client().session(ref('app:v1'), { username: 'u', password: 'wrong' }).resolve(),
    );
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect(error.message).toContain('rejected the credentials');
    const anonymous = await caught(client().session(ref('app:v1')).resolve());
    expect(anonymous).toBeInstanceOf(FailedPreconditionError);
    expect(anonymous.message).toContain('refused anonymous access');
  });

  it('exchanges an identity token as an OAuth2 refresh token', async () => {
    registry.auth = { kind: 'bearer', identityToken: 'refresh-me' };
    const image = registry.pushImage('app', 'v1');
    const resolved = await client().session(ref('app:v1'), { identity_token: 'refresh-me' }).resolve();
    expect(resolved.digest).toBe(image.digest);
    expect(registry.tokenRequests).toHaveLength(1);
    const post = registry.tokenRequests[0]!;
    expect(post.method).toBe('POST');
    const form = new URLSearchParams(post.body);
    expect(form.get('grant_type')).toBe('refresh_token');
    expect(form.get('refresh_token')).toBe('refresh-me');
    expect(form.get('service')).toBe('fake-registry');
    expect(form.get('scope')).toBe('repository:app:pull');
  });

  it('sends a registry token directly as a bearer token', async () => {
    registry.auth = { kind: 'bearer', registryToken: 'direct-token' };
    registry.pushImage('app', 'v1');
    await client().session(ref('app:v1'), { registry_token: 'direct-token' }).resolve();
    expect(registry.tokenRequests).toHaveLength(0);
    expect(registry.registryRequests().map((r) => r.authorization)).toEqual(['Bearer direct-token']);
    const error = await caught(client().session(ref('app:v1'), { registry_token: 'stale' }).resolve());
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect(error.message).toContain('rejected the registry token');
  });

  it('uses Basic auth from username/password or from the base64 auth field', async () => {
    registry.auth = { kind: 'basic', username: 'user', password: 'pa:ss' };
    const image = registry.pushImage('app', 'v1');
    const a = await client().session(ref('app:v1'), { username: 'user', password: 'pa:ss' }).resolve();
    expect(a.digest).toBe(image.digest);
    const b = await client()
      .session(ref('app:v1'), { auth: Buffer.from('user:pa:ss').toString('base64') })
      .resolve();
    expect(b.digest).toBe(image.digest);

    const wrong = await caught(
      client().session(ref('app:v1'), { username: 'user', password: 'nope' }).resolve(),
    );
    expect(wrong).toBeInstanceOf(FailedPreconditionError);
    expect(wrong.message).toContain('denied access');
    const none = await caught(client().session(ref('app:v1')).resolve());
    expect(none).toBeInstanceOf(FailedPreconditionError);
    expect(none.message).toContain('requires a username and password');
  });

  it('keeps credentials from a registry that server_address does not name', async () => {
    registry.auth = { kind: 'basic', username: 'user', password: 'secret' };
    registry.pushImage('app', 'v1');
    const error = await caught(
      client()
        .session(ref('app:v1'), {
          username: 'user',
          password: 'secret',
          server_address: 'other.example:5000',
        })
        .resolve(),
    );
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect(registry.requests.every((r) => r.authorization === undefined)).toBe(true);
    const ok = await client()
      .session(ref('app:v1'), {
        username: 'user',
        password: 'secret',
        server_address: `http://${registry.host}`,
      })
      .resolve();
    expect(ok.mediaType).toBe(OCI_MANIFEST);
  });

  it('parses WWW-Authenticate headers, including quoted commas', () => {
    expect(
      parseWwwAuthenticate(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"',
      ),
    ).toEqual([
      {
        scheme: 'bearer',
        params: { realm: 'https://auth.example/token', service: 'reg', scope: 'repository:a/b:pull,push' },
      },
    ]);
    expect(parseWwwAuthenticate(['Basic realm="x"', 'Bearer realm=http://t'])).toEqual([
      { scheme: 'basic', params: { realm: 'x' } },
      { scheme: 'bearer', params: { realm: 'http://t' } },
    ]);
    expect(parseWwwAuthenticate('Bearer realm="unterminated')).toEqual([
      { scheme: 'bearer', params: { realm: 'unterminated' } },
    ]);
    expect(parseWwwAuthenticate('=,,"')).toEqual([]);
  });
});

describe('untrusted digests and descriptors', () => {
  it.each([
    'sha256:../../x',
    `sha256:${'A'.repeat(64)}`,
    `sha256:${'a'.repeat(63)}`,
    `sha512:${'a'.repeat(128)}`,
  ])('rejects %j before any request', async (digest) => {
    const session = client().session(ref('app:v1'));
    const fake = { mediaType: MEDIA_TYPE.ociLayerGzip, digest: digest as Digest, size: 1 };
    for (const attempt of [session.getManifest(digest), session.openBlob(fake), session.readBlob(fake)]) {
      expect(await caught(attempt)).toBeInstanceOf(InvalidArgumentError);
    }
    expect(registry.requests).toHaveLength(0);
  });

  it('never fetches descriptor urls', async () => {
    other = await FakeRegistry.start('127.0.0.2');
    const layer = registry.addBlob('foreign', 'foreign-layer');
    const config = registry.addBlob('foreign', '{"os":"linux"}');
    registry.addManifest(
      'foreign',
      'v1',
      {
        schemaVersion: 2,
        mediaType: DOCKER_MANIFEST,
        config: { mediaType: MEDIA_TYPE.dockerConfig, ...config },
        layers: [{ mediaType: MEDIA_TYPE.dockerLayerForeignGzip, ...layer, urls: [`${other.url}/internal`] }],
      },
      DOCKER_MANIFEST,
    );
    const session = client().session(ref('foreign:v1'));
    const resolved = await session.resolve();
    expect(await readAll(await session.openBlob(resolved.manifest.layers[0]!))).toEqual(
      Buffer.from('foreign-layer'),
    );
    expect(other.requests).toHaveLength(0);
  });
});

describe('blob streams', () => {
  it('fails when Content-Length disagrees with the descriptor', async () => {
    const image = registry.pushImage('app', 'v1', { layers: ['12345'] });
    const descriptor = { ...image.layers[0]!, size: 4 } as Descriptor;
    const error = await caught(client().session(ref('app:v1')).openBlob(descriptor));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.message).toContain('size mismatch (the manifest says 4 bytes, the registry says 5)');
  });

  it('fails on a truncated body and on a body longer than declared', async () => {
    const image = registry.pushImage('app', 'v1', { layers: ['x'.repeat(1000)] });
    const layer = image.layers[0]! as unknown as Descriptor;
    let mode: 'short' | 'long' = 'short';
    registry.intercept((_req, res, url) => {
      if (!url.pathname.includes('/blobs/')) return false;
      if (mode === 'short') {
        res.writeHead(200, { 'content-length': 1000 });
        res.write(Buffer.alloc(400, 0x78));
        setTimeout(() => res.destroy(), 20);
      } else {
        res.writeHead(200);
        void streamBody(res, 5000, 100);
      }
      return true;
    });
    const session = client().session(ref('app:v1'));
    const short = await caught(readAll(await session.openBlob(layer)));
    expect(short).toBeInstanceOf(CriError);
    expect(short.message).toMatch(/after 400 (of 1000 )?bytes|truncated/);
    mode = 'long';
    const long = await caught(readAll(await session.openBlob(layer)));
    expect(long).toBeInstanceOf(InvalidArgumentError);
    expect(long.message).toContain('size mismatch (more than the declared 1000 bytes)');
  });

  it('cancels a stalled download when the signal fires', async () => {
    const image = registry.pushImage('slow', 'v1', { layers: ['y'.repeat(100_000)] });
    let serverSawClose = false;
    registry.intercept((_req, res, url) => {
      if (!url.pathname.includes('/blobs/')) return false;
      res.writeHead(200, { 'content-length': 100_000 });
      res.write(Buffer.alloc(1000, 0x79));
      res.on('close', () => {
        serverSawClose = true;
      });
      return true;
    });
    const controller = new AbortController();
    const session = client().session(ref('slow:v1'));
    const stream = await session.openBlob(image.layers[0]! as unknown as Descriptor, {
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(), 50);
    const error = await caught(readAll(stream));
    expect(error).toBeInstanceOf(CancelledError);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(serverSawClose).toBe(true);
  });

  it('turns a 1 ms deadline into DeadlineExceeded and keeps working afterwards', async () => {
    registry.pushImage('app', 'v1');
    registry.intercept(async () => {
      await new Promise((resolve) => setTimeout(resolve, 100));
      return false;
    });
    const error = await caught(
      client()
        .session(ref('app:v1'))
        .resolve({ signal: AbortSignal.timeout(1) }),
    );
    expect(error).toBeInstanceOf(DeadlineExceededError);
    const again = await client().session(ref('app:v1')).resolve();
    expect(again.mediaType).toBe(OCI_MANIFEST);
  });
});

describe('progress floor (row 48)', () => {
  /** Serves blobs (and configs) one byte every `everyMs`; the timers stop with the response. */
  function trickle(everyMs: number, length = 100_000): void {
    registry.intercept((_req, res, url) => {
      if (!url.pathname.includes('/blobs/')) return false;
      res.writeHead(200, { 'content-length': length });
      const timer = setInterval(() => res.write('z'), everyMs);
      res.on('close', () => clearInterval(timer));
      return true;
    });
  }
  const floor = { windowMs: 300, minBytes: 100 };

  it('gives up on a blob that trickles below the floor, though it is never idle', async () => {
    const image = registry.pushImage('trickle', 'v1', { layers: ['t'.repeat(100_000)] });
    trickle(20);
    const started = Date.now();
    const session = client({ progressFloor: floor, idleTimeoutMs: 60_000 }).session(ref('trickle:v1'));
    const error = await caught(readAll(await session.openBlob(image.layers[0]! as unknown as Descriptor)));
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error.message).toMatch(/under the progress floor of 100 bytes per 0.3 s/);
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('holds configs and manifests to the same floor', async () => {
    const image = registry.pushImage('trickle', 'v1', { layers: ['t'] });
    trickle(20, image.config.size);
    const session = client({ progressFloor: floor }).session(ref('trickle:v1'));
    const error = await caught(session.readBlob(image.config as unknown as Descriptor));
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error.message).toMatch(/progress floor/);
  });

  it('does not count the time its reader spends not reading', async () => {
    const body = Buffer.alloc(4 * 1024 * 1024, 0x61);
    const image = registry.pushImage('fast', 'v1', { layers: [body] });
    const session = client({ progressFloor: floor }).session(ref('fast:v1'));
    const stream = await session.openBlob(image.layers[0]! as unknown as Descriptor);
    // The body outruns the reader: the client stops reading, and waits three windows.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect((await readAll(stream)).length).toBe(body.length);
  });
});

describe('mirrors', () => {
  it('tries mirrors in order with the repository path kept, then the origin', async () => {
    const mirror = await FakeRegistry.start('127.0.0.3');
    try {
      const image = registry.pushImage('e2e/busybox', '1.29');
      const dead = await closedPort();
      const hosts = parseRegistryHostsConfig({
        [registry.host]: { mirrors: [`http://127.0.0.1:${dead}`, mirror.url] },
      });
      const session = client({ hosts }).session(ref('e2e/busybox:1.29'));
      expect(session.endpoints.map((e) => e.baseUrl.origin)).toEqual([
        `http://127.0.0.1:${dead}`,
        mirror.url,
        registry.url,
      ]);
      const resolved = await session.resolve();
      expect(resolved.digest).toBe(image.digest);
      expect(resolved.endpoint.baseUrl.origin).toBe(registry.url);
      expect(mirror.requests.map((r) => r.path)).toEqual(['/v2/e2e/busybox/manifests/1.29']);
      // The reference is not rewritten.
      expect(resolved.reference.toString()).toBe(`${registry.host}/e2e/busybox:1.29`);

      // Served by the mirror once it has the image; blobs then come from it too.
      const mirrored = mirror.pushImage('e2e/busybox', '1.29', { layers: ['m'] });
      const again = client({ hosts }).session(ref('e2e/busybox:1.29'));
      const fromMirror = await again.resolve();
      expect(fromMirror.digest).toBe(mirrored.digest);
      await readAll(await again.openBlob(fromMirror.manifest.layers[0]!));
      expect(mirror.requests.at(-1)!.path).toBe(`/v2/e2e/busybox/blobs/${mirrored.layers[0]!.digest}`);
    } finally {
      await mirror.close();
    }
  });

  it('reports every attempt when all endpoints fail', async () => {
    const mirror = await FakeRegistry.start('127.0.0.3');
    try {
      const dead = await closedPort();
      const hosts = { [registry.host]: { mirrors: [`127.0.0.1:${dead}`, mirror.url] } };
      const error = await caught(client({ hosts }).session(ref('missing:v1')).resolve());
      expect(error).toBeInstanceOf(NotFoundError);
      expect(error.message).toContain('from any of 3 endpoints');
      expect(error.message).toContain(`http://127.0.0.1:${dead} (mirror of ${registry.host}): cannot reach`);
      expect(error.message).toContain(`${mirror.url} (mirror of ${registry.host}): image`);
      expect(error.message).toContain(`${registry.url}: image ${registry.host}/missing:v1 not found`);
    } finally {
      await mirror.close();
    }
  });

  it('makes an unreachable registry Unavailable and a 5xx Unavailable', async () => {
    const dead = await closedPort();
    const unreachable = await caught(
      client()
        .session(parseImageReference(`127.0.0.1:${dead}/x:1`))
        .resolve(),
    );
    expect(unreachable).toBeInstanceOf(UnavailableError);
    expect(unreachable.message).toContain('ECONNREFUSED');
    registry.intercept((_req, res) => {
      res.writeHead(503).end();
      return true;
    });
    const busy = await caught(client().session(ref('x:1')).resolve());
    expect(busy).toBeInstanceOf(UnavailableError);
    expect(busy.message).toContain('HTTP 503');
  });
});

describe('registry hosts', () => {
  it('maps docker.io to registry-1.docker.io over HTTPS and loopback to HTTP', () => {
    expect(resolveEndpoints(parseImageReference('busybox')).map((e) => e.baseUrl.href)).toEqual([
      'https://registry-1.docker.io/',
    ]);
    expect(resolveEndpoints(parseImageReference('localhost:5000/x'))[0]!.baseUrl.protocol).toBe('http:');
    expect(resolveEndpoints(parseImageReference('127.9.9.9/x'))[0]!.baseUrl.protocol).toBe('http:');
    expect(resolveEndpoints(parseImageReference('reg.example/x'))[0]!.baseUrl.protocol).toBe('https:');
    const insecure = resolveEndpoints(parseImageReference('reg.example/x'), {
      'reg.example': { insecure: true },
    });
    expect(insecure[0]!.baseUrl.href).toBe('http://reg.example/');
  });

  it('keeps CA files for HTTPS endpoints and takes a mirror’s own entry first', () => {
    const endpoints = resolveEndpoints(
      parseImageReference('registry.k8s.io/pause:3.9'),
      parseRegistryHostsConfig({
        'registry.k8s.io': {
          mirrors: ['https://mirror.example:5000', 'http://127.0.0.1:5000'],
          ca_file: '/etc/k8s.pem',
        },
        'mirror.example:5000': { ca_file: '/etc/mirror.pem' },
      }),
    );
    expect(endpoints.map((e) => [e.baseUrl.origin, e.mirror, e.caFile])).toEqual([
      ['https://mirror.example:5000', true, '/etc/mirror.pem'],
      ['http://127.0.0.1:5000', true, undefined],
      ['https://registry.k8s.io', false, '/etc/k8s.pem'],
    ]);
  });

  it.each([
    [{ 'a.io': { mirrors: ['ftp://x'] } }, 'must be an http:// or https:// URL'],
    [{ 'a.io': { mirrors: ['http://x/v2/prefix'] } }, 'must be scheme://host[:port] only'],
    [{ 'a.io': { mirrors: 'http://x' } }, 'mirrors must be a list'],
    [{ 'a.io': { insecure: 'yes' } }, 'insecure must be true or false'],
    [{ 'a.io': { ca_file: 'relative.pem' } }, 'ca_file must be an absolute path'],
    [{ 'a.io': { mirror: [] } }, 'unknown key "mirror"'],
    [{ 'a/b': {} }, 'not a registry host'],
    [[], 'must be a table'],
  ])('rejects bad config %j', (raw, why) => {
    expect(() => parseRegistryHostsConfig(raw)).toThrow(why);
  });
});
