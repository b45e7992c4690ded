import { FailedPreconditionError, InvalidArgumentError, UnavailableError } from '../errors.js';
import { isLoopbackHost, type RegistryEndpoint } from './registry-hosts.js';

/**
 * Registry authentication: Basic, and the Bearer token flow of the distribution spec
 * (`WWW-Authenticate: Bearer realm=...,service=...,scope=...` → token server → retry).
 * Credentials come from the CRI AuthConfig of the pull request. Tokens are cached per
 * registry host and repository scope for their lifetime.
 */

/** The CRI `AuthConfig` message, as the generated types spell it (keepCase). */
export interface AuthConfig {
  username?: string;
  password?: string;
  /** base64("username:password"). */
  auth?: string;
  server_address?: string;
  /** An OAuth2 refresh token: exchanged at the token realm with grant_type=refresh_token. */
  identity_token?: string;
  /** A bearer token sent to the registry as is. */
  registry_token?: string;
}

export interface Challenge {
  /** Lowercase: `bearer`, `basic`. */
  scheme: string;
  params: Record<string, string>;
}

/** What the authorizer needs from the HTTP layer (kept narrow so it can be faked). */
export interface TokenTransport {
  request(options: {
    method: 'GET' | 'POST';
    url: URL;
    headers: Record<string, string>;
    body?: string;
    signal?: AbortSignal | undefined;
    caFile?: string | undefined;
    maxBytes: number;
    what: string;
  }): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }>;
}

type Secret = { kind: 'basic'; username: string; password: string } | { kind: 'identity'; token: string };

const TOKEN_MAX_BYTES = 1024 * 1024;
const DEFAULT_TOKEN_LIFETIME_S = 60;
const CLIENT_ID = 'rootless-cri';

/**
 * Parses a WWW-Authenticate header value into challenges. Tolerant of odd spacing and of
 * commas inside quoted strings; returns what it could read and never throws.
 */
export function parseWwwAuthenticate(header: string | string[] | undefined): Challenge[] {
  if (header === undefined) return [];
  const values = Array.isArray(header) ? header : [header];
  const challenges: Challenge[] = [];
  for (const value of values) {
    let i = 0;
    const s = value.slice(0, 16 * 1024);
    let current: Challenge | undefined;
    while (i < s.length) {
      while (i < s.length && (s[i] === ' ' || s[i] === ',' || s[i] === '\t')) i++;
      const tokenStart = i;
      while (i < s.length && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(s[i]!)) i++;
      const token = s.slice(tokenStart, i);
      if (token === '') {
        i++;
        continue;
      }
      let j = i;
      while (j < s.length && s[j] === ' ') j++;
      if (s[j] === '=' && current !== undefined) {
        j++;
        while (j < s.length && s[j] === ' ') j++;
        let val = '';
        if (s[j] === '"') {
          j++;
          while (j < s.length && s[j] !== '"') {
            if (s[j] === '\\' && j + 1 < s.length) j++;
            val += s[j];
            j++;
          }
          j++;
        } else {
          const valueStart = j;
          while (j < s.length && s[j] !== ',' && s[j] !== ' ') j++;
          val = s.slice(valueStart, j);
        }
        current.params[token.toLowerCase()] = val;
        i = j;
      } else {
        current = { scheme: token.toLowerCase(), params: {} };
        challenges.push(current);
      }
    }
  }
  return challenges;
}

function normaliseServerAddress(address: string): string {
  let host = address.trim();
  host = host.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  host = host.split('/', 1)[0]!;
  if (host === 'index.docker.io' || host === 'registry-1.docker.io') host = 'docker.io';
  return host;
}

/**
 * Whether the secrets in `auth` may be sent to `endpoint`. Without a server_address they go
 * to every endpoint of the pull (mirrors are the operator's own choice, as in containerd);
 * with one, only to the endpoint or registry it names.
 */
export function authAppliesTo(auth: AuthConfig, endpoint: RegistryEndpoint): boolean {
  if (auth.server_address === undefined || auth.server_address === '') return true;
  const server = normaliseServerAddress(auth.server_address);
  const names = [endpoint.host, endpoint.mirror ? undefined : endpoint.registry];
  if (endpoint.host === 'registry-1.docker.io') names.push('docker.io');
  return names.includes(server);
}

