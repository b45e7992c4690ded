/**
 * Pods with their own user namespace (hostUsers: false) and recursive read-only mounts, for
 * real: the daemon as the unprivileged test user in its rootless node (whose /etc/subuid range
 * must be larger than 65,536: deploy/setup-host.sh gives 1,048,576), images from a local
 * registry, crictl and the CRI client.
 *
 * What is checked inside the pod: `id`, /proc/self/uid_map and gid_map (nested in the node's),
 * the owners of image files (shifted by fuse-overlayfs), a file the pod writes (stored with
 * unshifted ids), the container process as the node sees it, two containers sharing one user
 * namespace, a server on port 80 (the pod's user namespace owns its network namespace), an
 * id-mapped volume on a tmpfs the node mounted and an unmapped one on the host's disk; and the
 * refusals, each INVALID_ARGUMENT leaving nothing behind. Recursive read-only mounts: a submount
 * is read-only under rro and writable under a plain read-only mount, with and without a pod
 * user namespace; the propagation and readonly combinations the CRI forbids are refused.
 */
import { chown, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { exposeInNode, type NodeBridge } from '../fixtures/hostile-registry.js';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, LAYERED_IMAGE_EXPECTED, pushCatalogue } from '../fixtures/test-images.js';
import { grpcCode } from '../harness/cri-client.js';
import { mirrorConfig, sleep, TestDaemon } from '../harness/daemon.js';

const BUSYBOX = 'registry.k8s.io/e2e-test-images/busybox:1.29-2';
const HTTPD = 'registry.k8s.io/e2e-test-images/httpd:2.4.39-4';
let LAYERS = '';

/** The pod's ids: node ids 131072.. (the node's own ids are 0..65535), as kubelet's second block. */
const POD_BASE = 2 * 65536;
const MAPPING = [{ container_id: 0, host_id: POD_BASE, length: 65536 }];

let daemon: TestDaemon;
let registry: RunningRegistry;
let bridge: NodeBridge | undefined;
let logRoot: string;
let files = 0;
const pods = new Set<string>();
/** Node mounts a test made (unmounted after it). */
const nodeMounts: string[] = [];

async function asJsonFile(value: unknown): Promise<string> {
  const file = path.join(daemon.tmp, `cfg-${files++}.json`);
  await writeFile(file, JSON.stringify(value));
  await chown(file, daemon.user.uid, daemon.user.gid);
  return file;
}

async function crictl(args: string[]): Promise<string> {
  const r = await daemon.crictl(args);
  if (r.exitCode !== 0) {
    throw new Error(
      `crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}\n${await daemon.logTail(30)}`,
    );
  }
  return r.stdout.trim();
}

async function inNode(command: string[]): Promise<string> {
  const r = await daemon.enter(command);
  if (r.exitCode !== 0) throw new Error(`${command.join(' ')} in the node failed: ${r.stderr}`);
  return r.stdout;
}

/** NamespaceMode and MountPropagation by number: crictl's JSON files take enums as numbers. */
const MODE = { POD: 0, CONTAINER: 1, NODE: 2, TARGET: 3 } as const;
const PROPAGATION = { PRIVATE: 0, HOST_TO_CONTAINER: 1, BIDIRECTIONAL: 2 } as const;

function usernsOptions(mode: keyof typeof MODE = 'POD', uids: unknown = MAPPING, gids: unknown = MAPPING) {
  return { namespace_options: { userns_options: { mode: MODE[mode], uids, gids } } };
}

function podConfig(
  name: string,
  securityContext: Record<string, unknown> | null = usernsOptions(),
  sysctls: Record<string, string> = {},
) {
  return {
    metadata: { name, namespace: 'userns', uid: `uid-${name}`, attempt: 0 },
    hostname: name,
    log_directory: path.join(logRoot, name),
    linux: { ...(securityContext ? { security_context: securityContext } : {}), sysctls },
  };
}

