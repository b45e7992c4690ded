/**
 * A two-node rootless cluster of two unprivileged users on this one machine, brought up with
 * deploy/cluster/cluster.sh as an operator would: the first user's node runs the control plane
 * (`cluster.sh init`), the second user's node joins it (`cluster.sh join` with the bootstrap token
 * and CA hash init printed). Every packet between the nodes goes over the host's 127.0.0.1: the
 * VXLAN overlay (rootless-cri overlay) through each node's published UDP port, kubelet to the API
 * server through slirp4netns' host loopback. Checks: pod CIDRs per node, a Deployment spread over
 * both nodes, pod to pod across nodes by IP, Services by DNS name from each node, a NodePort of
 * each node from the host, kubectl logs/exec/port-forward to the worker, a port taken on the host
 * stopping a join cleanly, drain of the worker, the worker leaving, and both users' leak checks.
 *
 * Users: ROOTLESS_CRI_TEST_USER (control plane) and ROOTLESS_CRI_TEST_USER2 (worker), which
 * test/run-all.sh sets up. Images come from a local registry only.
 */
import { createSocket, type Socket } from 'node:dgram';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageBuilder } from '../fixtures/image-builder.js';
import { pushImage, type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import {
  buildCatalogue,
  catalogueEntry,
  HTTP_SERVER_INDEX_HTML,
  HTTP_SERVER_PORT,
  pushCatalogue,
} from '../fixtures/test-images.js';
import { APP_DIR, mirrorConfig, SECOND_TEST_USER, TEST_USER, TestDaemon } from '../harness/daemon.js';
import { CLI, check, k8sBinary, k8sBinDir, waitFor, waitForKubeProxy } from './k8s-harness.js';

const REPORT_DIR =
  process.env.ROOTLESS_CRI_REPORT_DIR ?? path.resolve(import.meta.dirname, '../../.work/reports');
const SUITE = 'multinode';
const CLUSTER_SH = path.join(APP_DIR, 'deploy/cluster/cluster.sh');
const RUN_AS_USER = path.join(APP_DIR, 'deploy/run-as-user.sh');
const BUSYBOX = `registry.k8s.io/${catalogueEntry('busybox').repository}:1.29-2`;
const HTTP_SERVER = `registry.k8s.io/${catalogueEntry('http-server').repository}:1`;
const CP = 'rcri-mn-cp';
const WORKER = 'rcri-mn-w1';
const REPLICAS = 4;
// The scheme of cluster.sh: NodePort 30000 + i is published at the node's port base + 16 + i.
const WEB_NODE_PORT = 30001;

type Obj = Record<string, unknown>;

interface Member {
  name: string;
  daemon: TestDaemon;
  dir: string;
  portBase: number;
}

interface ShResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** cluster.sh as the node's user, with the test daemon's config and the test's binaries. */
async function clusterSh(
  member: { user: string; config: string; dir: string },
  args: string[],
  timeoutMs = 300_000,
): Promise<ShResult> {
  const env = {
    ROOTLESS_CRI: `${process.execPath} ${CLI}`,
    ROOTLESS_CRI_CONFIG: member.config,
    ROOTLESS_CRI_K8S_BIN: k8sBinDir(),
    // A test cluster on a shared 2-core machine: durability does not matter, latency does.
    ETCD_EXTRA_ARGS: '--unsafe-no-fsync',
  };
  const envArgs = Object.entries(env).flatMap(([k, v]) => ['--env', `${k}=${v}`]);
  const r = await execa(
    'bash',
    [RUN_AS_USER, member.user, ...envArgs, '--', 'bash', CLUSTER_SH, ...args, '--dir', member.dir],
    { reject: false, timeout: timeoutMs },
  );
  return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 };
}

const sh = (member: Member, args: string[], timeoutMs?: number) =>
  clusterSh(
    { user: member.daemon.user.name, config: member.daemon.configFile, dir: member.dir },
    args,
    timeoutMs,
  );

