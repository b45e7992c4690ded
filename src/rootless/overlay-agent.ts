/**
 * The overlay agent: one per node of a multi-node rootless cluster (`rootless-cri overlay`,
 * run inside the node like kubelet), joining the nodes' network namespaces into one pod network.
 *
 * Why its own agent rather than flannel (which usernetes runs): on one host every node is
 * another user's rootlesskit, and the only way between them is the host's 127.0.0.1, where each
 * node publishes its VXLAN port through its port driver at a port of its own (the per-user port
 * scheme). flannel's vxlan backend sends every peer's traffic to one UDP port (its
 * `flannel.1` dstport) at the peer's public IP, so nodes that share an address with different
 * ports cannot be expressed; the Linux FDB can (an entry carries its own port), and a
 * controller that programs it from the Node objects is small. On separate hosts the same agent
 * works unchanged with each node's endpoint set to its host's address.
 *
 * What it does:
 * 1. creates the node's VXLAN device with the node's overlay address (kubelet's --node-ip) and
 *    the guards (src/os/vxlan-overlay.ts) — before it needs the API server, so kubelet can
 *    start with that address;
 * 2. announces on its own Node object where its VXLAN port is reachable (ENDPOINT_ANNOTATION:
 *    the host address and published port) and its overlay address (ADDRESS_ANNOTATION),
 *    whenever the Node lacks them (registration, re-registration);
 * 3. lists and watches all Nodes and programs one peer per other node that has both
 *    annotations and a pod CIDR: FDB, neighbour, routes; a node that leaves (deleted) is
 *    removed. Values that could steer traffic elsewhere (an address outside the node network,
 *    a pod CIDR outside the cluster's, an address another node already has) are refused and
 *    logged, naming the node.
 *
 * On SIGTERM it exits and leaves the device as it is: pods keep talking across nodes while the
 * agent restarts; a restarted agent reconciles from a fresh list.
 */
import { isIPv4 } from 'node:net';
import { describeError } from '../errors.js';
import type { Logger } from '../log.js';
import type { OverlayNetwork, OverlayPeer } from '../os/vxlan-overlay.js';
import { KubeApiError, type KubeNode, type WatchEvent } from './kube-api.js';

export const ENDPOINT_ANNOTATION = 'overlay.rootless-cri.io/endpoint';
export const ADDRESS_ANNOTATION = 'overlay.rootless-cri.io/address';

export interface OverlayAgentOptions {
  nodeName: string;
  /** This node's overlay address (IPv4, inside nodeNetwork). */
  address: string;
  /** Where other nodes send this node's VXLAN packets: the host address and published UDP port. */
  endpoint: { host: string; port: number };
  /** The cluster's pod network (the controller-manager's --cluster-cidr). */
  clusterCidr: string;
  /** The network the nodes' overlay addresses come from. */
  nodeNetwork: string;
  device: string;
  vni: number;
  /** The VXLAN port inside the node. */
  port: number;
  mtu: number;
  /** The node's uplink (slirp4netns' tap0) and its gateway, through which the host's loopback is reached. */
  uplink: { device: string; gateway: string };
}

/** What the agent needs of the API server (KubeApi; a fake in the unit tests). */
export interface NodeSource {
  listNodes(): Promise<{ metadata: { resourceVersion: string }; items: KubeNode[] }>;
  watchNodes(
    resourceVersion: string,
    onEvent: (event: WatchEvent) => void,
    signal: AbortSignal,
  ): Promise<void>;
  patchNodeAnnotations(name: string, annotations: Record<string, string | null>): Promise<unknown>;
}

// ---- addresses ----------------------------------------------------------------------------

function ipv4ToNumber(address: string): number {
  return address.split('.').reduce((n, b) => n * 256 + Number(b), 0);
}

/** A parsed IPv4 CIDR, or undefined when `cidr` is not one. */
export function parseIpv4Cidr(cidr: string): { base: number; bits: number } | undefined {
  const match = /^(\d+\.\d+\.\d+\.\d+)\/(\d{1,2})$/.exec(cidr);
  if (!match || !isIPv4(match[1]!) || Number(match[2]) > 32) return undefined;
  const bits = Number(match[2]);
  const size = 2 ** (32 - bits);
  return { base: ipv4ToNumber(match[1]!) - (ipv4ToNumber(match[1]!) % size), bits };
}