async function runPod(
  name: string,
  securityContext?: Record<string, unknown> | null,
  sysctls?: Record<string, string>,
) {
  const config = podConfig(name, securityContext === undefined ? usernsOptions() : securityContext, sysctls);
  await mkdir(config.log_directory, { recursive: true });
  await chown(config.log_directory, daemon.user.uid, daemon.user.gid);
  const file = await asJsonFile(config);
  const id = await crictl(['runp', file]);
  pods.add(id);
  return { id, configFile: file, config };
}

type Pod = Awaited<ReturnType<typeof runPod>>;

async function createContainer(pod: Pod, name: string, extra: Record<string, unknown>, image = BUSYBOX) {
  const userns = (pod.config.linux as { security_context?: unknown }).security_context;
  const file = await asJsonFile({
    metadata: { name },
    image: { image },
    log_path: `${name}.log`,
    linux: userns ? { security_context: userns } : {},
    ...extra,
  });
  return crictl(['create', '--no-pull', pod.id, file, pod.configFile]);
}

/** Runs a command to completion in a new container of the pod; returns its stdout lines. */
async function runToExit(
  pod: Pod,
  name: string,
  script: string,
  extra: Record<string, unknown> = {},
  image = BUSYBOX,
) {
  const id = await createContainer(pod, name, { command: ['sh', '-c', script], ...extra }, image);
  await crictl(['start', id]);
  const deadline = Date.now() + 30_000;
  for (;;) {
    const state = JSON.parse(await crictl(['inspect', '-o', 'json', id])) as {
      status: { state: string; exitCode: number };
      info: { warnings?: string[] };
    };
    if (state.status.state === 'CONTAINER_EXITED') {
      const log = await readFile(path.join(pod.config.log_directory, `${name}.log`), 'utf8');
      const stdout = log
        .split('\n')
        .filter((l) => / stdout [PF] /.test(l))
        .map((l) => l.replace(/^\S+ stdout [PF] /, ''));
      return { id, exitCode: state.status.exitCode, stdout, log, warnings: state.info.warnings ?? [] };
    }
    if (Date.now() > deadline) throw new Error(`container ${name} did not exit`);
    await sleep(100);
  }
}

async function runPodSandboxError(
  config: Record<string, unknown>,
): Promise<{ code: number | undefined; message: string }> {
  try {
    const r = await daemon.client.runtime('RunPodSandbox', { config });
    pods.add(r.pod_sandbox_id);
    return { code: status.OK, message: '' };
  } catch (err) {
    return { code: grpcCode(err), message: (err as Error).message };
  }
}

beforeAll(async () => {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  const built = await buildCatalogue({ cacheDir, names: ['busybox', 'layers', 'httpd'] });
  registry = await startRegistry();
  await pushCatalogue(registry.url, built.images);
  LAYERS = `${registry.host}/rootless-cri/layers:1`;
  daemon = await TestDaemon.start({ extraConfig: mirrorConfig(registry.url) });
  bridge = await exposeInNode(await daemon.nodePid(), registry.port);
  logRoot = path.join(daemon.tmp, 'logs');
  await mkdir(logRoot);
  await chown(logRoot, daemon.user.uid, daemon.user.gid);
  for (const image of [BUSYBOX, LAYERS, HTTPD]) await crictl(['pull', image]);
}, 300_000);

afterEach(async () => {
  for (const id of [...pods]) {
    await crictl(['stopp', id]).catch(() => undefined);
    await crictl(['rmp', id]).catch(() => undefined);
    pods.delete(id);
  }
  while (nodeMounts.length > 0) await inNode(['umount', nodeMounts.pop()!]).catch(() => undefined);
});

afterAll(async () => {
  await bridge?.close();
  await daemon?.stop();
  await registry?.stop();
});

