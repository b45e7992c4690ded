/**
 * The composition root: runs inside the node (uid 0 in its user namespace), builds the real
 * implementations of every interface, recovers state, and serves CRI on the unix socket.
 */
import { access, constants, mkdir, readFile, rename, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Config } from './config.js';
import {
  createContainerService,
  runtimeLayout,
  sandboxLookupFromReader,
} from './container/container-service.js';
import { probeHostFacts } from './container/host-facts.js';
import { CrunConmonRuntime } from './container/oci-runtime.js';
import { ReadinessGate } from './cri/edge.js';
import { createRuntimeInfoHandlers, type HealthCondition, type RuntimeHealth } from './cri/runtime-info.js';
import { type CriHandlers, createCriServer } from './cri/server.js';
import { describeError } from './errors.js';
import { FuseOverlayfsSnapshotter } from './image/fuse-overlayfs-snapshotter.js';
import { createImageFsInfoHandler } from './image/image-fs-info.js';
import { createImageService } from './image/image-service.js';
import { OverlaySnapshotter } from './image/overlay-snapshotter.js';
import type { Logger } from './log.js';
import { createMetrics, type MetricsServer, startMetricsServer } from './metrics.js';
import { checkCniReady } from './podsandbox/cni-config.js';
import { createPodSandboxService } from './podsandbox/index.js';
import { sandboxStatusOf } from './podsandbox/sandbox-status.js';
import { enableSubtreeControllers, readControllers } from './rootless/cgroup-delegation.js';
import { hostDialer } from './rootless/host-dialer.js';
import { inUserNamespace } from './rootless/node.js';
import { prepareNodeForKubelet } from './rootless/node-setup.js';
import { type PortManager, RootlesskitPortManager } from './rootless/port-manager.js';
import { writePidFile } from './rootless/supervisor.js';
import { createDaemonStreaming } from './streaming/streaming-wiring.js';
import { packageVersion } from './version.js';

const CGROUP2_SUPER_MAGIC = 0x63677270;
const CGROUP_ROOT = '/sys/fs/cgroup';

/** One capability of the daemon, as the composition root sees it. */
interface DaemonService {
  name: string;
  handlers: CriHandlers;
  /** Reconciles records with the system; runs before the daemon answers anything but UNAVAILABLE. */
  recover?(): Promise<void>;
  close?(): Promise<void>;
}

/** What the daemon learned about its host at start; shown by Status(verbose) and logged. */
export interface NodeFacts {
  inUserNamespace: boolean;
  rootlesskitStateDir: string | null;
  cgroupV2: boolean;
  cgroupControllers: string[];
  missingControllers: string[];
  warnings: string[];
}

async function probeNodeFacts(logger: Logger): Promise<NodeFacts> {
  const warnings: string[] = [];
  const userns = await inUserNamespace();
  if (!userns)
    warnings.push('the daemon is not in a user namespace; run it with `rootless-cri serve` from the host');
  let cgroupV2 = false;
  try {
    cgroupV2 = Number((await statfs(CGROUP_ROOT)).type) === CGROUP2_SUPER_MAGIC;
  } catch {
    cgroupV2 = false;
  }
  let controllers: string[] = [];
  if (cgroupV2) {
    controllers = await readControllers(CGROUP_ROOT);
    // Our own processes live in leaves (daemon/, rootlesskit/), so the root may delegate.
    const { failed } = await enableSubtreeControllers(CGROUP_ROOT);
    if (failed.length > 0) warnings.push(`could not enable cgroup controllers ${failed.join(', ')} for pods`);
  } else {
    warnings.push(`${CGROUP_ROOT} is not a cgroup v2 hierarchy inside the node: pods run without cgroups`);
  }
  const missing = ['cpu', 'memory', 'pids', 'io'].filter((c) => !controllers.includes(c));
  if (cgroupV2 && missing.length > 0) {
    warnings.push(
      `cgroup v2 controllers not delegated: ${missing.join(', ')}; their limits are dropped (rootless-cri doctor explains how to delegate them)`,
    );
  }
  for (const w of warnings) logger.warn(w);
  return {
    inUserNamespace: userns,
    rootlesskitStateDir: process.env.ROOTLESSKIT_STATE_DIR ?? null,
    cgroupV2,
    cgroupControllers: controllers,
    missingControllers: missing,
    warnings,
  };
}

async function executable(file: string): Promise<boolean> {
  return access(file, constants.X_OK).then(
    () => true,
    () => false,
  );
}

async function findInPath(binary: string): Promise<string | null> {
  if (binary.includes('/')) return (await executable(binary)) ? binary : null;
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) {
    const candidate = path.join(dir, binary);
    if (await executable(candidate)) return candidate;
  }
  return null;
}

/** RuntimeReady and NetworkReady from real checks, re-evaluated on every Status call. */
class NodeHealth implements RuntimeHealth {
  constructor(
    private readonly config: Config,
    private readonly facts: NodeFacts,
  ) {}