function list(items: Obj[]): string {
  return JSON.stringify({ apiVersion: 'v1', kind: 'List', items });
}

/** busybox serving "<text>" on :8080 (httpd), pinned to a node, labelled for its own Service. */
function toolsPod(node: string): Obj {
  const name = `tools-${node}`;
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'default', labels: { app: name } },
    spec: {
      nodeName: node,
      terminationGracePeriodSeconds: 1,
      containers: [
        {
          name: 'tools',
          image: BUSYBOX,
          command: [
            'sh',
            '-c',
            // /cgi-bin/peer answers the address the request came from (busybox httpd sets REMOTE_ADDR).
            [
              `mkdir -p /www/cgi-bin && echo "served by ${name}" > /www/index.html`,
              `printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/peer`,
              'chmod +x /www/cgi-bin/peer && httpd -p 8080 -h /www && echo tools-started && exec sleep 3600',
            ].join(' && '),
          ],
          readinessProbe: { httpGet: { path: '/index.html', port: 8080 }, periodSeconds: 1 },
        },
      ],
    },
  };
}

function toolsService(node: string): Obj {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: `tools-${node}`, namespace: 'default' },
    spec: { selector: { app: `tools-${node}` }, ports: [{ port: 80, targetPort: 8080 }] },
  };
}

const WEB_LABELS = { app: 'web' };

const WEB_DEPLOYMENT: Obj = {
  apiVersion: 'apps/v1',
  kind: 'Deployment',
  metadata: { name: 'web', namespace: 'default' },
  spec: {
    replicas: REPLICAS,
    selector: { matchLabels: WEB_LABELS },
    template: {
      metadata: { labels: WEB_LABELS },
      spec: {
        terminationGracePeriodSeconds: 2,
        // Two per node while both are schedulable; a cordoned node (its unschedulable taint,
        // honoured) is no domain, so a drain moves them all to the other node.
        topologySpreadConstraints: [
          {
            maxSkew: 1,
            topologyKey: 'kubernetes.io/hostname',
            whenUnsatisfiable: 'DoNotSchedule',
            nodeTaintsPolicy: 'Honor',
            labelSelector: { matchLabels: WEB_LABELS },
          },
        ],
        containers: [
          {
            name: 'web',
            image: HTTP_SERVER,
            ports: [{ containerPort: HTTP_SERVER_PORT }],
            readinessProbe: { httpGet: { path: '/index.html', port: HTTP_SERVER_PORT }, periodSeconds: 1 },
          },
        ],
      },
    },
  },
};

const WEB_SERVICE: Obj = {
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name: 'web', namespace: 'default' },
  spec: {
    type: 'NodePort',
    selector: WEB_LABELS,
    ports: [{ port: 80, targetPort: HTTP_SERVER_PORT, nodePort: WEB_NODE_PORT }],
  },
};

/** An image holding only the CoreDNS binary build.sh made (it is static). */
async function pushCoreDnsImage(registry: RunningRegistry): Promise<string> {
  const binary = k8sBinary('coredns');
  const version = /CoreDNS-(\S+)/.exec(String((await execa(binary, ['-version'])).stdout))?.[1];
  if (!version) throw new Error(`cannot read the version of ${binary}`);
  const builder = new ImageBuilder(path.join(REPORT_DIR, '..', 'test-images', 'coredns-layout'));
  const image = await builder.build('coredns', {
    layers: [
      { items: [{ kind: 'file', path: '/coredns', hostFile: binary, mode: 0o755 }], comment: 'coredns' },
    ],
    config: { entrypoint: ['/coredns'], exposedPorts: ['53/udp', '53/tcp'] },
    gzipLevel: 1,
  });
  await pushImage(registry.host, 'coredns/coredns', [`v${version}`], image);
  return `registry.k8s.io/coredns/coredns:v${version}`;
}

