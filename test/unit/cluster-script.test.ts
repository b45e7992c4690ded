/**
 * deploy/cluster/cluster.sh without a node: the settings it asks the daemon for are a valid
 * rootless-cri config that points at a template that exists, the port scheme, and bad arguments
 * refused before anything happens. (The cluster itself: test/kubernetes/multinode.test.ts.)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfigToml } from '../../src/config.js';

const SCRIPT = path.resolve(import.meta.dirname, '../../deploy/cluster/cluster.sh');

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('bash', [SCRIPT, ...args, '--dir', '/nonexistent/cluster'], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('cluster.sh node-config', () => {
  it('prints a valid rootless-cri config with the node name, host loopback on, the CNI template and the ports of the scheme', () => {
    const r = run(['node-config', '--name', 'w1', '--port-base', '24000']);
    expect(r.status).toBe(0);
    const raw = parseConfigToml(r.stdout, 'node-config output') as {
      node: { hostname: string; disable_host_loopback: boolean };
      network: { cni_conf_template: string };
      streaming: { port: number };
      metrics: { port: number };
    };
    expect(raw.node).toEqual({ hostname: 'w1', disable_host_loopback: false });
    expect(existsSync(raw.network.cni_conf_template)).toBe(true);
    expect(raw.streaming.port).toBe(24003);
    expect(raw.metrics.port).toBe(24004);
  });

  it("derives the default port base from the user's uid: a block of 32 below the ephemeral range", () => {
    const uid = Number(execFileSync('id', ['-u'], { encoding: 'utf8' }));
    const r = run(['node-config', '--name', 'n']);
    const base = 20000 + 32 * (uid % 384);
    expect(r.stdout).toContain(`--port-base ${base}`);
    expect(base + 31).toBeLessThan(32768);
  });
});

describe('cluster.sh arguments', () => {
  it.each([
    [['node-config', '--name', 'Bad_Name'], /--name Bad_Name: not a valid node name/],
    [['node-config', '--port-base', '80'], /--port-base 80: expected a port from 1024/],
    [
      ['node-config', '--node-address', '192.168.1.5'],
      /--node-address 192\.168\.1\.5: expected an address in 10\.87\.0\.0\/16/,
    ],
    [
      ['node-config', '--host-address', 'example.org'],
      /--host-address example\.org: expected an IPv4 address/,
    ],
    [['node-config', '--bogus'], /unknown option --bogus/],
    [['join', 'extra'], /unexpected argument extra/],
    [['launch'], /unknown command launch/],
    [['down'], /no cluster node in \/nonexistent\/cluster/],
  ])('%j is refused, saying why', (args, message) => {
    const r = run(args as string[]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(message as RegExp);
  });
});