/** Whether `inner` (an address or a CIDR) lies inside the CIDR `outer`. */
export function ipv4Within(outer: string, inner: string): boolean {
  const o = parseIpv4Cidr(outer);
  const i = inner.includes('/')
    ? parseIpv4Cidr(inner)
    : isIPv4(inner)
      ? parseIpv4Cidr(`${inner}/32`)
      : undefined;
  if (!o || !i || i.bits < o.bits) return false;
  const size = 2 ** (32 - o.bits);
  return i.base >= o.base && i.base < o.base + size;
}

/** `host:port` with an IPv4 host (no names: nothing here resolves DNS). */
export function parseEndpoint(text: string): { host: string; port: number } | undefined {
  const match = /^(\d+\.\d+\.\d+\.\d+):(\d{1,5})$/.exec(text);
  if (!match || !isIPv4(match[1]!)) return undefined;
  const port = Number(match[2]);
  return port >= 1 && port <= 65535 ? { host: match[1]!, port } : undefined;
}

// ---- the plan: Node objects → peers ---------------------------------------------------------

export interface PeerPlan {
  peers: OverlayPeer[];
  /** One line per node left out because its values are wrong, saying why. */
  problems: string[];
  /** One line per node left out for now: it has not announced itself or has no pod CIDR yet. */
  waiting: string[];
}

export function planPeers(
  nodes: readonly KubeNode[],
  self: Pick<OverlayAgentOptions, 'nodeName' | 'address' | 'clusterCidr' | 'nodeNetwork' | 'uplink'>,
): PeerPlan {
  const peers: OverlayPeer[] = [];
  const problems: string[] = [];
  const waiting: string[] = [];
  const taken = new Map<string, string>([[self.address, self.nodeName]]);
  const sorted = [...nodes].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  for (const node of sorted) {
    const name = node.metadata.name;
    if (name === self.nodeName) continue;
    const annotations = node.metadata.annotations ?? {};
    const address = annotations[ADDRESS_ANNOTATION];
    const endpointText = annotations[ENDPOINT_ANNOTATION];
    if (address === undefined || endpointText === undefined) {
      waiting.push(`node ${name}: no overlay annotations yet (its overlay agent has not announced itself)`);
      continue;
    }
    if (!isIPv4(address) || !ipv4Within(self.nodeNetwork, address)) {
      problems.push(
        `node ${name}: overlay address "${address}" is not an IPv4 address in ${self.nodeNetwork}`,
      );
      continue;
    }
    const owner = taken.get(address);
    if (owner !== undefined) {
      problems.push(
        `node ${name}: overlay address ${address} is already ${owner}'s; give one of them another (cluster.sh --node-address)`,
      );
      continue;
    }
    const endpoint = parseEndpoint(endpointText);
    if (!endpoint) {
      problems.push(`node ${name}: VXLAN endpoint "${endpointText}" is not IPv4-address:port`);
      continue;
    }
    const cidrs = node.spec?.podCIDRs ?? (node.spec?.podCIDR ? [node.spec.podCIDR] : []);
    const podCidrs = cidrs.filter((c) => parseIpv4Cidr(c) !== undefined);
    if (podCidrs.length === 0) {
      waiting.push(`node ${name}: no IPv4 pod CIDR assigned yet`);
      continue;
    }
    const outside = podCidrs.find((c) => !ipv4Within(self.clusterCidr, c));
    if (outside) {
      problems.push(`node ${name}: pod CIDR ${outside} is outside the cluster's ${self.clusterCidr}`);
      continue;
    }
    taken.set(address, name);
    // The host's loopback is reached through the uplink's gateway (slirp4netns maps it there).
    const loopback = ipv4Within('127.0.0.0/8', endpoint.host);
    peers.push({
      name,
      address,
      underlay: loopback ? self.uplink.gateway : endpoint.host,
      underlayPort: endpoint.port,
      podCidrs,
    });
  }
  return { peers, problems, waiting };
}

/** The annotations this node must carry (null: already right). */
export function missingAnnotations(
  node: KubeNode | undefined,
  options: Pick<OverlayAgentOptions, 'address' | 'endpoint'>,
): Record<string, string> | null {
  if (!node) return null;
  const wanted = {
    [ADDRESS_ANNOTATION]: options.address,
    [ENDPOINT_ANNOTATION]: `${options.endpoint.host}:${options.endpoint.port}`,
  };
  const have = node.metadata.annotations ?? {};
  return Object.entries(wanted).every(([k, v]) => have[k] === v) ? null : wanted;
}

