/**
 * A node's end of the overlay between rootless nodes (OverlayNetwork), programmed with iproute2
 * and iptables inside the node's network namespace, where the node's user namespace holds
 * CAP_NET_ADMIN. Used by the overlay agent (src/rootless/overlay-agent.ts), which says why the
 * overlay is made this way.
 *
 * - One VXLAN device (vxlan0 by default) without learning: every peer is programmed statically
 *   from the Node objects, as flannel's vxlan backend does: an FDB entry sends the peer's MAC
 *   to its underlay address *and UDP port* (an FDB entry may carry its own port; on one host
 *   every node publishes its VXLAN port on 127.0.0.1 at a different port), a permanent
 *   neighbour entry maps the peer's overlay address to that MAC, a /32 route reaches the peer's
 *   address and its pod CIDRs are routed through it (onlink).
 * - The device carries this node's overlay address (/32): kubelet's node IP, which every other
 *   node reaches through the overlay; the MAC is derived from it, so a re-created device (agent
 *   or node restart) keeps the MAC the peers already programmed.
 * - Guards: `unreachable` routes for the cluster's pod network and the nodes' address network,
 *   so a pod CIDR or node address without a peer is refused here instead of following the
 *   default route out through slirp4netns to the host's network; pod traffic leaving through
 *   the uplink is masqueraded (the cluster CNI template turns the bridge's ipMasq off: pod to
 *   pod across nodes keeps the pod's address); forwarded traffic to the uplink's gateway (the
 *   host's loopback, which the overlay's packets need) is rejected, so pods never reach it.
 * - Peers are reconciled against what the device holds (`ip -j`, `bridge -j`): entries of a
 *   peer that left are deleted, those of a changed peer replaced; one `ip -batch` and one
 *   `bridge -batch` per change.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import { FailedPreconditionError, InvalidArgumentError } from '../errors.js';
import { outputTail, type RunOptions, run, runChecked } from './process-runner.js';
import { SAFE_PATH } from './programs.js';

export interface OverlayDeviceSpec {
  device: string;
  /** VXLAN network identifier, the same on every node. */
  vni: number;
  /** The VXLAN UDP port inside the node (what the node publishes on the host). */
  port: number;
  mtu: number;
  /** This node's overlay address (IPv4): on the device as a /32, kubelet's node IP. */
  address: string;
}

export interface OverlayPeer {
  name: string;
  /** The peer's overlay address. */
  address: string;
  /** Where its VXLAN packets go from this node (IPv4) and the UDP port there. */
  underlay: string;
  underlayPort: number;
  /** Its pod CIDRs (IPv4), routed through its address. */
  podCidrs: string[];
}

export interface OverlayGuardSpec {
  device: string;
  /** The cluster's pod network and the nodes' address network: unreachable unless routed. */
  clusterCidr: string;
  nodeNetwork: string;
  /** The uplink device (slirp4netns' tap0) and its gateway (the host's loopback). */
  uplink: string;
  hostGateway: string;
}

/** The node's end of the overlay (STYLE.md: an interface named by role). */
export interface OverlayNetwork {
  /** Creates the device (or re-creates one made with other parameters) and brings it up. */
  ensureDevice(spec: OverlayDeviceSpec): Promise<void>;
  ensureGuards(spec: OverlayGuardSpec): Promise<void>;
  /** Makes the device's peers exactly `peers`; returns the commands it ran. */
  setPeers(device: string, address: string, peers: OverlayPeer[]): Promise<string[]>;
}

/** A locally administered MAC from an IPv4 address: 02:72 then the four bytes. */
export function overlayMac(address: string): string {
  if (!isIPv4(address)) throw new InvalidArgumentError(`${address} is not an IPv4 address`);
  const bytes = address.split('.').map((b) => Number(b).toString(16).padStart(2, '0'));
  return ['02', '72', ...bytes].join(':');
}

