/**
 * `rootless-cri overlay`: the overlay agent's command line (overlay-agent.ts says what it does).
 * It runs inside the node, like kubelet:
 *
 *   rootless-cri enter -- rootless-cri overlay --server URL --ca-file F --cert-file F
 *       --address IP --endpoint HOST:PORT [--node NAME] [--cluster-cidr CIDR]
 *       [--node-network CIDR] [--key-file F] [--vni N] [--port N] [--mtu N] [--device NAME]
 *
 * deploy/cluster/cluster.sh starts it with the node's settings.
 */
import { readFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';
import { defaultGateway, IprouteOverlayNetwork } from '../os/vxlan-overlay.js';
import { KubeApi } from './kube-api.js';
import { inUserNamespace } from './node.js';
import { type OverlayAgentOptions, parseEndpoint, parseIpv4Cidr, runOverlayAgent } from './overlay-agent.js';

export const OVERLAY_USAGE = `usage: rootless-cri overlay --server URL --ca-file FILE --cert-file FILE --address IP --endpoint HOST:PORT [options]

Runs inside the node (rootless-cri enter -- rootless-cri overlay ...): the VXLAN overlay between the
nodes of a cluster, programmed from the Node objects.

  --server URL          the API server, as reached from inside this node
  --ca-file FILE        the cluster CA
  --cert-file FILE      client certificate (kubelet's kubelet-client-current.pem, which also holds the key)
  --key-file FILE       client key (default: --cert-file)
  --node NAME           this node's name (default: the hostname)
  --address IP          this node's overlay address (kubelet's --node-ip), inside --node-network
  --endpoint HOST:PORT  where the other nodes reach this node's VXLAN port (the host port it is published at)
  --cluster-cidr CIDR   the cluster's pod network (default 10.88.0.0/16)
  --node-network CIDR   the network of the nodes' overlay addresses (default 10.87.0.0/16)
  --vni N               VXLAN network id (default 1)
  --port N              the VXLAN UDP port inside the node (default 8472)
  --mtu N               the VXLAN device's MTU (default 1500)
  --device NAME         the VXLAN device (default vxlan0)
`;

function integerFlag(
  value: string | undefined,
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new InvalidArgumentError(`--${name}: expected an integer from ${min} to ${max}, got "${value}"`);
  }
  return n;
}

function required(value: string | undefined, name: string): string {
  if (value === undefined || value === '')
    throw new InvalidArgumentError(`--${name} is required\n\n${OVERLAY_USAGE}`);
  return value;
}

export async function overlayCommand(args: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      server: { type: 'string' },
      'ca-file': { type: 'string' },
      'cert-file': { type: 'string' },
      'key-file': { type: 'string' },
      node: { type: 'string' },
      address: { type: 'string' },
      endpoint: { type: 'string' },
      'cluster-cidr': { type: 'string' },
      'node-network': { type: 'string' },
      vni: { type: 'string' },
      port: { type: 'string' },
      mtu: { type: 'string' },
      device: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(OVERLAY_USAGE);
    return 0;
  }
  const server = required(values.server, 'server');
  if (!/^https:\/\//.test(server))
    throw new InvalidArgumentError(`--server: expected an https:// URL, got "${server}"`);
  const address = required(values.address, 'address');
  if (!isIPv4(address))
    throw new InvalidArgumentError(`--address: expected an IPv4 address, got "${address}"`);
  const endpointText = required(values.endpoint, 'endpoint');
  const endpoint = parseEndpoint(endpointText);
  if (!endpoint) {
    throw new InvalidArgumentError(
      `--endpoint: expected IPv4-address:port such as 127.0.0.1:20002, got "${endpointText}"`,
    );
  }
  const clusterCidr = values['cluster-cidr'] ?? '10.88.0.0/16';
  const nodeNetwork = values['node-network'] ?? '10.87.0.0/16';
  for (const [flag, value] of [
    ['cluster-cidr', clusterCidr],
    ['node-network', nodeNetwork],
  ] as const) {
    if (!parseIpv4Cidr(value))
      throw new InvalidArgumentError(`--${flag}: expected an IPv4 CIDR, got "${value}"`);
  }
  const device = values.device ?? 'vxlan0';
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(device)) {
    throw new InvalidArgumentError(
      `--device: expected a network device name (at most 15 characters), got "${device}"`,
    );
  }
  const certFile = required(values['cert-file'], 'cert-file');
  if (!(await inUserNamespace())) {
    throw new InvalidArgumentError(
      "rootless-cri overlay programs the node's network namespace: run it inside the node, `rootless-cri enter -- rootless-cri overlay ...`",
    );
  }
  const uplink = defaultGateway(await readFile('/proc/net/route', 'utf8'));
  if (!uplink) {
    throw new InvalidArgumentError(
      "the node has no default route (slirp4netns' tap0): the overlay's packets leave through it; is this the node's network namespace?",
    );
  }
  const options: OverlayAgentOptions = {
    nodeName: values.node ?? hostname(),
    address,
    endpoint,
    clusterCidr,
    nodeNetwork,
    device,
    vni: integerFlag(values.vni, 'vni', 1, 1, 16_777_215),
    port: integerFlag(values.port, 'port', 8472, 1, 65_535),
    mtu: integerFlag(values.mtu, 'mtu', 1500, 576, 65_000),
    uplink,
  };
  const api = new KubeApi({
    server,
    caFile: required(values['ca-file'], 'ca-file'),
    certFile,
    keyFile: values['key-file'] ?? certFile,
  });
  const stop = new AbortController();
  for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(s, () => stop.abort());
  await runOverlayAgent(options, { api, overlay: new IprouteOverlayNetwork(), logger }, stop.signal);
  return 0;
}
