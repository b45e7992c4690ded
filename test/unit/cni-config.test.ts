import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { checkCniReady, loadCniConflist, parseCniConfig } from '../../src/os/cni-config.js';

const SHIPPED = fileURLToPath(new URL('../../deploy/cni/10-rootless-cri.conflist', import.meta.url));

let dir: string;
let confDir: string;
let binDir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cni-config-test-'));
  confDir = join(dir, 'net.d');
  binDir = join(dir, 'bin');
  mkdirSync(confDir);
  mkdirSync(binDir);
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function plugin(name: string, directory = binDir, mode = 0o755): string {
  const path = join(directory, name);
  writeFileSync(path, '#!/bin/sh\nexit 0\n');
  chmodSync(path, mode);
  return path;
}

function conflist(name: string, plugins: string[], version = '1.0.0'): string {
  return JSON.stringify({ cniVersion: version, name, plugins: plugins.map((type) => ({ type })) });
}

describe('checkCniReady', () => {
  it('is ready with the shipped conflist when its plugins are executables in a bin dir', async () => {
    copyFileSync(SHIPPED, join(confDir, '10-rootless-cri.conflist'));
    const bridge = plugin('bridge');
    const portmap = plugin('portmap');
    const result = await checkCniReady(confDir, [join(dir, 'empty'), binDir]);
    expect(result).toMatchObject({ ready: true, reason: '', message: '' });
    expect(result.conflist?.name).toBe('rootless-cri');
    expect(result.conflist?.cniVersion).toBe('1.0.0');
    expect(result.conflist?.plugins.map((p) => p.type)).toEqual(['bridge', 'portmap']);
    expect(result.pluginPaths).toEqual({ bridge, portmap });
  });

  it('is ready with the shipped conflist and the Debian plugins in /usr/lib/cni', async () => {
    const result = await checkCniReady(join(SHIPPED, '..'), ['/usr/lib/cni']);
    expect(result.message).toBe('');
    expect(result.ready).toBe(true);
  });

  it('is not ready when a plugin is missing, and names it', async () => {
    writeFileSync(join(confDir, '10-net.conflist'), conflist('net', ['bridge', 'portmap', 'tuning']));
    plugin('bridge');
    plugin('tuning');
    const result = await checkCniReady(confDir, [binDir]);
    expect(result.ready).toBe(false);
    expect(result.reason).toBe('CniPluginMissing');
    expect(result.message).toContain('CNI plugin portmap named by');
    expect(result.message).not.toContain('tuning');
    expect(result.message).toContain(binDir);
    expect(result.conflist?.name).toBe('net');
  });

  it('does not count a plugin file that is not executable', async () => {
    writeFileSync(join(confDir, '10-net.conflist'), conflist('net', ['bridge']));
    plugin('bridge', binDir, 0o644);
    const result = await checkCniReady(confDir, [binDir]);
    expect(result).toMatchObject({ ready: false, reason: 'CniPluginMissing' });
  });

  it('takes a plugin from the first bin dir that has it', async () => {
    const second = join(dir, 'bin2');
    mkdirSync(second);
    writeFileSync(join(confDir, '10-net.conflist'), conflist('net', ['bridge']));
    plugin('bridge', second);
    const first = plugin('bridge');
    expect((await checkCniReady(confDir, [binDir, second])).pluginPaths).toEqual({ bridge: first });
  });

  it('is not ready with a reason when the JSON is malformed', async () => {
    writeFileSync(join(confDir, '10-net.conflist'), '{"cniVersion": "1.0.0", "name": ');
    const result = await checkCniReady(confDir, [binDir]);
    expect(result.ready).toBe(false);
    expect(result.reason).toBe('InvalidCniConfig');
    expect(result.message).toContain('10-net.conflist: not valid JSON');
  });

  it('is not ready when the directory has no config', async () => {
    writeFileSync(join(confDir, 'README.txt'), 'not a config');
    const result = await checkCniReady(confDir, [binDir]);
    expect(result).toMatchObject({ ready: false, reason: 'NoCniConfig' });
    expect(result.message).toContain(confDir);
  });

  it('is not ready when the directory does not exist', async () => {
    const result = await checkCniReady(join(dir, 'nope'), [binDir]);
    expect(result).toMatchObject({ ready: false, reason: 'CniConfigDirUnreadable' });
    expect(result.message).toContain('ENOENT');
  });

  it('does not fall through to the next file when the first one is broken', async () => {
    writeFileSync(join(confDir, '10-broken.conflist'), '[]');
    writeFileSync(join(confDir, '20-good.conflist'), conflist('good', ['bridge']));
    plugin('bridge');
    const result = await checkCniReady(confDir, [binDir]);
    expect(result).toMatchObject({ ready: false, reason: 'InvalidCniConfig' });
    expect(result.message).toContain('10-broken.conflist: expected a JSON object');
  });
});

describe('loadCniConflist', () => {
  it('uses the lowest-sorted .conflist, .conf or .json file', async () => {
    writeFileSync(join(confDir, '20-b.conflist'), conflist('b', ['bridge']));
    writeFileSync(
      join(confDir, '10-a.conf'),
      JSON.stringify({ cniVersion: '0.4.0', name: 'a', type: 'ptp' }),
    );
    writeFileSync(join(confDir, '05-ignored.txt'), 'x');
    const loaded = await loadCniConflist(confDir);
    expect(loaded.file).toBe(join(confDir, '10-a.conf'));
    expect(loaded.name).toBe('a');
    // A single-plugin .conf becomes a list of one, as libcni does.
    expect(loaded.plugins).toEqual([{ cniVersion: '0.4.0', name: 'a', type: 'ptp' }]);
    expect(loaded.raw).toMatchObject({ cniVersion: '0.4.0', name: 'a', plugins: [{ type: 'ptp' }] });
  });
});

describe('parseCniConfig', () => {
  it.each([
    ['{"name": "n", "plugins": [{"type": "bridge"}]}', '"cniVersion" must be a version string'],
    ['{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}', '"name" must be a network name'],
    ['{"cniVersion": "1.0.0", "name": "n", "plugins": []}', '"plugins" must be a non-empty array'],
    [
      '{"cniVersion": "1.0.0", "name": "n", "plugins": [{}]}',
      'plugins[0]: "type" must be a plugin executable name',
    ],
    [
      '{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}, {"type": "../../bin/sh"}]}',
      'plugins[1]: "type" must be a plugin executable name',
    ],
    ['{"cniVersion": "1.0.0", "name": "n", "plugins": ["bridge"]}', 'plugins[0]: expected a JSON object'],
  ])('rejects %s', (text, expected) => {
    expect(() => parseCniConfig(text, '/x/10-n.conflist')).toThrow(InvalidArgumentError);
    expect(() => parseCniConfig(text, '/x/10-n.conflist')).toThrow(expected);
  });

  it('reads the shipped conflist as the design describes it', async () => {
    const shipped = await loadCniConflist(join(SHIPPED, '..'));
    expect(shipped.name).toBe('rootless-cri');
    const [bridge, portmap] = shipped.plugins;
    expect(bridge).toMatchObject({
      type: 'bridge',
      bridge: 'cni0',
      isGateway: true,
      // The node masquerades the subnet once (src/os/pod-egress.ts), not the plugin per pod.
      ipMasq: false,
      hairpinMode: true,
      ipam: { type: 'host-local', ranges: [[{ subnet: '10.88.0.0/16' }]], routes: [{ dst: '0.0.0.0/0' }] },
    });
    expect(portmap).toMatchObject({ type: 'portmap', capabilities: { portMappings: true } });
  });
});
