/**
 * RunPodSandbox / StopPodSandbox / RemovePodSandbox of a pod with its own user namespace over
 * fakes of the node: the namespace is asked for with the planned maps and pinned, recorded,
 * shown in the status, owns the pod's files, is handed to containers, and is released with the
 * pod; a refused request leaves nothing.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { PodSandboxConfig__Output } from '../../src/api/proto.js';
import type { RuntimeCore } from '../../src/core/runtime-core.js';
import { silentLogger } from '../../src/log.js';
import type { PodNamespacesRequest } from '../../src/os/sandbox-os.js';
import { createPodSandboxService, type PodSandboxService } from '../../src/podsandbox/index.js';
import { FakeCgroupManager } from '../fakes/fake-cgroup-manager.js';
import { fakeCore } from '../fakes/fake-core.js';
import { FakeNetworkDriver } from '../fakes/fake-network-driver.js';
import { FakePortManager } from '../fakes/fake-port-manager.js';
import { FakeSandboxOs } from '../fakes/fake-sandbox-os.js';
import { podConfig } from '../fakes/pod-config-builder.js';

const NODE = [
  { containerId: 0, hostId: 1015, length: 1 },
  { containerId: 1, hostId: 3180192, length: 1048576 },
];

let dir: string;
let os: FakeSandboxOs;
let core: RuntimeCore;
let service: PodSandboxService;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'rcri-userns-unit-'));
  const journal: string[] = [];
  os = new FakeSandboxOs(journal);
  ({ core } = fakeCore({
    rootDir: path.join(dir, 'root'),
    journal,
    sandboxOs: os,
    cgroups: new FakeCgroupManager({}, journal),
  }));
  service = createPodSandboxService({
    core,
    config: {
      rootDir: path.join(dir, 'root'),
      runDir: path.join(dir, 'run'),
      network: {
        cniConfDir: '/x',
        cniBinDirs: [],
        ipamDataDir: '/x',
        podCidr: '10.88.0.0/16',
        networkName: 'fake',
        cniConfTemplate: undefined,
      },
    },
    logger: silentLogger(),
    portManager: new FakePortManager(journal),
    os,
    network: new FakeNetworkDriver(journal),
    userNamespaces: { node: { uids: NODE, gids: NODE }, unavailable: null },
    overrides: {
      nodeHostname: () => 'node',
      undoTimeoutMs: 2_000,
      paths: {
        sandboxesDir: path.join(dir, 'root', 'sandboxes'),
        runDir: path.join(dir, 'run'),
        nodeResolvConf: path.join(dir, 'resolv.conf'),
        nodeHosts: path.join(dir, 'hosts'),
      },
    },
  });
  await core.recover();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const ctx = () => ({
  signal: new AbortController().signal,
  logger: silentLogger(),
  method: 't',
  requestId: 'r',
  deadline: undefined,
});

function usernsPod(name: string, hostId = 131072): PodSandboxConfig__Output {
  const config = podConfig({ metadata: { name, uid: `uid-${name}`, namespace: 'ns', attempt: 0 } });
  config.linux!.security_context!.namespace_options!.userns_options = {
    mode: 'POD',
    uids: [{ container_id: 0, host_id: hostId, length: 65536 }],
    gids: [{ container_id: 0, host_id: hostId, length: 65536 }],
  } as never;
  return config;
}

describe('a pod with its own user namespace', () => {
  it('pins it with the planned maps, owns the pod files by its root, hands it to containers, releases it', async () => {
    const id = (await service.handlers.RunPodSandbox({ config: usernsPod('p1'), runtime_handler: '' }, ctx()))
      .pod_sandbox_id!;
    const request = os.calls.find((c) => c.method === 'createPodNamespaces')!.args[0] as PodNamespacesRequest;
    const usernsPin = path.join(dir, 'run', 'userns', id);
    expect(request.userNamespace).toEqual({
      mode: 'POD',
      path: usernsPin,
      uids: [{ containerId: 0, hostId: 131072, length: 65536 }],
      gids: [{ containerId: 0, hostId: 131072, length: 65536 }],
    });
    expect(request.pins.map((p) => p.kind)).toEqual(['net', 'ipc', 'uts']);
    expect(os.pinned.has(usernsPin)).toBe(true);
    // The pod's root (node id 131072) owns hosts, resolv.conf and hostname (the tests run as root).
    for (const file of ['hosts', 'resolv.conf', 'hostname']) {
      const st = await stat(path.join(dir, 'root', 'sandboxes', id, file));
      expect([file, st.uid, st.gid]).toEqual([file, 131072, 131072]);
    }
    const status = (await service.handlers.PodSandboxStatus({ pod_sandbox_id: id, verbose: false }, ctx()))
      .status!;
    expect(status.linux?.namespaces?.options?.userns_options).toMatchObject({ mode: 'POD' });
    expect(core.sandboxInfo(id)?.userNamespace).toEqual({
      path: usernsPin,
      uids: [{ containerId: 0, hostId: 131072, length: 65536 }],
      gids: [{ containerId: 0, hostId: 131072, length: 65536 }],
    });
    await service.handlers.StopPodSandbox({ pod_sandbox_id: id }, ctx());
    await service.handlers.RemovePodSandbox({ pod_sandbox_id: id }, ctx());
    expect(os.leftovers()).toEqual([]);
  });

  it('a refused request makes nothing', async () => {
    await expect(
      service.handlers.RunPodSandbox({ config: usernsPod('p2', 4_000_000_000), runtime_handler: '' }, ctx()),
    ).rejects.toMatchObject({ kind: 'InvalidArgument' });
    expect(os.calls).toEqual([]);
    expect(os.leftovers()).toEqual([]);
    expect(core.sandboxes.list()).toEqual([]);
  });
});
