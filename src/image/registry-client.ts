import { readFile } from 'node:fs/promises';
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import { type Duplex, Readable } from 'node:stream';
import tls, { rootCertificates } from 'node:tls';
import {
  CancelledError,
  CriError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../errors.js';
import { type Logger, silentLogger } from '../log.js';
import type { Dialer } from '../os/host-dialer.js';
import { type Digest, parseDigest, sha256Digest } from './digest.js';
import {
  assertImageManifest,
  type Descriptor,
  hostPlatform,
  type ImageManifest,
  type ManifestDocument,
  type Platform,
  parseManifestDocument,
  selectPlatformManifest,
} from './manifest.js';
import { baseMediaType, MANIFEST_ACCEPT } from './media-types.js';
import { describeFloor, type ProgressFloor, ProgressWatch } from './progress-floor.js';
import type { ImageReference } from './reference.js';
import { type AuthConfig, RegistryAuthorizer, type TokenTransport } from './registry-auth.js';
import {
  describeEndpoint,
  type RegistryEndpoint,
  type RegistryHostsConfig,
  resolveEndpoints,
} from './registry-hosts.js';

/**
 * A client for the OCI distribution API, written on node:http/https so that it controls
 * what fetch() would hide: redirects (followed by hand, at most 10, with the Authorization
 * header decided again for every hop so credentials never reach another host), size caps
 * on every body, the CA to trust, timeouts, and cancellation through an AbortSignal.
 *
 * One `RegistrySession` serves one pull: it knows the reference, the endpoints to try
 * (mirrors, then the registry) and the credentials. Failures at one endpoint move on to
 * the next; when all fail, the error lists every attempt.
 */

export interface RegistryClientOptions {
  hosts?: RegistryHostsConfig;
  /** Largest manifest or index body accepted (default 4 MiB). */
  maxManifestBytes?: number;
  /** Largest image config accepted (default 8 MiB). */
  maxConfigBytes?: number;
  maxRedirects?: number;
  /** Time allowed from sending a request to receiving the response headers (default 30 s). */
  responseTimeoutMs?: number;
  /** Time a connection may stay silent while a body is read (default 60 s). */
  idleTimeoutMs?: number;
  /**
   * Bytes a body must deliver in every window while it is being waited for (default 16 KiB
   * per 30 s): a registry that trickles is given up on like one that stalls.
   */
  progressFloor?: ProgressFloor;
  userAgent?: string;
  logger?: Logger;
  /**
   * Host name resolution (default: the system resolver). Tests pass one that refuses, so a
   * fallback to a public registry can never leave the machine.
   */
  lookup?: LookupFunction;
  /**
   * Opens the TCP connection for a request (default: a direct connection). The daemon passes
   * the host dialer (src/rootless/host-dialer.ts) so registries are reached from the host's
   * network namespace, where "127.0.0.1:5000" is the operator's registry.
   */
  dial?: Dialer;
}

export const DEFAULT_MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
export const DEFAULT_MAX_CONFIG_BYTES = 8 * 1024 * 1024;
export const DEFAULT_MAX_REDIRECTS = 10;
export const DEFAULT_PROGRESS_FLOOR: ProgressFloor = { windowMs: 30_000, minBytes: 16 * 1024 };

interface ClientSettings {
  hosts: RegistryHostsConfig;
  maxManifestBytes: number;
  maxConfigBytes: number;
  maxRedirects: number;
  responseTimeoutMs: number;
  idleTimeoutMs: number;
  progressFloor: ProgressFloor;
  userAgent: string;
  logger: Logger;
  lookup: LookupFunction | undefined;
  dial: Dialer | undefined;
}

export interface FetchedManifest {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
  document: ManifestDocument;
  endpoint: RegistryEndpoint;
}

export interface ManifestHead {
  digest?: Digest;
  mediaType?: string;
  size?: number;
  endpoint: RegistryEndpoint;
}

export interface ResolvedImage {
  reference: ImageReference;
  /** The endpoint that served the manifest; blobs are fetched from it first. */
  endpoint: RegistryEndpoint;
  /** Digest of the document the reference names (index or manifest): the repo digest. */
  digest: Digest;
  mediaType: string;
  /** The index the manifest was picked from, when the reference names an index. */
  index?: { digest: Digest; bytes: Buffer };
  manifestDigest: Digest;
  manifestBytes: Buffer;
  manifest: ImageManifest;
  platform: Platform;
}

export interface RequestOptions {
  signal?: AbortSignal | undefined;
}

export class RegistryClient {
  private readonly settings: ClientSettings;

  constructor(options: RegistryClientOptions = {}) {
    this.settings = {
      hosts: options.hosts ?? {},
      maxManifestBytes: options.maxManifestBytes ?? DEFAULT_MAX_MANIFEST_BYTES,
      maxConfigBytes: options.maxConfigBytes ?? DEFAULT_MAX_CONFIG_BYTES,
      maxRedirects: options.maxRedirects ?? DEFAULT_MAX_REDIRECTS,
      responseTimeoutMs: options.responseTimeoutMs ?? 30_000,
      idleTimeoutMs: options.idleTimeoutMs ?? 60_000,
      progressFloor: options.progressFloor ?? DEFAULT_PROGRESS_FLOOR,
      userAgent: options.userAgent ?? 'rootless-cri',
      logger: options.logger ?? silentLogger(),
      lookup: options.lookup,
      dial: options.dial,
    };
  }

  get maxConfigBytes(): number {
    return this.settings.maxConfigBytes;
  }

  /** A session for pulling `reference` with the pull request's credentials. */
  session(reference: ImageReference, auth?: AuthConfig): RegistrySession {
    return new RegistrySession(reference, auth, this.settings);
  }
}

export class RegistrySession {
  readonly endpoints: readonly RegistryEndpoint[];
  private readonly authorizer: RegistryAuthorizer;
  private readonly transport: HttpTransport;
  private readonly scope: string;
  private preferred: RegistryEndpoint | undefined;

  constructor(
    readonly reference: ImageReference,
    auth: AuthConfig | undefined,
    private readonly settings: ClientSettings,
  ) {
    this.endpoints = resolveEndpoints(reference, settings.hosts);
    this.transport = new HttpTransport(settings);
    this.authorizer = new RegistryAuthorizer(auth, this.transport);
    this.scope = `repository:${reference.path}:pull`;
  }

  /**
   * Fetches the manifest the reference names; when it is an index, picks the manifest for
   * `platform` (default: this host) from it. Tries each endpoint in turn.
   */
  async resolve(options: RequestOptions & { platform?: Platform } = {}): Promise<ResolvedImage> {
    const platform = options.platform ?? hostPlatform();
    return this.acrossEndpoints(`manifest ${this.reference.tagOrDigest}`, async (endpoint) => {
      const top = await this.fetchManifestFrom(
        endpoint,
        this.reference.tagOrDigest,
        undefined,
        options.signal,
      );
      let index: ResolvedImage['index'];
      let current = top;
      // Indexes may nest (an index of indexes); three levels is more than any real image uses.
      for (let depth = 0; current.document.kind === 'index'; depth++) {
        if (depth >= 3) {
          throw new InvalidArgumentError(`${this.reference}: image indexes nested more than 3 deep`);
        }
        index ??= { digest: current.digest, bytes: current.bytes };
        const chosen = selectPlatformManifest(
          current.document,
          platform,
          `image ${this.reference} (index ${current.digest})`,
        );
        current = await this.fetchManifestFrom(endpoint, chosen.digest, chosen, options.signal);
      }
      const manifest = current.document;
      assertImageManifest(manifest, `image ${this.reference} (manifest ${current.digest})`);
      const resolved: ResolvedImage = {
        reference: this.reference,
        endpoint,
        digest: top.digest,
        mediaType: top.mediaType,
        manifestDigest: current.digest,
        manifestBytes: current.bytes,
        manifest,
        platform,
      };
      if (index !== undefined) resolved.index = index;
      this.preferred = endpoint;
      return resolved;
    });
  }

  /** GET one manifest or index by tag or digest, verified and parsed. */
  async getManifest(
    tagOrDigest: string,
    options: RequestOptions & { descriptor?: Descriptor } = {},
  ): Promise<FetchedManifest> {
    return this.acrossEndpoints(`manifest ${tagOrDigest}`, (endpoint) =>
      this.fetchManifestFrom(endpoint, tagOrDigest, options.descriptor, options.signal),
    );
  }

  /** HEAD a manifest: its digest, media type and size as the registry reports them. */
  async headManifest(tagOrDigest: string, options: RequestOptions = {}): Promise<ManifestHead> {
    const reference = manifestReference(tagOrDigest);
    return this.acrossEndpoints(`manifest ${tagOrDigest}`, async (endpoint) => {
      const response = await this.send(
        endpoint,
        'HEAD',
        `manifests/${reference}`,
        MANIFEST_ACCEPT,
        options.signal,
      );
      response.body.resume();
      this.checkStatus(response, endpoint, `manifest ${tagOrDigest}`);
      const head: ManifestHead = { endpoint };
      const digestHeader = header(response.headers, 'docker-content-digest');
      if (digestHeader !== undefined)
        head.digest = parseDigest(digestHeader, `Docker-Content-Digest from ${endpoint.host}`);
      const mediaType = baseMediaType(header(response.headers, 'content-type'));
      if (mediaType !== undefined) head.mediaType = mediaType;
      const length = Number(header(response.headers, 'content-length'));
      if (Number.isSafeInteger(length) && length >= 0) head.size = length;
      return head;
    });
  }

  /**
   * Reads a small blob (the image config) into memory: at most `maxBytes` (default the
   * config cap) and exactly the descriptor's size, digest checked.
   */
  async readBlob(
    descriptor: Descriptor,
    options: RequestOptions & { maxBytes?: number } = {},
  ): Promise<Buffer> {
    const maxBytes = options.maxBytes ?? this.settings.maxConfigBytes;
    const digest = parseDigest(descriptor.digest, 'blob digest');
    const what = `blob ${digest} of ${this.reference}`;
    if (descriptor.size > maxBytes) {
      throw new InvalidArgumentError(
        `${what} is ${descriptor.size} bytes, more than the ${formatBytes(maxBytes)} limit for this kind of blob`,
      );
    }
    return this.acrossEndpoints(
      what,
      async (endpoint) => {
        const response = await this.send(endpoint, 'GET', `blobs/${digest}`, '*/*', options.signal);
        this.checkStatus(response, endpoint, what);
        const body = await readBounded(
          response,
          descriptor.size,
          `${what} from ${describeEndpoint(endpoint)}`,
          true,
          this.settings.progressFloor,
        );
        if (body.length !== descriptor.size) {
          throw new InvalidArgumentError(
            `${what} from ${describeEndpoint(endpoint)}: size mismatch (expected ${descriptor.size} bytes, got ${body.length})`,
          );
        }
        const actual = sha256Digest(body);
        if (actual !== digest) {
          throw new InvalidArgumentError(
            `${what} from ${describeEndpoint(endpoint)}: digest mismatch (got ${actual})`,
          );
        }
        return body;
      },
      this.preferredFirst(),
    );
  }

  /**
   * Opens a blob (a layer) as a stream of exactly `descriptor.size` bytes: more is an
   * error, and so is an early end. The digest is checked by the content store, which hashes
   * what it writes. Descriptor `urls` are ignored: blobs come from the registry only.
   */
  async openBlob(descriptor: Descriptor, options: RequestOptions = {}): Promise<BlobStream> {
    const digest = parseDigest(descriptor.digest, 'blob digest');
    const what = `blob ${digest} of ${this.reference}`;
    return this.acrossEndpoints(
      what,
      async (endpoint) => {
        const response = await this.send(endpoint, 'GET', `blobs/${digest}`, '*/*', options.signal);
        this.checkStatus(response, endpoint, what);
        const source = `${what} from ${describeEndpoint(endpoint)}`;
        const declared = header(response.headers, 'content-length');
        if (declared !== undefined && Number(declared) !== descriptor.size) {
          response.body.destroy();
          throw new InvalidArgumentError(
            `${source}: size mismatch (the manifest says ${descriptor.size} bytes, the registry says ${declared})`,
          );
        }
        const stream = new ExactSizeStream(
          response.body,
          descriptor.size,
          source,
          this.settings.progressFloor,
        );
        return Object.assign(stream, { endpoint, source }) as BlobStream;
      },
      this.preferredFirst(),
    );
  }

  private preferredFirst(): RegistryEndpoint[] {
    const preferred = this.preferred;
    if (preferred === undefined) return [...this.endpoints];
    return [preferred, ...this.endpoints.filter((e) => e !== preferred)];
  }

  private async fetchManifestFrom(
    endpoint: RegistryEndpoint,
    tagOrDigest: string,
    descriptor: Descriptor | undefined,
    signal: AbortSignal | undefined,
  ): Promise<FetchedManifest> {
    const reference = manifestReference(tagOrDigest);
    const what = `manifest ${reference} of ${this.reference}`;
    const source = `${what} from ${describeEndpoint(endpoint)}`;
    if (descriptor !== undefined && descriptor.size > this.settings.maxManifestBytes) {
      throw new InvalidArgumentError(
        `${source}: declared size ${descriptor.size} bytes is more than the ${formatBytes(this.settings.maxManifestBytes)} manifest limit`,
      );
    }
    const response = await this.send(endpoint, 'GET', `manifests/${reference}`, MANIFEST_ACCEPT, signal);
    this.checkStatus(response, endpoint, what);
    const limit = Math.min(this.settings.maxManifestBytes, descriptor?.size ?? Number.POSITIVE_INFINITY);
    const bytes = await readBounded(
      response,
      limit,
      source,
      descriptor !== undefined,
      this.settings.progressFloor,
    );
    if (descriptor !== undefined && bytes.length !== descriptor.size) {
      throw new InvalidArgumentError(
        `${source}: size mismatch (expected ${descriptor.size} bytes, got ${bytes.length})`,
      );
    }
    const digest = sha256Digest(bytes);
    if (reference.startsWith('sha256:') && digest !== reference) {
      throw new InvalidArgumentError(`${source}: digest mismatch (got ${digest})`);
    }
    const claimed = header(response.headers, 'docker-content-digest');
    if (claimed?.startsWith('sha256:') && claimed !== digest) {
      throw new InvalidArgumentError(
        `${source}: digest mismatch (Docker-Content-Digest says ${claimed.slice(0, 80)}, content is ${digest})`,
      );
    }
    const document = parseManifestDocument(bytes, {
      contentType: header(response.headers, 'content-type'),
      expectedMediaType: descriptor?.mediaType,
      source,
    });
    return { digest, mediaType: document.mediaType, bytes, document, endpoint };
  }

  /** A request to `endpoint` under `/v2/<path>/`, authorised, retried once after a 401. */
  private async send(
    endpoint: RegistryEndpoint,
    method: 'GET' | 'HEAD',
    suffix: string,
    accept: string,
    signal: AbortSignal | undefined,
  ): Promise<HttpResponse> {
    const url = new URL(`/v2/${this.reference.path}/${suffix}`, endpoint.baseUrl);
    for (let attempt = 0; ; attempt++) {
      const response = await this.transport.send({
        method,
        url,
        headers: { accept },
        signal,
        caFile: endpoint.caFile,
        // Credentials go to the endpoint's own host only, never to a host a redirect names.
        authorize: (hop) =>
          sameOrigin(hop, endpoint.baseUrl) ? this.authorizer.authorization(endpoint, this.scope) : undefined,
      });
      if (response.status !== 401 || attempt > 0 || !sameOrigin(response.url, endpoint.baseUrl))
        return response;
      response.body.destroy();
      await this.authorizer.onUnauthorized(
        endpoint,
        this.scope,
        response.headers['www-authenticate'],
        signal,
      );
    }
  }

  private checkStatus(response: HttpResponse, endpoint: RegistryEndpoint, what: string): void {
    const status = response.status;
    if (status >= 200 && status <= 299) return;
    // An error body is never read: a hostile registry could make it endless.
    response.body.destroy();
    const where = describeEndpoint(endpoint);
    if (status === 404) {
      throw new NotFoundError(
        what.startsWith('manifest')
          ? `image ${this.reference} not found in registry ${where} (HTTP 404 for ${what.split(' of ')[0]})`
          : `${what} not found in registry ${where} (HTTP 404)`,
      );
    }
    if (status === 401 || status === 403) {
      throw new FailedPreconditionError(
        `registry ${where} denied access to ${what} (HTTP ${status}); check the credentials or the image name`,
      );
    }
    if (status >= 300 && status <= 399) {
      throw new UnavailableError(
        `registry ${where} answered ${what} with a redirect (HTTP ${status}) without a usable Location`,
      );
    }
    throw new UnavailableError(`registry ${where} answered HTTP ${status} for ${what}`);
  }

  /**
   * Runs `attempt` against each endpoint in order until one succeeds. Cancellation stops at
   * once; any other failure moves on, and the final error lists every attempt.
   */
  private async acrossEndpoints<T>(
    what: string,
    attempt: (endpoint: RegistryEndpoint) => Promise<T>,
    endpoints: readonly RegistryEndpoint[] = this.endpoints,
  ): Promise<T> {
    const failures: { endpoint: RegistryEndpoint; error: unknown }[] = [];
    for (const endpoint of endpoints) {
      try {
        return await attempt(endpoint);
      } catch (error) {
        if (error instanceof CancelledError || error instanceof DeadlineExceededError) throw error;
        failures.push({ endpoint, error });
        this.settings.logger.warn(
          { image: this.reference.toString(), endpoint: describeEndpoint(endpoint), err: messageOf(error) },
          `fetching ${what} failed${failures.length < endpoints.length ? '; trying the next endpoint' : ''}`,
        );
      }
    }
    const last = failures[failures.length - 1]!;
    if (failures.length === 1) throw last.error;
    const summary = failures.map((f) => `${describeEndpoint(f.endpoint)}: ${messageOf(f.error)}`).join('; ');
    const message = `cannot fetch ${what} of ${this.reference} from any of ${failures.length} endpoints: ${summary}`;
    // The registry itself is tried last, so its answer decides the kind (a mirror missing
    // the image does not make it NotFound when the registry is merely unreachable).
    throw sameKind(last.error, message);
  }
}

/** A blob body: a Readable plus where it came from (for messages). */
export type BlobStream = Readable & { endpoint: RegistryEndpoint; source: string };

function sameKind(error: unknown, message: string): CriError {
  const options = { cause: error };
  if (error instanceof NotFoundError) return new NotFoundError(message, options);
  if (error instanceof FailedPreconditionError) return new FailedPreconditionError(message, options);
  if (error instanceof InvalidArgumentError) return new InvalidArgumentError(message, options);
  if (error instanceof CriError) return new CriError(error.kind, message, options);
  return new UnavailableError(message, options);
}

function manifestReference(tagOrDigest: string): string {
  if (tagOrDigest.includes(':')) return parseDigest(tagOrDigest, 'manifest digest');
  if (!/^[\w][\w.-]{0,127}$/.test(tagOrDigest)) {
    throw new InvalidArgumentError(`invalid tag ${JSON.stringify(tagOrDigest.slice(0, 200))}`);
  }
  return tagOrDigest;
}

function sameOrigin(a: URL, b: URL): boolean {
  return a.protocol === b.protocol && a.host === b.host;
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * 1024) return `${+(bytes / (1024 * 1024)).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${+(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/**
 * Reads a whole body, refusing more than `limit` bytes: a declared Content-Length over the
 * limit is refused before reading, and a body that runs past it is cut off there, so a
 * hostile registry cannot make the daemon buffer more than `limit`.
 * `exact` marks a limit that is the declared size of the content (not a policy cap).
 * The whole read is held to `floor` (it buffers in memory, so it never pauses).
 */
async function readBounded(
  response: HttpResponse,
  limit: number,
  source: string,
  exact: boolean,
  floor?: ProgressFloor,
): Promise<Buffer> {
  const tooBig = (n: string) =>
    new InvalidArgumentError(
      exact
        ? `${source}: size mismatch (more than the declared ${limit} bytes${n})`
        : `${source}: larger than the ${formatBytes(limit)} limit${n}; refusing to read it`,
    );
  const declared = Number(header(response.headers, 'content-length'));
  if (Number.isFinite(declared) && declared > limit) {
    response.body.destroy();
    throw tooBig(` (Content-Length ${declared})`);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  const watch = new ProgressWatch(floor, (got) => response.body.destroy(tooSlow(source, got, total, floor!)));
  watch.resume();
  try {
    for await (const chunk of response.body) {
      watch.add((chunk as Buffer).length);
      total += (chunk as Buffer).length;
      if (total > limit) {
        response.body.destroy();
        throw tooBig('');
      }
      chunks.push(chunk as Buffer);
    }
  } catch (err) {
    throw bodyError(err, source, total);
  } finally {
    watch.stop();
  }
  return Buffer.concat(chunks, total);
}

function tooSlow(source: string, got: number, total: number, floor: ProgressFloor): UnavailableError {
  return new UnavailableError(
    `${source}: the registry sent ${got} bytes in the last ${floor.windowMs / 1000} s (${total} in all), ` +
      `under the progress floor of ${describeFloor(floor)} (image.download_min_bytes_per_window); giving up on it`,
  );
}

/**
 * Passes through exactly `size` bytes of a response body, failing on more or fewer.
 * Destroying this stream destroys the response at once, even while it is stalled.
 */
class ExactSizeStream extends Readable {
  private received = 0;
  private ended = false;
  private readonly watch: ProgressWatch;

  constructor(
    private readonly body: IncomingMessage,
    private readonly size: number,
    private readonly source: string,
    floor?: ProgressFloor,
  ) {
    super();
    // Waiting for the registry is what the floor measures: paused by us, the clock stops.
    this.watch = new ProgressWatch(floor, (got) => this.destroy(tooSlow(source, got, this.received, floor!)));
    this.watch.resume();
    body.on('data', (chunk: Buffer) => {
      this.watch.add(chunk.length);
      this.received += chunk.length;
      if (this.received > this.size) {
        this.destroy(
          new InvalidArgumentError(
            `${this.source}: size mismatch (more than the declared ${this.size} bytes)`,
          ),
        );
        return;
      }
      if (!this.push(chunk)) {
        body.pause();
        this.watch.pause();
      }
    });
    body.on('end', () => {
      this.ended = true;
      this.watch.stop();
      if (this.received !== this.size) {
        this.destroy(
          new InvalidArgumentError(
            `${this.source}: size mismatch (truncated: got ${this.received} of ${this.size} bytes)`,
          ),
        );
        return;
      }
      this.push(null);
    });
    body.on('error', (err) => this.destroy(bodyError(err, this.source, this.received)));
    body.on('close', () => {
      if (!this.ended && !this.destroyed) {
        this.destroy(
          new UnavailableError(
            `${this.source}: the connection closed after ${this.received} of ${this.size} bytes`,
          ),
        );
      }
    });
  }

  override _read(): void {
    this.watch.resume();
    this.body.resume();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.watch.stop();
    if (!this.body.destroyed) this.body.destroy();
    callback(error);
  }
}

function bodyError(err: unknown, source: string, received: number): Error {
  if (err instanceof CriError) return err;
  return new UnavailableError(`${source}: the connection broke after ${received} bytes (${messageOf(err)})`, {
    cause: err,
  });
}

/** The error to throw when `signal` fires: a deadline or a plain cancellation. */
export function abortError(signal: AbortSignal, what: string): CriError {
  const reason: unknown = signal.reason;
  if (reason instanceof CriError) return reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') {
    return new DeadlineExceededError(`${what}: deadline exceeded`, { cause: reason });
  }
  return new CancelledError(`${what}: cancelled`, { cause: reason });
}

interface HttpRequest {
  method: 'GET' | 'HEAD' | 'POST';
  url: URL;
  headers: Record<string, string>;
  body?: string;
  signal?: AbortSignal | undefined;
  caFile?: string | undefined;
  /** Decides the Authorization header for each hop (undefined: send none). */
  authorize?: (url: URL) => string | undefined;
}

export interface HttpResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** The URL that answered, after redirects. */
  url: URL;
  body: IncomingMessage;
}

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const TLS_ERROR_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_NOT_YET_VALID',
]);

/** HTTP with manual redirects, per-hop authorisation, timeouts and cancellation. */
class HttpTransport implements TokenTransport {
  private readonly caCache = new Map<string, Promise<string[]>>();

  constructor(private readonly settings: ClientSettings) {}

  async request(options: {
    method: 'GET' | 'POST';
    url: URL;
    headers: Record<string, string>;
    body?: string;
    signal?: AbortSignal | undefined;
    caFile?: string | undefined;
    maxBytes: number;
    what: string;
  }): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
    const { authorization, ...headers } = options.headers;
    const request: HttpRequest = {
      method: options.method,
      url: options.url,
      headers,
      signal: options.signal,
      caFile: options.caFile,
      // Credentials for a token server go to the realm's own host only.
      authorize: (hop) => (sameOrigin(hop, options.url) ? authorization : undefined),
    };
    if (options.body !== undefined) request.body = options.body;
    const response = await this.send(request);
    const body = await readBounded(
      response,
      options.maxBytes,
      options.what,
      false,
      this.settings.progressFloor,
    );
    return { status: response.status, headers: response.headers, body };
  }

  async send(request: HttpRequest): Promise<HttpResponse> {
    const ca = request.caFile === undefined ? undefined : await this.loadCa(request.caFile);
    let url = request.url;
    let method = request.method;
    let body = request.body;
    for (let redirects = 0; ; redirects++) {
      const headers: Record<string, string> = { 'user-agent': this.settings.userAgent, ...request.headers };
      const authorization = request.authorize?.(url);
      if (authorization !== undefined) headers.authorization = authorization;
      if (body !== undefined) headers['content-length'] = String(Buffer.byteLength(body));
      const response = await this.once(method, url, headers, body, ca, request.signal);
      const location = header(response.headers, 'location');
      if (!REDIRECT_STATUSES.has(response.status) || location === undefined) return response;
      response.body.destroy();
      if (redirects >= this.settings.maxRedirects) {
        throw new UnavailableError(
          `${request.url.origin}${request.url.pathname}: more than ${this.settings.maxRedirects} redirects (last to ${url.origin}); the registry or a proxy is misconfigured`,
        );
      }
      let next: URL;
      try {
        next = new URL(location, url);
      } catch (err) {
        throw new UnavailableError(`${url.origin} redirected to an invalid URL`, { cause: err });
      }
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new UnavailableError(`${url.origin} redirected to a non-HTTP URL (${next.protocol})`);
      }
      if (url.protocol === 'https:' && next.protocol === 'http:') {
        throw new UnavailableError(
          `${url.origin} redirected from HTTPS to plain HTTP (${next.origin}); refusing`,
        );
      }
      if (
        response.status === 303 ||
        ((response.status === 301 || response.status === 302) && method === 'POST')
      ) {
        if (method !== 'HEAD') method = 'GET';
        body = undefined;
      }
      url = next;
    }
  }

  private loadCa(file: string): Promise<string[]> {
    let cached = this.caCache.get(file);
    if (cached === undefined) {
      cached = readFile(file, 'utf8').then(
        (pem) => [...rootCertificates, pem],
        (err: unknown) => {
          throw new FailedPreconditionError(`cannot read the registry CA file ${file}: ${messageOf(err)}`, {
            cause: err,
          });
        },
      );
      this.caCache.set(file, cached);
    }
    return cached;
  }

  private once(
    method: string,
    url: URL,
    headers: Record<string, string>,
    body: string | undefined,
    ca: string[] | undefined,
    signal: AbortSignal | undefined,
  ): Promise<HttpResponse> {
    const what = `${method} ${url.origin}${url.pathname}`;
    return new Promise<HttpResponse>((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortError(signal, what));
        return;
      }
      const options: https.RequestOptions = { method, headers };
      if (this.settings.lookup !== undefined) options.lookup = this.settings.lookup;
      if (ca !== undefined && url.protocol === 'https:') options.ca = ca;
      const dial = this.settings.dial;
      if (dial !== undefined) {
        // No agent: with one, Node would open the socket itself and ignore createConnection.
        options.createConnection = ((_opts: unknown, done: (err: Error | null, socket?: Duplex) => void) => {
          const port = Number(url.port) || (url.protocol === 'https:' ? 443 : 80);
          const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1');
          dial(hostname, port, signal).then(
            (socket) =>
              done(
                null,
                url.protocol === 'https:'
                  ? tls.connect({ socket, servername: isIP(hostname) ? undefined : hostname, ca })
                  : socket,
              ),
            (err: Error) => done(err),
          );
          return undefined;
        }) as unknown as https.RequestOptions['createConnection'];
      }
      const transport = url.protocol === 'https:' ? https : http;
      let response: IncomingMessage | undefined;
      const fail = (err: Error) => {
        clearTimeout(headersTimer);
        req.destroy(err);
        response?.destroy(err);
        reject(err);
      };
      const onAbort = () => fail(abortError(signal!, what));
      const cleanup = () => {
        clearTimeout(headersTimer);
        signal?.removeEventListener('abort', onAbort);
      };
      const req = transport.request(url, options, (res) => {
        clearTimeout(headersTimer);
        response = res;
        // Errors after this point reach whoever reads the body (as a failed read); this
        // listener only keeps an unread body's error from becoming an uncaught exception.
        res.on('error', () => {});
        res.on('close', cleanup);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, url, body: res });
      });
      const headersTimer = setTimeout(
        () => fail(new UnavailableError(`${what}: no response within ${this.settings.responseTimeoutMs} ms`)),
        this.settings.responseTimeoutMs,
      );
      req.setTimeout(this.settings.idleTimeoutMs, () =>
        fail(new UnavailableError(`${what}: connection silent for ${this.settings.idleTimeoutMs} ms`)),
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        cleanup();
        if (err instanceof CriError) {
          reject(err);
          return;
        }
        const code = err.code ?? '';
        if (TLS_ERROR_CODES.has(code) || code.startsWith('ERR_TLS') || code.startsWith('ERR_SSL')) {
          reject(
            new FailedPreconditionError(
              `${url.origin}: TLS verification failed (${code}); if this registry uses a private CA, set ca_file for it under image.registry in the config`,
              { cause: err },
            ),
          );
          return;
        }
        reject(
          new UnavailableError(`cannot reach ${url.origin}: ${code === '' ? err.message : code}`, {
            cause: err,
          }),
        );
      });
      req.on('close', () => {
        if (response === undefined) cleanup();
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      req.end(body);
    });
  }
}
