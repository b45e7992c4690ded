/**
 * The composition root: runs inside the node (uid 0 in its user namespace), finds the programs
 * it drives once, builds the real OS adapters (src/os/), the runtime core (src/core/) and the
 * RPC modules over it, recovers state in order (node → sandboxes → containers → images) and
 * serves CRI on the unix socket. The only place where the layers meet.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { CriHandlers } from './api/handlers.js';
import type { Config } from './config.js';
import { createContainerService } from './container/container-service.js';
import { probeHostFacts } from './container/host-facts.js';
import { RuntimeCore } from './core/runtime-core.js';
import { ReadinessGate } from './cri/edge.js';
import { createCriServer } from './cri/server.js';
import { describeError } from './errors.js';
import { FuseOverlayfsSnapshotter } from './image/fuse-overlayfs-snapshotter.js';
import { createImageFsInfoHandler } from './image/image-fs-info.js';
import { createImageService } from './image/image-service.js';
import { OverlaySnapshotter } from './image/overlay-snapshotter.js';
import type { Logger } from './log.js';
import { addStateCollectors, createMetrics } from './metrics.js';
import { NodeCgroupManager } from './os/cgroup-manager.js';
import { CniNetwork } from './os/cni-network.js';
import { CniTemplateInstaller } from './os/cni-template.js';
import { useCrunScratchDir } from './os/crun-scratch.js';
import { hostDialer } from './os/host-dialer.js';
import { type MetricsServer, startMetricsServer } from './os/metrics-server.js';
import { readNodeIdentity } from './os/node-identity.js';
import { CrunConmonRuntime } from './os/oci-runtime.js';
import { IptablesPodEgress } from './os/pod-egress.js';
import { readNodeIdMaps, releaseStalePodViews } from './os/pod-user-namespace.js';
import { RootlesskitPortManager } from './os/port-manager.js';
import { observeRuns } from './os/process-runner.js';
import { Programs } from './os/programs.js';
import { useRunServer } from './os/run-server.js';
import { probeRuntimeHandler } from './os/runtime-features.js';
import { NodeSandboxOs } from './os/sandbox-os.js';
import { createPodSandboxService } from './podsandbox/index.js';
import { ipcHostListeners, supervisorDialer } from './rootless/host-listeners.js';
import { HostPortForwarder } from './rootless/host-port-forwarder.js';
import { inUserNamespace } from './rootless/node.js';
import { prepareNodeForKubelet } from './rootless/node-setup.js';
import { ListenerPublisher, startPublished } from './rootless/published-listeners.js';
import { writePidFile } from './rootless/supervisor.js';
import {
  delegateControllersToPods,
  NodeHealth,
  probeNodeFacts,
  uplinkPresent,
} from './runtime-info/node-health.js';
import { createRuntimeInfoHandlers } from './runtime-info/runtime-info.js';
import { createDaemonStreaming } from './streaming/streaming-wiring.js';
import { packageVersion } from './version.js';

export type { NodeFacts } from './runtime-info/node-health.js';

export async function runDaemon(config: Config, logger: Logger): Promise<number> {
  logger.info({ version: packageVersion(), socket: config.socket }, 'rootless-cri starting');
  await mkdir(config.rootDir, { recursive: true, mode: 0o700 });
  await mkdir(config.runDir, { recursive: true, mode: 0o700 });
  if (!process.env.ROOTLESS_CRI_IN_NODE) await writePidFile(config.runDir, process.pid);
  // Before any crun runs: its temporary files go to a directory of ours (os/crun-scratch.ts).
  await useCrunScratchDir(config.runDir);

  // Run-to-completion programs are forked by a small native server, not by this process
  // (os/run-server.ts).
  const runServer = useRunServer(logger.child({ component: 'run-server' }));

  // ---- the node and its programs, probed once -------------------------------------------
  const programs = Programs.find({
    crun: config.runtime.crun,
    conmon: config.runtime.conmon,
    catatonit: config.node.catatonit,
    nsenter: config.node.nsenter,
    'fuse-overlayfs': config.image.fuseOverlayfs,
    rootlesskit: config.node.rootlesskit,
    slirp4netns: config.node.slirp4netns,
  });
  for (const p of programs.report()) {
    if (!p.path) logger.warn({ program: p.role, configured: p.configured }, 'program not found');
  }
  const failedControllers = await delegateControllersToPods();
  const cgroups = await NodeCgroupManager.open();
  const facts = await probeNodeFacts(cgroups, await inUserNamespace(), logger);
  if (failedControllers.length > 0) {
    facts.warnings.push(`could not enable cgroup controllers ${failedControllers.join(', ')} for pods`);
  }
  // Only in the node our supervisor made: its hostname, /etc/hosts and /var/log are ours to set.
  if (process.env.ROOTLESS_CRI_IN_NODE) {
    await prepareNodeForKubelet({ rootDir: config.rootDir, hostname: config.node.hostname, logger });
  }
  const stateDir = facts.rootlesskitStateDir;
  const portManager = stateDir ? new RootlesskitPortManager(path.join(stateDir, 'api.sock')) : null;
  const metrics = createMetrics();
  observeRuns(metrics.helpers);
  const hostListeners = ipcHostListeners(logger);
  // The daemon's own listeners on the host: handed over by the supervisor, or rootlesskit's
  // port driver (see src/rootless/published-listeners.ts).
  const publisher = new ListenerPublisher({
    runDir: config.runDir,
    source: hostListeners,
    ports: portManager,
    mode: config.node.publishListeners,
    logger,
    metrics: metrics.registry,
  });
  await publisher.removeStale();

  // ---- OS adapters -------------------------------------------------------------------------
  const ociRuntime = new CrunConmonRuntime({
    conmonPath: programs.path('conmon'),
    crunPath: programs.path('crun'),
    crunRoot: config.runtime.crunRoot,
    stateDir: path.join(config.runDir, 'containers'),
    exitDir: path.join(config.runDir, 'exits'),
    socketDir: path.join(config.runDir, 's'),
    logger: logger.child({ component: 'oci-runtime' }),
    conmonLogLevel: 'error',
  });
  const sandboxOs = new NodeSandboxOs({
    catatonit: programs.path('catatonit'),
    nsenter: programs.path('nsenter'),
    unshare: programs.path('unshare'),
    umount: programs.path('umount'),
  });
  const snapshotRoot = path.join(config.rootDir, 'snapshots', config.image.snapshotter);
  const snapshotter =
    config.image.snapshotter === 'overlay'
      ? new OverlaySnapshotter({ root: snapshotRoot })
      : new FuseOverlayfsSnapshotter({ root: snapshotRoot, binary: programs.path('fuse-overlayfs') });

  // ---- images, the core, and the RPC modules over it ------------------------------------
  // Registries are reached from the host's network namespace when the supervisor offers it.
  // Connections come over the supervisor's channel (handed over connected); the dialer socket
  // relays the rest (host names) and serves a daemon without a channel.
  const hostDialerSocket = process.env.ROOTLESS_CRI_HOST_DIALER;
  const socketDialer = hostDialerSocket ? hostDialer(hostDialerSocket) : null;
  const dial = hostListeners ? supervisorDialer(hostListeners, socketDialer) : socketDialer;
  const images = createImageService({
    config,
    logger,
    ...(dial ? { dial } : {}),
    metrics: metrics.imagePulls,
  });
  const node = await readNodeIdentity();
  logger.info({ node }, 'joined the node');
  const core = new RuntimeCore({
    nodeId: node.id,
    rootDir: config.rootDir,
    runtime: ociRuntime,
    cgroups,
    sandboxOs,
    images,
    snapshotter,
    logger,
    observer: {
      containerStarted: () => metrics.containers.started(),
      containerExited: (record) => metrics.containers.exited(record.reason),
    },
    // NRI (issue 17): plugins on config.nri.socketPath, consulted by the core and the RPCs.
    nri: config.nri.enable
      ? {
          socketPath: config.nri.socketPath,
          registrationTimeoutMs: config.nri.pluginRegistrationTimeoutMs,
          requestTimeoutMs: config.nri.pluginRequestTimeoutMs,
        }
      : null,
  });
  // Pods' TCP host ports: forwarded by the daemon (src/rootless/host-port-forwarder.ts).
  const hostPorts =
    config.node.hostPorts === 'handoff' && hostListeners
      ? new HostPortForwarder({
          source: hostListeners,
          fallback: portManager,
          runDir: config.runDir,
          nodeId: node.id,
          logger,
        })
      : null;
  await hostPorts?.open();
  // Recursive read-only mounts and pod user namespaces: what this crun, kernel and node allow.
  const nodeIdMaps = await readNodeIdMaps();
  const handler = await probeRuntimeHandler({
    crun: programs.path('crun'),
    crunRoot: config.runtime.crunRoot,
    node: nodeIdMaps,
    snapshotter: config.image.snapshotter,
  });
  logger.info({ handler }, 'runtime handler features probed');
  if (handler.userNamespaces === null) {
    await releaseStalePodViews().catch((err: unknown) =>
      logger.warn({ err }, 'cannot release stale pod views'),
    );
  }
  // Pods' egress: one masquerade rule per pod subnet, made when the node's CNI config is first
  // read (just below, and again whenever it changes), not per pod (src/os/pod-egress.ts).
  const network = new CniNetwork({
    confDir: config.network.cniConfDir,
    binDirs: config.network.cniBinDirs,
    ipamDataDir: config.network.ipamDataDir,
    logger,
    // In a rootlesskit node the uplink is slirp4netns' tap0, also while it is being restarted.
    egress: new IptablesPodEgress({ logger, ...(stateDir ? { uplink: 'tap0' } : {}) }),
  });
  await network
    .loadConfig()
    .catch((err: unknown) => logger.info({ err: describeError(err) }, 'the pod network is not ready yet'));
  const pods = createPodSandboxService({
    core,
    config,
    logger,
    network,
    portManager: hostPorts ?? portManager,
    os: sandboxOs,
    userNamespaces: { node: nodeIdMaps, unavailable: handler.userNamespaces },
  });
  const containers = createContainerService({
    core,
    logger,
    hostFacts: await probeHostFacts({
      controllers: cgroups.controllers,
      cgroupV2: cgroups.available,
      recursiveReadOnlyMounts: handler.recursiveReadOnlyMounts === null,
    }),
    writableLayerRoot: snapshotRoot,
    adjusters: core.nri.enabled ? [core.nri.specAdjuster()] : [],
  });
  const streaming = createDaemonStreaming({
    address: config.streaming.address,
    logger,
    targets: { exec: containers.exec, attach: containers.attach, portForward: pods.portForward },
    serverOptions: { connectionLimits: config.streaming.connectionLimits, metrics: metrics.operations },
  });

  const readiness = new ReadinessGate();
  let podCidr = config.network.podCidr;
  // A node of a cluster: the CNI config follows the pod CIDR kubelet hands over.
  const cniTemplate = config.network.cniConfTemplate
    ? new CniTemplateInstaller({
        template: config.network.cniConfTemplate,
        confDir: config.network.cniConfDir,
      })
    : null;
  let metricsServer: MetricsServer | null = null;
  const health = new NodeHealth(config, facts, programs);
  const runtimeInfo = createRuntimeInfoHandlers({
    health,
    handlerFeatures: {
      recursiveReadOnlyMounts: handler.recursiveReadOnlyMounts === null,
      userNamespaces: handler.userNamespaces === null,
    },
    podCidr: {
      get: () => podCidr,
      set: async (cidr) => {
        if (cniTemplate) {
          const file = await cniTemplate.install(cidr);
          logger.info({ podCIDR: cidr, file }, 'CNI config written from network.cni_conf_template');
          // The new subnet's masquerade rule, before kubelet starts the first pod in it.
          await network
            .loadConfig()
            .catch((err: unknown) =>
              logger.warn({ err: describeError(err) }, 'the new CNI config cannot be used yet'),
            );
        }
        podCidr = cidr;
      },
    },
    statusInfo: async () => ({
      config: { ...config, podCidr },
      node: { ...facts, identity: node },
      programs: programs.report(),
      runtimeHandler: handler,
      recovery: core.recovery,
      events: { subscribers: core.events.subscribers, dropped: core.events.dropped },
      listeners: {
        metrics: metricsServer ? `http://127.0.0.1:${metricsServer.port}/metrics` : null,
        published: publisher.status(),
        streamingConnections: streaming.service?.connectionStats() ?? null,
        hostPorts: hostPorts?.stats() ?? { via: 'port-driver' },
      },
      quarantine: { images: images.quarantined() },
      nri: core.nri.status(),
    }),
  });
  const handlers: CriHandlers = {
    ...runtimeInfo,
    ImageFsInfo: createImageFsInfoHandler({ imageDir: path.join(config.rootDir, 'image'), logger }),
    ...images.handlers,
    ...pods.handlers,
    ...containers.handlers,
    ...streaming.handlers,
  };
  const server = createCriServer({ logger, readiness, metrics: metrics.rpc, handlers });
  addStateCollectors(metrics.registry, {
    podStates: () => core.sandboxes.list().map((r) => r.state),
    containerStates: () => core.containers.list().map((r) => r.state),
    eventSubscribersDropped: () => core.events.dropped,
    conditions: async () => {
      const { runtime, network } = await health.check();
      return { runtime: runtime.ready, network: network.ready };
    },
    ...(stateDir ? { uplinkUp: uplinkPresent } : {}),
    ...(portManager ? { rootlesskitUp: () => portManager.list().then(() => true) } : {}),
    listeners: () => publisher.status(),
    recovery: () =>
      core.recovery && {
        durationSeconds: core.recovery.durationMs / 1000,
        problems: core.recovery.problems.length,
      },
    quarantined: () => ({
      images: images.quarantined().length,
      sandboxRecords: core.recovery?.sandboxes?.problems.length ?? 0,
      containerRecords: core.recovery?.containers?.movedAside ?? 0,
    }),
  });

  if (config.metrics.enabled) {
    metricsServer = await startPublished(
      'metrics',
      (port) =>
        startMetricsServer({
          address: config.metrics.address,
          port,
          registry: metrics.registry,
          logger,
          connectionLimits: config.streaming.connectionLimits,
        }),
      config.metrics.port,
      publisher,
      logger,
    );
    logger.info({ port: metricsServer.port }, 'metrics published on 127.0.0.1 (node and host)');
  }
  // Listens on 127.0.0.1 in the node and is published on the host's 127.0.0.1 at the same port,
  // so the URLs Exec/Attach/PortForward return work from both sides.
  const streamingServer = await startPublished(
    'streaming',
    (port) => streaming.listen(port),
    config.streaming.port,
    publisher,
    logger,
  );
  logger.info({ port: streamingServer.port }, 'streaming published on 127.0.0.1 (node and host)');

  await server.listen(config.socket);
  // Until recovery is done every RPC answers UNAVAILABLE, never an empty list. One bad object
  // never stops it (it is reported); if recovery itself cannot finish, the daemon says why and
  // exits non-zero rather than answering UNAVAILABLE forever.
  let recovery: Awaited<ReturnType<RuntimeCore['recover']>>;
  try {
    recovery = await core.recover();
  } catch (err) {
    logger.error({ err: describeError(err) }, 'recovery failed; the daemon cannot serve and exits');
    await server.close(1_000).catch(() => undefined);
    await publisher.close().catch(() => undefined);
    await hostPorts?.close().catch(() => undefined);
    await streaming.close().catch(() => undefined);
    await metricsServer?.close().catch(() => undefined);
    return 2;
  }
  logger.info(
    {
      ms: Math.round(recovery.durationMs),
      sandboxes: recovery.sandboxes && { loaded: recovery.sandboxes.loaded, ready: recovery.sandboxes.ready },
      containers: recovery.containers && {
        loaded: recovery.containers.loaded,
        running: recovery.containers.running,
        exitedWhileDown: recovery.containers.exitedWhileDown,
        monitorDied: recovery.containers.monitorDied,
        rolledBack: recovery.containers.rolledBack,
      },
      problems: recovery.problems,
    },
    'recovered',
  );
  // NRI plugins synchronize with what recovery found, so the socket opens only now.
  try {
    await core.nri.start();
  } catch (err) {
    logger.error({ err: describeError(err) }, 'the NRI socket cannot be opened; the daemon exits');
    await server.close(1_000).catch(() => undefined);
    await publisher.close().catch(() => undefined);
    await streaming.close().catch(() => undefined);
    await metricsServer?.close().catch(() => undefined);
    await core.close().catch(() => undefined);
    return 2;
  }
  readiness.open();
  logger.info({ socket: config.socket, nri: core.nri.enabled }, 'rootless-cri ready');

  return new Promise((resolve) => {
    let stopping = false;
    const shutdown = async (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'rootless-cri stopping');
      try {
        await server.close(5_000);
        await publisher.close();
        // Pods' host ports close with the daemon; the next one opens them again.
        await hostPorts?.close();
        await streaming.close();
        await images.close();
        await core.nri.stop();
        // Pods and containers keep running: conmon and the infra processes outlive the daemon.
        await core.close();
        await metricsServer?.close();
        await runServer?.close();
        resolve(0);
      } catch (err) {
        logger.error({ err: describeError(err) }, 'shutdown failed');
        resolve(1);
      }
    };
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, (sig) => void shutdown(sig));
    // The supervisor and the daemon are one unit: when the supervisor goes (even kill -9), its
    // channel closes and the daemon follows, so no orphan serves without a host dialer and a
    // new `serve` finds the way clear.
    if (process.channel) {
      process.on('disconnect', () => {
        logger.warn('the supervisor is gone; stopping');
        void shutdown('SIGTERM');
      });
    }
  });
}
