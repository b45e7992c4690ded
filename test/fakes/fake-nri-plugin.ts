/**
 * A scriptable NRI plugin in TypeScript, speaking the wire protocol through the module's own
 * mux and ttrpc pieces with the roles reversed (it serves the Plugin service on connection
 * 1 and calls the Runtime service on connection 2). Unit tests use it where they need to
 * misbehave in ways the Go stub cannot (blocked Synchronize, garbage answers, no
 * registration); the Go stub checks interoperability in test/integration/nri-plugin.test.ts.
 */
import { connect, type Socket } from 'node:net';
import {
  ConfigureRequest,
  ConfigureResponse,
  ContainerRequest,
  CreateContainerResponse,
  Empty,
  PLUGIN_SERVICE,
  PodRequest,
  RegisterPluginRequest,
  RUNTIME_SERVICE,
  StateChangeEvent,
  StopContainerResponse,
  SynchronizeRequest,
  SynchronizeResponse,
  UpdateContainerRequest,
  UpdateContainerResponse,
  UpdateContainersRequest,
  UpdateContainersResponse,
  UpdatePodSandboxRequest,
} from '../../src/nri/api.js';
import { NriMux, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN } from '../../src/nri/mux.js';
import { decodeMessage, encodeMessage, type MessageSchema } from '../../src/nri/protobuf.js';
import {
  StatusCode,
  TtrpcClient,
  TtrpcError,
  TtrpcFrameParser,
  type TtrpcHandler,
  TtrpcServer,
} from '../../src/nri/ttrpc.js';

const REQUESTS: Record<string, [MessageSchema<unknown>, MessageSchema<unknown>]> = {
  Configure: [ConfigureRequest, ConfigureResponse],
  Synchronize: [SynchronizeRequest, SynchronizeResponse],
  Shutdown: [Empty, Empty],
  RunPodSandbox: [PodRequest, Empty],
  UpdatePodSandbox: [UpdatePodSandboxRequest, Empty],
  PostUpdatePodSandbox: [PodRequest, Empty],
  StopPodSandbox: [PodRequest, Empty],
  RemovePodSandbox: [PodRequest, Empty],
  CreateContainer: [ContainerRequest, CreateContainerResponse],
  PostCreateContainer: [ContainerRequest, Empty],
  StartContainer: [ContainerRequest, Empty],
  PostStartContainer: [ContainerRequest, Empty],
  UpdateContainer: [UpdateContainerRequest, UpdateContainerResponse],
  PostUpdateContainer: [ContainerRequest, Empty],
  StopContainer: [ContainerRequest, StopContainerResponse],
  RemoveContainer: [ContainerRequest, Empty],
  StateChange: [StateChangeEvent, Empty],
};

// biome-ignore lint/suspicious/noExplicitAny: requests and answers of many message types
export type FakeHandler = (request: any) => Promise<unknown> | unknown;

export interface FakeCall {
  method: string;
  // biome-ignore lint/suspicious/noExplicitAny: decoded request of the method's type
  request: any;
}

export class FakeNriPlugin {
  readonly calls: FakeCall[] = [];
  /** Raw handlers (bytes in, bytes out) take precedence, for garbage answers. */
  readonly raw = new Map<string, TtrpcHandler>();
  readonly handlers = new Map<string, FakeHandler>();
  /** Methods answered Unimplemented, as an old plugin would. */
  readonly unimplemented = new Set<string>();
  readonly closed: Promise<Error>;
  private readonly waiters: { method: string; resolve: (call: FakeCall) => void }[] = [];
  private readonly client: TtrpcClient;
  private readonly mux: NriMux;
  readonly socket: Socket;

  private constructor(socket: Socket) {
    this.socket = socket;
    let closed!: (reason: Error) => void;
    this.closed = new Promise((resolve) => {
      closed = resolve;
    });
    this.mux = new NriMux(socket, (reason) => {
      this.client.close(reason);
      closed(reason);
    });
    this.client = new TtrpcClient((frame) => this.mux.send(RUNTIME_SERVICE_CONN, frame));
    const handlers = new Map<string, TtrpcHandler>();
    for (const [method, [requestSchema, responseSchema]] of Object.entries(REQUESTS)) {
      handlers.set(`${PLUGIN_SERVICE}/${method}`, async (payload, context) => {
        const raw = this.raw.get(method);
        if (raw) return raw(payload, context);
        if (this.unimplemented.has(method))
          throw new TtrpcError(StatusCode.Unimplemented, `method ${method}`);
        const request = decodeMessage(requestSchema, payload);
        const call = { method, request };
        this.calls.push(call);
        for (const waiter of this.waiters.filter((w) => w.method === method)) {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          waiter.resolve(call);
        }
        const answer = (await this.handlers.get(method)?.(request)) ?? {};
        return encodeMessage(responseSchema, answer);
      });
    }
    const server = new TtrpcServer((frame) => this.mux.send(PLUGIN_SERVICE_CONN, frame), handlers);
    const serverParser = new TtrpcFrameParser((e) => server.onParserEvent(e));
    const clientParser = new TtrpcFrameParser((e) => this.client.onParserEvent(e));
    this.mux.open(PLUGIN_SERVICE_CONN, (data) => serverParser.push(data));
    this.mux.open(RUNTIME_SERVICE_CONN, (data) => clientParser.push(data));
  }

  static async connect(socketPath: string): Promise<FakeNriPlugin> {
    const socket = connect(socketPath);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new FakeNriPlugin(socket);
  }

  /** Connect and register; resolves once RegisterPlugin was answered. */
  static async register(socketPath: string, name: string, idx: string, events = 0): Promise<FakeNriPlugin> {
    const plugin = await FakeNriPlugin.connect(socketPath);
    plugin.handlers.set('Configure', () => ({ events }));
    await plugin.registerAs(name, idx);
    return plugin;
  }

  async registerAs(name: string, idx: string): Promise<void> {
    await this.client.call(
      RUNTIME_SERVICE,
      'RegisterPlugin',
      encodeMessage(RegisterPluginRequest, { pluginName: name, pluginIdx: idx, nriVersion: 'v0.12.2' }),
      2000,
    );
  }

  async updateContainers(request: UpdateContainersRequest): Promise<UpdateContainersResponse> {
    const payload = await this.client.call(
      RUNTIME_SERVICE,
      'UpdateContainers',
      encodeMessage(UpdateContainersRequest, request),
      2000,
    );
    return decodeMessage(UpdateContainersResponse, payload);
  }

  /** The first call of `method` (already made or still to come). */
  waitFor(method: string): Promise<FakeCall> {
    const seen = this.calls.find((c) => c.method === method);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ method, resolve }));
  }

  methods(): string[] {
    return this.calls.map((c) => c.method);
  }

  close(): void {
    this.mux.close(new Error('fake plugin closed'));
  }
}
