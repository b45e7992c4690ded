/**
 * rootless-cri's configuration: one TOML file (as CRI-O and containerd use), documented
 * defaults, and flags that override single keys.
 *
 * Loading happens in three steps so every error can name the exact key at fault:
 *   1. the file and the overrides are each checked against SCHEMA (types, ranges,
 *      unknown keys) and give a RawConfig whose every key is optional;
 *   2. the two are merged, overrides winning key by key;
 *   3. defaults are filled in. Defaults that derive from other keys (socket from run_dir,
 *      cni_conf_dir from root_dir, ...) are computed last, so `--run-dir X` moves the
 *      socket too unless the socket was set explicitly.
 *
 * deploy/rootless-cri.toml documents every key with its default; a test keeps it in
 * step with this file.
 */

import { readdirSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseToml, TomlError } from 'smol-toml';
import { InvalidArgumentError, NotFoundError } from './errors.js';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** rootlesskit port drivers that have the API the daemon publishes ports through. */
export const PORT_DRIVERS = ['builtin', 'slirp4netns'] as const;
export type PortDriver = (typeof PORT_DRIVERS)[number];
export const PUBLISH_MODES = ['handoff', 'port-driver'] as const;
export type PublishListenersMode = (typeof PUBLISH_MODES)[number];

export const SNAPSHOTTERS = ['fuse-overlayfs', 'overlay'] as const;
export type Snapshotter = (typeof SNAPSHOTTERS)[number];

export interface RegistryConfig {
  /** Endpoints tried in order before the registry itself. */
  mirrors: string[];
  /** Accept plain HTTP and unverified TLS for this host (and its mirrors). */
  insecure: boolean;
  /** Extra CA bundle (PEM) trusted for this host. */
  caFile: string | undefined;
}

export interface Config {
  /** The TOML file that was read, if any. */
  configFile: string | undefined;
  rootDir: string;
  runDir: string;
  socket: string;
  logLevel: LogLevel;
  node: {
    rootlesskit: string;
    slirp4netns: string;
    catatonit: string;
    nsenter: string;
    slirp4netnsMtu: number;
    portDriver: PortDriver;
    /** How the daemon's own listeners reach the host (src/rootless/published-listeners.ts). */
    publishListeners: PublishListenersMode;
    /** How pods' TCP host ports reach the host (src/rootless/host-port-forwarder.ts). */
    hostPorts: PublishListenersMode;
    copyUp: string[];
    stateDir: string;
    disableHostLoopback: boolean;
    /** The node's hostname (its own UTS namespace), mapped to 127.0.0.1 in its /etc/hosts; unset = the host's. */
    hostname: string | undefined;
  };
  runtime: {
    crun: string;
    conmon: string;
    crunRoot: string;
  };
  cgroup: {
    subtree: string;
  };
  network: {
    cniConfDir: string;
    cniBinDirs: string[];
    ipamDataDir: string;
    podCidr: string;
    networkName: string;
    /**
     * A CNI config template; when set, the pod CIDR kubelet hands over (UpdateRuntimeConfig) is
     * written into it and the result installed in cniConfDir (src/os/cni-template.ts).
     */
    cniConfTemplate: string | undefined;
  };
  image: {
    snapshotter: Snapshotter;
    fuseOverlayfs: string;
    maxConcurrentDownloads: number;
    /** Of those, from one registry host. */
    maxConcurrentDownloadsPerRegistry: number;
    /** A download must deliver `downloadMinBytesPerWindow` in every window of this length. */
    downloadProgressWindowSeconds: number;
    downloadMinBytesPerWindow: number;
    /** A whole pull's time limit; 0: none. */
    pullDeadlineSeconds: number;
    maxManifestBytes: number;
    maxConfigBytes: number;
    registries: Record<string, RegistryConfig>;
  };
  streaming: {
    address: string;
    port: number;
    /** For streaming and /metrics (src/streaming/connection-guard.ts). */
    connectionLimits: {
      maxConnections: number;
      maxPerSource: number;
      handshakeTimeoutMs: number;
      idleTimeoutMs: number;
    };
  };
  metrics: {
    enabled: boolean;
    address: string;
    port: number;
  };
  nri: {
    /** Accept NRI plugins (github.com/containerd/nri) on `socketPath`; off by default. */
    enable: boolean;
    socketPath: string;
    /** From connecting to RegisterPlugin, and for Synchronize. */
    pluginRegistrationTimeoutMs: number;
    /** For a plugin to answer any other request. */
    pluginRequestTimeoutMs: number;
  };
}

