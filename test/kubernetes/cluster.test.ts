/**
 * A single-node Kubernetes cluster inside one test daemon's node: etcd, kube-apiserver,
 * kube-controller-manager, kube-scheduler, kubelet and kube-proxy (all built by
 * deploy/kubernetes/build.sh; kubelet and kube-proxy started with deploy/kubelet/*.sh), and CoreDNS
 * from an image the test builds from the CoreDNS binary. kubectl runs on the host against the API
 * server's port published on 127.0.0.1. Images come from a local registry only.
 */
import { readFile, writeFile } from 'node:fs/promises';
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
import { mirrorConfig, TestDaemon } from '../harness/daemon.js';
import { CLUSTER_DOMAIN, Cluster, DNS_SERVICE_IP } from './cluster.js';
import { check, k8sBinary, publishPort, waitFor, waitForKubeProxy } from './k8s-harness.js';

const REPORT_DIR =
  process.env.ROOTLESS_CRI_REPORT_DIR ?? path.resolve(import.meta.dirname, '../../.work/reports');
const NODE_NAME = 'rcri-cluster';
const SUITE = 'cluster';
const BUSYBOX = `registry.k8s.io/${catalogueEntry('busybox').repository}:1.29-2`;
const HTTP_SERVER = `registry.k8s.io/${catalogueEntry('http-server').repository}:1`;
const REPLICAS = 10;

type Obj = Record<string, unknown>;

function list(items: Obj[]): string {
  return JSON.stringify({ apiVersion: 'v1', kind: 'List', items });
}

/** CoreDNS as kubeadm deploys it, minus `forward`: no DNS query leaves the cluster. */
function coreDnsObjects(image: string): Obj[] {
  const labels = { 'k8s-app': 'kube-dns' };
  const ns = 'kube-system';
  const corefile = [
    '.:53 {',
    '    errors',
    '    health {',
    '        lameduck 1s',
    '    }',
    '    ready',
    `    kubernetes ${CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {`,
    '        pods insecure',
    '        fallthrough in-addr.arpa ip6.arpa',
    '    }',
    '    cache 30',
    '    loadbalance',
    '}',
    '',
  ].join('\n');
  return [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'coredns', namespace: ns } },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: 'system:coredns' },
      rules: [
        {
          apiGroups: [''],
          resources: ['endpoints', 'services', 'pods', 'namespaces'],
          verbs: ['list', 'watch'],
        },
        { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: 'system:coredns' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'system:coredns' },
      subjects: [{ kind: 'ServiceAccount', name: 'coredns', namespace: ns }],
    },
    {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'coredns', namespace: ns },
      data: { Corefile: corefile },
    },
    {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'coredns', namespace: ns, labels },
      spec: {
        replicas: 1,
        selector: { matchLabels: labels },
        template: {
          metadata: { labels },
          spec: {
            serviceAccountName: 'coredns',
            dnsPolicy: 'Default',
            containers: [
              {
                name: 'coredns',
                image,
                args: ['-conf', '/etc/coredns/Corefile'],
                ports: [
                  { name: 'dns', containerPort: 53, protocol: 'UDP' },
                  { name: 'dns-tcp', containerPort: 53, protocol: 'TCP' },
                ],
                volumeMounts: [{ name: 'config', mountPath: '/etc/coredns', readOnly: true }],
                readinessProbe: { httpGet: { path: '/ready', port: 8181 }, periodSeconds: 1 },
                livenessProbe: { httpGet: { path: '/health', port: 8080 }, periodSeconds: 10 },
              },
            ],
            volumes: [{ name: 'config', configMap: { name: 'coredns' } }],
          },
        },
      },
    },
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'kube-dns', namespace: ns, labels },
      spec: {
        clusterIP: DNS_SERVICE_IP,
        selector: labels,
        ports: [
          { name: 'dns', port: 53, protocol: 'UDP' },
          { name: 'dns-tcp', port: 53, protocol: 'TCP' },
        ],
      },
    },
  ];
}