/** A daemon for `user` whose config carries the settings cluster.sh asks for (node-config). */
async function startMember(user: string, name: string, registryUrl: string): Promise<Member> {
  // node-config reads nothing but the user's id (the default port base comes from it).
  const r = await clusterSh({ user, config: '/dev/null', dir: '/nonexistent' }, [
    'node-config',
    '--name',
    name,
  ]);
  if (r.exitCode !== 0) throw new Error(`cluster.sh node-config failed: ${r.stderr}`);
  const portBase = Number(/--port-base (\d+)/.exec(r.stdout)?.[1]);
  if (!portBase) throw new Error(`no port base in: ${r.stdout}`);
  const daemon = await TestDaemon.start({ user, extraConfig: `${r.stdout}\n${mirrorConfig(registryUrl)}` });
  return { name, daemon, dir: path.join(daemon.tmp, 'cluster'), portBase };
}

async function logTails(member: Member | undefined): Promise<string> {
  if (!member) return '';
  const parts: string[] = [];
  for (const c of [
    'etcd',
    'kube-apiserver',
    'kube-controller-manager',
    'kube-scheduler',
    'overlay',
    'kubelet',
    'kube-proxy',
  ]) {
    const text = await readFile(path.join(member.dir, 'logs', `${c}.log`), 'utf8').catch(() => null);
    if (text !== null) parts.push(`--- ${member.name} ${c}\n${text.split('\n').slice(-25).join('\n')}`);
  }
  return parts.join('\n');
}

