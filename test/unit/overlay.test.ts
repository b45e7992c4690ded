/**
 * The overlay agent without a kernel or an API server: the plan from Node objects, the commands
 * that reconcile a device, and the agent's loop against a fake API (list, watch, 410, patch) and
 * a fake OverlayNetwork that records what it was told.
 */
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import {
  defaultGateway,
  type OverlayNetwork,
  type OverlayPeer,
  overlayMac,
  peerCommands,
} from '../../src/os/vxlan-overlay.js';
import type { KubeNode, WatchEvent } from '../../src/rootless/kube-api.js';
import {
  ADDRESS_ANNOTATION,
  ENDPOINT_ANNOTATION,
  ipv4Within,
  missingAnnotations,
  type NodeSource,
  type OverlayAgentOptions,
  planPeers,
  runOverlayAgent,
} from '../../src/rootless/overlay-agent.js';

const SELF: OverlayAgentOptions = {
  nodeName: 'cp',
  address: '10.87.3.242',
  endpoint: { host: '127.0.0.1', port: 20002 },
  clusterCidr: '10.88.0.0/16',
  nodeNetwork: '10.87.0.0/16',
  device: 'vxlan0',
  vni: 1,
  port: 8472,
  mtu: 1500,
  uplink: { device: 'tap0', gateway: '10.0.2.2' },
};

function node(name: string, address?: string, endpoint?: string, podCIDRs?: string[]): KubeNode {
  const annotations: Record<string, string> = {};
  if (address) annotations[ADDRESS_ANNOTATION] = address;
  if (endpoint) annotations[ENDPOINT_ANNOTATION] = endpoint;
  return { metadata: { name, annotations }, spec: podCIDRs ? { podCIDRs } : {} };
}

describe('addresses', () => {
  it('derives a locally administered MAC from the overlay address', () => {
    expect(overlayMac('10.87.3.242')).toBe('02:72:0a:57:03:f2');
    expect(() => overlayMac('fd00::1')).toThrow(/not an IPv4/);
  });

  it("reads the default route's device and gateway from /proc/net/route", () => {
    const table = [
      'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT',
      'tap0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0',
      'tap0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0',
    ].join('\n');
    expect(defaultGateway(table)).toEqual({ device: 'tap0', gateway: '10.0.2.2' });
    expect(defaultGateway(table.split('\n').slice(0, 1).join('\n'))).toBeUndefined();
  });

  it('tells whether an address or a CIDR lies inside a CIDR', () => {
    expect(ipv4Within('10.88.0.0/16', '10.88.3.0/24')).toBe(true);
    expect(ipv4Within('10.88.0.0/16', '10.89.0.0/24')).toBe(false);
    expect(ipv4Within('10.88.0.0/16', '10.0.0.0/8')).toBe(false);
    expect(ipv4Within('127.0.0.0/8', '127.0.0.1')).toBe(true);
    expect(ipv4Within('10.87.0.0/16', 'not-an-ip')).toBe(false);
  });
});

