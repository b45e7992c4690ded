import { InvalidArgumentError } from '../errors.js';
import type { ImageReference } from './reference.js';

/**
 * Where to fetch an image from. For each registry the config may list mirrors
 * (`image.registry."<host>" = { mirrors = ["http://127.0.0.1:5000"], insecure, ca_file }`);
 * a pull tries every mirror in order with the repository path unchanged, then the registry
 * itself (containerd hosts.toml / CRI-O registries.conf semantics). The reference is never
 * rewritten: callers record the image under the name that was asked for.
 */

export interface RegistryHostConfig {
  /** Mirror base URLs (`http://127.0.0.1:5000`, `https://mirror.example`) or bare `host[:port]`. */
  mirrors?: string[];
  /**
   * Talk plain HTTP to this registry (and to mirrors given without a scheme). Default:
   * true for loopback hosts (localhost, 127.0.0.0/8, ::1), false otherwise.
   */
  insecure?: boolean;
  /** PEM file with the CA certificate(s) to trust, in addition to the system ones. */
  caFile?: string;
}

/** Keyed by registry host as it appears in references: `docker.io`, `127.0.0.1:5000`. */
export type RegistryHostsConfig = Record<string, RegistryHostConfig>;

export interface RegistryEndpoint {
  /** `http://127.0.0.1:5000` or `https://registry-1.docker.io`: scheme, host and port only. */
  baseUrl: URL;
  /** `host[:port]` as in baseUrl: what credentials and tokens are tied to. */
  host: string;
  /** The registry this endpoint serves for: the reference's domain. */
  registry: string;
  mirror: boolean;
  caFile?: string;
}

const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_API = 'registry-1.docker.io';

/** True for hosts that are reached over loopback: plain HTTP is fine there. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127(?:\.\d{1,3}){3}$/.test(h);
}

function hostnameOf(hostWithPort: string): string {
  if (hostWithPort.startsWith('[')) return hostWithPort.slice(0, hostWithPort.indexOf(']') + 1);
  const colon = hostWithPort.lastIndexOf(':');
  return colon < 0 ? hostWithPort : hostWithPort.slice(0, colon);
}

function parseBaseUrl(text: string, insecure: boolean, where: string): URL {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text)
    ? text
    : `${insecure || isLoopbackHost(hostnameOf(text)) ? 'http' : 'https'}://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch (err) {
    throw new InvalidArgumentError(`${where}: invalid URL ${JSON.stringify(text)}`, { cause: err });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new InvalidArgumentError(`${where}: ${JSON.stringify(text)} must be an http:// or https:// URL`);
  }
  if (
    (url.pathname !== '/' && url.pathname !== '') ||
    url.search !== '' ||
    url.hash !== '' ||
    url.username !== ''
  ) {
    throw new InvalidArgumentError(
      `${where}: ${JSON.stringify(text)} must be scheme://host[:port] only (the repository path is kept from the image name)`,
    );
  }
  return new URL(`${url.protocol}//${url.host}`);
}

/**
 * The endpoints to try for `ref`, in order: configured mirrors, then the registry itself.
 * Docker Hub's API lives at registry-1.docker.io.
 */
export function resolveEndpoints(
  ref: Pick<ImageReference, 'domain'>,
  config: RegistryHostsConfig = {},
): RegistryEndpoint[] {
  const registry = ref.domain;
  const own = config[registry] ?? {};
  const endpoints: RegistryEndpoint[] = [];
  for (const mirror of own.mirrors ?? []) {
    const baseUrl = parseBaseUrl(mirror, own.insecure === true, `mirror of ${registry}`);
    // A mirror's own entry (if any) says which CA to trust for it.
    const mirrorConfig = config[baseUrl.host] ?? {};
    const endpoint: RegistryEndpoint = { baseUrl, host: baseUrl.host, registry, mirror: true };
    const caFile = mirrorConfig.caFile ?? own.caFile;
    if (caFile !== undefined && baseUrl.protocol === 'https:') endpoint.caFile = caFile;
    endpoints.push(endpoint);
  }
  const originHost = registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
  // Loopback registries speak plain HTTP unless the config says `insecure = false`.
  const insecure = own.insecure ?? isLoopbackHost(hostnameOf(originHost));
  const baseUrl = new URL(`${insecure ? 'http' : 'https'}://${originHost}`);
  const origin: RegistryEndpoint = { baseUrl, host: baseUrl.host, registry, mirror: false };
  if (own.caFile !== undefined && !insecure) origin.caFile = own.caFile;
  endpoints.push(origin);
  return endpoints;
}

/**
 * Validates the `image.registry` table of the config file (already parsed from TOML):
 * `{ "<host>": { mirrors = [...], insecure = bool, ca_file = "..." } }`.
 */
export function parseRegistryHostsConfig(raw: unknown, where = 'image.registry'): RegistryHostsConfig {
  if (raw === undefined) return {};
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new InvalidArgumentError(`${where} must be a table of registry hosts`);
  }
  const out: RegistryHostsConfig = {};
  for (const [host, value] of Object.entries(raw)) {
    const at = `${where}."${host}"`;
    if (host === '' || /[/\s@]/.test(host))
      throw new InvalidArgumentError(`${at}: not a registry host[:port]`);
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new InvalidArgumentError(`${at} must be a table`);
    }
    const entry = value as Record<string, unknown>;
    for (const key of Object.keys(entry)) {
      if (!['mirrors', 'insecure', 'ca_file'].includes(key)) {
        throw new InvalidArgumentError(`${at}: unknown key "${key}" (expected mirrors, insecure, ca_file)`);
      }
    }
    const parsed: RegistryHostConfig = {};
    if (entry.mirrors !== undefined) {
      if (!Array.isArray(entry.mirrors) || !entry.mirrors.every((m) => typeof m === 'string' && m !== '')) {
        throw new InvalidArgumentError(`${at}.mirrors must be a list of URLs`);
      }
      parsed.mirrors = [...(entry.mirrors as string[])];
      for (const m of parsed.mirrors) parseBaseUrl(m, entry.insecure === true, `${at}.mirrors`);
    }
    if (entry.insecure !== undefined) {
      if (typeof entry.insecure !== 'boolean')
        throw new InvalidArgumentError(`${at}.insecure must be true or false`);
      parsed.insecure = entry.insecure;
    }
    if (entry.ca_file !== undefined) {
      if (typeof entry.ca_file !== 'string' || !entry.ca_file.startsWith('/')) {
        throw new InvalidArgumentError(`${at}.ca_file must be an absolute path to a PEM file`);
      }
      parsed.caFile = entry.ca_file;
    }
    out[host] = parsed;
  }
  return out;
}

/** `https://127.0.0.1:5000 (mirror of registry.k8s.io)`, for logs and error messages. */
export function describeEndpoint(endpoint: RegistryEndpoint): string {
  return endpoint.mirror
    ? `${endpoint.baseUrl.origin} (mirror of ${endpoint.registry})`
    : endpoint.baseUrl.origin;
}