function webDeployment(replicas: number): Obj {
  const labels = { app: 'web' };
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: 'web', namespace: 'default' },
    spec: {
      replicas,
      selector: { matchLabels: labels },
      template: {
        metadata: { labels },
        spec: {
          terminationGracePeriodSeconds: 2,
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
}

const WEB_SERVICE: Obj = {
  apiVersion: 'v1',
  kind: 'Service',
  metadata: { name: 'web', namespace: 'default' },
  spec: { type: 'NodePort', selector: { app: 'web' }, ports: [{ port: 80, targetPort: HTTP_SERVER_PORT }] },
};

function busyboxPod(name: string, command: string[], extra: Obj = {}): Obj {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'default' },
    spec: {
      terminationGracePeriodSeconds: 1,
      containers: [{ name, image: BUSYBOX, command, ...extra }],
    },
  };
}

const JOB: Obj = {
  apiVersion: 'batch/v1',
  kind: 'Job',
  metadata: { name: 'once', namespace: 'default' },
  spec: {
    backoffLimit: 0,
    template: {
      spec: {
        restartPolicy: 'Never',
        containers: [{ name: 'once', image: BUSYBOX, command: ['sh', '-c', 'echo job-done'] }],
      },
    },
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

// Each check waits on its own deadlines (kubectl wait, waitFor), longer than vitest's 60 s default.
describe('a single-node cluster in the node', { timeout: 330_000 }, () => {
  let registry: RunningRegistry;
  let daemon: TestDaemon;
  let cluster: Cluster | undefined;
  let webPods: string[] = [];

  const k = (args: string[], input?: string, timeoutMs?: number) => cluster!.ok(args, input, timeoutMs);
  const json = async <T>(args: string[]) => JSON.parse(await k([...args, '-o', 'json'])) as T;
  const apply = (items: Obj[]) => k(['apply', '-f', '-'], list(items));
  const waitReady = (what: string, timeout = '180s') =>
    k(['wait', '--for=condition=Ready', what, `--timeout=${timeout}`], undefined, 200_000);

  beforeAll(async () => {
    const { images } = await buildCatalogue({
      cacheDir: path.join(REPORT_DIR, '..', 'test-images'),
      names: ['busybox', 'http-server'],
    });
    registry = await startRegistry();
    await pushCatalogue(registry.host, images);
    const coreDnsImage = await pushCoreDnsImage(registry);
    daemon = await TestDaemon.start({
      extraConfig: `${mirrorConfig(registry.url)}\n[node]\nhostname = "${NODE_NAME}"\n`,
    });
    cluster = await Cluster.start(daemon, NODE_NAME);
    await apply(coreDnsObjects(coreDnsImage));
    await apply([
      busyboxPod('tools', ['sh', '-c', 'echo tools-started; exec sleep 3600']),
      busyboxPod('echo', ['sh', '-c', 'echo attach-ready; while read line; do echo "got $line"; done'], {
        stdin: true,
      }),
    ]);
    const dns = await cluster.kubectl(
      ['-n', 'kube-system', 'wait', '--for=condition=Available', 'deployment/coredns', '--timeout=180s'],
      undefined,
      200_000,
    );
    if (dns.exitCode !== 0) {
      const logs = await cluster.kubectl(['-n', 'kube-system', 'logs', 'deployment/coredns', '--previous']);
      const pods = await cluster.kubectl(['-n', 'kube-system', 'get', 'pods', '-o', 'wide']);
      throw new Error(
        `CoreDNS did not become available: ${dns.stderr}\n${pods.stdout}\n${logs.stdout}${logs.stderr}`,
      );
    }
    await waitReady('pod/tools');
    await waitReady('pod/echo');
  }, 420_000);

  afterAll(async () => {
    if (cluster) {
      const tails = await cluster.logTails();
      await cluster.stop();
      if (process.env.ROOTLESS_CRI_K8S_LOGS) console.log(tails);
    }
    await daemon?.stop();
    await registry?.stop();
  }, 180_000);

  it('registers the node Ready under node.hostname, with CoreDNS running', async () => {
    const node = await json<{
      status: {
        addresses: { type: string; address: string }[];
        nodeInfo: { containerRuntimeVersion: string };
      };
    }>(['get', 'node', NODE_NAME]);
    expect(node.status.addresses).toContainEqual({ type: 'Hostname', address: NODE_NAME });
    expect(node.status.nodeInfo.containerRuntimeVersion).toMatch(/^rootless-cri:\/\//);
    await check(
      SUITE,
      'control plane up, node Ready, CoreDNS available',
      node.status.nodeInfo.containerRuntimeVersion,
    );
  });

  it(`runs a ${REPLICAS}-replica Deployment (time from apply to all Ready printed)`, async () => {
    const started = Date.now();
    await apply([webDeployment(REPLICAS), WEB_SERVICE]);
    await k(
      ['wait', `--for=jsonpath={.status.readyReplicas}=${REPLICAS}`, 'deployment/web', '--timeout=300s'],
      undefined,
      320_000,
    );
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const pods = await json<{ items: { metadata: { name: string } }[] }>(['get', 'pods', '-l', 'app=web']);
    webPods = pods.items.map((p) => p.metadata.name);
    expect(webPods).toHaveLength(REPLICAS);
    await check(SUITE, `Deployment of ${REPLICAS} replicas all Ready`, `${seconds} s from kubectl apply`);
  });

  it('rolls the Deployment out to a new template', async () => {
    await k(['set', 'env', 'deployment/web', 'ROLLOUT=2']);
    await k(['rollout', 'status', 'deployment/web', '--timeout=300s'], undefined, 320_000);
    const pods = await json<{
      items: {
        metadata: { name: string; deletionTimestamp?: string };
        spec: { containers: { env?: { name: string; value: string }[] }[] };
      }[];
    }>(['get', 'pods', '-l', 'app=web']);
    const live = pods.items.filter((p) => !p.metadata.deletionTimestamp);
    expect(live).toHaveLength(REPLICAS);
    for (const p of live) expect(p.spec.containers[0]?.env).toContainEqual({ name: 'ROLLOUT', value: '2' });
    expect(live.some((p) => webPods.includes(p.metadata.name))).toBe(false);
    webPods = live.map((p) => p.metadata.name);
    await check(SUITE, 'rolling update: every pod replaced, new template');
  });

  it('serves a ClusterIP Service through kube-proxy, by its DNS name, to another pod', async () => {
    const svc = await json<{ spec: { clusterIP: string } }>(['get', 'service', 'web']);
    const pods = await json<{
      items: { metadata: { name: string }; status: { podIP?: string } }[];
    }>(['get', 'pods', '-l', 'app=web']);
    const ips = pods.items.filter((p) => webPods.includes(p.metadata.name)).map((p) => p.status.podIP!);
    expect(ips).toHaveLength(REPLICAS);
    // (the rollout just finished: kube-proxy may still send the Service to the replaced pods)
    await waitForKubeProxy(daemon, 'default/web', ips);
    const lookup = await k(['exec', 'tools', '--', 'nslookup', `web.default.svc.${CLUSTER_DOMAIN}`]);
    expect(lookup).toContain(svc.spec.clusterIP);
    const byName = await k(['exec', 'tools', '--', 'wget', '-q', '-O', '-', 'http://web/']);
    expect(`${byName}\n`).toBe(HTTP_SERVER_INDEX_HTML);
    // (busybox 1.35's wget crashes on -T: kubectl's own timeout bounds these calls)
    const byIp = await k(['exec', 'tools', '--', 'wget', '-q', '-O', '-', `http://${svc.spec.clusterIP}/`]);
    expect(`${byIp}\n`).toBe(HTTP_SERVER_INDEX_HTML);
    await check(
      SUITE,
      'ClusterIP Service via kube-proxy, reached from a pod by DNS name (CoreDNS)',
      svc.spec.clusterIP,
    );
  });

  it("serves a NodePort on the host's 127.0.0.1 through a port published with rootlesskit", async () => {
    const svc = await json<{ spec: { ports: { nodePort: number }[] } }>(['get', 'service', 'web']);
    const nodePort = svc.spec.ports[0]!.nodePort;
    const hostPort = await publishPort(daemon, cluster!.nodeIP, nodePort);
    const body = await waitFor('the NodePort answering on the host', async () => {
      const r = await fetch(`http://127.0.0.1:${hostPort}/`).catch(() => undefined);
      return r?.ok ? r.text() : undefined;
    });
    expect(body).toBe(HTTP_SERVER_INDEX_HTML);
    await check(
      SUITE,
      'NodePort reached from the host',
      `node port ${nodePort} -> host 127.0.0.1:${hostPort}`,
    );
  });

  it('runs a Job to completion', async () => {
    await apply([JOB]);
    await k(['wait', '--for=condition=Complete', 'job/once', '--timeout=120s'], undefined, 140_000);
    expect(await k(['logs', 'job/once'])).toContain('job-done');
    await check(SUITE, 'Job ran to completion');
  });

  it('kubectl logs and exec (API server -> kubelet by node name -> runtime)', async () => {
    expect(await k(['logs', 'tools'])).toContain('tools-started');
    expect(await k(['exec', 'tools', '--', 'sh', '-c', 'echo $((6 * 7)); hostname'])).toBe('42\ntools');
    const failed = await cluster!.kubectl(['exec', 'tools', '--', 'sh', '-c', 'exit 7']);
    expect(failed.exitCode).toBe(7);
    await check(SUITE, 'kubectl logs, kubectl exec (exit code kept)');
  });

  it('kubectl port-forward', async () => {
    const forward = cluster!.spawnKubectl(['port-forward', `pod/${webPods[0]}`, `:${HTTP_SERVER_PORT}`]);
    try {
      let output = '';
      forward.stdout?.on('data', (chunk: Buffer) => {
        output += chunk.toString();
      });
      const port = await waitFor('kubectl port-forward to listen', async () => {
        if (forward.exitCode !== null) throw new Error(`kubectl port-forward exited: ${output}`);
        return /Forwarding from 127\.0\.0\.1:(\d+)/.exec(output)?.[1];
      });
      const r = await fetch(`http://127.0.0.1:${port}/`);
      expect(await r.text()).toBe(HTTP_SERVER_INDEX_HTML);
    } finally {
      forward.kill('SIGTERM');
      await forward;
    }
    await check(SUITE, 'kubectl port-forward');
  });

  it('kubectl cp both ways', async () => {
    const local = path.join(cluster!.dir, 'to-pod.txt');
    await writeFile(local, 'copied into the pod\n');
    await k(['cp', local, 'default/tools:/tmp/from-host.txt']);
    // (kubectl output is returned without its final newline)
    expect(await k(['exec', 'tools', '--', 'cat', '/tmp/from-host.txt'])).toBe('copied into the pod');
    const back = path.join(cluster!.dir, 'from-pod.txt');
    await k(['cp', 'default/tools:/tmp/from-host.txt', back]);
    expect(await readFile(back, 'utf8')).toBe('copied into the pod\n');
    await check(SUITE, 'kubectl cp host -> pod -> host');
  });

  it('kubectl attach', async () => {
    const attach = cluster!.spawnKubectl(['attach', '-i', 'echo']);
    try {
      let output = '';
      attach.stdout?.on('data', (chunk: Buffer) => {
        output += chunk.toString();
      });
      attach.stdin?.write('hello over attach\n');
      await waitFor('the attached container to answer', async () => {
        if (attach.exitCode !== null) throw new Error(`kubectl attach exited: ${output}`);
        return output.includes('got hello over attach') ? true : undefined;
      });
    } finally {
      attach.kill('SIGTERM');
      await attach;
    }
    expect(await k(['logs', 'echo'])).toContain('got hello over attach');
    await check(SUITE, 'kubectl attach (stdin in, stdout back)');
  });

  it('answers /stats/summary and /metrics/resource through the API server', async () => {
    const summary = JSON.parse(
      await k(['get', '--raw', `/api/v1/nodes/${NODE_NAME}/proxy/stats/summary`]),
    ) as {
      node: { fs?: { capacityBytes?: number } };
      pods: {
        podRef: { name: string };
        cpu?: { usageCoreNanoSeconds?: number };
        memory?: { workingSetBytes?: number };
      }[];
    };
    expect(summary.node.fs?.capacityBytes).toBeGreaterThan(0);
    const tools = summary.pods.find((p) => p.podRef.name === 'tools');
    expect(tools?.cpu?.usageCoreNanoSeconds).toBeGreaterThan(0);
    const metrics = await k(['get', '--raw', `/api/v1/nodes/${NODE_NAME}/proxy/metrics/resource`]);
    expect(metrics).toMatch(
      /^pod_cpu_usage_seconds_total\{namespace="default",pod="tools"\} [0-9.e+-]+ \d+$/m,
    );
    const memory = tools?.memory?.workingSetBytes ?? 0;
    await check(
      SUITE,
      '/stats/summary and /metrics/resource answer',
      `pod CPU yes, pod memory ${memory > 0 ? 'yes' : 'reported as 0 (no memory controller delegated on this host)'}, node fs yes`,
    );
  });
});