  async check(): Promise<{ runtime: HealthCondition; network: HealthCondition }> {
    const missing: string[] = [];
    for (const binary of [this.config.runtime.crun, this.config.runtime.conmon]) {
      if (!(await findInPath(binary))) missing.push(binary);
    }
    let runtime: HealthCondition = { ready: true };
    if (missing.length > 0) {
      runtime = {
        ready: false,
        reason: 'RuntimeBinaryMissing',
        message: `${missing.join(', ')} not found; install them (sudo apt-get install crun conmon) or set runtime.crun / runtime.conmon`,
      };
    } else if (!this.facts.inUserNamespace) {
      runtime = {
        ready: false,
        reason: 'NotInUserNamespace',
        message: 'the daemon is not inside the rootless node; start it with `rootless-cri serve`',
      };
    }
    const cni = await checkCniReady(this.config.network.cniConfDir, this.config.network.cniBinDirs);
    const network: HealthCondition = cni.ready
      ? { ready: true }
      : { ready: false, reason: cni.reason, message: cni.message };
    return { runtime, network };
  }
}

/**
 * HTTP listeners of the daemon listen on 127.0.0.1 inside the node and are published on the
 * host's 127.0.0.1 at the same port. The ids of what we published are recorded so that a
 * daemon killed with -9 removes them when it starts again.
 */
class DaemonPorts {
  private readonly file: string;
  private ids: number[] = [];

  constructor(
    runDir: string,
    private readonly ports: PortManager | null,
    private readonly logger: Logger,
  ) {
    this.file = path.join(runDir, 'daemon-ports.json');
  }

  async removeStale(): Promise<void> {
    if (!this.ports) return;
    const stale = JSON.parse(await readFile(this.file, 'utf8').catch(() => '[]')) as number[];
    for (const id of stale) {
      await this.ports
        .remove(id)
        .catch((err) => this.logger.warn({ err, id }, 'could not remove a stale published port'));
    }
    await this.save();
  }

  /** Publishes 127.0.0.1:port of the node on the host's 127.0.0.1:port. */
  async publish(port: number): Promise<void> {
    if (!this.ports) return;
    const published = await this.ports.add({
      protocol: 'tcp',
      parentIP: '127.0.0.1',
      parentPort: port,
      childIP: '127.0.0.1',
      childPort: port,
    });
    this.ids.push(published.id);
    await this.save();
  }

  async unpublishAll(): Promise<void> {
    if (!this.ports) return;
    for (const id of this.ids) await this.ports.remove(id).catch(() => undefined);
    this.ids = [];
    await this.save();
  }

  private async save(): Promise<void> {
    const tmp = `${this.file}.tmp`;
    await writeFile(tmp, JSON.stringify(this.ids), { mode: 0o600 });
    await rename(tmp, this.file);
  }
}

/**
 * Starts an HTTP listener inside the node and publishes it on the host at the same port. With
 * port 0 a free port is picked; if that number is taken on the host, another one is tried.
 */
async function startPublished(
  start: (port: number) => Promise<MetricsServer>,
  wantedPort: number,
  ports: DaemonPorts,
  logger: Logger,
): Promise<MetricsServer> {
  for (let attempt = 0; ; attempt++) {
    const server = await start(wantedPort);
    try {
      await ports.publish(server.port);
      return server;
    } catch (err) {
      await server.close();
      if (wantedPort !== 0 || attempt >= 4) throw err;
      logger.debug({ err, port: server.port }, 'port taken on the host; trying another');
    }
  }
}