/**
 * Single keys set from the command line, by their TOML path. Every key here is also a
 * TOML key; they are checked exactly like the file's.
 */
export interface ConfigOverrides {
  root_dir?: string;
  run_dir?: string;
  socket?: string;
  log_level?: LogLevel;
  'node.rootlesskit'?: string;
  'node.slirp4netns'?: string;
  'node.catatonit'?: string;
  'node.nsenter'?: string;
  'node.slirp4netns_mtu'?: number;
  'node.port_driver'?: PortDriver;
  'node.publish_listeners'?: PublishListenersMode;
  'node.host_ports'?: PublishListenersMode;
  'node.copy_up'?: string[];
  'node.state_dir'?: string;
  'node.disable_host_loopback'?: boolean;
  'node.hostname'?: string;
  'runtime.crun'?: string;
  'runtime.conmon'?: string;
  'runtime.crun_root'?: string;
  'cgroup.subtree'?: string;
  'network.cni_conf_dir'?: string;
  'network.cni_bin_dirs'?: string[];
  'network.ipam_data_dir'?: string;
  'network.pod_cidr'?: string;
  'network.network_name'?: string;
  'network.cni_conf_template'?: string;
  'image.snapshotter'?: Snapshotter;
  'image.fuse_overlayfs'?: string;
  'image.max_concurrent_downloads'?: number;
  'image.max_concurrent_downloads_per_registry'?: number;
  'image.download_progress_window_seconds'?: number;
  'image.download_min_bytes_per_window'?: number;
  'image.pull_deadline_seconds'?: number;
  'image.max_manifest_bytes'?: number;
  'image.max_config_bytes'?: number;
  'streaming.address'?: string;
  'streaming.port'?: number;
  'streaming.max_connections'?: number;
  'streaming.max_connections_per_source'?: number;
  'streaming.handshake_timeout_seconds'?: number;
  'streaming.idle_timeout_seconds'?: number;
  'metrics.enabled'?: boolean;
  'metrics.address'?: string;
  'metrics.port'?: number;
  'nri.enable'?: boolean;
  'nri.socket_path'?: string;
  'nri.plugin_registration_timeout_ms'?: number;
  'nri.plugin_request_timeout_ms'?: number;
}

export interface LoadConfigOptions {
  /** A config file named by the user: it must exist. */
  file?: string;
  overrides?: ConfigOverrides;
  /** Environment for the XDG defaults; default process.env. */
  env?: Record<string, string | undefined>;
  /** uid for the /tmp fallback of run_dir; default the process's. */
  uid?: number;
}

// sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_BYTES = 107;

// ---------------------------------------------------------------------------------------
// Schema: one Field per key. A Field checks a value found at `path` and returns it typed.

interface Field<T> {
  check(value: unknown, path: string): T;
  /** For tables with fixed keys: their fields, so unknown keys and overrides can be resolved. */
  fields?: Record<string, Field<unknown>>;
}

type RawOf<F> = F extends Field<infer T> ? T : never;

class ConfigValueError extends Error {}

function fail(path: string, expected: string, value: unknown): never {
  throw new ConfigValueError(`${path}: expected ${expected}, got ${describeValue(value)}`);
}

function describeValue(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value !== null && typeof value === 'object') {
    return value.constructor?.name === 'TomlDate' ? `a date (${String(value)})` : 'a table';
  }
  if (typeof value === 'string') return JSON.stringify(value);
  return `${typeof value} ${String(value)}`;
}

/** A TOML key path as a user would write it: bare keys dotted, others quoted. */
export function joinKeyPath(parent: string, key: string): string {
  const part = /^[A-Za-z0-9_-]+$/.test(key) ? key : JSON.stringify(key);
  return parent === '' ? part : `${parent}.${part}`;
}

function isTable(value: unknown): value is Record<string, unknown> {
  return (
    value !== null &&
    typeof value === 'object' &&
    !Array.isArray(value) &&
    value.constructor?.name !== 'TomlDate'
  );
}

function absolutePath(): Field<string> {
  return {
    check(value, path) {
      if (typeof value !== 'string' || !isAbsolute(value) || value.includes('\0')) {
        fail(path, 'an absolute path', value);
      }
      return resolvePath(value);
    },
  };
}

