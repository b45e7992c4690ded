import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  type Config,
  configKeyPaths,
  joinKeyPath,
  loadConfig,
  parseConfigToml,
  parseOverrideAssignment,
  shippedCniConfDir,
} from '../../src/config.js';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';

const EXAMPLE = fileURLToPath(new URL('../../deploy/rootless-cri.toml', import.meta.url));

let dir: string;
let home: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'config-test-'));
  home = join(dir, 'home');
  mkdirSync(home);
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function writeToml(text: string): string {
  const file = join(dir, 'config.toml');
  writeFileSync(file, text);
  return file;
}

/** The error message loadConfig throws for a file with this text. */
function errorFor(text: string): string {
  const file = writeToml(text);
  try {
    loadConfig({ file, env: { HOME: home }, uid: 1000 });
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidArgumentError);
    return (err as Error).message;
  }
  throw new Error('expected loadConfig to throw');
}

describe('defaults', () => {
  it('puts state under XDG_DATA_HOME and XDG_RUNTIME_DIR', () => {
    const config = loadConfig({
      env: { HOME: home, XDG_DATA_HOME: '/data', XDG_RUNTIME_DIR: '/run/user/1000' },
      uid: 1000,
    });
    expect(config.rootDir).toBe('/data/rootless-cri');
    expect(config.runDir).toBe('/run/user/1000/rootless-cri');
    expect(config.socket).toBe('/run/user/1000/rootless-cri/rootless-cri.sock');
    expect(config.node.stateDir).toBe('/run/user/1000/rootless-cri/node');
    expect(config.runtime.crunRoot).toBe('/run/user/1000/rootless-cri/crun');
    expect(config.network.ipamDataDir).toBe('/run/user/1000/rootless-cri/cni/networks');
    expect(config.configFile).toBeUndefined();
  });

  it('falls back to ~/.local/share and /tmp/rootless-cri-<uid>', () => {
    const config = loadConfig({ env: { HOME: home }, uid: 4321 });
    expect(config.rootDir).toBe(join(home, '.local/share/rootless-cri'));
    expect(config.runDir).toBe('/tmp/rootless-cri-4321');
    expect(config.socket).toBe('/tmp/rootless-cri-4321/rootless-cri.sock');
  });

  it('ignores relative XDG variables, as the XDG spec says', () => {
    const config = loadConfig({ env: { HOME: home, XDG_DATA_HOME: 'data', XDG_RUNTIME_DIR: 'run' }, uid: 7 });
    expect(config.rootDir).toBe(join(home, '.local/share/rootless-cri'));
    expect(config.runDir).toBe('/tmp/rootless-cri-7');
  });

  it('has the documented values for everything else', () => {
    const config = loadConfig({ env: { HOME: home }, uid: 1000 });
    expect(config.logLevel).toBe('info');
    expect(config.node).toMatchObject({
      rootlesskit: 'rootlesskit',
      slirp4netnsMtu: 65520,
      portDriver: 'builtin',
      publishListeners: 'handoff',
      copyUp: ['/etc', '/run', '/var/lib'],
      disableHostLoopback: true,
    });
    expect(config.cgroup.subtree).toBe('rootless-cri');
    expect(config.network).toMatchObject({
      cniBinDirs: ['/usr/lib/cni', '/opt/cni/bin'],
      podCidr: '10.88.0.0/16',
      networkName: 'rootless-cri',
    });
    expect(config.image).toMatchObject({
      snapshotter: 'fuse-overlayfs',
      maxConcurrentDownloads: 3,
      maxConcurrentDownloadsPerRegistry: 2,
      downloadProgressWindowSeconds: 30,
      downloadMinBytesPerWindow: 16384,
      pullDeadlineSeconds: 3600,
      maxManifestBytes: 4 * 1024 * 1024,
      registries: {},
    });
    expect(config.streaming).toEqual({
      address: '127.0.0.1',
      port: 0,
      connectionLimits: {
        maxConnections: 256,
        maxPerSource: 64,
        handshakeTimeoutMs: 10_000,
        idleTimeoutMs: 4 * 3600 * 1000,
      },
    });
    expect(config.metrics).toEqual({ enabled: true, address: '127.0.0.1', port: 0 });
    expect(config.nri).toEqual({
      enable: false,
      socketPath: '/tmp/rootless-cri-1000/nri.sock',
      pluginRegistrationTimeoutMs: 5000,
      pluginRequestTimeoutMs: 2000,
    });
  });

  it('derives the NRI socket from run_dir unless set, and checks its length', () => {
    const moved = loadConfig({ env: { HOME: home }, uid: 1, overrides: { run_dir: '/run/x' } });
    expect(moved.nri.socketPath).toBe('/run/x/nri.sock');
    const set = loadConfig({
      env: { HOME: home },
      uid: 1,
      overrides: { 'nri.enable': true, 'nri.socket_path': '/run/nri/nri.sock' },
    });
    expect(set.nri).toMatchObject({ enable: true, socketPath: '/run/nri/nri.sock' });
    expect(() =>
      loadConfig({ env: { HOME: home }, uid: 1, overrides: { 'nri.socket_path': `/${'x'.repeat(120)}` } }),
    ).toThrow(/nri\.socket_path: .* longer than the 107 a unix socket path may have/);
  });

  it('uses the shipped CNI config until the root dir has its own', () => {
    const shipped = shippedCniConfDir();
    expect(shipped).toBeDefined();
    expect(readFileSync(join(shipped!, '10-rootless-cri.conflist'), 'utf8')).toContain('"rootless-cri"');
    const rootDir = join(dir, 'root');
    expect(
      loadConfig({ env: { HOME: home }, uid: 1, overrides: { root_dir: rootDir } }).network.cniConfDir,
    ).toBe(shipped);
    mkdirSync(join(rootDir, 'cni', 'net.d'), { recursive: true });
    writeFileSync(join(rootDir, 'cni', 'net.d', '50-mine.conflist'), '{}');
    expect(
      loadConfig({ env: { HOME: home }, uid: 1, overrides: { root_dir: rootDir } }).network.cniConfDir,
    ).toBe(join(rootDir, 'cni', 'net.d'));
  });
});