export async function runDaemon(config: Config, logger: Logger): Promise<number> {
  logger.info({ version: packageVersion(), socket: config.socket }, 'rootless-cri starting');
  await mkdir(config.rootDir, { recursive: true, mode: 0o700 });
  await mkdir(config.runDir, { recursive: true, mode: 0o700 });
  if (!process.env.ROOTLESS_CRI_IN_NODE) await writePidFile(config.runDir, process.pid);

  const facts = await probeNodeFacts(logger);
  // Only in the node our supervisor made: its hostname, /etc/hosts and /var/log are ours to set.
  if (process.env.ROOTLESS_CRI_IN_NODE) {
    await prepareNodeForKubelet({ rootDir: config.rootDir, hostname: config.node.hostname, logger });
  }
  const stateDir = facts.rootlesskitStateDir;
  const portManager = stateDir ? new RootlesskitPortManager(path.join(stateDir, 'api.sock')) : null;
  if (!portManager) logger.warn('no rootlesskit API: listeners are not published on the host');
  const daemonPorts = new DaemonPorts(config.runDir, portManager, logger);
  await daemonPorts.removeStale();

  const metrics = createMetrics();
  const readiness = new ReadinessGate();
  let podCidr = config.network.podCidr;
  const runtimeInfo = createRuntimeInfoHandlers({
    health: new NodeHealth(config, facts),
    podCidr: {
      get: () => podCidr,
      set: (cidr) => {
        podCidr = cidr;
      },
    },
    statusInfo: async () => ({
      config: { ...config, podCidr },
      node: facts,
      listeners: { metrics: metricsServer ? `http://127.0.0.1:${metricsServer.port}/metrics` : null },
    }),
  });
  // Each capability is a service: its handlers, a recovery step run before the readiness gate
  // opens (RPCs answer UNAVAILABLE until then, never an empty list), and a close step.
  const services: DaemonService[] = [
    { name: 'runtime-info', handlers: runtimeInfo },
    {
      name: 'image-fs-info',
      handlers: { ImageFsInfo: createImageFsInfoHandler({ imageDir: path.join(config.rootDir, 'image') }) },
    },
  ];
  // Registries are reached from the host's network namespace when the supervisor offers it.
  const hostDialerSocket = process.env.ROOTLESS_CRI_HOST_DIALER;
  const images = createImageService({
    config,
    logger,
    ...(hostDialerSocket ? { dial: hostDialer(hostDialerSocket) } : {}),
  });
  services.push({
    name: 'images',
    handlers: images.handlers,
    recover: async () => void (await images.recover()),
    close: () => images.close(),
  });
  // The pod layer calls the container layer (Stop/RemovePodSandbox) and the container layer
  // reads the pods: the pod service gets a forwarder, bound once the container service exists.
  let containerService: ReturnType<typeof createContainerService> | null = null;
  const podSandboxes = createPodSandboxService({
    config,
    logger,
    portManager,
    containers: {
      stopAll: async (podId, timeout) => containerService?.podContainers.stopAll(podId, timeout),
      removeAll: async (podId) => containerService?.podContainers.removeAll(podId),
    },
  });
  services.push({ name: 'pod-sandboxes', ...podSandboxes });
  const layout = runtimeLayout(config);
  const ociRuntime = new CrunConmonRuntime({ ...layout, conmonLogLevel: 'error' });
  const snapshotRoot = path.join(config.rootDir, 'snapshots', config.image.snapshotter);
  const snapshotter =
    config.image.snapshotter === 'overlay'
      ? new OverlaySnapshotter({ root: snapshotRoot })
      : new FuseOverlayfsSnapshotter({ root: snapshotRoot, binary: config.image.fuseOverlayfs });
  containerService = createContainerService({
    config,
    logger,
    runtime: ociRuntime,
    sandboxes: sandboxLookupFromReader(podSandboxes.store),
    images,
    snapshotter,
    snapshotRoot,
    hostFacts: await probeHostFacts(),
    sandboxStatus: async (podId) => {
      const record = podSandboxes.store.get(podId);
      return record ? sandboxStatusOf(record) : null;
    },
  });
  services.push({
    name: 'containers',
    handlers: containerService.handlers,
    recover: () => containerService!.recover(),
    close: () => containerService!.close(),
  });
  const streaming = createDaemonStreaming({
    address: config.streaming.address,
    logger,
    containers: containerService.lookup,
    sandboxes: podSandboxes.store,
    runtime: ociRuntime,
    crun: { path: layout.crunPath, root: layout.crunRoot },
  });
  services.push({ name: 'streaming', handlers: streaming.handlers, close: () => streaming.close() });
  const server = createCriServer({
    logger,
    readiness,
    metrics: metrics.rpc,
    handlers: Object.assign({}, ...services.map((s) => s.handlers)) as CriHandlers,
  });

  let metricsServer: MetricsServer | null = null;
  if (config.metrics.enabled) {
    metricsServer = await startPublished(
      (port) =>
        startMetricsServer({ address: config.metrics.address, port, registry: metrics.registry, logger }),
      config.metrics.port,
      daemonPorts,
      logger,
    );
    logger.info({ port: metricsServer.port }, 'metrics published on 127.0.0.1 (node and host)');
  }

  // Listens on 127.0.0.1 in the node and is published on the host's 127.0.0.1 at the same port,
  // so the URLs Exec/Attach/PortForward return work from both sides.
  const streamingServer = await startPublished(
    (port) => streaming.listen(port),
    config.streaming.port,
    daemonPorts,
    logger,
  );
  logger.info({ port: streamingServer.port }, 'streaming published on 127.0.0.1 (node and host)');

  await server.listen(config.socket);
  for (const service of services) {
    const started = Date.now();
    await service.recover?.();
    logger.info({ service: service.name, ms: Date.now() - started }, 'recovered');
  }
  readiness.open();
  logger.info({ socket: config.socket }, 'rootless-cri ready');

  return new Promise((resolve) => {
    let stopping = false;
    const shutdown = async (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'rootless-cri stopping');
      try {
        await server.close(5_000);
        for (const service of [...services].reverse()) await service.close?.();
        await metricsServer?.close();
        await daemonPorts.unpublishAll();
        resolve(0);
      } catch (err) {
        logger.error({ err: describeError(err) }, 'shutdown failed');
        resolve(1);
      }
    };
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, (sig) => void shutdown(sig));
  });
}
