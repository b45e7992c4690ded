/**
 * NriAdapter: the runtime's NRI endpoint. It listens on the NRI socket for plugins started
 * outside the runtime, registers, configures and synchronizes each, and relays the pod and
 * container lifecycle to them in plugin index order, merging their answers (merge.ts).
 *
 * The contract with plugins, as NRI defines it:
 * - registration: a plugin must call RegisterPlugin (valid name, two-digit index) within the
 *   registration timeout of connecting; it is then configured (its event mask) and
 *   synchronized with the pods and containers that exist, and only then receives events;
 * - each call to a plugin is bounded by the request timeout (Synchronize, which carries the
 *   whole state, by the registration timeout). A plugin that times out, closes its
 *   connection or answers garbage is disconnected, and the event goes on without it, as if
 *   it had not been subscribed;
 * - a plugin that *answers* with an error vetoes RunPodSandbox, CreateContainer,
 *   StartContainer, UpdatePodSandbox and UpdateContainer (the runtime fails the request and
 *   rolls back); for stop, remove and post-events its error is a warning, so tearing down
 *   never depends on a plugin;
 * - StopPodSandbox and StopContainer reach plugins once per pod/container, however often the
 *   runtime stops it (a container that exits by itself is reported when the runtime sees
 *   the exit; a later StopContainer is then not repeated).
 *
 * The runtime holds blockPluginSync() around each lifecycle change, from before the NRI call
 * that announces it until its stores show it, so a plugin that connects meanwhile either
 * finds the object in Synchronize or receives its event (sync-gate.ts).
 */