/** A program: a bare name looked up on PATH, or an absolute path. */
function program(): Field<string> {
  return {
    check(value, path) {
      if (typeof value !== 'string' || value === '' || (value.includes('/') && !isAbsolute(value))) {
        fail(path, 'a program name (looked up on PATH) or an absolute path', value);
      }
      return value;
    },
  };
}

function integer(min: number, max: number): Field<number> {
  return {
    check(value, path) {
      if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
        fail(path, `an integer from ${min} to ${max}`, value);
      }
      return value;
    },
  };
}

function boolean(): Field<boolean> {
  return {
    check(value, path) {
      if (typeof value !== 'boolean') fail(path, 'true or false', value);
      return value;
    },
  };
}

function oneOf<const T extends readonly string[]>(choices: T): Field<T[number]> {
  return {
    check(value, path) {
      if (typeof value !== 'string' || !choices.includes(value)) {
        fail(path, `one of ${choices.map((c) => JSON.stringify(c)).join(', ')}`, value);
      }
      return value as T[number];
    },
  };
}

function list<T>(item: Field<T>, options: { nonEmpty?: boolean } = {}): Field<T[]> {
  return {
    check(value, path) {
      if (!Array.isArray(value)) fail(path, 'an array', value);
      if (options.nonEmpty && value.length === 0) fail(path, 'a non-empty array', value);
      return value.map((element, index) => item.check(element, `${path}[${index}]`));
    },
  };
}

/** An IP literal: the daemon never resolves names (no DNS on the node). */
function ipAddress(): Field<string> {
  return {
    check(value, path) {
      if (typeof value !== 'string' || !isIpLiteral(value)) {
        fail(path, 'an IPv4 or IPv6 address such as "127.0.0.1"', value);
      }
      return value;
    },
  };
}

function isIpLiteral(value: string): boolean {
  return isIP(value) !== 0;
}

function cidr(): Field<string> {
  return {
    check(value, path) {
      const expected = 'a CIDR such as "10.88.0.0/16"';
      if (typeof value !== 'string') fail(path, expected, value);
      const match = /^([^/]+)\/(\d{1,3})$/.exec(value);
      if (!match || !isIpLiteral(match[1]!)) fail(path, expected, value);
      const maxPrefix = match[1]!.includes(':') ? 128 : 32;
      if (Number(match[2]) > maxPrefix) fail(path, expected, value);
      return value;
    },
  };
}

function mirrorUrl(): Field<string> {
  return {
    check(value, path) {
      const expected = 'a URL with http:// or https:// and no credentials (e.g. "http://127.0.0.1:5000")';
      if (typeof value !== 'string') fail(path, expected, value);
      let url: URL;
      try {
        url = new URL(value);
      } catch {
        fail(path, expected, value);
      }
      if (
        (url.protocol !== 'http:' && url.protocol !== 'https:') ||
        url.username !== '' ||
        url.password !== '' ||
        url.search !== '' ||
        url.hash !== ''
      ) {
        fail(path, expected, value);
      }
      return value.replace(/\/+$/, '');
    },
  };
}

/** Name of one cgroup directory: no slashes, no dot names. */
function cgroupName(): Field<string> {
  return {
    check(value, path) {
      if (typeof value !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(value) || value === '.' || value === '..') {
        fail(path, 'a single cgroup directory name (letters, digits, "_", "-", ".")', value);
      }
      return value;
    },
  };
}

/** A hostname that is also a valid Kubernetes node name (RFC 1123, lower case, at most 64 bytes). */
function hostname(): Field<string> {
  return {
    check(value, path) {
      const label = '[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?';
      if (
        typeof value !== 'string' ||
        value.length > 64 ||
        !new RegExp(`^${label}(\\.${label})*$`).test(value)
      ) {
        fail(
          path,
          'a lower-case RFC 1123 hostname of at most 64 characters (a valid Kubernetes node name)',
          value,
        );
      }
      return value;
    },
  };
}

/** CNI network names follow libcni's rule. */
function networkName(): Field<string> {
  return {
    check(value, path) {
      if (typeof value !== 'string' || !/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(value)) {
        fail(
          path,
          'a CNI network name (letters, digits, "_", "-", "."; starting with a letter or digit)',
          value,
        );
      }
      return value;
    },
  };
}