describe('the config file', () => {
  it('reads every section', () => {
    const file = writeToml(`
root_dir = "/srv/rc"
log_level = "debug"
[node]
copy_up = ["/etc"]
slirp4netns_mtu = 1500
[runtime]
crun_root = "/srv/rc/crun"
[network]
pod_cidr = "10.99.0.0/16"
cni_bin_dirs = ["/opt/cni/bin"]
[image]
snapshotter = "overlay"
[image.registry."registry.k8s.io"]
mirrors = ["http://127.0.0.1:5000/"]
[image.registry."127.0.0.1:5000"]
insecure = true
ca_file = "/etc/ca.pem"
[streaming]
port = 10010
[metrics]
enabled = false
`);
    const config = loadConfig({ file, env: { HOME: home }, uid: 1000 });
    expect(config.configFile).toBe(file);
    expect(config.rootDir).toBe('/srv/rc');
    expect(config.logLevel).toBe('debug');
    expect(config.node.copyUp).toEqual(['/etc']);
    expect(config.node.slirp4netnsMtu).toBe(1500);
    expect(config.runtime.crunRoot).toBe('/srv/rc/crun');
    expect(config.network.podCidr).toBe('10.99.0.0/16');
    expect(config.network.cniBinDirs).toEqual(['/opt/cni/bin']);
    expect(config.image.snapshotter).toBe('overlay');
    expect(config.image.registries).toEqual({
      'registry.k8s.io': { mirrors: ['http://127.0.0.1:5000'], insecure: false, caFile: undefined },
      '127.0.0.1:5000': { mirrors: [], insecure: true, caFile: '/etc/ca.pem' },
    });
    expect(config.streaming.port).toBe(10010);
    expect(config.metrics.enabled).toBe(false);
  });

  it('reads the default file under XDG_CONFIG_HOME when no file is named', () => {
    mkdirSync(join(dir, 'xdg', 'rootless-cri'), { recursive: true });
    const file = join(dir, 'xdg', 'rootless-cri', 'config.toml');
    writeFileSync(file, 'log_level = "warn"\n');
    const config = loadConfig({ env: { HOME: home, XDG_CONFIG_HOME: join(dir, 'xdg') }, uid: 1 });
    expect(config.logLevel).toBe('warn');
    expect(config.configFile).toBe(file);
  });

  it('reads ~/.config/rootless-cri/config.toml when XDG_CONFIG_HOME is unset', () => {
    mkdirSync(join(home, '.config', 'rootless-cri'), { recursive: true });
    writeFileSync(join(home, '.config', 'rootless-cri', 'config.toml'), 'log_level = "error"\n');
    expect(loadConfig({ env: { HOME: home }, uid: 1 }).logLevel).toBe('error');
  });

  it('fails when a named file does not exist', () => {
    expect(() => loadConfig({ file: join(dir, 'missing.toml'), env: { HOME: home } })).toThrow(NotFoundError);
    expect(() => loadConfig({ file: join(dir, 'missing.toml'), env: { HOME: home } })).toThrow(
      /missing\.toml/,
    );
  });

  it('says where TOML syntax is broken', () => {
    const message = errorFor('log_level = "info"\n[node\n');
    expect(message).toContain('config.toml: not valid TOML (line 2');
  });
});

