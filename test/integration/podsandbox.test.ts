/**
 * Pod sandboxes for real: the daemon as the unprivileged test user inside its rootless node,
 * real CNI plugins (bridge, host-local, portmap), rootlesskit's port driver, catatonit as the
 * pod PID 1. Pod commands run with `nsenter --net=<pin>` through `rootless-cri enter`, since
 * containers do not exist yet; busybox (host) provides ping/wget/httpd.
 */
import { chown, mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RootlesskitPortManager } from '../../src/os/port-manager.js';
import { grpcCode } from '../harness/cri-client.js';
import { TestDaemon } from '../harness/daemon.js';

const BUSYBOX = '/bin/busybox';
/** busybox-static's `wget -T` crashes (Debian 12), so coreutils timeout bounds the request. */
const wget = (seconds: number) => ['timeout', String(seconds), BUSYBOX, 'wget', '-q', '-O', '-'];
let daemon: TestDaemon;
let files = 0;

interface Inspect {
  status: { id: string; state: string; network: { ip: string }; metadata: { name: string; attempt: number } };
  info: {
    namespaces: {
      network: { path: string | null };
      ipc: { path: string | null };
      uts: { path: string | null };
      pid: { infra: { pid: number } | null };
    };
    cgroup: { path: string };
    filesDir: string;
  };
}

function podJson(name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    metadata: { name, namespace: 'it', uid: `uid-${name}`, attempt: 0 },
    hostname: name,
    labels: { suite: 'podsandbox' },
    ...extra,
  };
}

async function runp(config: Record<string, unknown>): Promise<string> {
  const file = path.join(daemon.tmp, `pod-${files++}.json`);
  await writeFile(file, JSON.stringify(config));
  await chown(file, daemon.user.uid, daemon.user.gid);
  const r = await daemon.crictl(['runp', file]);
  expect(r.exitCode, `${r.stderr}\n${await daemon.logTail()}`).toBe(0);
  return r.stdout.trim();
}

/** The node's NAT rules that masquerade pods: the node-wide one per subnet (src/os/pod-egress.ts). */
async function masqueradeRules(): Promise<string[]> {
  const nat = await daemon.enter(['sh', '-c', 'PATH=/usr/sbin:$PATH iptables -t nat -S']);
  expect(nat.exitCode, nat.stderr).toBe(0);
  return nat.stdout.split('\n').filter((l) => /-j MASQUERADE/.test(l) && !/CNI-HOSTPORT/.test(l));
}

const EGRESS_RULE =
  /^-A POSTROUTING -s 10\.88\.0\.0\/16 -o tap0 -m comment --comment "rootless-cri: pod egress through the uplink" -j MASQUERADE$/;

async function inspect(id: string): Promise<Inspect> {
  const r = await daemon.crictl(['inspectp', '-o', 'json', id]);
  expect(r.exitCode, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Inspect;
}

/** Runs a command in the pod's network (and uts/ipc) namespaces inside the node. */
async function inPod(id: string, command: string[]) {
  const info = (await inspect(id)).info.namespaces;
  const enter = [`--net=${info.network.path}`];
  if (info.uts.path) enter.push(`--uts=${info.uts.path}`);
  if (info.ipc.path) enter.push(`--ipc=${info.ipc.path}`);
  return daemon.enter(['nsenter', ...enter, '--', ...command]);
}

/** Starts busybox httpd in the pod's net and pid namespaces (so stopping the pod ends it). */
async function serveInPod(id: string, port: number, body: string): Promise<void> {
  const { info } = await inspect(id);
  const dir = path.join(daemon.tmp, `www-${id.slice(0, 8)}-${port}`);
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'index.html'), body);
  await chown(dir, daemon.user.uid, daemon.user.gid);
  const r = await daemon.enter([
    'nsenter',
    `--net=${info.namespaces.network.path}`,
    `--pid=/proc/${info.namespaces.pid.infra!.pid}/ns/pid`,
    '--',
    BUSYBOX,
    'httpd',
    '-p',
    String(port),
    '-h',
    dir,
  ]);
  expect(r.exitCode, r.stderr).toBe(0);
}

async function stopAndRemove(id: string): Promise<void> {
  const stop = await daemon.crictl(['stopp', id]);
  expect(stop.exitCode, stop.stderr).toBe(0);
  const rm = await daemon.crictl(['rmp', id]);
  expect(rm.exitCode, rm.stderr).toBe(0);
}