function table<const F extends Record<string, Field<unknown>>>(
  fields: F,
): Field<{ [K in keyof F]?: RawOf<F[K]> }> {
  return {
    fields,
    check(value, path) {
      if (!isTable(value)) fail(path === '' ? 'the document' : path, 'a table', value);
      const out: Record<string, unknown> = {};
      for (const [key, child] of Object.entries(value)) {
        const keyPath = joinKeyPath(path, key);
        const field = Object.hasOwn(fields, key) ? fields[key] : undefined;
        if (!field) {
          throw new ConfigValueError(`${keyPath}: unknown key${suggestKey(key, Object.keys(fields), path)}`);
        }
        out[key] = field.check(child, keyPath);
      }
      return out as { [K in keyof F]?: RawOf<F[K]> };
    },
  };
}

/** A table whose keys are chosen by the user (registry hosts), each holding the same table. */
function mapOf<T>(key: (name: string, path: string) => void, entry: Field<T>): Field<Record<string, T>> {
  return {
    check(value, path) {
      if (!isTable(value)) fail(path, 'a table', value);
      const out: Record<string, T> = {};
      for (const [name, child] of Object.entries(value)) {
        const keyPath = joinKeyPath(path, name);
        key(name, keyPath);
        out[name] = entry.check(child, keyPath);
      }
      return out;
    },
  };
}

function registryHost(name: string, path: string): void {
  // host, host:port or [ipv6]:port; no scheme, no path (those belong in mirrors).
  if (!/^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?$/.test(name)) {
    throw new ConfigValueError(
      `${path}: expected a registry host such as "registry.k8s.io" or "127.0.0.1:5000" (no scheme, no path)`,
    );
  }
}

function suggestKey(key: string, known: string[], path: string): string {
  const close = known.filter((k) => editDistance(k, key) <= 2);
  const where = path === '' ? 'the top level' : `[${path}]`;
  const hint = close.length > 0 ? `; did you mean ${close.map((k) => `"${k}"`).join(' or ')}?` : '';
  return `${hint} (keys of ${where}: ${known.join(', ')})`;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length]!;
}

const SCHEMA = table({
  root_dir: absolutePath(),
  run_dir: absolutePath(),
  socket: absolutePath(),
  log_level: oneOf(LOG_LEVELS),
  node: table({
    rootlesskit: program(),
    slirp4netns: program(),
    catatonit: program(),
    nsenter: program(),
    slirp4netns_mtu: integer(1280, 65520),
    port_driver: oneOf(PORT_DRIVERS),
    publish_listeners: oneOf(PUBLISH_MODES),
    host_ports: oneOf(PUBLISH_MODES),
    copy_up: list(absolutePath()),
    state_dir: absolutePath(),
    disable_host_loopback: boolean(),
    hostname: hostname(),
  }),
  runtime: table({
    crun: program(),
    conmon: program(),
    crun_root: absolutePath(),
  }),
  cgroup: table({
    subtree: cgroupName(),
  }),
  network: table({
    cni_conf_dir: absolutePath(),
    cni_bin_dirs: list(absolutePath(), { nonEmpty: true }),
    ipam_data_dir: absolutePath(),
    pod_cidr: cidr(),
    network_name: networkName(),
    cni_conf_template: absolutePath(),
  }),
  image: table({
    snapshotter: oneOf(SNAPSHOTTERS),
    fuse_overlayfs: program(),
    max_concurrent_downloads: integer(1, 64),
    max_concurrent_downloads_per_registry: integer(1, 64),
    download_progress_window_seconds: integer(1, 3600),
    download_min_bytes_per_window: integer(0, 1024 * 1024 * 1024),
    pull_deadline_seconds: integer(0, 7 * 24 * 3600),
    max_manifest_bytes: integer(1024, 64 * 1024 * 1024),
    max_config_bytes: integer(1024, 256 * 1024 * 1024),
    registry: mapOf(
      registryHost,
      table({
        mirrors: list(mirrorUrl()),
        insecure: boolean(),
        ca_file: absolutePath(),
      }),
    ),
  }),
  streaming: table({
    address: ipAddress(),
    port: integer(0, 65535),
    max_connections: integer(1, 65536),
    max_connections_per_source: integer(1, 65536),
    handshake_timeout_seconds: integer(1, 3600),
    idle_timeout_seconds: integer(0, 7 * 24 * 3600),
  }),
  metrics: table({
    enabled: boolean(),
    address: ipAddress(),
    port: integer(0, 65535),
  }),
  nri: table({
    enable: boolean(),
    socket_path: absolutePath(),
    plugin_registration_timeout_ms: integer(100, 600_000),
    plugin_request_timeout_ms: integer(100, 600_000),
  }),
});