describe('Status', () => {
  it('advertises pod user namespaces and recursive read-only mounts for the default handler', async () => {
    const s = await daemon.client.runtime('Status', { verbose: false });
    expect(s.runtime_handlers).toEqual([
      expect.objectContaining({
        name: '',
        features: { recursive_read_only_mounts: true, user_namespaces: true },
      }),
    ]);
    // Nested user namespaces need a node with more than its own 65,536 ids.
    const nodeMap = await inNode(['cat', '/proc/self/uid_map']);
    const total = nodeMap
      .trim()
      .split('\n')
      .reduce((n, l) => n + Number(l.trim().split(/\s+/)[2]), 0);
    expect(total).toBeGreaterThanOrEqual(POD_BASE + 65536);
  });
});

describe('a pod with its own user namespace (hostUsers: false)', () => {
  it('runs as root inside, nested in the node, with image owners shifted and writes stored unshifted', async () => {
    // Namespaced sysctls of both kinds: set before and after CNI, in namespaces the pod's user namespace owns.
    const pod = await runPod('shifted', undefined, {
      'net.ipv4.ping_group_range': '0 1000',
      'kernel.shm_rmid_forced': '1',
    });
    const r = await runToExit(
      pod,
      'inside',
      [
        'id',
        'cat /proc/self/uid_map /proc/self/gid_map',
        'stat -c "%u:%g %a %n" / /data/owned.txt /data/setuid-tool /etc/hosts',
        'echo written > /data/by-pod && stat -c "%u:%g %n" /data/by-pod',
        'chown 1000:1000 /data/by-pod && stat -c "%u:%g %n" /data/by-pod',
        'cat /data/owned.txt',
        'cat /proc/sys/net/ipv4/ping_group_range /proc/sys/kernel/shm_rmid_forced',
        'hostname',
      ].join('; '),
      {},
      LAYERS,
    );
    expect(r.exitCode, r.log).toBe(0);
    expect(r.stdout[0]).toMatch(/^uid=0\(root\) gid=0\(root\)/);
    // /proc/self/uid_map shows the pod's ids as node ids, exactly as requested.
    expect(r.stdout[1]!.trim().split(/\s+/)).toEqual(['0', String(POD_BASE), '65536']);
    expect(r.stdout[2]!.trim().split(/\s+/)).toEqual(['0', String(POD_BASE), '65536']);
    expect(r.stdout).toContain('0:0 755 /');
    const owned = LAYERED_IMAGE_EXPECTED.owners['/data/owned.txt']!;
    expect(r.stdout).toContain(`${owned.uid}:${owned.gid} 640 /data/owned.txt`);
    expect(r.stdout).toContain('0:0 4755 /data/setuid-tool');
    // The pod's own files belong to the pod's root.
    expect(r.stdout).toContain('0:0 644 /etc/hosts');
    expect(r.stdout).toContain('0:0 /data/by-pod');
    expect(r.stdout).toContain('1000:1000 /data/by-pod');
    expect(r.stdout).toContain('owned by 1000:1000');
    expect(r.stdout.slice(-3), r.log).toEqual(['0\t1000', '1', 'shifted']);
    // In the writable layer on the host's disk the file has the pod's ids unshifted: 1000 of
    // the node is the node user's subordinate id 999 (the node maps 1.. from the first range).
    const upper = path.join(
      daemon.rootDir,
      'snapshots',
      'fuse-overlayfs',
      'snapshots',
      r.id,
      'upper',
      'data',
      'by-pod',
    );
    const onDisk = await stat(upper);
    const nodeMap = (await inNode(['cat', '/proc/self/uid_map'])).trim().split('\n');
    const hostOf = (nodeId: number) => {
      for (const line of nodeMap) {
        const [inside, outside, count] = line.trim().split(/\s+/).map(Number) as [number, number, number];
        if (nodeId >= inside && nodeId < inside + count) return outside + nodeId - inside;
      }
      return -1;
    };
    expect(onDisk.uid).toBe(hostOf(1000));
  });

  it('shows the container process as a node id, shares one user namespace between containers, serves port 80', async () => {
    const pod = await runPod('shared');
    const web = await createContainer(pod, 'web', {}, HTTPD);
    await crictl(['start', web]);
    const other = await createContainer(pod, 'other', { command: ['sleep', '3600'] });
    await crictl(['start', other]);
    const info = async (id: string) =>
      (JSON.parse(await crictl(['inspect', '-o', 'json', id])) as { info: { pid: number } }).info.pid;
    const webPid = await info(web);
    const otherPid = await info(other);
    // As the node sees them: uid POD_BASE (the pod's root), in one user namespace that is not the node's.
    const statusLine = (await inNode(['grep', '^Uid:', `/proc/${otherPid}/status`])).trim().split(/\s+/);
    expect(statusLine[1]).toBe(String(POD_BASE));
    const [webNs, otherNs, nodeNs] = await Promise.all([
      inNode(['readlink', `/proc/${webPid}/ns/user`]),
      inNode(['readlink', `/proc/${otherPid}/ns/user`]),
      inNode(['readlink', '/proc/self/ns/user']),
    ]);
    expect(webNs).toBe(otherNs);
    expect(webNs).not.toBe(nodeNs);
    // exec joins it too.
    expect((await crictl(['exec', other, 'id', '-u'])).trim()).toBe('0');
    // Port 80 without privileges over the node: the pod's user namespace owns its network namespace.
    const ip = (
      JSON.parse(await crictl(['inspectp', '-o', 'json', pod.id])) as { status: { network: { ip: string } } }
    ).status.network.ip;
    const deadline = Date.now() + 20_000;
    let page = '';
    while (Date.now() < deadline) {
      const r = await daemon.enter(['curl', '-sf', '--max-time', '2', `http://${ip}:80/`]);
      if (r.exitCode === 0) {
        page = r.stdout;
        break;
      }
      await sleep(200);
    }
    expect(page).toContain('httpd stand-in');
    await crictl(['stopp', pod.id]);
    await crictl(['rmp', pod.id]);
    pods.delete(pod.id);
    // Nothing of the pod is left in the node: no process in its user namespace, no pin.
    const ps = await inNode([
      'sh',
      '-c',
      `ls -l /proc/*/ns/user 2>/dev/null | grep -c '${webNs.trim()}' || true`,
    ]);
    expect(ps.trim()).toBe('0');
    expect((await inNode(['sh', '-c', `grep -c userns/${pod.id} /proc/self/mountinfo || true`])).trim()).toBe(
      '0',
    );
  });

  it('id-maps a volume on a tmpfs the node mounted, and mounts a host-disk volume unmapped with a warning', async () => {
    const tmpfs = path.join(daemon.tmp, 'tmpfs-volume');
    const disk = path.join(daemon.tmp, 'disk-volume');
    for (const dir of [tmpfs, disk]) {
      await mkdir(dir);
      await chown(dir, daemon.user.uid, daemon.user.gid);
    }
    await inNode(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', tmpfs]);
    nodeMounts.push(tmpfs);
    await inNode(['sh', '-c', `echo secret > ${tmpfs}/token && echo on-disk > ${disk}/file`]);
    const pod = await runPod('volumes');
    // kubelet sends the pod's mapping on every mount of a hostUsers: false pod.
    const r = await runToExit(
      pod,
      'reader',
      'stat -c "%u:%g %n" /tmpfs/token /disk/file; touch /tmpfs/new && echo wrote',
      {
        mounts: [
          { container_path: '/tmpfs', host_path: tmpfs, uidMappings: MAPPING, gidMappings: MAPPING },
          {
            container_path: '/disk',
            host_path: disk,
            uidMappings: MAPPING,
            gidMappings: MAPPING,
            readonly: true,
          },
        ],
      },
    );
    expect(r.exitCode, r.log).toBe(0);
    // The node's root owns both files; through the id-mapped tmpfs it is the pod's root.
    expect(r.stdout).toContain('0:0 /tmpfs/token');
    expect(r.stdout).toContain('65534:65534 /disk/file');
    expect(r.stdout).toContain('wrote');
    // Written through the id-mapped mount: stored as the node's root.
    expect((await inNode(['stat', '-c', '%u', `${tmpfs}/new`])).trim()).toBe('0');
    expect(r.warnings.join('\n')).toMatch(/mount \/disk: the kernel refuses to id-map .*EPERM/);
  });

  it('refuses what the CRI and the node forbid with INVALID_ARGUMENT, leaving nothing behind', async () => {
    const cases: { name: string; linux: Record<string, unknown>; message: RegExp }[] = [
      {
        name: 'two-mappings',
        linux: usernsOptions('POD', [...MAPPING, { container_id: 0, host_id: 2000, length: 100000 }]),
        message: /uids has 2 mappings/,
      },
      {
        name: 'root-unmapped',
        linux: usernsOptions('POD', [{ container_id: 1, host_id: POD_BASE, length: 65536 }]),
        message: /does not map container id 0/,
      },
      {
        name: 'container-mode',
        linux: usernsOptions('CONTAINER', [], []),
        message: /mode CONTAINER is not valid/,
      },
      { name: 'target-mode', linux: usernsOptions('TARGET', [], []), message: /mode TARGET is not valid/ },
      {
        name: 'outside-node',
        linux: usernsOptions('POD', [{ container_id: 0, host_id: 4_000_000_000, length: 65536 }]),
        message: /maps node ids 4000000000-4000065535, which the rootless node does not have/,
      },
      {
        name: 'node-user',
        linux: usernsOptions('POD', [{ container_id: 0, host_id: 0, length: 65536 }]),
        message: /node id 0, the node user itself/,
      },
      {
        name: 'host-network',
        linux: {
          namespace_options: {
            network: MODE.NODE,
            userns_options: { mode: MODE.POD, uids: MAPPING, gids: MAPPING },
          },
        },
        message: /network NODE cannot be combined with a pod user namespace/,
      },
    ];
    for (const c of cases) {
      const r = await runPodSandboxError({ ...podConfig(c.name, c.linux), log_directory: '' });
      expect(r.code, `${c.name}: ${r.message}`).toBe(status.INVALID_ARGUMENT);
      expect(r.message).toMatch(c.message);
    }
    const listed = await daemon.client.runtime('ListPodSandbox', {});
    const names = new Set(cases.map((c) => c.name));
    expect(listed.items.filter((p) => names.has(p.metadata?.name ?? ''))).toEqual([]);
    expect((await inNode(['sh', '-c', 'grep -c /userns/ /proc/self/mountinfo || true'])).trim()).toBe('0');
  });

  it('refuses a container uid the pod does not map, and a container in the node user namespace', async () => {
    const pod = await runPod(
      'bad-containers',
      usernsOptions('POD', [{ container_id: 0, host_id: POD_BASE, length: 1000 }]),
    );
    const uid = await asJsonFile({
      metadata: { name: 'big-uid' },
      image: { image: BUSYBOX },
      command: ['true'],
      linux: {
        security_context: {
          ...usernsOptions('POD', [{ container_id: 0, host_id: POD_BASE, length: 1000 }]),
          run_as_user: { value: 5000 },
        },
      },
    });
    let r = await daemon.crictl(['create', '--no-pull', pod.id, uid, pod.configFile]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(
      /InvalidArgument.*uid 5000 is not mapped in the pod's user namespace \(ids 0\.\.999\)/,
    );
    const nodeMode = await asJsonFile({
      metadata: { name: 'node-mode' },
      image: { image: BUSYBOX },
      command: ['true'],
      linux: { security_context: usernsOptions('NODE', [], []) },
    });
    r = await daemon.crictl(['create', '--no-pull', pod.id, nodeMode, pod.configFile]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/InvalidArgument.*all its containers share \(mode POD\)/);
  });

  it('keeps a running pod across a daemon restart', async () => {
    const pod = await runPod('restart');
    const id = await createContainer(pod, 'sleeper', { command: ['sleep', '3600'] });
    await crictl(['start', id]);
    await daemon.kill9();
    await daemon.serve();
    const p = JSON.parse(await crictl(['inspectp', '-o', 'json', pod.id])) as { status: { state: string } };
    expect(p.status.state).toBe('SANDBOX_READY');
    expect((await crictl(['exec', id, 'cat', '/proc/self/uid_map'])).trim().split(/\s+/)).toEqual([
      '0',
      String(POD_BASE),
      '65536',
    ]);
  });
});

describe('recursive read-only mounts', () => {
  async function volumeWithSubmount(name: string): Promise<string> {
    const dir = path.join(daemon.tmp, name);
    await mkdir(path.join(dir, 'sub'), { recursive: true });
    await chown(dir, daemon.user.uid, daemon.user.gid);
    await inNode(['mount', '-t', 'tmpfs', '-o', 'size=1m,mode=1777', 'tmpfs', path.join(dir, 'sub')]);
    nodeMounts.push(path.join(dir, 'sub'));
    return dir;
  }

  const touchBoth = 'touch /mnt/top 2>&1; touch /mnt/sub/file 2>&1 && echo sub-writable; true';

  for (const userns of [false, true]) {
    const where = userns ? 'in a pod with its own user namespace' : 'in a pod of the node user namespace';
    it(`makes the submount read-only with rro and leaves it writable with plain readonly, ${where}`, async () => {
      const dir = await volumeWithSubmount(`rro-${userns}`);
      const pod = await runPod(`rro-${userns}`, userns ? usernsOptions() : null);
      const rro = await runToExit(pod, 'rro', touchBoth, {
        mounts: [{ container_path: '/mnt', host_path: dir, readonly: true, recursive_read_only: true }],
      });
      expect(rro.log).toMatch(/touch: \/mnt\/top: Read-only file system/);
      expect(rro.log).toMatch(/touch: \/mnt\/sub\/file: Read-only file system/);
      expect(rro.stdout).not.toContain('sub-writable');
      const ro = await runToExit(pod, 'ro', touchBoth, {
        mounts: [{ container_path: '/mnt', host_path: dir, readonly: true }],
      });
      expect(ro.log).toMatch(/touch: \/mnt\/top: Read-only file system/);
      expect(ro.stdout).toContain('sub-writable');
      // The source stays writable for the node.
      await inNode(['touch', path.join(dir, 'sub', 'from-node')]);
    });
  }

  it('refuses rro with HOST_TO_CONTAINER or BIDIRECTIONAL propagation and rro without readonly', async () => {
    const dir = await volumeWithSubmount('rro-bad');
    const pod = await runPod('rro-bad', null);
    const cases = [
      {
        mount: { propagation: PROPAGATION.HOST_TO_CONTAINER, readonly: true },
        message: /needs propagation PROPAGATION_PRIVATE/,
      },
      {
        mount: { propagation: PROPAGATION.BIDIRECTIONAL, readonly: true },
        message: /needs propagation PROPAGATION_PRIVATE/,
      },
      { mount: { readonly: false }, message: /recursive_read_only needs readonly: true/ },
    ];
    for (const [i, c] of cases.entries()) {
      const file = await asJsonFile({
        metadata: { name: `bad-${i}` },
        image: { image: BUSYBOX },
        command: ['true'],
        mounts: [{ container_path: '/mnt', host_path: dir, recursive_read_only: true, ...c.mount }],
      });
      const r = await daemon.crictl(['create', '--no-pull', pod.id, file, pod.configFile]);
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toMatch(/InvalidArgument/);
      expect(r.stderr).toMatch(c.message);
    }
    expect(JSON.parse(await crictl(['ps', '-a', '-o', 'json', '-p', pod.id])).containers).toEqual([]);
  });
});