function portManager(): RootlesskitPortManager {
  return new RootlesskitPortManager(path.join(daemon.runDir, 'node', 'api.sock'));
}

/** A TCP port free on the host's 127.0.0.1 right now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Everything a pod can leave behind, listed (empty = clean). */
async function podLeftovers(ids: string[]): Promise<string[]> {
  const left: string[] = [];
  for (const dir of ['netns', 'ipcns', 'utsns']) {
    for (const f of await readdir(path.join(daemon.runDir, dir)).catch(() => []))
      left.push(`pin ${dir}/${f}`);
  }
  const mounts = await daemon.enter(['cat', '/proc/self/mountinfo']);
  for (const line of mounts.stdout.split('\n'))
    if (/\/(netns|ipcns|utsns)\//.test(line)) left.push(`mount ${line}`);
  const ipam = path.join(daemon.runDir, 'cni', 'networks', 'rootless-cri');
  for (const f of await readdir(ipam).catch(() => [])) {
    if (f !== 'lock' && !f.startsWith('last_reserved_ip')) left.push(`ipam lease ${f}`);
  }
  for (const p of await portManager().list()) {
    if (p.childIP.startsWith('10.88.') || p.parentPort !== p.childPort)
      left.push(`port ${JSON.stringify(p)}`);
  }
  const ps = await daemon.enter(['ps', '-eo', 'pid,args']);
  for (const line of ps.stdout.split('\n')) {
    if (/unshare --pid|httpd/.test(line) && !line.includes('ps -eo')) left.push(`process ${line.trim()}`);
  }
  const cgroups = await daemon.enter([
    'sh',
    '-c',
    'find /sys/fs/cgroup/pods -mindepth 1 -type d 2>/dev/null; true',
  ]);
  for (const c of cgroups.stdout.split('\n').filter(Boolean)) left.push(`cgroup ${c}`);
  const nat = await daemon.enter(['sh', '-c', 'PATH=/usr/sbin:$PATH iptables -t nat -S']);
  for (const id of ids) if (nat.stdout.includes(id)) left.push(`iptables rule for ${id}`);
  const records = await readdir(path.join(daemon.rootDir, 'sandboxes')).catch(() => []);
  for (const id of ids) for (const r of records) if (r.startsWith(id)) left.push(`record ${r}`);
  return left;
}

beforeAll(async () => {
  daemon = await TestDaemon.start();
});

afterAll(async () => {
  await daemon?.stop();
});

// A failed test must not leave pods that make the next test's leak check fail too.
afterEach(async () => {
  const list = await daemon.client.runtime('ListPodSandbox', {}).catch(() => ({ items: [] }));
  for (const item of list.items ?? []) {
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: item.id }).catch(() => undefined);
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: item.id }).catch(() => undefined);
  }
});