// Each step waits on its own deadlines (kubectl wait, waitFor), longer than vitest's default.
describe('a two-node rootless cluster, each node another user', { timeout: 330_000 }, () => {
  let registry: RunningRegistry | undefined;
  let cp: Member | undefined;
  let worker: Member | undefined;
  let joinArgs: string[] = [];
  let kubeconfig = '';
  let workerLeft = false;

  const kubectl = async (args: string[], input?: string, timeoutMs = 120_000): Promise<ShResult> => {
    const r = await execa(k8sBinary('kubectl'), args, {
      env: { KUBECONFIG: kubeconfig, HOME: cp!.dir, PATH: process.env.PATH ?? '/usr/bin:/bin' },
      extendEnv: false,
      reject: false,
      timeout: timeoutMs,
      ...(input !== undefined ? { input } : {}),
    });
    return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 };
  };
  const k = async (args: string[], input?: string, timeoutMs?: number): Promise<string> => {
    const r = await kubectl(args, input, timeoutMs);
    if (r.exitCode !== 0)
      throw new Error(`kubectl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr || r.stdout}`);
    return r.stdout;
  };
  const json = async <T>(args: string[]) => JSON.parse(await k([...args, '-o', 'json'])) as T;
  const podsOf = async (selector: string) =>
    (
      await json<{
        items: {
          metadata: { name: string; deletionTimestamp?: string };
          spec: { nodeName: string };
          status: { podIP?: string };
        }[];
      }>(['get', 'pods', '-l', selector])
    ).items.filter((p) => !p.metadata.deletionTimestamp);
  const hostPort = (member: Member, nodePort: number) => member.portBase + 16 + (nodePort - 30000);

  beforeAll(async () => {
    const { images } = await buildCatalogue({
      cacheDir: path.join(REPORT_DIR, '..', 'test-images'),
      names: ['busybox', 'http-server'],
    });
    registry = await startRegistry();
    await pushCatalogue(registry.host, images);
    const coreDns = await pushCoreDnsImage(registry);
    cp = await startMember(TEST_USER, CP, registry.url);
    worker = await startMember(SECOND_TEST_USER, WORKER, registry.url);
    const started = Date.now();
    const init = await sh(cp, ['init', '--name', CP, '--coredns-image', coreDns]);
    if (init.exitCode !== 0) {
      throw new Error(`cluster.sh init failed (${init.exitCode}):\n${init.stderr}\n${await logTails(cp)}`);
    }
    joinArgs = /cluster\.sh join (.+)$/m.exec(init.stdout)?.[1]?.split(' ') ?? [];
    expect(joinArgs).toContain('--token');
    kubeconfig = path.join(cp.dir, 'admin-host.kubeconfig');
    await check(
      SUITE,
      `control plane and its node up (cluster.sh init, user ${TEST_USER})`,
      `${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
  }, 600_000);

  afterAll(async () => {
    const tails = `${await logTails(cp)}\n${await logTails(worker)}`;
    if (process.env.ROOTLESS_CRI_K8S_LOGS) console.log(tails);
    const problems: string[] = [];
    for (const member of [worker, cp]) {
      if (!member) continue;
      if (!(member === worker && workerLeft)) {
        const down = await sh(member, ['down']);
        if (down.exitCode !== 0)
          problems.push(`cluster.sh down as ${member.daemon.user.name}: ${down.stderr}`);
      }
      await member.daemon.stop().catch((err: Error) => problems.push(err.message));
    }
    await registry?.stop();
    if (problems.length > 0) throw new Error(problems.join('\n'));
  }, 240_000);

  it('refuses to join on a host port that is taken, naming it, with nothing started', async () => {
    const vxlanPort = worker!.portBase + 2;
    const socket: Socket = createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(vxlanPort, '127.0.0.1', () => resolve());
    });
    try {
      const r = await sh(worker!, ['join', ...joinArgs, '--name', WORKER]);
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toContain(`host port 127.0.0.1:${vxlanPort}/udp (VXLAN) is already taken`);
      expect(r.stderr).toContain('nothing was started');
    } finally {
      await new Promise<void>((resolve) => socket.close(() => resolve()));
    }
    const stray = await execa('pgrep', ['-u', String(worker!.daemon.user.uid), '-f', `${worker!.dir}`], {
      reject: false,
    });
    expect(stray.stdout).toBe('');
    await check(SUITE, 'a join whose host port is taken stops, naming it', `127.0.0.1:${vxlanPort}/udp`);
  });

  it('joins the worker (bootstrap token, CA hash) and gives each node its own pod CIDR', async () => {
    const started = Date.now();
    const join = await sh(worker!, ['join', ...joinArgs, '--name', WORKER]);
    if (join.exitCode !== 0) {
      throw new Error(
        `cluster.sh join failed (${join.exitCode}):\n${join.stderr}\n${await logTails(worker)}\n${await logTails(cp)}`,
      );
    }
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const nodes = await json<{
      items: {
        metadata: { name: string; annotations: Record<string, string> };
        spec: { podCIDR: string };
        status: {
          addresses: { type: string; address: string }[];
          conditions: { type: string; status: string }[];
        };
      }[];
    }>(['get', 'nodes']);
    const byName = Object.fromEntries(nodes.items.map((n) => [n.metadata.name, n]));
    expect(Object.keys(byName).sort()).toEqual([CP, WORKER]);
    const cidrs = [byName[CP]!.spec.podCIDR, byName[WORKER]!.spec.podCIDR];
    for (const cidr of cidrs) expect(cidr).toMatch(/^10\.88\.\d+\.0\/24$/);
    expect(cidrs[0]).not.toBe(cidrs[1]);
    for (const n of nodes.items) {
      expect(n.status.conditions.find((c) => c.type === 'Ready')?.status).toBe('True');
      const ip = n.status.addresses.find((a) => a.type === 'InternalIP')?.address;
      expect(ip).toMatch(/^10\.87\./);
      expect(n.metadata.annotations['overlay.rootless-cri.io/address']).toBe(ip);
    }
    // The worker's daemon wrote its CNI config from the template with its own CIDR.
    const cni = await readFile(
      path.join(worker!.daemon.rootDir, 'cni/net.d/10-rootless-cri.conflist'),
      'utf8',
    );
    expect(cni).toContain(`"subnet": "${byName[WORKER]!.spec.podCIDR}"`);
    await check(
      SUITE,
      `worker joined (user ${SECOND_TEST_USER}): both nodes Ready`,
      `join ${seconds} s; pod CIDRs ${cidrs.join(', ')}`,
    );
  });

  it(`spreads a ${REPLICAS}-replica Deployment over both nodes, pod IPs from each node's CIDR`, async () => {
    // A node just Ready may still carry the not-ready taint for a moment; the spread honours
    // taints (so that a drain can move every pod), so wait until neither node has one.
    await waitFor('both nodes untainted', async () => {
      const nodes = await json<{ items: { spec: { taints?: unknown[] } }[] }>(['get', 'nodes']);
      return nodes.items.every((n) => (n.spec.taints ?? []).length === 0) ? true : undefined;
    });
    const started = Date.now();
    await k(
      ['apply', '-f', '-'],
      list([
        WEB_DEPLOYMENT,
        WEB_SERVICE,
        toolsPod(CP),
        toolsPod(WORKER),
        toolsService(CP),
        toolsService(WORKER),
      ]),
    );
    await k(
      ['wait', `--for=jsonpath={.status.readyReplicas}=${REPLICAS}`, 'deployment/web', '--timeout=240s'],
      undefined,
      260_000,
    );
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    await k(
      ['wait', '--for=condition=Ready', `pod/tools-${CP}`, `pod/tools-${WORKER}`, '--timeout=120s'],
      undefined,
      140_000,
    );
    const pods = await podsOf('app=web');
    const perNode = { [CP]: 0, [WORKER]: 0 } as Record<string, number>;
    for (const p of pods) perNode[p.spec.nodeName] = (perNode[p.spec.nodeName] ?? 0) + 1;
    expect(perNode).toEqual({ [CP]: 2, [WORKER]: 2 });
    const nodes = await json<{ items: { metadata: { name: string }; spec: { podCIDR: string } }[] }>([
      'get',
      'nodes',
    ]);
    const prefix = Object.fromEntries(
      nodes.items.map((n) => [n.metadata.name, n.spec.podCIDR.replace(/0\/24$/, '')]),
    );
    const ips = pods.map((p) => p.status.podIP ?? '');
    expect(new Set(ips).size).toBe(REPLICAS);
    for (const p of pods) expect(p.status.podIP!.startsWith(prefix[p.spec.nodeName]!)).toBe(true);
    await check(
      SUITE,
      `Deployment of ${REPLICAS} spread 2 + 2 over the nodes, all Ready`,
      `${seconds} s from apply; IPs ${ips.join(' ')}`,
    );
  });

  it('reaches a pod on the other node by its IP, both ways (VXLAN over 127.0.0.1)', async () => {
    const tools = Object.fromEntries(
      (await podsOf('app in (tools-' + CP + ',tools-' + WORKER + ')')).map((p) => [
        p.spec.nodeName,
        p.status.podIP!,
      ]),
    );
    for (const [from, to] of [
      [CP, WORKER],
      [WORKER, CP],
    ] as const) {
      const body = await k([
        'exec',
        `tools-${from}`,
        '--',
        'wget',
        '-q',
        '-O',
        '-',
        `http://${tools[to]}:8080/`,
      ]);
      expect(body).toBe(`served by tools-${to}`);
      // No NAT between pods: the other side sees the caller's own pod IP.
      const peer = await k([
        'exec',
        `tools-${from}`,
        '--',
        'wget',
        '-q',
        '-O',
        '-',
        `http://${tools[to]}:8080/cgi-bin/peer`,
      ]);
      // (busybox httpd listens on IPv6 and reports an IPv4 peer as [::ffff:a.b.c.d])
      expect(peer.trim().replace(/^\[::ffff:(.*)\]$/, '$1')).toBe(tools[from]);
    }
    await check(
      SUITE,
      'pod to pod across the nodes by IP, both ways, source address kept',
      `${tools[CP]} <-> ${tools[WORKER]}`,
    );
  });

  it("keeps pods from the host's loopback, which the node itself reaches (the overlay's path)", async () => {
    // The worker node reaches the control plane's API server on the host's 127.0.0.1 through
    // slirp4netns' gateway 10.0.2.2 (host loopback is on for the overlay); its pods must not.
    const url = `https://10.0.2.2:${cp!.portBase}/healthz`;
    const fromNode = await worker!.daemon.enter(['curl', '-sk', '--max-time', '10', url]);
    expect(fromNode.stdout).toBe('ok');
    const fromPod = await kubectl([
      'exec',
      `tools-${WORKER}`,
      '--',
      'sh',
      '-c',
      `nc -w 5 10.0.2.2 ${cp!.portBase} </dev/null && echo connected || echo refused`,
    ]);
    expect(fromPod.stdout.trim()).toBe('refused');
    await check(SUITE, "pods refused the host's loopback (10.0.2.2), the node reaches it", url);
  });

  it('serves ClusterIP Services by DNS name from each node to pods on the other (kube-proxy, CoreDNS)', async () => {
    for (const [from, to] of [
      [CP, WORKER],
      [WORKER, CP],
    ] as const) {
      const lookup = await k([
        'exec',
        `tools-${from}`,
        '--',
        'nslookup',
        `tools-${to}.default.svc.cluster.local`,
      ]);
      const svc = await json<{ spec: { clusterIP: string } }>(['get', 'service', `tools-${to}`]);
      expect(lookup).toContain(svc.spec.clusterIP);
      const body = await k(['exec', `tools-${from}`, '--', 'wget', '-q', '-O', '-', `http://tools-${to}/`]);
      expect(body).toBe(`served by tools-${to}`);
    }
    const dns = await json<{ items: { spec: { nodeName: string } }[] }>([
      '-n',
      'kube-system',
      'get',
      'pods',
      '-l',
      'k8s-app=kube-dns',
    ]);
    await check(
      SUITE,
      'Service by DNS name from each node, answered on the other node',
      `CoreDNS on ${dns.items[0]?.spec.nodeName}`,
    );
  });

  it("answers a NodePort at each node's published host port", async () => {
    for (const member of [cp!, worker!]) {
      const port = hostPort(member, WEB_NODE_PORT);
      const body = await waitFor(
        `NodePort ${WEB_NODE_PORT} of ${member.name} on 127.0.0.1:${port}`,
        async () => {
          const r = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5_000) }).catch(
            () => undefined,
          );
          return r?.ok ? r.text() : undefined;
        },
        60_000,
      );
      expect(body).toBe(HTTP_SERVER_INDEX_HTML);
    }
    await check(
      SUITE,
      'NodePort from the host on both nodes',
      `${WEB_NODE_PORT} -> 127.0.0.1:${hostPort(cp!, WEB_NODE_PORT)} and 127.0.0.1:${hostPort(worker!, WEB_NODE_PORT)}`,
    );
  });

  it('kubectl logs, exec and port-forward to pods on the worker', async () => {
    expect(await k(['logs', `tools-${WORKER}`])).toContain('tools-started');
    expect(await k(['exec', `tools-${WORKER}`, '--', 'sh', '-c', 'cat /www/index.html; hostname'])).toBe(
      `served by tools-${WORKER}\ntools-${WORKER}`,
    );
    const failed = await kubectl(['exec', `tools-${WORKER}`, '--', 'sh', '-c', 'exit 3']);
    expect(failed.exitCode).toBe(3);
    const target = (await podsOf('app=web')).find((p) => p.spec.nodeName === WORKER)!.metadata.name;
    const forward = execa(k8sBinary('kubectl'), ['port-forward', `pod/${target}`, `:${HTTP_SERVER_PORT}`], {
      env: { KUBECONFIG: kubeconfig, HOME: cp!.dir, PATH: process.env.PATH ?? '/usr/bin:/bin' },
      extendEnv: false,
      reject: false,
    });
    try {
      let output = '';
      forward.stdout?.on('data', (chunk: Buffer) => {
        output += chunk.toString();
      });
      const port = await waitFor('kubectl port-forward to listen', async () => {
        if (forward.exitCode !== null) throw new Error(`kubectl port-forward exited: ${output}`);
        return /Forwarding from 127\.0\.0\.1:(\d+)/.exec(output)?.[1];
      });
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe(HTTP_SERVER_INDEX_HTML);
    } finally {
      forward.kill('SIGTERM');
      await forward;
    }
    await check(SUITE, 'kubectl logs, exec (exit code kept) and port-forward to the worker', target);
  });

  it('drains the worker: its pods move to the control-plane node', async () => {
    await k(
      [
        'drain',
        WORKER,
        '--ignore-daemonsets',
        '--delete-emptydir-data',
        '--force',
        '--grace-period=2',
        '--timeout=180s',
      ],
      undefined,
      200_000,
    );
    await waitFor(
      `${REPLICAS} web pods Ready on ${CP}`,
      async () => {
        const pods = await podsOf('app=web');
        const ready = await k(['get', 'deployment', 'web', '-o', 'jsonpath={.status.readyReplicas}']);
        return pods.length === REPLICAS &&
          pods.every((p) => p.spec.nodeName === CP) &&
          ready === String(REPLICAS)
          ? true
          : undefined;
      },
      180_000,
      1_000,
    );
    await k(
      ['-n', 'kube-system', 'wait', '--for=condition=Available', 'deployment/coredns', '--timeout=120s'],
      undefined,
      140_000,
    );
    // (the drain just finished: kube-proxy may still send the Service to the evicted pods)
    const ips = (await podsOf('app=web')).map((p) => p.status.podIP!);
    await waitForKubeProxy(cp!.daemon, 'default/web', ips);
    const body = await k(['exec', `tools-${CP}`, '--', 'wget', '-q', '-O', '-', 'http://web/']);
    expect(`${body}\n`).toBe(HTTP_SERVER_INDEX_HTML);
    await check(SUITE, `drain of ${WORKER}: ${REPLICAS} web pods back on ${CP}, Service still answers`);
  });

  it('removes the worker (remove-node, then leave): Node deleted, overlay peer gone, files and ports removed', async () => {
    const address = (
      await k(['get', 'node', WORKER, '-o', 'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}'])
    ).trim();
    const remove = await sh(cp!, ['remove-node', WORKER]);
    if (remove.exitCode !== 0) throw new Error(`cluster.sh remove-node failed: ${remove.stderr}`);
    expect((await kubectl(['get', 'node', WORKER])).stderr).toContain('NotFound');
    const leave = await sh(worker!, ['leave']);
    if (leave.exitCode !== 0) throw new Error(`cluster.sh leave failed: ${leave.stderr}`);
    workerLeft = true;
    await waitFor(`the control plane's overlay to drop ${address}`, async () => {
      const routes = await cp!.daemon.enter(['ip', '-4', 'route', 'show', 'dev', 'vxlan0']);
      return routes.exitCode === 0 && !routes.stdout.includes(address) ? true : undefined;
    });
    const left = await execa('ls', ['-A', worker!.dir], { reject: false });
    expect(left.exitCode).not.toBe(0); // the cluster dir is gone
    expect(
      await fetch(`http://127.0.0.1:${hostPort(worker!, WEB_NODE_PORT)}/`).then(
        () => 'answered',
        () => 'refused',
      ),
    ).toBe('refused');
    await check(SUITE, `${WORKER} left: Node deleted, overlay peer removed, ports unpublished`);
  });
});