/** The username/password or identity token from `auth` that may be sent to `endpoint`. */
export function credentialsFor(auth: AuthConfig | undefined, endpoint: RegistryEndpoint): Secret | undefined {
  if (auth === undefined || auth === null || !authAppliesTo(auth, endpoint)) return undefined;
  if (auth.username !== undefined && auth.username !== '') {
    return { kind: 'basic', username: auth.username, password: auth.password ?? '' };
  }
  if (auth.identity_token !== undefined && auth.identity_token !== '') {
    return { kind: 'identity', token: auth.identity_token };
  }
  if (auth.auth !== undefined && auth.auth !== '') {
    const decoded = Buffer.from(auth.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon <= 0) {
      throw new InvalidArgumentError('AuthConfig.auth must be base64 of "username:password"');
    }
    return { kind: 'basic', username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }
  return undefined;
}

function basicHeader(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`;
}

interface CachedToken {
  header: string;
  expiresAt: number;
}

/** Authorization state of one pull: credentials, which hosts want Basic, cached tokens. */
export class RegistryAuthorizer {
  private readonly tokens = new Map<string, CachedToken>();
  private readonly basicHosts = new Set<string>();

  constructor(
    private readonly auth: AuthConfig | undefined,
    private readonly transport: TokenTransport,
    private readonly now: () => number = Date.now,
  ) {}

  /** The Authorization header for a request to `endpoint` for `scope`, if one is known. */
  authorization(endpoint: RegistryEndpoint, scope: string): string | undefined {
    const registryToken = this.registryToken(endpoint);
    if (registryToken !== undefined) return `Bearer ${registryToken}`;
    const cached = this.tokens.get(`${endpoint.host} ${scope}`);
    if (cached !== undefined && cached.expiresAt > this.now()) return cached.header;
    if (this.basicHosts.has(endpoint.host)) {
      const secret = credentialsFor(this.auth, endpoint);
      if (secret?.kind === 'basic') return basicHeader(secret.username, secret.password);
    }
    return undefined;
  }

  /**
   * Handles a 401 from `endpoint`: obtains fresh authorization per the challenge and returns
   * (the caller retries once), or throws FailedPrecondition when nothing more can be done.
   */
  async onUnauthorized(
    endpoint: RegistryEndpoint,
    scope: string,
    wwwAuthenticate: string | string[] | undefined,
    signal?: AbortSignal,
  ): Promise<void> {
    const where = endpoint.baseUrl.origin;
    if (this.registryToken(endpoint) !== undefined) {
      throw new FailedPreconditionError(
        `registry ${where} rejected the registry token (HTTP 401); check the pull secret`,
      );
    }
    const challenges = parseWwwAuthenticate(wwwAuthenticate);
    const secret = credentialsFor(this.auth, endpoint);
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm !== undefined);
    if (bearer !== undefined) {
      const key = `${endpoint.host} ${scope}`;
      this.tokens.delete(key);
      const token = await this.fetchToken(endpoint, bearer.params, scope, secret, signal);
      this.tokens.set(key, token);
      return;
    }
    if (challenges.some((c) => c.scheme === 'basic')) {
      if (secret?.kind !== 'basic') {
        throw new FailedPreconditionError(
          `registry ${where} requires a username and password (HTTP 401, Basic); pass credentials (crictl pull --creds user:password, or an imagePullSecret)`,
        );
      }
      if (this.basicHosts.has(endpoint.host)) {
        throw new FailedPreconditionError(
          `registry ${where} rejected the credentials for user "${secret.username}" (HTTP 401); check the username and password`,
        );
      }
      this.basicHosts.add(endpoint.host);
      return;
    }
    throw new FailedPreconditionError(
      `registry ${where} answered HTTP 401 without a usable WWW-Authenticate challenge${secret === undefined ? '; it may require credentials' : ''}`,
    );
  }

  private registryToken(endpoint: RegistryEndpoint): string | undefined {
    const token = this.auth?.registry_token;
    if (token === undefined || token === '' || /[\r\n]/.test(token)) return undefined;
    // A registry token is tied to a server as much as a password is.
    return authAppliesTo(this.auth!, endpoint) ? token : undefined;
  }

  private async fetchToken(
    endpoint: RegistryEndpoint,
    params: Record<string, string>,
    scope: string,
    secret: Secret | undefined,
    signal: AbortSignal | undefined,
  ): Promise<CachedToken> {
    let realm: URL;
    try {
      realm = new URL(params.realm!);
    } catch (err) {
      throw new FailedPreconditionError(
        `registry ${endpoint.baseUrl.origin} sent an invalid token realm ${JSON.stringify(params.realm)}`,
        { cause: err },
      );
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') {
      throw new FailedPreconditionError(`token realm ${realm.href} is not an http(s) URL`);
    }
    // Never send credentials in clear text to a token server the registry itself did not
    // reach in clear text.
    if (
      realm.protocol === 'http:' &&
      secret !== undefined &&
      endpoint.baseUrl.protocol === 'https:' &&
      !isLoopbackHost(realm.hostname)
    ) {
      throw new FailedPreconditionError(
        `registry ${endpoint.baseUrl.origin} sent plain-HTTP token realm ${realm.origin}; refusing to send credentials there`,
      );
    }
    const scopes = [params.scope, scope].filter((s): s is string => s !== undefined && s !== '');
    const uniqueScopes = [...new Set(scopes)];
    const service = params.service;
    const what = `token from ${realm.origin}`;
    let response: Awaited<ReturnType<TokenTransport['request']>>;
    if (secret?.kind === 'identity') {
      const form = new URLSearchParams({
        grant_type: 'refresh_token',
        refresh_token: secret.token,
        client_id: CLIENT_ID,
      });
      if (service !== undefined) form.set('service', service);
      if (uniqueScopes.length > 0) form.set('scope', uniqueScopes.join(' '));
      response = await this.transport.request({
        method: 'POST',
        url: realm,
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: form.toString(),
        signal,
        caFile: realm.host === endpoint.host ? endpoint.caFile : undefined,
        maxBytes: TOKEN_MAX_BYTES,
        what,
      });
    } else {
      const url = new URL(realm.href);
      if (service !== undefined) url.searchParams.set('service', service);
      for (const s of uniqueScopes) url.searchParams.append('scope', s);
      const headers: Record<string, string> = {};
      if (secret?.kind === 'basic') headers.authorization = basicHeader(secret.username, secret.password);
      response = await this.transport.request({
        method: 'GET',
        url,
        headers,
        signal,
        caFile: realm.host === endpoint.host ? endpoint.caFile : undefined,
        maxBytes: TOKEN_MAX_BYTES,
        what,
      });
    }
    if (response.status === 401 || response.status === 403) {
      throw new FailedPreconditionError(
        secret === undefined
          ? `token server ${realm.origin} refused anonymous access to ${uniqueScopes.join(' ')} (HTTP ${response.status}); the image may be private: pass credentials`
          : `token server ${realm.origin} rejected the credentials (HTTP ${response.status}); check the pull secret`,
      );
    }
    if (response.status < 200 || response.status > 299) {
      throw new UnavailableError(`token server ${realm.origin} answered HTTP ${response.status}`);
    }
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(response.body.toString('utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new UnavailableError(`token server ${realm.origin} sent a body that is not JSON`, { cause: err });
    }
    const token =
      typeof body?.token === 'string' && body.token !== ''
        ? body.token
        : typeof body?.access_token === 'string' && body.access_token !== ''
          ? body.access_token
          : undefined;
    if (token === undefined || /[\r\n]/.test(token)) {
      throw new UnavailableError(`token server ${realm.origin} sent no usable token`);
    }
    const lifetime =
      typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_LIFETIME_S;
    // Renew a little early so a token does not expire between sending and arriving.
    const expiresAt = this.now() + Math.max(1, lifetime - 5) * 1000;
    return { header: `Bearer ${token}`, expiresAt };
  }
}