describe('pod sandboxes in the rootless node', () => {
  it('crictl runp gives a READY pod with an IP from 10.88.0.0/16, its hostname, DNS, sysctls and log dir', async () => {
    const logDir = path.join(daemon.tmp, 'logs', 'first');
    const id = await runp(
      podJson('first', {
        dns_config: { servers: ['10.10.10.10'], searches: ['google.com'], options: ['ndots:8'] },
        log_directory: logDir,
        linux: { sysctls: { 'kernel.shm_rmid_forced': '1', 'fs.mqueue.msg_max': '100' } },
      }),
    );
    expect(id).toMatch(/^[0-9a-f]{64}$/);
    const { status, info } = await inspect(id);
    expect(status.state).toBe('SANDBOX_READY');
    expect(status.network.ip).toMatch(/^10\.88\.\d+\.\d+$/);
    const pods = await daemon.crictl(['pods', '-q', '--state', 'ready', '--label', 'suite=podsandbox']);
    expect(pods.stdout.trim().split('\n')).toContain(id);

    const inside = await inPod(id, [
      'sh',
      '-c',
      'hostname; cat /proc/sys/kernel/shm_rmid_forced /proc/sys/fs/mqueue/msg_max; ip -4 -o addr show eth0; ip -o link show lo',
    ]);
    expect(inside.exitCode, inside.stderr).toBe(0);
    const lines = inside.stdout.split('\n');
    expect(lines.slice(0, 3)).toEqual(['first', '1', '100']);
    expect(lines[3]).toContain(`inet ${status.network.ip}/16`);
    expect(lines[4]).toMatch(/UP/);
    // The node keeps its own values: the sysctls went to the pod's IPC namespace only.
    const node = await daemon.enter(['cat', '/proc/sys/fs/mqueue/msg_max']);
    expect(node.stdout.trim()).not.toBe('100');

    const { readFile } = await import('node:fs/promises');
    const resolv = await readFile(path.join(info.filesDir, 'resolv.conf'), 'utf8');
    expect(resolv).toContain('nameserver 10.10.10.10');
    expect(resolv).toContain('search google.com');
    expect(resolv).toContain('options ndots:8');
    expect(await readFile(path.join(info.filesDir, 'hosts'), 'utf8')).toContain(
      `${status.network.ip}\tfirst`,
    );
    expect((await stat(logDir)).isDirectory()).toBe(true);
    await stopAndRemove(id);
    expect(await podLeftovers([id])).toEqual([]);
  });

  it('two pods reach each other by IP (ping and HTTP)', async () => {
    const a = await runp(podJson('peer-a'));
    const b = await runp(podJson('peer-b'));
    const ipA = (await inspect(a)).status.network.ip;
    const ipB = (await inspect(b)).status.network.ip;
    expect(ipA).not.toBe(ipB);
    const ping = await inPod(a, [BUSYBOX, 'ping', '-c', '1', '-W', '5', ipB]);
    expect(ping.exitCode, ping.stdout + ping.stderr).toBe(0);
    await serveInPod(b, 8080, 'hello from b');
    const get = await inPod(a, [...wget(5), `http://${ipB}:8080/`]);
    expect(get.stdout, get.stderr).toBe('hello from b');
    const back = await inPod(b, [BUSYBOX, 'ping', '-c', '1', '-W', '5', ipA]);
    expect(back.exitCode).toBe(0);
    await stopAndRemove(a);
    await stopAndRemove(b);
    expect(await podLeftovers([a, b])).toEqual([]);
  });

  it('a pod reaches an HTTP server on a test address of this machine through slirp4netns, not the host loopback', async () => {
    const address = '10.250.250.1';
    // A veth pair with both ends in the host netns: an address of this machine, made by the test.
    await execa('ip', ['link', 'add', 'rcri-egress0', 'type', 'veth', 'peer', 'name', 'rcri-egress1']);
    const server = http.createServer((_req, res) => res.end('egress ok'));
    const loopback = http.createServer((_req, res) => res.end('host loopback'));
    try {
      await execa('ip', ['addr', 'add', `${address}/32`, 'dev', 'rcri-egress0']);
      await execa('ip', ['link', 'set', 'rcri-egress0', 'up']);
      await new Promise<void>((resolve) => server.listen(0, address, resolve));
      await new Promise<void>((resolve) => loopback.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as net.AddressInfo).port;
      const loopbackPort = (loopback.address() as net.AddressInfo).port;
      const id = await runp(podJson('egress'));
      const get = await inPod(id, [...wget(10), `http://${address}:${port}/`]);
      expect(get.stdout, get.stderr).toBe('egress ok');
      // The node masquerades the pod subnet with one rule: no per-pod chain for this pod.
      expect(await masqueradeRules()).toEqual([expect.stringMatching(EGRESS_RULE)]);
      const nat = await daemon.enter(['sh', '-c', 'PATH=/usr/sbin:$PATH iptables -t nat -S']);
      expect(nat.stdout).not.toContain(id);
      expect(nat.stdout).not.toMatch(/^-N CNI-[0-9a-f]{24}$/m);
      // Catalog row 31: the host's loopback stays closed to pods.
      const blocked = await inPod(id, [...wget(5), `http://10.0.2.2:${loopbackPort}/`]);
      expect(blocked.exitCode).not.toBe(0);
      expect(blocked.stdout).not.toContain('host loopback');
      await stopAndRemove(id);
    } finally {
      server.close();
      loopback.close();
      await execa('ip', ['link', 'del', 'rcri-egress0'], { reject: false });
    }
  });

  it('a hostNetwork pod uses the node network namespace: no pin, no CNI, tap0 visible', async () => {
    const id = await runp(
      podJson('hostnet', { linux: { security_context: { namespace_options: { network: 2 } } } }),
    );
    const { status, info } = await inspect(id);
    expect(status.state).toBe('SANDBOX_READY');
    expect(status.network.ip).toBe('');
    expect(info.namespaces.network.path).toBeNull();
    expect(info.namespaces.uts.path).toBeNull();
    expect(await readdir(path.join(daemon.runDir, 'netns')).catch(() => [])).toEqual([]);
    // Its PID 1 shares the node's network namespace, which has slirp4netns's tap0.
    const infra = info.namespaces.pid.infra!.pid;
    const r = await daemon.enter(['nsenter', `--net=/proc/${infra}/ns/net`, '--', 'ip', '-o', 'link']);
    expect(r.stdout).toMatch(/tap0/);
    const node = await daemon.enter(['readlink', '/proc/self/ns/net', `/proc/${infra}/ns/net`]);
    const [mine, its] = node.stdout.split('\n');
    expect(its).toBe(mine);
    await stopAndRemove(id);
  });

  it('publishes a hostPort on the host 127.0.0.1 and inside the node, and releases it on stop', async () => {
    const hostPort = await freePort();
    const id = await runp(
      podJson('web', { port_mappings: [{ container_port: 80, host_port: hostPort, host_ip: '127.0.0.1' }] }),
    );
    await serveInPod(id, 80, 'hello via host port');
    const fromHost = await fetch(`http://127.0.0.1:${hostPort}/`);
    expect(await fromHost.text()).toBe('hello via host port');
    const fromNode = await daemon.enter([...wget(5), `http://127.0.0.1:${hostPort}/`]);
    expect(fromNode.stdout, fromNode.stderr).toBe('hello via host port');
    const ip = (await inspect(id)).status.network.ip;
    const fromNodeToPod = await daemon.enter([...wget(5), `http://${ip}:80/`]);
    expect(fromNodeToPod.stdout).toBe('hello via host port');

    const stop = await daemon.crictl(['stopp', id]);
    expect(stop.exitCode, stop.stderr).toBe(0);
    expect((await inspect(id)).status.state).toBe('SANDBOX_NOTREADY');
    await expect(fetch(`http://127.0.0.1:${hostPort}/`)).rejects.toThrow();
    // Stop twice is fine; the port is free for the next pod.
    expect((await daemon.crictl(['stopp', id])).exitCode).toBe(0);
    expect((await daemon.crictl(['rmp', id])).exitCode).toBe(0);
    // crictl itself refuses an id it cannot find, so the second remove goes straight to the RPC.
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: id });
    expect(await podLeftovers([id])).toEqual([]);
  });

  it('puts the pod PID 1 in the pod cgroup (cgroup_parent honoured) and removes only what it created', async () => {
    const id = await runp(podJson('cgroups', { linux: { cgroup_parent: '/kubepods/burstable/pod-cg' } }));
    const { info } = await inspect(id);
    expect(info.cgroup.path).toBe('/kubepods/burstable/pod-cg');
    const infra = info.namespaces.pid.infra!.pid;
    const membership = await daemon.enter(['cat', `/proc/${infra}/cgroup`]);
    // The host is hybrid: the v2 line is the one that counts.
    expect(membership.stdout).toMatch(
      new RegExp(`^0::/kubepods/burstable/pod-cg/sandbox-${id.slice(0, 12)}$`, 'm'),
    );
    await stopAndRemove(id);
    const after = await daemon.enter([
      'sh',
      '-c',
      'ls -d /sys/fs/cgroup/kubepods/burstable /sys/fs/cgroup/kubepods/burstable/pod-cg 2>&1; true',
    ]);
    expect(after.stdout).toMatch(/^\/sys\/fs\/cgroup\/kubepods\/burstable$/m);
    expect(after.stdout).toMatch(/pod-cg.*No such file/);
    expect(await podLeftovers([id])).toEqual([]);
  });

  it('keeps READY pods, their IP and PID 1 across kill -9 of the daemon', async () => {
    const id = await runp(podJson('survivor'));
    const before = await inspect(id);
    await daemon.kill9();
    await daemon.serve();
    const after = await inspect(id);
    expect(after.status.state).toBe('SANDBOX_READY');
    expect(after.status.network.ip).toBe(before.status.network.ip);
    expect(after.info.namespaces.pid.infra?.pid).toBe(before.info.namespaces.pid.infra?.pid);
    const ping = await daemon.enter([BUSYBOX, 'ping', '-c', '1', '-W', '5', after.status.network.ip]);
    expect(ping.exitCode).toBe(0);
    // The restarted daemon found the node's egress rule and did not add a second one.
    expect(await masqueradeRules()).toEqual([expect.stringMatching(EGRESS_RULE)]);
    // The name is still held after the restart.
    const file = path.join(daemon.tmp, 'survivor-again.json');
    await writeFile(file, JSON.stringify(podJson('survivor')));
    await chown(file, daemon.user.uid, daemon.user.gid);
    const again = await daemon.crictl(['runp', file]);
    expect(again.exitCode).not.toBe(0);
    expect(again.stderr).toContain(id);
    await stopAndRemove(id);
    expect(await podLeftovers([id])).toEqual([]);
  });

  it('a pod whose PID 1 died while the daemon was down comes back NOTREADY, and stop/remove clean it', async () => {
    const id = await runp(podJson('orphan'));
    const { info } = await inspect(id);
    await daemon.kill9();
    await daemon.enter(['kill', '-9', String(info.namespaces.pid.infra!.pid)]);
    await daemon.serve();
    expect((await inspect(id)).status.state).toBe('SANDBOX_NOTREADY');
    await stopAndRemove(id);
    expect(await podLeftovers([id])).toEqual([]);
  });
});

