/**
 * A RuntimeCore built over fakes (the real core: its stores write records under `rootDir`),
 * for unit tests of the pod and container RPC modules. Each fake is reachable from the result
 * so a test can drive it (exits, monitor deaths, failures) and read what was called.
 */
import type { NriRuntimeOptions } from '../../src/core/nri-runtime.js';
import { RuntimeCore } from '../../src/core/runtime-core.js';
import { silentLogger } from '../../src/log.js';
import { FakeCgroupManager } from './fake-cgroup-manager.js';
import { FakeImages } from './fake-container-os.js';
import { FakeOciRuntime } from './fake-oci-runtime.js';
import { FakeSandboxOs } from './fake-sandbox-os.js';
import { FakeSnapshotter } from './fake-snapshotter.js';

export interface FakeCoreParts {
  core: RuntimeCore;
  runtime: FakeOciRuntime;
  cgroups: FakeCgroupManager;
  sandboxOs: FakeSandboxOs;
  images: FakeImages;
  snapshotter: FakeSnapshotter;
}

export function fakeCore(options: {
  rootDir: string;
  journal?: string[];
  runtime?: FakeOciRuntime;
  cgroups?: FakeCgroupManager;
  sandboxOs?: FakeSandboxOs;
  images?: FakeImages;
  snapshotter?: FakeSnapshotter;
  now?: () => bigint;
  monitorCheckMs?: number;
  nodeId?: string;
  /** NRI on, with its socket here (off by default). */
  nri?: NriRuntimeOptions;
}): FakeCoreParts {
  const journal = options.journal ?? [];
  const runtime = options.runtime ?? new FakeOciRuntime();
  const cgroups = options.cgroups ?? new FakeCgroupManager({}, journal);
  const sandboxOs = options.sandboxOs ?? new FakeSandboxOs(journal);
  const images = options.images ?? new FakeImages();
  const snapshotter = options.snapshotter ?? new FakeSnapshotter();
  const core = new RuntimeCore({
    rootDir: options.rootDir,
    runtime,
    cgroups,
    sandboxOs,
    images,
    snapshotter,
    logger: silentLogger(),
    ...(options.now ? { now: options.now } : {}),
    monitorCheckMs: options.monitorCheckMs ?? 0,
    nodeId: options.nodeId ?? 'fake-node',
    nri: options.nri ?? null,
  });
  return { core, runtime, cgroups, sandboxOs, images, snapshotter };
}
