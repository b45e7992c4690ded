import { createHash } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';

/**
 * An in-process OCI distribution registry on 127.0.0.x for unit tests. It serves what
 * the test put in it, records every request, speaks Basic and Bearer auth (with its own
 * token endpoint), and misbehaves on demand through `intercept` handlers that see each
 * request first.
 */

export type FakeAuth =
  | { kind: 'none' }
  | { kind: 'basic'; username: string; password: string }
  | {
      kind: 'bearer';
      /** Token endpoint requires these (Basic) when set; anonymous tokens otherwise. */
      username?: string;
      password?: string;
      /** Refresh token accepted by POST /token (grant_type=refresh_token). */
      identityToken?: string;
      /** A token the registry accepts directly, without the token endpoint. */
      registryToken?: string;
      expiresIn?: number;
    };

export interface RecordedRequest {
  method: string;
  path: string;
  host: string;
  authorization: string | undefined;
  accept: string | undefined;
  body: string;
}

export interface StoredBlob {
  digest: string;
  size: number;
}

export interface PushedImage {
  digest: string;
  size: number;
  mediaType: string;
  manifest: Buffer;
  config: StoredBlob & { mediaType: string; bytes: Buffer };
  layers: (StoredBlob & { mediaType: string; bytes: Buffer })[];
}

/** Returns true when it answered the request itself. */
export type Intercept = (req: IncomingMessage, res: ServerResponse, url: URL) => boolean | Promise<boolean>;

export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';
export const DOCKER_LAYER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip';