describe('bad RunPodSandbox input: clear errors, nothing leaked', () => {
  const call = (request: Record<string, unknown>) =>
    daemon.client.runtime('RunPodSandbox', request as never).then(
      () => {
        throw new Error('RunPodSandbox succeeded');
      },
      (err: unknown) => err as { code: number; details: string },
    );
  const INVALID_ARGUMENT = 3;
  const FAILED_PRECONDITION = 9;
  const ALREADY_EXISTS = 6;

  it('missing metadata, empty name/uid/namespace, unknown runtime handler', async () => {
    expect(await call({ config: { hostname: 'x' } })).toMatchObject({ code: INVALID_ARGUMENT });
    for (const field of ['name', 'uid', 'namespace']) {
      const metadata = { name: 'n', uid: 'u', namespace: 'ns', [field]: '' };
      const err = await call({ config: { metadata } });
      expect(err.code).toBe(INVALID_ARGUMENT);
      expect(err.details).toContain(`metadata.${field}`);
    }
    const handler = await call({ config: podJson('handler'), runtime_handler: 'kata' });
    expect(handler.code).toBe(INVALID_ARGUMENT);
    expect(handler.details).toContain('"kata"');
    expect(await podLeftovers([])).toEqual([]);
  });

  it('hostile sysctls (catalog row 21)', async () => {
    for (const sysctls of [
      { 'kernel.shm_rmid_forced': '1 2+kernel.core_pattern=|/x' },
      { 'kernel.core_pattern': '|/x' },
      { 'net/../x': '1' },
      { 'net/../../kernel/core_pattern': '1' },
    ]) {
      const err = await call({ config: podJson('sysctl', { linux: { sysctls } }) });
      expect(err.code, JSON.stringify(sysctls)).toBe(INVALID_ARGUMENT);
      expect(err.details).toContain(Object.keys(sysctls)[0]);
    }
    const pattern = await daemon.enter(['cat', '/proc/sys/kernel/core_pattern']);
    expect(pattern.stdout).not.toContain('/x');
    const refused = await call({
      config: podJson('sysctl-value', { linux: { sysctls: { 'net.ipv4.ip_local_port_range': '100 50' } } }),
    });
    expect(refused.code).toBe(INVALID_ARGUMENT);
    expect(refused.details).toMatch(/refused by the kernel/);
    const list = await daemon.client.runtime('ListPodSandbox', {});
    expect(list.items).toEqual([]);
    expect(await podLeftovers([])).toEqual([]);
  });

  it('a duplicate (name, namespace, uid, attempt) names the sandbox holding it', async () => {
    const config = podJson('dup');
    const first = await daemon.client.runtime('RunPodSandbox', { config } as never);
    const err = await call({ config });
    expect(err.code).toBe(ALREADY_EXISTS);
    expect(err.details).toContain(first.pod_sandbox_id);
    // Concurrent identical requests: exactly one wins.
    const racing = podJson('race');
    const results = await Promise.allSettled(
      Array.from({ length: 5 }, () => daemon.client.runtime('RunPodSandbox', { config: racing } as never)),
    );
    const won = results.filter((r) => r.status === 'fulfilled') as PromiseFulfilledResult<{
      pod_sandbox_id: string;
    }>[];
    expect(won).toHaveLength(1);
    for (const r of results.filter((x) => x.status === 'rejected')) {
      expect(grpcCode((r as PromiseRejectedResult).reason)).toBe(ALREADY_EXISTS);
    }
    for (const id of [first.pod_sandbox_id, won[0]!.value.pod_sandbox_id]) {
      await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: id });
      await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: id });
    }
    expect(await podLeftovers([])).toEqual([]);
  });

  it('a host port already taken on the host, and a privileged port the host does not allow', async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const taken = (blocker.address() as net.AddressInfo).port;
    try {
      const err = await call({
        config: podJson('taken', {
          port_mappings: [{ container_port: 80, host_port: taken, host_ip: '127.0.0.1' }],
        }),
      });
      expect(err.code).toBe(FAILED_PRECONDITION);
      expect(err.details).toContain(String(taken));
    } finally {
      blocker.close();
    }
    const { stdout } = await execa('sysctl', ['-n', 'net.ipv4.ip_unprivileged_port_start']);
    if (Number(stdout) > 80) {
      const err = await call({
        config: podJson('low', {
          port_mappings: [{ container_port: 80, host_port: 80, host_ip: '127.0.0.1' }],
        }),
      });
      expect(err.code).toBe(FAILED_PRECONDITION);
      expect(err.details).toMatch(/ip_unprivileged_port_start/);
    }
    expect(await podLeftovers([])).toEqual([]);
    expect((await daemon.client.runtime('ListPodSandbox', {})).items).toEqual([]);
  });

  it('Stop/Remove of unknown ids are OK twice; Status is NOT_FOUND; an empty id is refused', async () => {
    const unknown = '0'.repeat(64);
    for (let i = 0; i < 2; i++) {
      await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: unknown });
      await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: unknown });
    }
    const status = await daemon.client
      .runtime('PodSandboxStatus', { pod_sandbox_id: unknown })
      .catch((e) => e);
    expect(grpcCode(status)).toBe(5);
    const empty = await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: '' }).catch((e) => e);
    expect(grpcCode(empty)).toBe(INVALID_ARGUMENT);
  });
});