describe('bad keys and values name the full key path', () => {
  it.each([
    ['lg_level = "info"', /^.*config\.toml: lg_level: unknown key; did you mean "log_level"\?/],
    [
      '[node]\nrootleskit = "x"',
      /node\.rootleskit: unknown key; did you mean "rootlesskit"\?.*keys of \[node\]/,
    ],
    ['[nodes]\nx = 1', /nodes: unknown key/],
    ['[image.registry."docker.io"]\nmirror = []', /image\.registry\."docker\.io"\.mirror: unknown key/],
  ])('unknown key in %j', (text, pattern) => {
    expect(errorFor(text)).toMatch(pattern);
  });

  it.each([
    [
      'log_level = "loud"',
      'log_level: expected one of "trace", "debug", "info", "warn", "error", "fatal", got "loud"',
    ],
    ['root_dir = "relative/dir"', 'root_dir: expected an absolute path, got "relative/dir"'],
    ['socket = 5', 'socket: expected an absolute path, got number 5'],
    ['[node]\ncopy_up = ["/etc", "var"]', 'node.copy_up[1]: expected an absolute path, got "var"'],
    ['[node]\ncopy_up = "/etc"', 'node.copy_up: expected an array, got "/etc"'],
    [
      '[node]\nslirp4netns_mtu = 70000',
      'node.slirp4netns_mtu: expected an integer from 1280 to 65520, got number 70000',
    ],
    [
      '[node]\nport_driver = "none"',
      'node.port_driver: expected one of "builtin", "slirp4netns", got "none"',
    ],
    ['[node]\nrootlesskit = "bin/rootlesskit"', 'node.rootlesskit: expected a program name'],
    ['[runtime]\ndefault_stop_timeout_seconds = 10', 'runtime.default_stop_timeout_seconds'],
    ['[node]\nhostname = "Node_1"', 'node.hostname: expected a lower-case RFC 1123 hostname'],
    ['[node]\nhostname = "node-"', 'node.hostname: expected a lower-case RFC 1123 hostname'],
    [`[node]\nhostname = "${'a'.repeat(65)}"`, 'node.hostname: expected a lower-case RFC 1123 hostname'],
    ['[cgroup]\nsubtree = "a/b"', 'cgroup.subtree: expected a single cgroup directory name'],
    ['[network]\npod_cidr = "10.88.0.0"', 'network.pod_cidr: expected a CIDR'],
    ['[network]\npod_cidr = "10.88.0.0/33"', 'network.pod_cidr: expected a CIDR'],
    ['[network]\ncni_bin_dirs = []', 'network.cni_bin_dirs: expected a non-empty array'],
    ['[network]\nnetwork_name = "-x"', 'network.network_name: expected a CNI network name'],
    [
      '[image]\nsnapshotter = "vfs"',
      'image.snapshotter: expected one of "fuse-overlayfs", "overlay", got "vfs"',
    ],
    [
      '[image]\nmax_concurrent_downloads = 0',
      'image.max_concurrent_downloads: expected an integer from 1 to 64',
    ],
    [
      '[image.registry."registry.k8s.io"]\nmirrors = ["ftp://127.0.0.1"]',
      'image.registry."registry.k8s.io".mirrors[0]: expected a URL with http:// or https://',
    ],
    [
      '[image.registry."registry.k8s.io"]\nmirrors = ["http://user:pw@127.0.0.1"]',
      'image.registry."registry.k8s.io".mirrors[0]: expected a URL',
    ],
    [
      '[image.registry."https://docker.io"]\ninsecure = true',
      'image.registry."https://docker.io": expected a registry host',
    ],
    [
      '[image.registry."docker.io"]\ninsecure = "yes"',
      'image.registry."docker.io".insecure: expected true or false, got "yes"',
    ],
    ['[streaming]\naddress = "localhost"', 'streaming.address: expected an IPv4 or IPv6 address'],
    ['[streaming]\nport = -1', 'streaming.port: expected an integer from 0 to 65535, got number -1'],
    ['[metrics]\nenabled = 1979-05-27', 'metrics.enabled: expected true or false, got a date'],
    [
      '[nri]\nplugin_request_timeout_ms = 10',
      'nri.plugin_request_timeout_ms: expected an integer from 100 to 600000, got number 10',
    ],
    ['[nri]\nsocket_path = "nri.sock"', 'nri.socket_path: expected an absolute path'],
    ['node = 1', 'node: expected a table, got number 1'],
  ])('%j', (text, expected) => {
    expect(errorFor(text)).toContain(`config.toml: ${expected}`);
  });

  it('accepts an IPv6 streaming address', () => {
    const file = writeToml('[streaming]\naddress = "::1"\n');
    expect(loadConfig({ file, env: { HOME: home }, uid: 1 }).streaming.address).toBe('::1');
  });

  it('rejects a socket path longer than a unix socket allows, naming the key', () => {
    const longDir = `/${'d'.repeat(100)}`;
    expect(() => loadConfig({ env: { HOME: home }, uid: 1, overrides: { run_dir: longDir } })).toThrow(
      /socket \(derived from run_dir\): .* longer than the 107/,
    );
    expect(() =>
      loadConfig({ env: { HOME: home }, uid: 1, overrides: { socket: `${longDir}/s.sock` } }),
    ).toThrow(/^socket: /);
  });

  it('quotes keys that are not bare in paths', () => {
    expect(joinKeyPath('image.registry', 'registry.k8s.io')).toBe('image.registry."registry.k8s.io"');
    expect(joinKeyPath('', 'root_dir')).toBe('root_dir');
  });
});