export type RawConfig = RawOf<typeof SCHEMA>;

/** Every key path the config accepts, in schema order (registry hosts as `"<host>"`). */
export function configKeyPaths(): string[] {
  const out: string[] = [];
  const walk = (fields: Record<string, Field<unknown>>, prefix: string) => {
    for (const [key, field] of Object.entries(fields)) {
      const path = joinKeyPath(prefix, key);
      if (field.fields) walk(field.fields, path);
      else out.push(path);
    }
  };
  walk(SCHEMA.fields!, '');
  return out;
}

// ---------------------------------------------------------------------------------------
// Loading

/** Check a TOML document's text; `source` names it in errors. */
export function parseConfigToml(text: string, source: string): RawConfig {
  let document: unknown;
  try {
    document = parseToml(text);
  } catch (err) {
    const where = err instanceof TomlError ? ` (line ${err.line}, column ${err.column})` : '';
    const reason = err instanceof Error ? err.message.split('\n')[0] : String(err);
    throw new InvalidArgumentError(`${source}: not valid TOML${where}: ${reason}`, { cause: err });
  }
  return checkRaw(document, source);
}

function checkRaw(document: unknown, source: string): RawConfig {
  try {
    return SCHEMA.check(document, '');
  } catch (err) {
    if (err instanceof ConfigValueError) {
      throw new InvalidArgumentError(`${source}: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

/** Turn flat overrides into a RawConfig, checking each key as if it were in the file. */
export function checkOverrides(overrides: ConfigOverrides | Record<string, unknown>): RawConfig {
  const document: Record<string, unknown> = {};
  for (const [keyPath, value] of Object.entries(overrides)) {
    if (value === undefined) continue;
    const parts = keyPath.split('.');
    let fields = SCHEMA.fields!;
    let target = document;
    for (const [index, part] of parts.entries()) {
      const field = Object.hasOwn(fields, part) ? fields[part] : undefined;
      const last = index === parts.length - 1;
      if (!field || (last && field.fields) || (!last && !field.fields)) {
        throw new InvalidArgumentError(
          `override ${keyPath}: unknown key; settable keys: ${configKeyPaths()
            .filter((k) => !k.includes('"'))
            .join(', ')}`,
        );
      }
      if (last) {
        target[part] = value;
      } else {
        target[part] ??= {};
        target = target[part] as Record<string, unknown>;
        fields = field.fields!;
      }
    }
  }
  return checkRaw(document, 'override');
}

/**
 * Parse `key=value` as given to `--set`: the value is read as a TOML value when it is
 * one (numbers, booleans, arrays, quoted strings), otherwise taken as a plain string.
 */
export function parseOverrideAssignment(assignment: string): ConfigOverrides {
  const equals = assignment.indexOf('=');
  if (equals <= 0) {
    throw new InvalidArgumentError(
      `override "${assignment}": expected KEY=VALUE, e.g. image.snapshotter=overlay`,
    );
  }
  const key = assignment.slice(0, equals).trim();
  const text = assignment.slice(equals + 1);
  let value: unknown = text;
  try {
    value = (parseToml(`value = ${text}`) as { value: unknown }).value;
  } catch {
    // Not a TOML literal: a bare word or path, which is what a string flag usually is.
  }
  // Checked here so a bad --set fails before anything else happens.
  checkOverrides({ [key]: value });
  return { [key]: value } as ConfigOverrides;
}

function mergeRaw(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const existing = out[key];
    out[key] = isTable(existing) && isTable(value) ? mergeRaw(existing, value) : value;
  }
  return out;
}

/** `$XDG_CONFIG_HOME/rootless-cri/config.toml`, read when no file is named. */
export function defaultConfigFile(env: Record<string, string | undefined> = process.env): string {
  return join(xdgDir(env, 'XDG_CONFIG_HOME', '.config'), 'rootless-cri', 'config.toml');
}

function xdgDir(env: Record<string, string | undefined>, name: string, homeRelative: string): string {
  const value = env[name];
  // The XDG spec says relative values are invalid and must be ignored.
  if (value && isAbsolute(value)) return value;
  const home = env.HOME && isAbsolute(env.HOME) ? env.HOME : homedir();
  return join(home, homeRelative);
}

/**
 * The shipped CNI config directory (deploy/cni in the source tree or the installed
 * package), found by walking up from this module so it works from src/ and dist/src/.
 */
export function shippedCniConfDir(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, 'deploy', 'cni');
    if (hasCniConfigFile(candidate)) return candidate;
    dir = dirname(dir);
  }
  return undefined;
}

function hasCniConfigFile(dir: string): boolean {
  try {
    return readdirSync(dir).some((name) => /\.(conflist|conf|json)$/.test(name));
  } catch {
    return false;
  }
}

function readConfigFile(file: string, required: boolean): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !required) return undefined;
    if (code === 'ENOENT') {
      throw new NotFoundError(
        `config file ${file} does not exist; create it (deploy/rootless-cri.toml is a documented example) or leave out --config`,
        { cause: err },
      );
    }
    throw new InvalidArgumentError(
      `config file ${file} cannot be read (${code ?? 'error'}); check its permissions`,
      {
        cause: err,
      },
    );
  }
}

/** Read the config file (if any), apply overrides, fill in defaults. */
export function loadConfig(options: LoadConfigOptions = {}): Config {
  const env = options.env ?? process.env;
  const uid = options.uid ?? process.getuid?.() ?? 0;
  const file = options.file !== undefined ? resolvePath(options.file) : defaultConfigFile(env);
  const text = readConfigFile(file, options.file !== undefined);
  const fromFile = text === undefined ? {} : parseConfigToml(text, file);
  const fromFlags = checkOverrides(options.overrides ?? {});
  const raw = mergeRaw(fromFile, fromFlags) as RawConfig;
  return resolveConfig(raw, { env, uid, configFile: text === undefined ? undefined : file });
}

/** Fill in defaults. Exported for tests and for callers that build a RawConfig themselves. */
export function resolveConfig(
  raw: RawConfig,
  context: { env: Record<string, string | undefined>; uid: number; configFile?: string | undefined },
): Config {
  const { env, uid } = context;
  const rootDir = raw.root_dir ?? join(xdgDir(env, 'XDG_DATA_HOME', '.local/share'), 'rootless-cri');
  const runtimeDir = env.XDG_RUNTIME_DIR && isAbsolute(env.XDG_RUNTIME_DIR) ? env.XDG_RUNTIME_DIR : undefined;
  const runDir = raw.run_dir ?? (runtimeDir ? join(runtimeDir, 'rootless-cri') : `/tmp/rootless-cri-${uid}`);
  const socket = raw.socket ?? join(runDir, 'rootless-cri.sock');
  if (Buffer.byteLength(socket) > MAX_SOCKET_PATH_BYTES) {
    const origin = raw.socket !== undefined ? 'socket' : 'socket (derived from run_dir)';
    throw new InvalidArgumentError(
      `${origin}: "${socket}" is ${Buffer.byteLength(socket)} bytes, longer than the ${MAX_SOCKET_PATH_BYTES} a unix socket path may have; set a shorter socket or run_dir`,
    );
  }

  const node = raw.node ?? {};
  const runtime = raw.runtime ?? {};
  const network = raw.network ?? {};
  const image = raw.image ?? {};
  const streaming = raw.streaming ?? {};
  const metrics = raw.metrics ?? {};
  const nri = raw.nri ?? {};
  const nriSocket = nri.socket_path ?? join(runDir, 'nri.sock');
  if (Buffer.byteLength(nriSocket) > MAX_SOCKET_PATH_BYTES) {
    const origin =
      nri.socket_path !== undefined ? 'nri.socket_path' : 'nri.socket_path (derived from run_dir)';
    throw new InvalidArgumentError(
      `${origin}: "${nriSocket}" is ${Buffer.byteLength(nriSocket)} bytes, longer than the ${MAX_SOCKET_PATH_BYTES} a unix socket path may have; set a shorter nri.socket_path or run_dir`,
    );
  }

  const registries: Record<string, RegistryConfig> = {};
  for (const [host, entry] of Object.entries(image.registry ?? {})) {
    registries[host] = {
      mirrors: entry.mirrors ?? [],
      insecure: entry.insecure ?? false,
      caFile: entry.ca_file,
    };
  }

  return {
    configFile: context.configFile,
    rootDir,
    runDir,
    socket,
    logLevel: raw.log_level ?? 'info',
    node: {
      rootlesskit: node.rootlesskit ?? 'rootlesskit',
      slirp4netns: node.slirp4netns ?? 'slirp4netns',
      catatonit: node.catatonit ?? 'catatonit',
      nsenter: node.nsenter ?? 'nsenter',
      slirp4netnsMtu: node.slirp4netns_mtu ?? 65520,
      portDriver: node.port_driver ?? 'builtin',
      publishListeners: node.publish_listeners ?? 'handoff',
      hostPorts: node.host_ports ?? 'handoff',
      copyUp: node.copy_up ?? ['/etc', '/run', '/var/lib'],
      stateDir: node.state_dir ?? join(runDir, 'node'),
      disableHostLoopback: node.disable_host_loopback ?? true,
      hostname: node.hostname,
    },
    runtime: {
      crun: runtime.crun ?? 'crun',
      conmon: runtime.conmon ?? 'conmon',
      crunRoot: runtime.crun_root ?? join(runDir, 'crun'),
    },
    cgroup: {
      subtree: raw.cgroup?.subtree ?? 'rootless-cri',
    },
    network: {
      // With a template the daemon writes the config itself: into its own directory.
      cniConfDir:
        network.cni_conf_dir ??
        (network.cni_conf_template ? join(rootDir, 'cni', 'net.d') : defaultCniConfDir(rootDir)),
      cniBinDirs: network.cni_bin_dirs ?? ['/usr/lib/cni', '/opt/cni/bin'],
      ipamDataDir: network.ipam_data_dir ?? join(runDir, 'cni', 'networks'),
      podCidr: network.pod_cidr ?? '10.88.0.0/16',
      networkName: network.network_name ?? 'rootless-cri',
      cniConfTemplate: network.cni_conf_template,
    },
    image: {
      snapshotter: image.snapshotter ?? 'fuse-overlayfs',
      fuseOverlayfs: image.fuse_overlayfs ?? 'fuse-overlayfs',
      maxConcurrentDownloads: image.max_concurrent_downloads ?? 3,
      // One registry may use all but one slot, so another registry always has one.
      maxConcurrentDownloadsPerRegistry:
        image.max_concurrent_downloads_per_registry ?? Math.max(1, (image.max_concurrent_downloads ?? 3) - 1),
      downloadProgressWindowSeconds: image.download_progress_window_seconds ?? 30,
      downloadMinBytesPerWindow: image.download_min_bytes_per_window ?? 16 * 1024,
      pullDeadlineSeconds: image.pull_deadline_seconds ?? 3600,
      maxManifestBytes: image.max_manifest_bytes ?? 4 * 1024 * 1024,
      maxConfigBytes: image.max_config_bytes ?? 8 * 1024 * 1024,
      registries,
    },
    streaming: {
      address: streaming.address ?? '127.0.0.1',
      port: streaming.port ?? 0,
      connectionLimits: {
        maxConnections: streaming.max_connections ?? 256,
        maxPerSource: streaming.max_connections_per_source ?? 64,
        handshakeTimeoutMs: (streaming.handshake_timeout_seconds ?? 10) * 1000,
        idleTimeoutMs: (streaming.idle_timeout_seconds ?? 4 * 3600) * 1000,
      },
    },
    metrics: {
      enabled: metrics.enabled ?? true,
      address: metrics.address ?? '127.0.0.1',
      port: metrics.port ?? 0,
    },
    nri: {
      enable: nri.enable ?? false,
      socketPath: nriSocket,
      pluginRegistrationTimeoutMs: nri.plugin_registration_timeout_ms ?? 5000,
      pluginRequestTimeoutMs: nri.plugin_request_timeout_ms ?? 2000,
    },
  };
}

/**
 * `<root_dir>/cni/net.d` when the operator put a config there, else the shipped default,
 * so a fresh install has a working network without copying files around.
 */
function defaultCniConfDir(rootDir: string): string {
  const own = join(rootDir, 'cni', 'net.d');
  if (hasCniConfigFile(own)) return own;
  return shippedCniConfDir() ?? own;
}
