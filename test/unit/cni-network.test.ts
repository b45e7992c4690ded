/**
 * The CNI executor with stand-in plugins (shell scripts that log how they were called): which
 * plugins a pod's ADD and DEL run. portmap is not run for a pod without port mappings, where it
 * would only pass prevResult through (ADD) or return at once (DEL).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { CniNetwork, type CniPortMapping } from '../../src/os/cni-network.js';

let dir: string;
let log: string;
let network: CniNetwork;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cni-network-test-'));
  log = join(dir, 'calls.log');
  const bin = join(dir, 'bin');
  const confDir = join(dir, 'net.d');
  mkdirSync(bin);
  mkdirSync(confDir);
  const result = '{"cniVersion":"1.0.0","ips":[{"address":"10.88.0.5/16","gateway":"10.88.0.1"}]}';
  for (const type of ['bridge', 'portmap']) {
    writeFileSync(
      join(bin, type),
      `#!/bin/sh\necho "$CNI_COMMAND ${type}" >> ${log}\n[ "$CNI_COMMAND" = ADD ] && echo '${result}'\nexit 0\n`,
      { mode: 0o755 },
    );
  }
  writeFileSync(
    join(confDir, '10-net.conflist'),
    JSON.stringify({
      cniVersion: '1.0.0',
      name: 'net',
      plugins: [
        { type: 'bridge', ipam: { type: 'host-local', ranges: [[{ subnet: '10.88.0.0/16' }]] } },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    }),
  );
  network = new CniNetwork({
    confDir,
    binDirs: [bin],
    ipamDataDir: join(dir, 'ipam'),
    logger: silentLogger(),
  });
});

afterEach(() => rmSync(dir, { recursive: true, force: true }));

const calls = () =>
  readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l !== '');

async function addThenDel(portMappings: CniPortMapping[]): Promise<string> {
  const conflist = await network.loadConfig();
  const pod = { conflist, sandboxId: 'a'.repeat(64), netnsPath: join(dir, 'netns'), portMappings };
  const up = await network.setUp({ ...pod, podName: 'p', podNamespace: 'n', podUid: 'u' });
  await network.tearDown({ ...pod, network: up });
  return up.ip;
}

describe('CniNetwork plugins run per pod', () => {
  it('skips portmap for a pod without port mappings, on ADD and DEL', async () => {
    expect(await addThenDel([])).toBe('10.88.0.5');
    expect(calls()).toEqual(['ADD bridge', 'DEL bridge']);
  });

  it('runs portmap, in chain order, for a pod with port mappings', async () => {
    await addThenDel([{ hostPort: 8080, containerPort: 80, protocol: 'tcp', hostIP: '' }]);
    expect(calls()).toEqual(['ADD bridge', 'ADD portmap', 'DEL portmap', 'DEL bridge']);
  });
});