describe('planPeers', () => {
  it('makes a peer of every other announced node; loopback endpoints go through the uplink gateway', () => {
    const plan = planPeers(
      [
        node('cp', '10.87.3.242', '127.0.0.1:20002', ['10.88.0.0/24']),
        node('w2', '10.87.3.244', '192.0.2.7:8472', ['10.88.2.0/24']),
        node('w1', '10.87.3.243', '127.0.0.1:20034', ['10.88.1.0/24']),
      ],
      SELF,
    );
    expect(plan.problems).toEqual([]);
    expect(plan.waiting).toEqual([]);
    expect(plan.peers).toEqual([
      {
        name: 'w1',
        address: '10.87.3.243',
        underlay: '10.0.2.2',
        underlayPort: 20034,
        podCidrs: ['10.88.1.0/24'],
      },
      {
        name: 'w2',
        address: '10.87.3.244',
        underlay: '192.0.2.7',
        underlayPort: 8472,
        podCidrs: ['10.88.2.0/24'],
      },
    ]);
  });

  it('leaves out, and says why, nodes whose values are missing or could steer traffic elsewhere', () => {
    const plan = planPeers(
      [
        node('unannounced', undefined, undefined, ['10.88.1.0/24']),
        node('no-cidr', '10.87.0.5', '127.0.0.1:20066'),
        node('outside-net', '10.0.2.2', '127.0.0.1:20098', ['10.88.3.0/24']),
        node('wide-cidr', '10.87.0.6', '127.0.0.1:20130', ['0.0.0.0/0']),
        node('bad-endpoint', '10.87.0.7', 'registry.example:8472', ['10.88.4.0/24']),
        node('twin-of-self', '10.87.3.242', '127.0.0.1:20162', ['10.88.5.0/24']),
        node('a-first', '10.87.0.9', '127.0.0.1:20194', ['10.88.6.0/24']),
        node('b-twin', '10.87.0.9', '127.0.0.1:20226', ['10.88.7.0/24']),
      ],
      SELF,
    );
    expect(plan.peers.map((p) => p.name)).toEqual(['a-first']);
    expect(plan.waiting.map((p) => p.split(':')[0])).toEqual(['node no-cidr', 'node unannounced']);
    const byNode = Object.fromEntries([...plan.problems, ...plan.waiting].map((p) => [p.split(':')[0], p]));
    expect(byNode['node unannounced']).toMatch(/no overlay annotations yet/);
    expect(byNode['node no-cidr']).toMatch(/no IPv4 pod CIDR assigned yet/);
    expect(byNode['node outside-net']).toMatch(/not an IPv4 address in 10\.87\.0\.0\/16/);
    expect(byNode['node wide-cidr']).toMatch(/0\.0\.0\.0\/0 is outside the cluster's 10\.88\.0\.0\/16/);
    expect(byNode['node bad-endpoint']).toMatch(/not IPv4-address:port/);
    expect(byNode['node twin-of-self']).toMatch(/already cp's/);
    expect(byNode['node b-twin']).toMatch(/already a-first's/);
  });

  it('asks for the annotations only when the Node lacks them or has other values', () => {
    expect(missingAnnotations(undefined, SELF)).toBeNull();
    expect(missingAnnotations(node('cp'), SELF)).toEqual({
      [ADDRESS_ANNOTATION]: '10.87.3.242',
      [ENDPOINT_ANNOTATION]: '127.0.0.1:20002',
    });
    expect(missingAnnotations(node('cp', '10.87.3.242', '127.0.0.1:20002'), SELF)).toBeNull();
  });
});

describe('peerCommands', () => {
  const peer: OverlayPeer = {
    name: 'w1',
    address: '10.87.3.243',
    underlay: '10.0.2.2',
    underlayPort: 20034,
    podCidrs: ['10.88.1.0/24'],
  };

  it('programs the FDB entry with its own port, the neighbour and the routes', () => {
    const { ip, bridge } = peerCommands('vxlan0', SELF.address, { routes: [], neighbours: [], fdb: [] }, [
      peer,
    ]);
    expect(bridge).toEqual([
      'fdb replace 02:72:0a:57:03:f3 dev vxlan0 dst 10.0.2.2 port 20034 self permanent',
    ]);
    expect(ip).toEqual([
      'neigh replace 10.87.3.243 lladdr 02:72:0a:57:03:f3 dev vxlan0 nud permanent',
      'route replace 10.87.3.243/32 dev vxlan0 src 10.87.3.242',
      'route replace 10.88.1.0/24 via 10.87.3.243 dev vxlan0 onlink src 10.87.3.242',
    ]);
  });

  it('deletes what belongs to no peer any more (a node that left)', () => {
    const current = {
      routes: [
        { dst: '10.87.3.243' },
        { dst: '10.88.1.0/24' },
        { dst: '10.87.3.250' },
        { dst: '10.88.9.0/24' },
      ],
      neighbours: [{ dst: '10.87.3.243' }, { dst: '10.87.3.250' }],
      fdb: [{ mac: '02:72:0a:57:03:f3' }, { mac: '02:72:0a:57:03:fa' }],
    };
    const { ip, bridge } = peerCommands('vxlan0', SELF.address, current, [peer]);
    expect(ip.filter((c) => c.includes(' del '))).toEqual([
      'route del 10.87.3.250/32 dev vxlan0',
      'route del 10.88.9.0/24 dev vxlan0',
      'neigh del 10.87.3.250 dev vxlan0',
    ]);
    expect(bridge.filter((c) => c.includes(' del '))).toEqual(['fdb del 02:72:0a:57:03:fa dev vxlan0 self']);
    expect(
      peerCommands('vxlan0', SELF.address, current, []).ip.filter((c) => c.includes(' del ')),
    ).toHaveLength(6);
  });
});

/** An API server of Nodes: list answers the current set; each watch gets the events pushed after it started. */
class FakeNodes implements NodeSource {
  nodes = new Map<string, KubeNode>();
  version = 1;
  patches: { name: string; annotations: Record<string, string | null> }[] = [];
  lists = 0;
  private watcher: { onEvent: (e: WatchEvent) => void; end: (err?: unknown) => void } | null = null;

  async listNodes() {
    this.lists += 1;
    return { metadata: { resourceVersion: String(this.version) }, items: [...this.nodes.values()] };
  }

  watchNodes(_rv: string, onEvent: (e: WatchEvent) => void, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const end = (err?: unknown) => {
        this.watcher = null;
        if (err) reject(err);
        else resolve();
      };
      this.watcher = { onEvent, end };
      signal.addEventListener('abort', () => end(), { once: true });
    });
  }

  async patchNodeAnnotations(name: string, annotations: Record<string, string | null>) {
    this.patches.push({ name, annotations });
    const n = this.nodes.get(name)!;
    const updated = {
      ...n,
      metadata: { ...n.metadata, annotations: { ...n.metadata.annotations, ...annotations } },
    };
    this.emit('MODIFIED', updated as KubeNode);
    return updated;
  }

  emit(type: WatchEvent['type'], n: KubeNode): void {
    this.version += 1;
    if (type === 'DELETED') this.nodes.delete(n.metadata.name);
    else this.nodes.set(n.metadata.name, n);
    const object = { ...n, metadata: { ...n.metadata, resourceVersion: String(this.version) } };
    try {
      this.watcher?.onEvent({ type, object });
    } catch (err) {
      this.watcher?.end(err);
    }
  }

  expire(): void {
    try {
      this.watcher?.onEvent({
        type: 'ERROR',
        object: { metadata: { name: '' }, code: 410, message: 'too old' },
      });
    } catch (err) {
      this.watcher?.end(err);
    }
  }

  get watching(): boolean {
    return this.watcher !== null;
  }
}

class FakeOverlay implements OverlayNetwork {
  devices: unknown[] = [];
  guards: unknown[] = [];
  peerSets: string[][] = [];
  async ensureDevice(spec: unknown) {
    this.devices.push(spec);
  }
  async ensureGuards(spec: unknown) {
    this.guards.push(spec);
  }
  async setPeers(_device: string, _address: string, peers: OverlayPeer[]) {
    this.peerSets.push(peers.map((p) => `${p.name}@${p.underlay}:${p.underlayPort}`));
    return [];
  }
}

async function until(what: string, condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('runOverlayAgent', () => {
  it('announces itself once its Node exists, follows peers as they come and go, lists again after a 410', async () => {
    const api = new FakeNodes();
    const overlay = new FakeOverlay();
    api.nodes.set('w1', node('w1', '10.87.3.243', '127.0.0.1:20034', ['10.88.1.0/24']));
    const stop = new AbortController();
    const agent = runOverlayAgent(
      SELF,
      { api, overlay, logger: createLogger({ level: 'silent' }) },
      stop.signal,
    );
    try {
      await until('the first peers', () => overlay.peerSets.length === 1 && api.watching);
      expect(overlay.devices).toEqual([
        { device: 'vxlan0', vni: 1, port: 8472, mtu: 1500, address: '10.87.3.242' },
      ]);
      expect(overlay.guards).toEqual([
        {
          device: 'vxlan0',
          clusterCidr: '10.88.0.0/16',
          nodeNetwork: '10.87.0.0/16',
          uplink: 'tap0',
          hostGateway: '10.0.2.2',
        },
      ]);
      expect(overlay.peerSets[0]).toEqual(['w1@10.0.2.2:20034']);
      expect(api.patches).toEqual([]); // its own Node is not registered yet

      api.emit('ADDED', node('cp', undefined, undefined, ['10.88.0.0/24']));
      await until('the announcement', () => api.patches.length === 1);
      expect(api.patches[0]).toEqual({
        name: 'cp',
        annotations: { [ADDRESS_ANNOTATION]: '10.87.3.242', [ENDPOINT_ANNOTATION]: '127.0.0.1:20002' },
      });

      api.emit('ADDED', node('w2', '10.87.3.244', '127.0.0.1:20066', ['10.88.2.0/24']));
      await until('w2 programmed', () => overlay.peerSets.at(-1)?.length === 2);
      api.emit('DELETED', api.nodes.get('w1')!);
      await until('w1 removed', () => overlay.peerSets.at(-1)?.join() === 'w2@10.0.2.2:20066');

      const lists = api.lists;
      api.expire();
      await until('a new list after 410', () => api.lists === lists + 1 && api.watching);
      // The same nodes: nothing to program again.
      expect(overlay.peerSets.at(-1)).toEqual(['w2@10.0.2.2:20066']);
      expect(api.patches).toHaveLength(1);
    } finally {
      stop.abort();
      await agent;
    }
  });
});
