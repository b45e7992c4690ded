/**
 * The node-wide pod egress rule (src/os/pod-egress.ts) without a kernel: which subnets of a CNI
 * config the node masquerades, the rule's shape, and when the CNI executor asks for it (once
 * per version of the config, not per pod; again after a failure).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { type CniConflist, parseCniConfig } from '../../src/os/cni-config.js';
import { CniNetwork } from '../../src/os/cni-network.js';
import { renderCniTemplate } from '../../src/os/cni-template.js';
import {
  POD_EGRESS_COMMENT,
  type PodEgress,
  podEgressRule,
  podEgressSubnets,
} from '../../src/os/pod-egress.js';

const SHIPPED = fileURLToPath(new URL('../../deploy/cni/10-rootless-cri.conflist', import.meta.url));
const TEMPLATE = fileURLToPath(new URL('../../deploy/cluster/cni.conflist.template', import.meta.url));

function list(...plugins: Record<string, unknown>[]): Pick<CniConflist, 'plugins'> {
  return { plugins: plugins as CniConflist['plugins'] };
}

describe('podEgressSubnets', () => {
  it("masquerades the shipped conflist's subnet: its bridge leaves ipMasq off", () => {
    const shipped = parseCniConfig(readFileSync(SHIPPED, 'utf8'), SHIPPED);
    expect(shipped.plugins[0]).toMatchObject({ type: 'bridge', ipMasq: false });
    expect(podEgressSubnets(shipped)).toEqual(['10.88.0.0/16']);
  });

  it('follows the pod CIDR of the cluster template (a new CIDR, a new subnet)', () => {
    const template = readFileSync(TEMPLATE, 'utf8');
    for (const cidr of ['10.88.3.0/24', '10.88.7.0/24']) {
      const rendered = parseCniConfig(renderCniTemplate(template, cidr, TEMPLATE), 'rendered');
      expect(podEgressSubnets(rendered)).toEqual([cidr]);
    }
  });

  it('leaves a plugin with ipMasq: true to masquerade its pods itself', () => {
    const ipam = { type: 'host-local', ranges: [[{ subnet: '10.90.0.0/16' }]] };
    expect(podEgressSubnets(list({ type: 'bridge', ipMasq: true, ipam }))).toEqual([]);
    expect(podEgressSubnets(list({ type: 'bridge', ipMasq: false, ipam }))).toEqual(['10.90.0.0/16']);
    expect(podEgressSubnets(list({ type: 'bridge', ipam }))).toEqual(['10.90.0.0/16']);
  });

  it('reads every IPv4 range and the older "subnet" of bridge and ptp, once each', () => {
    const subnets = podEgressSubnets(
      list(
        {
          type: 'bridge',
          ipam: {
            type: 'host-local',
            ranges: [
              [{ subnet: '10.90.0.0/24' }, { subnet: '10.90.1.0/24' }],
              [{ subnet: 'fd00:90::/64' }],
              [{ subnet: '10.90.0.0/24' }],
            ],
          },
        },
        { type: 'ptp', ipam: { type: 'host-local', subnet: '10.91.0.0/16' } },
      ),
    );
    expect(subnets).toEqual(['10.90.0.0/24', '10.90.1.0/24', '10.91.0.0/16']);
  });

  it('ignores other plugins, other IPAM and what is not an IPv4 CIDR', () => {
    expect(
      podEgressSubnets(
        list(
          { type: 'macvlan', ipam: { type: 'host-local', subnet: '10.92.0.0/16' } },
          { type: 'bridge', ipam: { type: 'dhcp' } },
          { type: 'bridge', ipam: { type: 'host-local', ranges: [[{ subnet: '10.93.0.0' }], 'x', [null]] } },
          { type: 'bridge', ipam: { type: 'host-local', subnet: '300.1.0.0/16' } },
          { type: 'bridge', ipam: { type: 'host-local', subnet: '10.94.0.0/33' } },
          { type: 'portmap', capabilities: { portMappings: true } },
        ),
      ),
    ).toEqual([]);
  });
});

describe('podEgressRule', () => {
  it('masquerades the subnet leaving through the uplink only, with a comment naming it', () => {
    expect(podEgressRule('10.88.0.0/16', 'tap0')).toEqual([
      'POSTROUTING',
      ...['-s', '10.88.0.0/16', '-o', 'tap0'],
      ...['-m', 'comment', '--comment', POD_EGRESS_COMMENT, '-j', 'MASQUERADE'],
    ]);
  });
});

class FakePodEgress implements PodEgress {
  calls: string[][] = [];
  failNext: Error | null = null;
  async ensure(conflist: Pick<CniConflist, 'plugins' | 'file'>): Promise<void> {
    this.calls.push(podEgressSubnets(conflist));
    const failure = this.failNext;
    this.failNext = null;
    if (failure) throw failure;
  }
}

describe('CniNetwork with a node-wide egress', () => {
  let dir: string;
  let confDir: string;
  let egress: FakePodEgress;
  let network: CniNetwork;

  const write = (subnet: string, ipMasq: boolean) =>
    writeFileSync(
      join(confDir, '10-net.conflist'),
      JSON.stringify({
        cniVersion: '1.0.0',
        name: 'net',
        plugins: [{ type: 'bridge', ipMasq, ipam: { type: 'host-local', ranges: [[{ subnet }]] } }],
      }),
    );

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'pod-egress-test-'));
    confDir = join(dir, 'net.d');
    mkdirSync(confDir);
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'bridge'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    egress = new FakePodEgress();
    network = new CniNetwork({
      confDir,
      binDirs: [bin],
      ipamDataDir: join(dir, 'ipam'),
      logger: silentLogger(),
      egress,
    });
  });

  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('asks once per version of the config, not once per pod', async () => {
    write('10.88.0.0/16', false);
    for (let pod = 0; pod < 5; pod++) await network.loadConfig();
    expect(egress.calls).toEqual([['10.88.0.0/16']]);
    // UpdateRuntimeConfig (or an operator) writes a new subnet: asked again, for it.
    write('10.88.5.0/24', false);
    await network.loadConfig();
    await network.loadConfig();
    expect(egress.calls).toEqual([['10.88.0.0/16'], ['10.88.5.0/24']]);
  });

  it('fails the pod network when the rule cannot be made, and tries again next time', async () => {
    write('10.88.0.0/16', false);
    egress.failNext = new FailedPreconditionError('iptables: no such table');
    const failed = network.loadConfig();
    await expect(failed).rejects.toThrow(FailedPreconditionError);
    await expect(failed).rejects.toThrow(/pod network is not ready: iptables: no such table/);
    await network.loadConfig();
    expect(egress.calls).toHaveLength(2);
  });

  it('has nothing to make for a config whose bridge masquerades itself', async () => {
    write('10.88.0.0/16', true);
    await network.loadConfig();
    expect(egress.calls).toEqual([[]]);
  });
});
