/**
 * Pods' egress through the node's uplink (src/os/pod-egress.ts), with the real daemon, bridge
 * plugin and iptables in its node: a conflist whose bridge has `ipMasq: true` still masquerades
 * per pod (and gets no node-wide rule), and a new pod CIDR from UpdateRuntimeConfig, written
 * into a CNI template with `ipMasq` off, gets one rule for the subnet as soon as it is written,
 * however many pods it then has.
 * Pods reach an HTTP server on an address of this machine the test makes (a veth pair in the
 * host's network namespace), through slirp4netns.
 */
import { chown, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POD_EGRESS_COMMENT } from '../../src/os/pod-egress.js';
import { TestDaemon } from '../harness/daemon.js';
import { nodeLeftovers } from '../harness/node-leftovers.js';

const BUSYBOX = '/bin/busybox';
const ADDRESS = '10.250.251.1';
const LINK = 'rcri-egr-a0';
let daemon: TestDaemon;
let templateDir: string;
let template: string;
let server: http.Server;
let url: string;

/**
 * The node's CNI template (network.cni_conf_template), read again at every UpdateRuntimeConfig;
 * each subnet on a bridge of its own, as the bridge plugin keeps one gateway address per bridge.
 */
async function newPodCidr(bridge: string, ipMasq: boolean, podCidr: string): Promise<void> {
  const conflist = {
    cniVersion: '1.0.0',
    name: 'egress',
    plugins: [
      {
        type: 'bridge',
        bridge,
        isGateway: true,
        ipMasq,
        ipam: { type: 'host-local', ranges: [[{ subnet: '{{.PodCIDR}}' }]], routes: [{ dst: '0.0.0.0/0' }] },
      },
      { type: 'portmap', capabilities: { portMappings: true } },
    ],
  };
  const temp = path.join(templateDir, '.next');
  await writeFile(temp, JSON.stringify(conflist));
  await chown(temp, daemon.user.uid, daemon.user.gid);
  await rename(temp, template);
  await daemon.client.runtime('UpdateRuntimeConfig', {
    runtime_config: { network_config: { pod_cidr: podCidr } },
  });
}

async function runPod(name: string): Promise<{ id: string; ip: string; netns: string }> {
  const { pod_sandbox_id: id } = await daemon.client.runtime('RunPodSandbox', {
    config: { metadata: { name, namespace: 'egress', uid: `uid-${name}`, attempt: 0 }, linux: {} },
  });
  const inspect = await daemon.crictl(['inspectp', '-o', 'json', id]);
  const parsed = JSON.parse(inspect.stdout) as {
    status: { network: { ip: string } };
    info: { namespaces: { network: { path: string } } };
  };
  return { id, ip: parsed.status.network.ip, netns: parsed.info.namespaces.network.path };
}

async function fetchFromPod(netns: string) {
  return daemon.enter([
    'nsenter',
    `--net=${netns}`,
    '--',
    ...['timeout', '10', BUSYBOX, 'wget', '-q', '-O', '-', url],
  ]);
}

async function removePod(id: string): Promise<void> {
  await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: id });
  await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: id });
}

async function natRules(): Promise<string[]> {
  const nat = await daemon.enter(['sh', '-c', 'PATH=/usr/sbin:$PATH iptables -t nat -S']);
  expect(nat.exitCode, nat.stderr).toBe(0);
  return nat.stdout.split('\n');
}

const nodeWideRules = (rules: string[]) => rules.filter((l) => l.includes(POD_EGRESS_COMMENT));
const perPodChains = (rules: string[]) => rules.filter((l) => /^-N CNI-[0-9a-f]{24}$/.test(l));

beforeAll(async () => {
  templateDir = await mkdtemp('/tmp/rcri-egress-cni-');
  template = path.join(templateDir, 'cni.conflist.template');
  await execa('ip', ['link', 'add', LINK, 'type', 'veth', 'peer', 'name', 'rcri-egr-a1']);
  await execa('ip', ['addr', 'add', `${ADDRESS}/32`, 'dev', LINK]);
  await execa('ip', ['link', 'set', LINK, 'up']);
  server = http.createServer((_req, res) => res.end('egress ok'));
  await new Promise<void>((resolve) => server.listen(0, ADDRESS, resolve));
  url = `http://${ADDRESS}:${(server.address() as net.AddressInfo).port}/`;
  daemon = await TestDaemon.start({ extraConfig: `[network]\ncni_conf_template = "${template}"\n` });
  await chown(templateDir, daemon.user.uid, daemon.user.gid);
}, 120_000);

afterAll(async () => {
  server?.close();
  await execa('ip', ['link', 'del', LINK], { reject: false });
  // The template's dir is the user's: gone before the harness looks for files left behind.
  await rm(templateDir, { recursive: true, force: true });
  await daemon?.stop();
});

describe('pod egress through the uplink', () => {
  it('a conflist with ipMasq true masquerades per pod, as before, and gets no node-wide rule', async () => {
    await newPodCidr('cni-egress0', true, '10.89.0.0/24');
    const pod = await runPod('masq-by-plugin');
    expect(pod.ip).toMatch(/^10\.89\.0\.\d+$/);
    const get = await fetchFromPod(pod.netns);
    expect(get.stdout, get.stderr).toBe('egress ok');
    const rules = await natRules();
    expect(perPodChains(rules)).toHaveLength(1);
    expect(nodeWideRules(rules)).toEqual([]);
    // The leak check sees a live pod's per-pod rules, so its empty answer below means something.
    expect((await nodeLeftovers(daemon)).some((l) => l.startsWith('iptables'))).toBe(true);
    await removePod(pod.id);
    expect(await nodeLeftovers(daemon)).toEqual([]);
    expect(perPodChains(await natRules())).toEqual([]);
  });

  it('a new pod CIDR with ipMasq off gets one rule for it when written, not one per pod', async () => {
    await newPodCidr('cni-egress1', false, '10.89.1.0/24');
    // Made by UpdateRuntimeConfig itself, before the first pod of the subnet.
    expect(nodeWideRules(await natRules())).toHaveLength(1);
    const pods = [await runPod('node-wide-a'), await runPod('node-wide-b')];
    for (const pod of pods) {
      expect(pod.ip).toMatch(/^10\.89\.1\.\d+$/);
      const get = await fetchFromPod(pod.netns);
      expect(get.stdout, get.stderr).toBe('egress ok');
    }
    const rules = await natRules();
    expect(nodeWideRules(rules)).toEqual([
      `-A POSTROUTING -s 10.89.1.0/24 -o tap0 -m comment --comment "${POD_EGRESS_COMMENT}" -j MASQUERADE`,
    ]);
    expect(perPodChains(rules)).toEqual([]);
    for (const pod of pods) await removePod(pod.id);
    expect(await nodeLeftovers(daemon)).toEqual([]);
    // Node-wide: it stays for the next pod of the subnet.
    expect(nodeWideRules(await natRules())).toHaveLength(1);
    // And it is what gives that pod egress: without it slirp4netns drops the pod's packets.
    const rule = nodeWideRules(await natRules())[0]!.replace(/^-A /, '');
    const del = await daemon.enter(['sh', '-c', `PATH=/usr/sbin:$PATH iptables -t nat -D ${rule}`]);
    expect(del.exitCode, del.stderr).toBe(0);
    const unmasqueraded = await runPod('node-wide-c');
    const get = await fetchFromPod(unmasqueraded.netns);
    expect(get.exitCode).not.toBe(0);
    expect(get.stdout).not.toContain('egress ok');
    await removePod(unmasqueraded.id);
  });
});