describe('overrides', () => {
  it('win over the file, key by key', () => {
    const file = writeToml('log_level = "debug"\n[streaming]\naddress = "127.0.0.2"\nport = 1000\n');
    const config = loadConfig({
      file,
      env: { HOME: home },
      uid: 1,
      overrides: { log_level: 'warn', 'streaming.port': 2000 },
    });
    expect(config.logLevel).toBe('warn');
    expect(config.streaming).toMatchObject({ address: '127.0.0.2', port: 2000 });
  });

  it('move derived paths with run_dir unless they were set explicitly', () => {
    const moved = loadConfig({ env: { HOME: home }, uid: 1, overrides: { run_dir: '/run/x' } });
    expect(moved.socket).toBe('/run/x/rootless-cri.sock');
    expect(moved.node.stateDir).toBe('/run/x/node');

    const file = writeToml('socket = "/run/fixed.sock"\n');
    const pinned = loadConfig({ file, env: { HOME: home }, uid: 1, overrides: { run_dir: '/run/x' } });
    expect(pinned.socket).toBe('/run/fixed.sock');
    expect(pinned.node.stateDir).toBe('/run/x/node');
  });

  it('are checked like the file and name the key', () => {
    expect(() => loadConfig({ env: { HOME: home }, overrides: { 'streaming.port': 99999 } })).toThrow(
      'override: streaming.port: expected an integer from 0 to 65535, got number 99999',
    );
    expect(() =>
      loadConfig({ env: { HOME: home }, overrides: { 'streaming.prot': 1 } as Record<string, unknown> }),
    ).toThrow(/override streaming\.prot: unknown key/);
    expect(() =>
      loadConfig({ env: { HOME: home }, overrides: { node: 1 } as Record<string, unknown> }),
    ).toThrow(/override node: unknown key/);
  });

  it('parse KEY=VALUE assignments as TOML values or plain strings', () => {
    expect(parseOverrideAssignment('streaming.port=10010')).toEqual({ 'streaming.port': 10010 });
    expect(parseOverrideAssignment('metrics.enabled=false')).toEqual({ 'metrics.enabled': false });
    expect(parseOverrideAssignment('root_dir=/srv/rc')).toEqual({ root_dir: '/srv/rc' });
    expect(parseOverrideAssignment('node.copy_up=["/etc"]')).toEqual({ 'node.copy_up': ['/etc'] });
    expect(() => parseOverrideAssignment('streaming.port=abc')).toThrow(
      /streaming\.port: expected an integer/,
    );
    expect(() => parseOverrideAssignment('novalue')).toThrow(/expected KEY=VALUE/);
  });
});

describe('deploy/rootless-cri.toml', () => {
  const env = { HOME: '/home/user', XDG_RUNTIME_DIR: '/run/user/1000' };

  it('holds exactly the defaults', () => {
    const fromExample: Config = loadConfig({ file: EXAMPLE, env, uid: 1000 });
    const defaults: Config = loadConfig({
      file: undefined,
      env: { ...env, XDG_CONFIG_HOME: dir },
      uid: 1000,
    });
    expect({ ...fromExample, configFile: undefined }).toEqual(defaults);
  });

  it('documents every key, and its commented-out keys are valid too', () => {
    // Uncomment "# key = value" lines and "# [section]" headers; prose comments stay.
    const uncommented = readFileSync(EXAMPLE, 'utf8')
      .split('\n')
      .map((line) => line.replace(/^# ?(?=[a-z_]+ = |\[)/, ''))
      .join('\n');
    const raw = parseConfigToml(uncommented, 'uncommented example') as Record<string, unknown>;
    const documented: string[] = [];
    const walk = (value: Record<string, unknown>, prefix: string) => {
      for (const [key, child] of Object.entries(value)) {
        const path = joinKeyPath(prefix, key);
        if (path === 'image.registry') documented.push(path);
        else if (child && typeof child === 'object' && !Array.isArray(child)) {
          walk(child as Record<string, unknown>, path);
        } else documented.push(path);
      }
    };
    walk(raw, '');
    expect(documented.sort()).toEqual(configKeyPaths().sort());
  });
});