import { chmod, lstat, mkdir, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';
import { type ApplyAdjustmentOptions, applyAdjustment } from './adjust-spec.js';
import {
  ConfigureRequest,
  ConfigureResponse,
  type Container,
  type ContainerAdjustment,
  type ContainerEviction,
  ContainerRequest,
  type ContainerUpdate,
  CreateContainerResponse,
  Empty,
  NRI_API_VERSION,
  NriEvent,
  type NriEventName,
  PodRequest,
  type PodSandbox,
  RegisterPluginRequest,
  StateChangeEvent,
  StopContainerResponse,
  SynchronizeRequest,
  SynchronizeResponse,
  UpdateContainerRequest,
  UpdateContainerResponse,
  UpdateContainersRequest,
  UpdateContainersResponse,
  UpdatePodSandboxRequest,
  VALID_EVENTS_MASK,
} from './api.js';
import { fromNriResources, toNriContainer, toNriPod, toNriResources } from './convert.js';
import { CreateContainerMerge, UpdateMerge } from './merge.js';
import type { NriOciResources, NriOciSpec } from './oci-spec.js';
import { NriPlugin, PluginProtocolError } from './plugin.js';
import { decodeMessage, encodeMessage, type MessageSchema } from './protobuf.js';
import type {
  NriContainer,
  NriContainerEviction,
  NriContainerUpdate,
  NriPod,
  NriStateProvider,
} from './runtime-view.js';
import { type SyncBlock, SyncGate } from './sync-gate.js';
import {
  StatusCode,
  statusCodeName,
  TTRPC_MAX_DATA_LENGTH,
  TtrpcClosedError,
  TtrpcError,
  TtrpcProtocolError,
  TtrpcTimeoutError,
} from './ttrpc.js';

export interface NriAdapterOptions {
  /** The socket plugins connect to (created 0600 in a 0700 directory). */
  socketPath: string;
  runtimeName: string;
  runtimeVersion: string;
  /** Time from connecting to RegisterPlugin, and for Synchronize. */
  registrationTimeoutMs: number;
  /** Time for a plugin to answer any other request. */
  requestTimeoutMs: number;
  logger: Logger;
  /** Current pods and containers, for synchronizing plugins. */
  state: NriStateProvider;
  /**
   * Apply resource updates plugins ask for outside the request at hand (their answer to
   * Synchronize, and UpdateContainers calls). Resolves with the updates that failed.
   */
  updateContainers(updates: NriContainerUpdate[]): Promise<NriContainerUpdate[]>;
  /** Stop containers plugins want evicted; without it evictions are logged and dropped. */
  evictContainers?(evictions: NriContainerEviction[]): Promise<void>;
  /** Plugin-specific configuration text sent in Configure; default none. */
  pluginConfig?(plugin: { name: string; index: string }): string;
  /** CDI injection for adjustments; default none (CDI requests become warnings). */
  injectCdiDevices?: ApplyAdjustmentOptions['injectCdiDevices'];
  /** At most this many plugin connections at once (default 64). */
  maxConnections?: number;
  /** Told when a plugin becomes ready (synchronized) or is disconnected. */
  onPluginChange?(change: 'ready' | 'disconnected', plugin: NriPluginInfo): void;
}

export interface NriPluginInfo {
  name: string;
  index: string;
  events: NriEventName[];
}

export interface NriCreateContainerResult<S extends NriOciSpec> {
  /** The spec with every plugin's adjustment applied (a new object). */
  spec: S;
  /** The merged adjustment, as applied. */
  adjustment: ContainerAdjustment;
  /** Updates of other containers, for the runtime to apply after creating this one. */
  updates: NriContainerUpdate[];
  evictions: NriContainerEviction[];
  /** Plugin failures that did not fail the request and adjustments left out. */
  warnings: string[];
}

export interface NriUpdateContainerResult {
  /** The resources to give the container: the request's, as plugins adjusted them. */
  resources: NriOciResources;
  updates: NriContainerUpdate[];
  evictions: NriContainerEviction[];
  warnings: string[];
}

export interface NriStopContainerResult {
  updates: NriContainerUpdate[];
  warnings: string[];
}

interface EventRelay<Req, Resp> {
  event: number;
  method: NriEventName;
  request: MessageSchema<Req>;
  response: MessageSchema<Resp>;
  /** Plugins built against older NRI get these as StateChange when the method is unimplemented. */
  stateChangeFallback: boolean;
}

function relay<Req, Resp>(
  method: NriEventName,
  request: MessageSchema<Req>,
  response: MessageSchema<Resp>,
  stateChangeFallback: boolean,
): EventRelay<Req, Resp> {
  return { event: NriEvent[method], method, request, response, stateChangeFallback };
}

const EVENTS = {
  RunPodSandbox: relay('RunPodSandbox', PodRequest, Empty, true),
  UpdatePodSandbox: relay('UpdatePodSandbox', UpdatePodSandboxRequest, Empty, false),
  PostUpdatePodSandbox: relay('PostUpdatePodSandbox', PodRequest, Empty, true),
  StopPodSandbox: relay('StopPodSandbox', PodRequest, Empty, true),
  RemovePodSandbox: relay('RemovePodSandbox', PodRequest, Empty, true),
  CreateContainer: relay('CreateContainer', ContainerRequest, CreateContainerResponse, false),
  PostCreateContainer: relay('PostCreateContainer', ContainerRequest, Empty, true),
  StartContainer: relay('StartContainer', ContainerRequest, Empty, true),
  PostStartContainer: relay('PostStartContainer', ContainerRequest, Empty, true),
  UpdateContainer: relay('UpdateContainer', UpdateContainerRequest, UpdateContainerResponse, false),
  PostUpdateContainer: relay('PostUpdateContainer', ContainerRequest, Empty, true),
  StopContainer: relay('StopContainer', ContainerRequest, StopContainerResponse, false),
  RemoveContainer: relay('RemoveContainer', ContainerRequest, Empty, true),
};

const PLUGIN_NAME = /^[A-Za-z0-9_.+-]+$/;
const PLUGIN_INDEX = /^[0-9]{2}$/;
/** Room left for the envelope when a Synchronize has to be split. */
const SYNC_CHUNK_LIMIT = TTRPC_MAX_DATA_LENGTH - 64 * 1024;

/** Timeouts, lost connections and garbage end a plugin; an error it answers does not. */
function isFatal(err: unknown): boolean {
  return (
    err instanceof TtrpcTimeoutError ||
    err instanceof TtrpcClosedError ||
    err instanceof TtrpcProtocolError ||
    !(err instanceof TtrpcError)
  );
}

function explain(err: unknown): string {
  if (
    err instanceof TtrpcTimeoutError ||
    err instanceof TtrpcClosedError ||
    err instanceof TtrpcProtocolError
  ) {
    return err.message;
  }
  if (err instanceof TtrpcError) return `${err.message} (${statusCodeName(err.code)})`;
  return err instanceof Error ? err.message : String(err);
}

function eventNames(mask: number): NriEventName[] {
  return (Object.keys(NriEvent) as (keyof typeof NriEvent)[])
    .filter((name) => name !== 'Unknown' && name !== 'Last')
    .filter((name) => (mask & (1 << (NriEvent[name] - 1))) !== 0) as NriEventName[];
}

export class NriAdapter {
  private readonly gate = new SyncGate();
  private readonly connections = new Set<NriPlugin>();
  /** Synchronized plugins, in invocation order (index, then name). */
  private plugins: NriPlugin[] = [];
  private server: Server | undefined;
  private stopping = false;
  private readonly stoppedPods = new Set<string>();
  private readonly stoppedContainers = new Set<string>();
  private readonly log: Logger;

  constructor(private readonly options: NriAdapterOptions) {
    this.log = options.logger.child({ component: 'nri' });
  }

  // ---- lifecycle of the endpoint -----------------------------------------------------------

  /** Listen on the NRI socket. */
  async start(): Promise<void> {
    const path = this.options.socketPath;
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    try {
      const st = await lstat(path);
      if (!st.isSocket()) {
        throw new FailedPreconditionError(
          `NRI socket path ${path} exists and is not a socket; remove it or set nri.socket_path elsewhere`,
        );
      }
      await unlink(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const server = createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'NRI socket error'));
    await chmod(path, 0o600);
    this.server = server;
    this.log.info({ socket: path }, 'NRI: accepting plugin connections');
  }

  /** Tell plugins the runtime is going down, disconnect them and remove the socket. */
  async stop(): Promise<void> {
    this.stopping = true;
    const server = this.server;
    this.server = undefined;
    // close() stops accepting at once but calls back only when every connection is gone.
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    if (server) await unlink(this.options.socketPath).catch(() => {});
    const shutdownTimeout = Math.min(this.options.requestTimeoutMs, 1000);
    await Promise.all(
      this.plugins.map((plugin) =>
        plugin.call('Shutdown', Empty, {}, Empty, shutdownTimeout).catch(() => undefined),
      ),
    );
    for (const plugin of [...this.connections]) plugin.close(new Error('the runtime is shutting down'));
    this.plugins = [];
    await closed;
  }

  /** The synchronized plugins, in invocation order. */
  listPlugins(): NriPluginInfo[] {
    return this.plugins.map(pluginInfo);
  }

  /**
   * Hold off plugin synchronization while a lifecycle change is in flight: take it before
   * the NRI call that announces the change and release it once the runtime's stores show
   * the change (or the change was rolled back).
   */
  blockPluginSync(): Promise<SyncBlock> {
    return this.gate.acquireShared();
  }

  async withPluginSyncBlocked<T>(fn: () => Promise<T>): Promise<T> {
    const block = await this.blockPluginSync();
    try {
      return await fn();
    } finally {
      block.release();
    }
  }

  // ---- pod events ----------------------------------------------------------------------------

  /** Throws FailedPrecondition when a plugin rejects the pod. */
  async runPodSandbox(pod: NriPod): Promise<string[]> {
    this.stoppedPods.delete(pod.id);
    return this.relayAll(EVENTS.RunPodSandbox, { pod: toNriPod(pod) }, 'reject');
  }

  /**
   * A pod whose RunPodSandbox reached plugins but whose creation then failed (a later plugin
   * vetoed it, or a later step failed): tell plugins it stopped and went away.
   */
  async undoRunPodSandbox(pod: NriPod): Promise<string[]> {
    const stopped = await this.stopPodSandbox(pod);
    const removed = await this.removePodSandbox(pod);
    return [...stopped, ...removed];
  }

  async updatePodSandbox(
    pod: NriPod,
    overhead?: NriOciResources,
    resources?: NriOciResources,
  ): Promise<string[]> {
    return this.relayAll(
      EVENTS.UpdatePodSandbox,
      {
        pod: toNriPod(pod),
        overheadLinuxResources: toNriResources(overhead),
        linuxResources: toNriResources(resources),
      },
      'reject',
    );
  }

  async postUpdatePodSandbox(pod: NriPod): Promise<string[]> {
    return this.relayAll(EVENTS.PostUpdatePodSandbox, { pod: toNriPod(pod) }, 'warn');
  }

  /** Once per pod; plugin errors are warnings. */
  async stopPodSandbox(pod: NriPod): Promise<string[]> {
    if (this.stoppedPods.has(pod.id)) return [];
    this.stoppedPods.add(pod.id);
    return this.relayAll(EVENTS.StopPodSandbox, { pod: toNriPod(pod) }, 'warn');
  }

  async removePodSandbox(pod: NriPod): Promise<string[]> {
    this.stoppedPods.delete(pod.id);
    return this.relayAll(EVENTS.RemovePodSandbox, { pod: toNriPod(pod) }, 'warn');
  }

  // ---- container events ------------------------------------------------------------------------

  /**
   * Ask plugins for adjustments of a container about to be created from `spec`, and apply
   * them. Throws FailedPrecondition when a plugin rejects the container or two plugins
   * conflict.
   */
  async createContainer<S extends NriOciSpec>(
    pod: NriPod,
    container: NriContainer,
    spec: S,
  ): Promise<NriCreateContainerResult<S>> {
    this.stoppedContainers.delete(container.id);
    const request = { pod: toNriPod(pod), container: toNriContainer({ ...container, spec }) };
    const merge = new CreateContainerMerge(request.container as Container);
    const warnings = await this.relayAll(EVENTS.CreateContainer, request, 'reject', (plugin, answer) =>
      merge.apply(answer, plugin.id),
    );
    const merged = merge.result();
    const applied = applyAdjustment(spec, merged.adjustment, {
      injectCdiDevices: this.options.injectCdiDevices,
    });
    warnings.push(...applied.warnings);
    const updates = merged.updates.map((u) => this.updateView(u, warnings));
    const evictions = merged.evictions.map(evictionView);
    this.logWarnings(warnings, { containerId: container.id, event: 'CreateContainer' });
    return { spec: applied.spec, adjustment: merged.adjustment, updates, evictions, warnings };
  }

  async postCreateContainer(pod: NriPod, container: NriContainer): Promise<string[]> {
    return this.relayAll(EVENTS.PostCreateContainer, this.containerRequest(pod, container), 'warn');
  }

  /** Throws FailedPrecondition when a plugin rejects the start. */
  async startContainer(pod: NriPod, container: NriContainer): Promise<string[]> {
    return this.relayAll(EVENTS.StartContainer, this.containerRequest(pod, container), 'reject');
  }

  async postStartContainer(pod: NriPod, container: NriContainer): Promise<string[]> {
    return this.relayAll(EVENTS.PostStartContainer, this.containerRequest(pod, container), 'warn');
  }

  /** Throws FailedPrecondition when a plugin rejects the update or plugins conflict. */
  async updateContainer(
    pod: NriPod,
    container: NriContainer,
    resources: NriOciResources,
  ): Promise<NriUpdateContainerResult> {
    const linuxResources = toNriResources(resources) ?? {};
    const merge = new UpdateMerge({ containerId: container.id, resources: linuxResources });
    const warnings = await this.relayAll(
      EVENTS.UpdateContainer,
      { pod: toNriPod(pod), container: toNriContainer(container), linuxResources },
      'reject',
      (plugin, answer) => merge.apply(answer, plugin.id),
    );
    const merged = merge.result();
    const final = fromNriResources(merged.resources ?? {}, `resources of ${container.id}`, warnings);
    const updates = merged.updates.map((u) => this.updateView(u, warnings));
    this.logWarnings(warnings, { containerId: container.id, event: 'UpdateContainer' });
    return { resources: final, updates, evictions: merged.evictions.map(evictionView), warnings };
  }

  async postUpdateContainer(pod: NriPod, container: NriContainer): Promise<string[]> {
    return this.relayAll(EVENTS.PostUpdateContainer, this.containerRequest(pod, container), 'warn');
  }

  /** Once per container (a stop, or its exit seen by the runtime); plugin errors are warnings. */
  async stopContainer(pod: NriPod, container: NriContainer): Promise<NriStopContainerResult> {
    if (this.stoppedContainers.has(container.id)) return { updates: [], warnings: [] };
    this.stoppedContainers.add(container.id);
    const merge = new UpdateMerge();
    const dropped: string[] = [];
    const warnings = await this.relayAll(
      EVENTS.StopContainer,
      this.containerRequest(pod, container),
      'warn',
      (plugin, answer) => {
        try {
          merge.apply(answer, plugin.id);
        } catch (err) {
          dropped.push(`NRI plugin ${plugin.id}: ${(err as Error).message}; its updates are dropped`);
        }
      },
    );
    warnings.push(...dropped);
    const updates = merge.result().updates.map((u) => this.updateView(u, warnings));
    return { updates, warnings };
  }

  async removeContainer(pod: NriPod, container: NriContainer): Promise<string[]> {
    this.stoppedContainers.delete(container.id);
    return this.relayAll(EVENTS.RemoveContainer, this.containerRequest(pod, container), 'warn');
  }

  /**
   * A container whose CreateContainer reached plugins but whose creation then failed: tell
   * plugins it stopped and went away, so they can release what they set aside for it.
   */
  async undoCreateContainer(pod: NriPod, container: NriContainer): Promise<string[]> {
    const stopped = await this.stopContainer(pod, { ...container, state: 'stopped' });
    const removed = await this.removeContainer(pod, { ...container, state: 'stopped' });
    return [...stopped.warnings, ...removed];
  }

  // ---- relaying ----------------------------------------------------------------------------------

  private containerRequest(pod: NriPod, container: NriContainer) {
    return { pod: toNriPod(pod), container: toNriContainer(container) };
  }

  /**
   * Send one event to every subscribed plugin in order. `reject`: a plugin's error fails
   * the request (FailedPrecondition); `warn`: it becomes a warning. Returns the warnings.
   */
  private async relayAll<Req, Resp>(
    relay: EventRelay<Req, Resp>,
    request: Req,
    mode: 'reject' | 'warn',
    onAnswer?: (plugin: NriPlugin, answer: Resp) => void,
  ): Promise<string[]> {
    const warnings: string[] = [];
    for (const plugin of [...this.plugins]) {
      if (plugin.state !== 'ready' || !plugin.subscribed(relay.event)) continue;
      let answer: Resp;
      try {
        answer = await this.callEvent(plugin, relay, request);
      } catch (err) {
        if (isFatal(err)) {
          const message = `NRI plugin ${plugin.id} disconnected during ${relay.method}: ${explain(err)}`;
          this.disconnect(plugin, err);
          warnings.push(message);
          continue;
        }
        const message = `NRI plugin ${plugin.id} failed ${relay.method}: ${explain(err)}`;
        if (mode === 'reject') throw new FailedPreconditionError(message, { cause: err });
        this.log.warn({ plugin: plugin.id }, message);
        warnings.push(message);
        continue;
      }
      onAnswer?.(plugin, answer);
    }
    return warnings;
  }

  private async callEvent<Req, Resp>(
    plugin: NriPlugin,
    relay: EventRelay<Req, Resp>,
    request: Req,
  ): Promise<Resp> {
    const timeout = this.options.requestTimeoutMs;
    try {
      return await plugin.call(relay.method, relay.request, request, relay.response, timeout);
    } catch (err) {
      if (
        !(relay.stateChangeFallback && err instanceof TtrpcError && err.code === StatusCode.Unimplemented)
      ) {
        throw err;
      }
      const { pod, container } = request as { pod?: PodSandbox; container?: Container };
      await plugin.call(
        'StateChange',
        StateChangeEvent,
        { event: relay.event, pod, container },
        Empty,
        timeout,
      );
      return decodeMessage(relay.response, new Uint8Array(0));
    }
  }

  private updateView(update: ContainerUpdate, warnings: string[]): NriContainerUpdate {
    const updateWarnings: string[] = [];
    const id = update.containerId ?? '';
    const resources = fromNriResources(update.linux?.resources ?? {}, `update of ${id}`, updateWarnings);
    warnings.push(...updateWarnings);
    return {
      containerId: id,
      resources,
      ignoreFailure: update.ignoreFailure ?? false,
      warnings: updateWarnings,
    };
  }

  private logWarnings(warnings: string[], context: Record<string, string>): void {
    for (const warning of warnings) this.log.warn(context, warning);
  }

  // ---- plugin connections ------------------------------------------------------------------------

  private accept(socket: Socket): void {
    if (this.stopping || this.connections.size >= (this.options.maxConnections ?? 64)) {
      this.log.warn('NRI: refusing a plugin connection (shutting down or too many connections)');
      socket.destroy();
      return;
    }
    const plugin = new NriPlugin(
      socket,
      {
        registerPlugin: (p, payload) => this.onRegisterPlugin(p, payload),
        updateContainers: (p, payload) => this.onUpdateContainers(p, payload),
      },
      (level, message) => this.log[level](message),
    );
    this.connections.add(plugin);
    const timer = setTimeout(() => {
      if (plugin.state === 'connected') {
        this.disconnect(
          plugin,
          new Error(`did not register within ${this.options.registrationTimeoutMs} ms of connecting`),
        );
      }
    }, this.options.registrationTimeoutMs);
    plugin.onClose((reason) => {
      clearTimeout(timer);
      this.connections.delete(plugin);
      const wasReady = this.plugins.includes(plugin);
      this.plugins = this.plugins.filter((p) => p !== plugin);
      if (wasReady || plugin.name) {
        this.log.info({ plugin: plugin.id, reason: reason.message }, 'NRI plugin disconnected');
      }
      if (wasReady) this.options.onPluginChange?.('disconnected', pluginInfo(plugin));
    });
    this.log.debug({ plugin: plugin.id }, 'NRI: plugin connected');
  }

  private disconnect(plugin: NriPlugin, reason: unknown): void {
    const message = explain(reason);
    this.log.warn({ plugin: plugin.id, reason: message }, 'NRI: disconnecting plugin');
    plugin.close(reason instanceof Error ? reason : new Error(message));
  }

  private async onRegisterPlugin(plugin: NriPlugin, payload: Uint8Array): Promise<Uint8Array> {
    let request: RegisterPluginRequest;
    try {
      request = decodeMessage(RegisterPluginRequest, payload);
    } catch (err) {
      throw new TtrpcError(
        StatusCode.InvalidArgument,
        `undecodable RegisterPluginRequest: ${(err as Error).message}`,
      );
    }
    const name = request.pluginName ?? '';
    const index = request.pluginIdx ?? '';
    const invalid =
      plugin.state !== 'connected'
        ? 'it is already registered'
        : !PLUGIN_NAME.test(name)
          ? `invalid plugin name ${JSON.stringify(name)} (letters, digits, "_", ".", "+", "-")`
          : !PLUGIN_INDEX.test(index)
            ? `invalid plugin index ${JSON.stringify(index)} (two digits)`
            : undefined;
    if (invalid) {
      // Answer first, then hang up: the plugin learns why.
      setImmediate(() => this.disconnect(plugin, new Error(`registration refused: ${invalid}`)));
      throw new TtrpcError(StatusCode.InvalidArgument, `registration refused: ${invalid}`);
    }
    plugin.name = name;
    plugin.index = index;
    plugin.nriVersion = request.nriVersion || 'unknown';
    plugin.state = 'registered';
    this.log.info({ plugin: plugin.id, nriVersion: plugin.nriVersion }, 'NRI plugin registered');
    setImmediate(() => {
      this.configureAndSynchronize(plugin).catch((err: unknown) => this.disconnect(plugin, err));
    });
    return encodeMessage(Empty, {});
  }

  private async configureAndSynchronize(plugin: NriPlugin): Promise<void> {
    const configured = await plugin.call(
      'Configure',
      ConfigureRequest,
      {
        config: this.options.pluginConfig?.({ name: plugin.name, index: plugin.index }) ?? '',
        runtimeName: this.options.runtimeName,
        runtimeVersion: this.options.runtimeVersion,
        registrationTimeout: BigInt(this.options.registrationTimeoutMs),
        requestTimeout: BigInt(this.options.requestTimeoutMs),
        nriVersion: NRI_API_VERSION,
      },
      ConfigureResponse,
      this.options.requestTimeoutMs,
    );
    const events = configured.events ?? 0;
    if (events & ~VALID_EVENTS_MASK) {
      throw new PluginProtocolError(`subscribed to unknown events (mask 0x${events.toString(16)})`);
    }
    plugin.events = events === 0 ? VALID_EVENTS_MASK : events;
    if (events !== 0 && plugin.subscribed(NriEvent.ValidateContainerAdjustment)) {
      this.log.warn(
        { plugin: plugin.id },
        'NRI plugin subscribed to ValidateContainerAdjustment, which rootless-cri does not support: its validation is not applied',
      );
    }

    let updates: ContainerUpdate[] = [];
    const block = await this.gate.acquireExclusive();
    try {
      if (plugin.closed) return;
      const { pods, containers } = await this.options.state.listPodsAndContainers();
      updates = await this.synchronize(plugin, pods.map(toNriPod), containers.map(toNriContainer));
      if (plugin.closed) return;
      plugin.state = 'ready';
      this.plugins = [...this.plugins, plugin].sort(
        (a, b) => a.index.localeCompare(b.index) || a.name.localeCompare(b.name),
      );
    } finally {
      block.release();
    }
    this.log.info(
      { plugin: plugin.id, events: eventNames(plugin.events), order: this.plugins.map((p) => p.id) },
      'NRI plugin synchronized',
    );
    this.options.onPluginChange?.('ready', pluginInfo(plugin));
    if (updates.length > 0) {
      // The runtime failing to apply them is not the plugin's fault: log, keep the plugin.
      await this.applyPluginUpdates(plugin, updates, []).catch((err: unknown) =>
        this.log.warn(
          { plugin: plugin.id, err },
          'NRI: applying the updates a plugin asked for at Synchronize failed',
        ),
      );
    }
  }

  /** Synchronize, split into several messages (more = true) when the state is too big for one. */
  private async synchronize(
    plugin: NriPlugin,
    pods: PodSandbox[],
    containers: Container[],
  ): Promise<ContainerUpdate[]> {
    const chunks = splitSync(pods, containers);
    const timeout = this.options.registrationTimeoutMs;
    for (const [i, chunk] of chunks.entries()) {
      const more = i < chunks.length - 1;
      const answer = await plugin.call(
        'Synchronize',
        SynchronizeRequest,
        { ...chunk, more },
        SynchronizeResponse,
        timeout,
      );
      if (!more) return answer.update ?? [];
      if ((answer.update ?? []).length > 0 || answer.more !== true) {
        throw new PluginProtocolError('does not handle a Synchronize split into several messages');
      }
    }
    return [];
  }

  private async onUpdateContainers(plugin: NriPlugin, payload: Uint8Array): Promise<Uint8Array> {
    if (plugin.state !== 'ready' && plugin.state !== 'registered') {
      throw new TtrpcError(StatusCode.FailedPrecondition, 'register before asking for container updates');
    }
    let request: UpdateContainersRequest;
    try {
      request = decodeMessage(UpdateContainersRequest, payload);
    } catch (err) {
      throw new TtrpcError(
        StatusCode.InvalidArgument,
        `undecodable UpdateContainersRequest: ${(err as Error).message}`,
      );
    }
    this.log.info(
      { plugin: plugin.id, updates: request.update?.length ?? 0, evictions: request.evict?.length ?? 0 },
      'NRI plugin asked for container updates',
    );
    const failed = await this.applyPluginUpdates(plugin, request.update ?? [], request.evict ?? []);
    return encodeMessage(UpdateContainersResponse, { failed });
  }

  private async applyPluginUpdates(
    plugin: NriPlugin,
    updates: ContainerUpdate[],
    evictions: ContainerEviction[],
  ): Promise<ContainerUpdate[]> {
    const warnings: string[] = [];
    const views = updates.filter((u) => u.containerId).map((u) => this.updateView(u, warnings));
    this.logWarnings(warnings, { plugin: plugin.id });
    let failed: ContainerUpdate[] = [];
    if (views.length > 0) {
      try {
        const failedViews = await this.options.updateContainers(views);
        const failedIds = new Set(failedViews.map((v) => v.containerId));
        failed = updates.filter((u) => failedIds.has(u.containerId ?? ''));
      } catch (err) {
        throw new TtrpcError(StatusCode.Unknown, `updating containers failed: ${(err as Error).message}`);
      }
    }
    const evict = evictions
      .filter((e) => e.containerId)
      .map((e) => evictionView({ containerId: e.containerId, reason: e.reason, plugin: plugin.id }));
    if (evict.length > 0) {
      if (this.options.evictContainers) await this.options.evictContainers(evict);
      else this.log.warn({ plugin: plugin.id, evict }, 'NRI: container evictions are not supported; ignored');
    }
    return failed;
  }
}

function pluginInfo(p: NriPlugin): NriPluginInfo {
  return { name: p.name, index: p.index, events: eventNames(p.events) };
}

function evictionView(e: ContainerEviction & { plugin: string }): NriContainerEviction {
  return { containerId: e.containerId ?? '', reason: e.reason ?? '', plugin: e.plugin };
}

/** Cut the synchronization state into messages that each fit in one ttrpc message. */
export function splitSync(
  pods: PodSandbox[],
  containers: Container[],
  limit = SYNC_CHUNK_LIMIT,
): { pods: PodSandbox[]; containers: Container[] }[] {
  const chunks: { pods: PodSandbox[]; containers: Container[] }[] = [];
  let current = { pods: [] as PodSandbox[], containers: [] as Container[] };
  let size = 0;
  const add = (kind: 'pods' | 'containers', item: PodSandbox | Container, itemSize: number) => {
    if (itemSize + 16 > limit) {
      throw new InvalidArgumentError(
        `${kind === 'pods' ? 'pod' : 'container'} ${(item as { id?: string }).id} is too big (${itemSize} bytes) to send to NRI plugins`,
      );
    }
    if (size + itemSize + 16 > limit) {
      chunks.push(current);
      current = { pods: [], containers: [] };
      size = 0;
    }
    (current[kind] as (PodSandbox | Container)[]).push(item);
    size += itemSize + 16;
  };
  for (const pod of pods) add('pods', pod, encodeMessage(PodRequest, { pod }).length);
  for (const container of containers) {
    add('containers', container, encodeMessage(ContainerRequest, { container }).length);
  }
  chunks.push(current);
  return chunks;
}
