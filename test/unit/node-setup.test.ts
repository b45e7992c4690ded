import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { ensureLoopbackName, isMountPoint } from '../../src/rootless/node-setup.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'node-setup-test-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('the node name in /etc/hosts', () => {
  it('appends 127.0.0.1 <name> once, keeping what was there', async () => {
    const hosts = join(dir, 'hosts');
    writeFileSync(hosts, '127.0.0.1 localhost\n10.0.2.100 rcri-node # not loopback\n::1 rcri-node');
    expect(await ensureLoopbackName(hosts, 'rcri-node')).toBe(true);
    expect(await ensureLoopbackName(hosts, 'rcri-node')).toBe(false);
    expect(readFileSync(hosts, 'utf8')).toBe(
      '127.0.0.1 localhost\n10.0.2.100 rcri-node # not loopback\n::1 rcri-node\n127.0.0.1 rcri-node\n',
    );
  });

  it('finds the name among aliases and ignores it in comments', async () => {
    const hosts = join(dir, 'hosts');
    writeFileSync(hosts, '127.0.0.1\tlocalhost  rcri-node\n# 127.0.0.1 other\n');
    expect(await ensureLoopbackName(hosts, 'rcri-node')).toBe(false);
    expect(await ensureLoopbackName(hosts, 'other')).toBe(true);
  });
});

describe('isMountPoint', () => {
  const mountinfo = [
    '46 30 254:0 / / rw,relatime - ext4 /dev/vda rw',
    '79 46 254:0 /home/u/.local/share/rootless-cri/node/log /var/log rw,relatime - ext4 /dev/vda rw',
  ].join('\n');
  it('matches the mount point field, not the root field', () => {
    expect(isMountPoint(mountinfo, '/var/log')).toBe(true);
    expect(isMountPoint(mountinfo, '/var/log/pods')).toBe(false);
    expect(isMountPoint(mountinfo, '/home/u/.local/share/rootless-cri/node/log')).toBe(false);
  });
});

describe('node.hostname', () => {
  it('is unset by default and read from [node]', () => {
    const env = { HOME: dir, XDG_CONFIG_HOME: dir };
    expect(loadConfig({ env, uid: 1000 }).node.hostname).toBeUndefined();
    const file = join(dir, 'config.toml');
    writeFileSync(file, '[node]\nhostname = "rcri-node.example"\n');
    expect(loadConfig({ file, env, uid: 1000 }).node.hostname).toBe('rcri-node.example');
  });
});
