import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { defaultRouteAddress, ensureHostsEntry, isMountPoint } from '../../src/rootless/node-setup.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'node-setup-test-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('the node name in /etc/hosts', () => {
  it('appends <address> <name> once, keeping what was there', async () => {
    const hosts = join(dir, 'hosts');
    writeFileSync(hosts, '127.0.0.1 localhost\n127.0.0.1 rcri-node # loopback\n::1 rcri-node');
    expect(await ensureHostsEntry(hosts, '10.0.2.100', 'rcri-node')).toBe(true);
    expect(await ensureHostsEntry(hosts, '10.0.2.100', 'rcri-node')).toBe(false);
    expect(readFileSync(hosts, 'utf8')).toBe(
      '127.0.0.1 localhost\n127.0.0.1 rcri-node # loopback\n::1 rcri-node\n10.0.2.100 rcri-node\n',
    );
  });

  it('finds the name among aliases and ignores it in comments', async () => {
    const hosts = join(dir, 'hosts');
    writeFileSync(hosts, '10.0.2.100\tnode-a  rcri-node\n# 10.0.2.100 other\n');
    expect(await ensureHostsEntry(hosts, '10.0.2.100', 'rcri-node')).toBe(false);
    expect(await ensureHostsEntry(hosts, '10.0.2.100', 'other')).toBe(true);
  });

  it("takes the node address from the default route's interface", () => {
    const route = [
      'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT',
      'cni0\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0',
      'tap0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0',
    ].join('\n');
    const address = (ip: string, family: 'IPv4' | 'IPv6', internal = false) => ({
      address: ip,
      family,
      internal,
      netmask: '',
      mac: '',
      cidr: null,
      ...(family === 'IPv6' ? { scopeid: 0 } : {}),
    });
    const interfaces = {
      lo: [address('127.0.0.1', 'IPv4', true)],
      cni0: [address('10.88.0.1', 'IPv4')],
      tap0: [address('fe80::1', 'IPv6'), address('10.0.2.100', 'IPv4')],
    } as unknown as Parameters<typeof defaultRouteAddress>[1];
    expect(defaultRouteAddress(route, interfaces)).toBe('10.0.2.100');
    expect(defaultRouteAddress(route.split('\n').slice(0, 2).join('\n'), interfaces)).toBeUndefined();
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