// ---- the agent ------------------------------------------------------------------------------

class WatchExpired extends Error {}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

export async function runOverlayAgent(
  options: OverlayAgentOptions,
  deps: { api: NodeSource; overlay: OverlayNetwork; logger: Logger },
  signal: AbortSignal,
): Promise<void> {
  const { api, overlay, logger } = deps;
  await overlay.ensureDevice({
    device: options.device,
    vni: options.vni,
    port: options.port,
    mtu: options.mtu,
    address: options.address,
  });
  await overlay.ensureGuards({
    device: options.device,
    clusterCidr: options.clusterCidr,
    nodeNetwork: options.nodeNetwork,
    uplink: options.uplink.device,
    hostGateway: options.uplink.gateway,
  });
  logger.info(
    { device: options.device, address: options.address, endpoint: options.endpoint, uplink: options.uplink },
    'overlay device ready',
  );

  const nodes = new Map<string, KubeNode>();
  let applied: string | null = null;
  let reportedProblems = '';
  let running = false;
  let again = false;
  let retryTimer: NodeJS.Timeout | null = null;

  const reconcile = async (): Promise<void> => {
    const patch = missingAnnotations(nodes.get(options.nodeName), options);
    if (patch) {
      await api.patchNodeAnnotations(options.nodeName, patch);
      logger.info({ node: options.nodeName, annotations: patch }, 'announced this node on its Node object');
    }
    const plan = planPeers([...nodes.values()], options);
    const problems = [...plan.problems, ...plan.waiting].join('\n');
    if (problems !== reportedProblems) {
      for (const p of plan.problems) logger.warn(p);
      for (const p of plan.waiting) logger.info(p);
      reportedProblems = problems;
    }
    const key = JSON.stringify(plan.peers);
    if (key === applied) return;
    const commands = await overlay.setPeers(options.device, options.address, plan.peers);
    applied = key;
    logger.info(
      {
        peers: plan.peers.map(
          (p) => `${p.name} ${p.address} ${p.podCidrs.join(',')} via ${p.underlay}:${p.underlayPort}`,
        ),
        commands: commands.length,
      },
      'overlay peers programmed',
    );
  };

  // One reconcile at a time; events during one make exactly one more.
  const schedule = (): void => {
    if (signal.aborted) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    void (async () => {
      do {
        again = false;
        try {
          await reconcile();
        } catch (err) {
          logger.error({ err: describeError(err) }, 'programming the overlay failed; trying again in 5 s');
          applied = null;
          if (!retryTimer && !signal.aborted) {
            retryTimer = setTimeout(() => {
              retryTimer = null;
              schedule();
            }, 5_000);
          }
        }
      } while (again && !signal.aborted);
      running = false;
    })();
  };

  let backoffMs = 500;
  let lastError = '';
  while (!signal.aborted) {
    try {
      const list = await api.listNodes();
      nodes.clear();
      for (const node of list.items) nodes.set(node.metadata.name, node);
      let resourceVersion = list.metadata.resourceVersion;
      schedule();
      backoffMs = 500;
      lastError = '';
      for (;;) {
        await api.watchNodes(
          resourceVersion,
          (event) => {
            if (event.type === 'ERROR') {
              if (event.object.code === 410) throw new WatchExpired('resource version too old');
              throw new KubeApiError(event.object.code ?? 0, `watch error: ${event.object.message ?? ''}`);
            }
            resourceVersion = event.object.metadata.resourceVersion ?? resourceVersion;
            if (event.type === 'BOOKMARK') return;
            if (event.type === 'DELETED') nodes.delete(event.object.metadata.name);
            else nodes.set(event.object.metadata.name, event.object);
            schedule();
          },
          signal,
        );
        if (signal.aborted) break;
      }
    } catch (err) {
      if (signal.aborted) break;
      if (err instanceof WatchExpired) continue;
      const text = describeError(err);
      // The same failure again (the API server down, kubelet's certificate not there yet) is said once.
      if (text !== lastError)
        logger.warn({ err: text, retryInMs: backoffMs }, 'cannot watch the Node objects');
      lastError = text;
      await sleep(backoffMs, signal);
      backoffMs = Math.min(backoffMs * 2, 10_000);
    }
  }
  if (retryTimer) clearTimeout(retryTimer);
  logger.info('overlay agent stopping; the device stays for the next start');
}