/** The default route's device and gateway from /proc/net/route (little-endian hex). */
export function defaultGateway(procNetRoute: string): { device: string; gateway: string } | undefined {
  for (const line of procNetRoute.split('\n').slice(1)) {
    const [device, destination, gateway, , , , , mask] = line.trim().split(/\s+/);
    if (device && destination === '00000000' && mask === '00000000' && gateway && gateway !== '00000000') {
      const n = Number.parseInt(gateway, 16);
      return { device, gateway: [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join('.') };
    }
  }
  return undefined;
}

/** What the device holds now, from `ip -j route|neigh show dev X` and `bridge -j fdb show dev X`. */
export interface OverlayState {
  routes: { dst: string }[];
  neighbours: { dst: string; lladdr?: string }[];
  fdb: { mac: string; dst?: string; port?: number }[];
}

/** Without a prefix length `ip -j route` means a host route. */
function normaliseDst(dst: string): string {
  return dst.includes('/') ? dst : `${dst}/32`;
}

/**
 * The commands that make `current` hold exactly `peers`: replaces for every wanted entry
 * (idempotent), deletes for what no peer wants. Pure, for the unit tests.
 */
export function peerCommands(
  device: string,
  address: string,
  current: OverlayState,
  peers: OverlayPeer[],
): { ip: string[]; bridge: string[] } {
  const ip: string[] = [];
  const bridge: string[] = [];
  const wantedRoutes = new Set<string>();
  const wantedNeighbours = new Set<string>();
  const wantedMacs = new Set<string>();
  for (const peer of peers) {
    const mac = overlayMac(peer.address);
    wantedMacs.add(mac);
    wantedNeighbours.add(peer.address);
    wantedRoutes.add(`${peer.address}/32`);
    bridge.push(
      `fdb replace ${mac} dev ${device} dst ${peer.underlay} port ${peer.underlayPort} self permanent`,
    );
    ip.push(`neigh replace ${peer.address} lladdr ${mac} dev ${device} nud permanent`);
    ip.push(`route replace ${peer.address}/32 dev ${device} src ${address}`);
    for (const cidr of peer.podCidrs) {
      wantedRoutes.add(cidr);
      ip.push(`route replace ${cidr} via ${peer.address} dev ${device} onlink src ${address}`);
    }
  }
  for (const route of current.routes) {
    const dst = normaliseDst(route.dst);
    if (!wantedRoutes.has(dst)) ip.push(`route del ${dst} dev ${device}`);
  }
  for (const neighbour of current.neighbours) {
    if (!wantedNeighbours.has(neighbour.dst)) ip.push(`neigh del ${neighbour.dst} dev ${device}`);
  }
  for (const entry of current.fdb) {
    if (!wantedMacs.has(entry.mac)) bridge.push(`fdb del ${entry.mac} dev ${device} self`);
  }
  return { ip, bridge };
}

const RUN: RunOptions = { env: { PATH: SAFE_PATH }, timeoutMs: 30_000 };

async function json<T>(program: string, args: string[]): Promise<T> {
  const r = await runChecked(program, ['-j', ...args], { ...RUN, what: `${program} -j ${args.join(' ')}` });
  const text = r.stdout.toString('utf8').trim();
  return (text === '' ? [] : JSON.parse(text)) as T;
}

async function batch(program: 'ip' | 'bridge', commands: string[]): Promise<void> {
  if (commands.length === 0) return;
  // -force: every command is tried; the first failure is reported after the rest ran.
  await runChecked(program, ['-force', '-batch', '-'], {
    ...RUN,
    input: `${commands.join('\n')}\n`,
    what: `${program} -batch (${commands.length} commands: ${commands.slice(0, 3).join('; ')}${commands.length > 3 ? '; ...' : ''})`,
  });
}

interface LinkInfo {
  address?: string;
  mtu?: number;
  linkinfo?: { info_kind?: string; info_data?: { id?: number; port?: number; learning?: boolean } };
}

/** The real OverlayNetwork: iproute2 and iptables in the current network namespace. */
export class IprouteOverlayNetwork implements OverlayNetwork {
  async ensureDevice(spec: OverlayDeviceSpec): Promise<void> {
    const mac = overlayMac(spec.address);
    const existing = (await run('ip', ['-j', '-d', 'link', 'show', 'dev', spec.device], RUN)).exitCode === 0;
    if (existing) {
      const [link] = await json<LinkInfo[]>('ip', ['-d', 'link', 'show', 'dev', spec.device]);
      const data = link?.linkinfo?.info_data;
      const same =
        link?.linkinfo?.info_kind === 'vxlan' &&
        data?.id === spec.vni &&
        data?.port === spec.port &&
        data?.learning === false &&
        link.address === mac;
      if (!same) await runChecked('ip', ['link', 'del', 'dev', spec.device], RUN);
      else await runChecked('ip', ['link', 'set', 'dev', spec.device, 'mtu', String(spec.mtu)], RUN);
      if (same) return this.finishDevice(spec);
    }
    const add = await run(
      'ip',
      [
        ...['link', 'add', spec.device, 'address', mac, 'mtu', String(spec.mtu), 'type', 'vxlan'],
        ...['id', String(spec.vni), 'dstport', String(spec.port), 'nolearning'],
      ],
      RUN,
    );
    if (add.exitCode !== 0) {
      const said = outputTail(add);
      throw new FailedPreconditionError(
        `cannot create the VXLAN device ${spec.device}: ${said}` +
          (/unknown device type|not supported/i.test(said)
            ? '; the kernel has no vxlan support loaded: as root, `modprobe vxlan` (deploy/setup-host.sh does)'
            : ''),
      );
    }
    await this.finishDevice(spec);
  }

  private async finishDevice(spec: OverlayDeviceSpec): Promise<void> {
    // No IPv6 on the overlay: router solicitations would only be dropped for lack of an FDB entry.
    await writeFile(`/proc/sys/net/ipv6/conf/${spec.device}/disable_ipv6`, '1').catch(() => undefined);
    await runChecked('ip', ['addr', 'replace', `${spec.address}/32`, 'dev', spec.device], RUN);
    await runChecked('ip', ['link', 'set', 'dev', spec.device, 'up'], RUN);
  }

  async ensureGuards(spec: OverlayGuardSpec): Promise<void> {
    // Traffic arriving on the overlay for a local pod is forwarded to the bridge.
    if ((await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8')).trim() !== '1') {
      await writeFile('/proc/sys/net/ipv4/ip_forward', '1');
    }
    await batch('ip', [
      `route replace unreachable ${spec.clusterCidr}`,
      `route replace unreachable ${spec.nodeNetwork}`,
    ]);
    const rules: { table: string; chain: string; insert: boolean; rule: string[] }[] = [
      {
        table: 'nat',
        chain: 'POSTROUTING',
        insert: false,
        rule: [
          ...['-s', spec.clusterCidr, '-o', spec.uplink, '-m', 'comment'],
          ...['--comment', 'rootless-cri overlay: pod egress through the uplink', '-j', 'MASQUERADE'],
        ],
      },
      {
        table: 'filter',
        chain: 'FORWARD',
        insert: true,
        rule: [
          ...['-d', `${spec.hostGateway}/32`, '-m', 'comment'],
          ...['--comment', "rootless-cri overlay: pods never reach the host's loopback", '-j', 'REJECT'],
        ],
      },
    ];
    for (const { table, chain, insert, rule } of rules) {
      const present = await run('iptables', ['-w', '-t', table, '-C', chain, ...rule], RUN);
      if (present.exitCode === 0) continue;
      await runChecked('iptables', ['-w', '-t', table, insert ? '-I' : '-A', chain, ...rule], {
        ...RUN,
        what: `iptables -t ${table} ${chain}`,
      });
    }
  }

  async setPeers(device: string, address: string, peers: OverlayPeer[]): Promise<string[]> {
    const current: OverlayState = {
      routes: await json<{ dst: string }[]>('ip', ['route', 'show', 'dev', device]),
      neighbours: await json<{ dst: string; lladdr?: string }[]>('ip', ['neigh', 'show', 'dev', device]),
      fdb: await json<{ mac: string }[]>('bridge', ['fdb', 'show', 'dev', device]),
    };
    const { ip, bridge } = peerCommands(device, address, current, peers);
    await batch('bridge', bridge);
    await batch('ip', ip);
    return [...bridge.map((c) => `bridge ${c}`), ...ip.map((c) => `ip ${c}`)];
  }
}
