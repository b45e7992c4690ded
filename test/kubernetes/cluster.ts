/**
 * A single-node cluster inside a test daemon's node: PKI made with openssl, etcd, kube-apiserver,
 * kube-controller-manager and kube-scheduler started with `rootless-cri enter`, kubelet and
 * kube-proxy with deploy/kubelet/*.sh (joined mode), kubectl on the host through the API server's
 * port published on the host's 127.0.0.1.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import type { TestDaemon } from '../harness/daemon.js';
import {
  CLI,
  enterArgv,
  httpsRequest,
  KUBELET_SH,
  k8sBinary,
  NodeProcess,
  publishPort,
  StopWaiting,
  userDirs,
  waitFor,
} from './k8s-harness.js';

export const SERVICE_CIDR = '10.96.0.0/16';
export const KUBERNETES_SERVICE_IP = '10.96.0.1';
export const DNS_SERVICE_IP = '10.96.0.10';
export const CLUSTER_DOMAIN = 'cluster.local';
const KUBE_PROXY_SH = path.join(path.dirname(KUBELET_SH), 'kube-proxy.sh');

async function openssl(args: string[], cwd: string): Promise<void> {
  const r = await execa('openssl', args, { cwd, reject: false });
  if (r.exitCode !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

/** An EC key and a certificate signed by the CA in `dir` (ca.key, ca.crt). */
async function signedCert(dir: string, name: string, subject: string, extensions: string): Promise<void> {
  await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`], dir);
  await openssl(['req', '-new', '-key', `${name}.key`, '-subj', subject, '-out', `${name}.csr`], dir);
  await writeFile(path.join(dir, `${name}.ext`), `${extensions}\n`);
  await openssl(
    [
      ...['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial'],
      ...['-days', '2', '-sha256', '-extfile', `${name}.ext`, '-out', `${name}.crt`],
    ],
    dir,
  );
}

function kubeconfig(server: string, pki: string, user: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'rootless', cluster: { server, 'certificate-authority': path.join(pki, 'ca.crt') } }],
    users: [
      {
        name: user,
        user: {
          'client-certificate': path.join(pki, `${user}.crt`),
          'client-key': path.join(pki, `${user}.key`),
        },
      },
    ],
    contexts: [{ name: 'rootless', context: { cluster: 'rootless', user } }],
    'current-context': 'rootless',
  });
}

export interface KubectlResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export class Cluster {
  readonly components: NodeProcess[] = [];
  /** kubeconfig for kubectl on the host (the API server's published port). */
  hostKubeconfig = '';
  apiPort = 0;

  private constructor(
    readonly daemon: TestDaemon,
    readonly dir: string,
    readonly nodeName: string,
    readonly nodeIP: string,
  ) {}

  get pki(): string {
    return path.join(this.dir, 'pki');
  }

  /** Makes the PKI and kubeconfigs, starts every component, waits for the node to be Ready. */
  static async start(daemon: TestDaemon, nodeName: string): Promise<Cluster> {
    const dir = path.join(daemon.tmp, 'cluster');
    const ip = await daemon.enter(['ip', '-4', '-o', 'addr', 'show', 'dev', 'tap0']);
    const nodeIP = /inet (\d+\.\d+\.\d+\.\d+)\//.exec(ip.stdout)?.[1];
    if (!nodeIP) throw new Error(`no IPv4 address on the node's tap0: ${ip.stdout} ${ip.stderr}`);
    const cluster = new Cluster(daemon, dir, nodeName, nodeIP);
    await cluster.makePki();
    await userDirs(daemon, dir);
    try {
      await cluster.startComponents();
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  private async makePki(): Promise<void> {
    const pki = this.pki;
    await mkdir(pki, { recursive: true });
    await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key'], pki);
    await openssl(
      [
        'req',
        '-x509',
        '-new',
        '-key',
        'ca.key',
        '-subj',
        '/CN=rootless-cri-test-ca',
        '-days',
        '2',
        '-out',
        'ca.crt',
      ],
      pki,
    );
    const apiNames = [
      'kubernetes',
      'kubernetes.default',
      'kubernetes.default.svc',
      `kubernetes.default.svc.${CLUSTER_DOMAIN}`,
      'localhost',
    ];
    const sans = [
      ...['127.0.0.1', this.nodeIP, KUBERNETES_SERVICE_IP].map((ip) => `IP:${ip}`),
      ...apiNames.map((n) => `DNS:${n}`),
    ];
    await signedCert(
      pki,
      'apiserver',
      '/CN=kube-apiserver',
      `subjectAltName=${sans.join(',')}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature`,
    );
    const client = 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature';
    // The control plane, kube-proxy, the API server's calls to the kubelet and the tests: admin.
    await signedCert(pki, 'admin', '/O=system:masters/CN=kubernetes-admin', client);
    // The kubelet as the Node authorizer and NodeRestriction expect it.
    await signedCert(pki, 'kubelet', `/O=system:nodes/CN=system:node:${this.nodeName}`, client);
    await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'sa.key'], pki);
    await openssl(['ec', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], pki);
    const inNode = 'https://127.0.0.1:6443';
    await writeFile(path.join(this.dir, 'admin.kubeconfig'), kubeconfig(inNode, pki, 'admin'));
    await writeFile(path.join(this.dir, 'kubelet.kubeconfig'), kubeconfig(inNode, pki, 'kubelet'));
  }

  private async startComponents(): Promise<void> {
    const { daemon, dir, pki } = this;
    const p = (f: string) => path.join(pki, f);
    const admin = path.join(dir, 'admin.kubeconfig');
    const start = async (name: string, argv: string[], env: Record<string, string> = {}) => {
      const proc = await NodeProcess.start(daemon, name, argv, env);
      this.components.push(proc);
      return proc;
    };
    await start(
      'etcd',
      enterArgv(daemon, [
        k8sBinary('etcd'),
        '--name=node',
        `--data-dir=${path.join(dir, 'etcd')}`,
        '--listen-client-urls=http://127.0.0.1:2379',
        '--advertise-client-urls=http://127.0.0.1:2379',
        '--listen-peer-urls=http://127.0.0.1:2380',
        '--initial-advertise-peer-urls=http://127.0.0.1:2380',
        '--initial-cluster=node=http://127.0.0.1:2380',
        // A test cluster on a shared 2-core machine: durability does not matter, latency does.
        '--unsafe-no-fsync',
      ]),
    );
    const apiserver = await start(
      'kube-apiserver',
      enterArgv(daemon, [
        k8sBinary('kube-apiserver'),
        '--etcd-servers=http://127.0.0.1:2379',
        '--secure-port=6443',
        `--advertise-address=${this.nodeIP}`,
        `--service-cluster-ip-range=${SERVICE_CIDR}`,
        `--tls-cert-file=${p('apiserver.crt')}`,
        `--tls-private-key-file=${p('apiserver.key')}`,
        `--client-ca-file=${p('ca.crt')}`,
        `--service-account-issuer=https://kubernetes.default.svc.${CLUSTER_DOMAIN}`,
        `--service-account-key-file=${p('sa.pub')}`,
        `--service-account-signing-key-file=${p('sa.key')}`,
        `--kubelet-client-certificate=${p('admin.crt')}`,
        `--kubelet-client-key=${p('admin.key')}`,
        '--authorization-mode=Node,RBAC',
        '--enable-admission-plugins=NodeRestriction',
      ]),
    );
    this.apiPort = await publishPort(daemon, '127.0.0.1', 6443);
    this.hostKubeconfig = path.join(dir, 'host.kubeconfig');
    await writeFile(this.hostKubeconfig, kubeconfig(`https://127.0.0.1:${this.apiPort}`, pki, 'admin'));
    const ca = await readFile(p('ca.crt'), 'utf8');
    const cert = await readFile(p('admin.crt'), 'utf8');
    const key = await readFile(p('admin.key'), 'utf8');
    await waitFor(
      'the API server to be ready',
      async () => {
        if (!apiserver.running) throw new StopWaiting(`kube-apiserver exited:\n${await apiserver.logTail()}`);
        const r = await httpsRequest(`https://127.0.0.1:${this.apiPort}/readyz`, { ca, cert, key });
        return r.status === 200 ? true : undefined;
      },
      120_000,
      500,
    );
    await start(
      'kube-controller-manager',
      enterArgv(daemon, [
        k8sBinary('kube-controller-manager'),
        `--kubeconfig=${admin}`,
        `--authentication-kubeconfig=${admin}`,
        `--authorization-kubeconfig=${admin}`,
        `--service-account-private-key-file=${p('sa.key')}`,
        `--root-ca-file=${p('ca.crt')}`,
        '--use-service-account-credentials=false',
        '--leader-elect=false',
        '--bind-address=127.0.0.1',
      ]),
    );
    await start(
      'kube-scheduler',
      enterArgv(daemon, [
        k8sBinary('kube-scheduler'),
        `--kubeconfig=${admin}`,
        `--authentication-kubeconfig=${admin}`,
        `--authorization-kubeconfig=${admin}`,
        '--leader-elect=false',
        '--bind-address=127.0.0.1',
      ]),
    );
    const run = path.join(dir, 'kubelet-run');
    await userDirs(daemon, run, path.join(dir, 'manifests'), path.join(dir, 'kubelet.conf.d'));
    const env = {
      KUBELET: k8sBinary('kubelet'),
      KUBE_PROXY: k8sBinary('kube-proxy'),
      ROOTLESS_CRI: `${process.execPath} ${CLI}`,
      ROOTLESS_CRI_CONFIG: daemon.configFile,
      ROOTLESS_CRI_SOCKET: daemon.socket,
      KUBELET_ROOT_DIR: path.join(dir, 'kubelet'),
      KUBELET_MANIFESTS: path.join(dir, 'manifests'),
      KUBELET_DROPINS: path.join(dir, 'kubelet.conf.d'),
      KUBELET_RUN_DIR: run,
    };
    await start(
      'kubelet',
      [
        KUBELET_SH,
        ...['--kubeconfig', path.join(dir, 'kubelet.kubeconfig'), '--client-ca', p('ca.crt')],
        ...['--cluster-dns', DNS_SERVICE_IP, '--cluster-domain', CLUSTER_DOMAIN],
        '--',
        '--v=2',
      ],
      env,
    );
    await start('kube-proxy', [KUBE_PROXY_SH, '--kubeconfig', admin, '--', '--v=2'], env);
    await waitFor(
      `node ${this.nodeName} Ready`,
      async () => {
        for (const c of this.components) {
          if (!c.running) throw new StopWaiting(`${c.name} exited:\n${await c.logTail()}`);
        }
        const r = await this.kubectl([
          'get',
          'node',
          this.nodeName,
          '-o',
          'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
        ]);
        return r.stdout === 'True' ? true : undefined;
      },
      120_000,
      500,
    );
  }

  kubectlEnv(): Record<string, string> {
    return { KUBECONFIG: this.hostKubeconfig, HOME: this.dir, PATH: process.env.PATH ?? '/usr/bin:/bin' };
  }

  /** kubectl on the host (as root, the test's own client), talking to the published API server. */
  async kubectl(args: string[], input?: string, timeoutMs = 120_000): Promise<KubectlResult> {
    const r = await execa(k8sBinary('kubectl'), args, {
      env: this.kubectlEnv(),
      extendEnv: false,
      reject: false,
      timeout: timeoutMs,
      ...(input !== undefined ? { input } : {}),
    });
    return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 };
  }

  /** kubectl that must succeed; returns stdout. */
  async ok(args: string[], input?: string, timeoutMs?: number): Promise<string> {
    const r = await this.kubectl(args, input, timeoutMs);
    if (r.exitCode !== 0) {
      throw new Error(`kubectl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr || r.stdout}`);
    }
    return r.stdout;
  }

  /** A kubectl that keeps running (port-forward, attach); the caller ends it. */
  spawnKubectl(args: string[]): ResultPromise {
    return execa(k8sBinary('kubectl'), args, {
      env: this.kubectlEnv(),
      extendEnv: false,
      reject: false,
      stdin: 'pipe',
    });
  }

  async logTails(lines = 15): Promise<string> {
    const parts: string[] = [];
    for (const c of this.components) parts.push(`--- ${c.name}\n${await c.logTail(lines)}`);
    return parts.join('\n');
  }

  /** Stops the components, node agents first. */
  async stop(): Promise<void> {
    for (const c of [...this.components].reverse()) await c.stop();
  }
}