describe('an unusable CNI config', () => {
  let broken: TestDaemon;
  const confDir = '/tmp/rcri-it-broken-cni';

  beforeAll(async () => {
    await mkdir(confDir, { recursive: true });
    await writeFile(
      path.join(confDir, '10-broken.conflist'),
      JSON.stringify({ cniVersion: '1.0.0', name: 'broken', plugins: [{ type: 'no-such-plugin' }] }),
    );
    broken = await TestDaemon.start({ extraConfig: `[network]\ncni_conf_dir = "${confDir}"\n` });
  });

  afterAll(async () => {
    await broken?.stop();
    const { rm } = await import('node:fs/promises');
    await rm(confDir, { recursive: true, force: true });
  });

  it('fails RunPodSandbox with FAILED_PRECONDITION naming the plugin, leaving nothing', async () => {
    const err = await broken.client
      .runtime('RunPodSandbox', { config: podJson('nocni') } as never)
      .catch((e: unknown) => e as { code: number; details: string });
    expect(err).toMatchObject({ code: 9 });
    expect((err as { details: string }).details).toMatch(/no-such-plugin/);
    expect((await broken.client.runtime('ListPodSandbox', {})).items).toEqual([]);
    expect(await readdir(path.join(broken.runDir, 'netns')).catch(() => [])).toEqual([]);
    const procs = await broken.enter(['ps', '-eo', 'args']);
    expect(procs.stdout).not.toMatch(/unshare --pid/);
    // A host-network pod needs no CNI and still works.
    const host = await broken.client.runtime('RunPodSandbox', {
      config: podJson('hostnet-nocni', {
        linux: { security_context: { namespace_options: { network: 'NODE' } } },
      }),
    } as never);
    await broken.client.runtime('RemovePodSandbox', { pod_sandbox_id: host.pod_sandbox_id });
  });
});