export function sha256(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export class FakeRegistry {
  readonly requests: RecordedRequest[] = [];
  readonly tokenRequests: RecordedRequest[] = [];
  auth: FakeAuth = { kind: 'none' };
  private readonly blobs = new Map<string, Buffer>();
  private readonly manifests = new Map<string, { body: Buffer; mediaType: string }>();
  private readonly intercepts: Intercept[] = [];
  private readonly issuedTokens = new Set<string>();
  private readonly sockets = new Set<import('node:net').Socket>();
  private tokenCounter = 0;

  private constructor(
    private readonly server: http.Server,
    private readonly scheme: 'http' | 'https',
  ) {}

  /** Starts on `address` (any 127.0.0.x), over HTTPS when given a key and certificate. */
  static async start(address = '127.0.0.1', tls?: { key: string; cert: string }): Promise<FakeRegistry> {
    const server = tls === undefined ? http.createServer() : https.createServer(tls);
    const registry = new FakeRegistry(server, tls === undefined ? 'http' : 'https');
    server.on('request', (req, res) => {
      registry.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500);
        res.end(String(err));
      });
    });
    server.on('connection', (socket: import('node:net').Socket) => {
      registry.sockets.add(socket);
      socket.on('close', () => registry.sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, address, () => resolve());
    });
    return registry;
  }

  get host(): string {
    const { address, port } = this.server.address() as AddressInfo;
    return `${address}:${port}`;
  }

  get url(): string {
    return `${this.scheme}://${this.host}`;
  }

  /** Requests for registry paths (under /v2/), without the token endpoint. */
  registryRequests(): RecordedRequest[] {
    return this.requests.filter((r) => r.path.startsWith('/v2/'));
  }

  intercept(handler: Intercept): void {
    this.intercepts.push(handler);
  }

  clearIntercepts(): void {
    this.intercepts.length = 0;
  }

  addBlob(repo: string, bytes: Buffer | string): StoredBlob {
    const data = Buffer.from(bytes);
    const digest = sha256(data);
    this.blobs.set(`${repo}@${digest}`, data);
    return { digest, size: data.length };
  }

  /** Stores a manifest (any bytes) under its digest and, if given, a tag. */
  addManifest(
    repo: string,
    tag: string | undefined,
    body: Buffer | string | object,
    mediaType: string,
  ): StoredBlob {
    const data = Buffer.isBuffer(body)
      ? body
      : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const digest = sha256(data);
    this.manifests.set(`${repo}@${digest}`, { body: data, mediaType });
    if (tag !== undefined) this.manifests.set(`${repo}:${tag}`, { body: data, mediaType });
    return { digest, size: data.length };
  }

  /** Pushes a small image: a config and the given layers, with an OCI or Docker manifest. */
  pushImage(
    repo: string,
    tag: string | undefined,
    options: { layers?: (Buffer | string)[]; config?: object; docker?: boolean; architecture?: string } = {},
  ): PushedImage {
    const docker = options.docker === true;
    const configBytes = Buffer.from(
      JSON.stringify(
        options.config ?? {
          architecture: options.architecture ?? 'amd64',
          os: 'linux',
          config: { Cmd: ['sh'] },
          rootfs: { type: 'layers', diff_ids: [] },
        },
      ),
    );
    const configMediaType = docker ? DOCKER_CONFIG : OCI_CONFIG;
    const layerMediaType = docker ? DOCKER_LAYER_GZIP : OCI_LAYER_GZIP;
    const config = { ...this.addBlob(repo, configBytes), mediaType: configMediaType, bytes: configBytes };
    const layers = (options.layers ?? ['layer-1']).map((layer) => {
      const bytes = Buffer.from(layer);
      return { ...this.addBlob(repo, bytes), mediaType: layerMediaType, bytes };
    });
    const mediaType = docker ? DOCKER_MANIFEST : OCI_MANIFEST;
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType,
        config: { mediaType: configMediaType, digest: config.digest, size: config.size },
        layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
      }),
    );
    const stored = this.addManifest(repo, tag, manifest, mediaType);
    return { ...stored, mediaType, manifest, config, layers };
  }

  /** Pushes an index (or Docker list) over already pushed per-platform manifests. */
  pushIndex(
    repo: string,
    tag: string | undefined,
    entries: { image: { digest: string; size: number; mediaType: string }; platform?: object }[],
    docker = false,
  ): StoredBlob & { body: Buffer } {
    const mediaType = docker ? DOCKER_LIST : OCI_INDEX;
    const body = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType,
        manifests: entries.map((e) => ({
          mediaType: e.image.mediaType,
          digest: e.image.digest,
          size: e.image.size,
          ...(e.platform === undefined ? {} : { platform: e.platform }),
        })),
      }),
    );
    return { ...this.addManifest(repo, tag, body, mediaType), body };
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.url);
    const chunks: Buffer[] = [];
    if (req.method === 'POST') for await (const chunk of req) chunks.push(chunk as Buffer);
    const record: RecordedRequest = {
      method: req.method ?? '',
      path: url.pathname + url.search,
      host: req.headers.host ?? '',
      authorization: req.headers.authorization,
      accept: req.headers.accept,
      body: Buffer.concat(chunks).toString('utf8'),
    };
    this.requests.push(record);
    for (const handler of this.intercepts) {
      if (await handler(req, res, url)) return;
    }
    if (url.pathname === '/token') {
      this.tokenRequests.push(record);
      this.serveToken(req, res, url, record.body);
      return;
    }
    if (!url.pathname.startsWith('/v2/')) {
      res.writeHead(404).end();
      return;
    }
    if (!this.authorised(req, res, url)) return;
    if (url.pathname === '/v2/') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      return;
    }
    const match = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
    if (match === null) {
      res.writeHead(404).end();
      return;
    }
    const [, repo, kind, reference] = match as unknown as [string, string, string, string];
    if (kind === 'manifests') {
      const key = reference.startsWith('sha256:') ? `${repo}@${reference}` : `${repo}:${reference}`;
      const manifest = this.manifests.get(key);
      if (manifest === undefined) {
        res
          .writeHead(404, { 'content-type': 'application/json' })
          .end('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}');
        return;
      }
      res.writeHead(200, {
        'content-type': manifest.mediaType,
        'content-length': manifest.body.length,
        'docker-content-digest': sha256(manifest.body),
      });
      res.end(req.method === 'HEAD' ? undefined : manifest.body);
      return;
    }
    const blob = this.blobs.get(`${repo}@${reference}`);
    if (blob === undefined) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"BLOB_UNKNOWN"}]}');
      return;
    }
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': blob.length,
      'docker-content-digest': reference,
    });
    res.end(req.method === 'HEAD' ? undefined : blob);
  }

  private authorised(req: IncomingMessage, res: ServerResponse, url: URL): boolean {
    const auth = this.auth;
    const given = req.headers.authorization;
    if (auth.kind === 'none') return true;
    if (auth.kind === 'basic') {
      const expected = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;
      if (given === expected) return true;
      res.writeHead(401, { 'www-authenticate': 'Basic realm="fake"' }).end();
      return false;
    }
    if (given?.startsWith('Bearer ')) {
      const token = given.slice('Bearer '.length);
      if (
        this.issuedTokens.has(token) ||
        (auth.registryToken !== undefined && token === auth.registryToken)
      ) {
        return true;
      }
    }
    const repo = /^\/v2\/(.+)\/(?:manifests|blobs)\//.exec(url.pathname)?.[1];
    const scope = repo === undefined ? '' : `,scope="repository:${repo}:pull"`;
    res
      .writeHead(401, {
        'www-authenticate': `Bearer realm="${this.url}/token",service="fake-registry"${scope}`,
      })
      .end();
    return false;
  }

  private serveToken(req: IncomingMessage, res: ServerResponse, url: URL, body: string): void {
    const auth = this.auth;
    if (auth.kind !== 'bearer') {
      res.writeHead(404).end();
      return;
    }
    if (req.method === 'POST') {
      const form = new URLSearchParams(body);
      if (
        form.get('grant_type') !== 'refresh_token' ||
        auth.identityToken === undefined ||
        form.get('refresh_token') !== auth.identityToken
      ) {
        res.writeHead(401).end();
        return;
      }
      this.issue(res, 'access_token', auth.expiresIn);
      return;
    }
    if (auth.username !== undefined) {
      const expected = `Basic ${Buffer.from(`${auth.username}:${auth.password ?? ''}`).toString('base64')}`;
      if (req.headers.authorization !== expected) {
        res.writeHead(401).end();
        return;
      }
    }
    if (url.searchParams.get('service') !== 'fake-registry') {
      res.writeHead(400).end();
      return;
    }
    this.issue(res, 'token', auth.expiresIn);
  }

  private issue(res: ServerResponse, field: 'token' | 'access_token', expiresIn: number | undefined): void {
    this.tokenCounter += 1;
    const token = `token-${this.tokenCounter}`;
    this.issuedTokens.add(token);
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ [field]: token, ...(expiresIn === undefined ? {} : { expires_in: expiresIn }) }));
  }
}

/**
 * Writes up to `total` bytes in `chunkSize` pieces, honouring backpressure, and stops as
 * soon as the client goes away. Resolves with the number of bytes actually written.
 */
export async function streamBody(res: ServerResponse, total: number, chunkSize = 64 * 1024): Promise<number> {
  const chunk = Buffer.alloc(chunkSize, 0x61);
  let written = 0;
  while (written < total && !res.destroyed) {
    const piece = Math.min(chunkSize, total - written);
    const ok = res.write(piece === chunkSize ? chunk : chunk.subarray(0, piece));
    written += piece;
    if (!ok) {
      await new Promise<void>((resolve) => {
        const done = () => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    }
  }
  if (!res.destroyed) res.end();
  return written;
}
