/**
 * Streaming as the composition root (src/daemon.ts) sees it: the CRI handlers of Exec,
 * Attach, PortForward and ExecSync, and the HTTP server behind the URLs, built from the
 * real targets (crun exec, conmon's attach socket, netns-dial). The server listens on
 * 127.0.0.1 inside the node; the daemon publishes that port on the host's 127.0.0.1 at the
 * same number, so the URL handed out works from both sides.
 *
 * `listen` has the shape the daemon's startPublished expects and may be called again after
 * `close` of that listener (when the port is taken on the host, another is tried).
 */

import { ConmonAttachTarget } from '../container/attach-target.js';
import { createExecSync, type StreamableContainers } from '../container/exec-sync.js';
import { ContainerExecTarget, CrunExecLauncher, type ExecLauncher } from '../container/exec-target.js';
import type { OciRuntime } from '../container/oci-runtime.js';
import type { AttachRequest } from '../cri/generated/runtime/v1/AttachRequest.js';
import type { ExecRequest } from '../cri/generated/runtime/v1/ExecRequest.js';
import type { ExecSyncRequest__Output } from '../cri/generated/runtime/v1/ExecSyncRequest.js';
import type { ExecSyncResponse } from '../cri/generated/runtime/v1/ExecSyncResponse.js';
import type { PortForwardRequest } from '../cri/generated/runtime/v1/PortForwardRequest.js';
import { UnavailableError } from '../errors.js';
import type { Logger } from '../log.js';
import { SandboxPortForwardTarget } from '../podsandbox/port-forward-target.js';
import type { SandboxReader } from '../podsandbox/sandbox-store.js';
import { createStreamingService, type StreamingService, type StreamingServiceOptions } from './server.js';
import type { AttachTarget, ExecTarget, PortForwardTarget } from './targets.js';

export interface DaemonStreamingOptions {
  /** Listen address inside the node (config streaming.address, normally 127.0.0.1). */
  address: string;
  logger: Logger;
  containers: StreamableContainers;
  sandboxes: SandboxReader;
  /** ExecSync runs through the container runtime (crun exec with caps and a timeout). */
  runtime: Pick<OciRuntime, 'exec'>;
  crun: { path: string; root: string };
  /** Replace the real targets (tests). */
  targets?: { exec?: ExecTarget; attach?: AttachTarget; portForward?: PortForwardTarget };
  execLauncher?: ExecLauncher;
  /** Passed to the streaming server (tests: short timeouts; the config: connection limits). */
  serverOptions?: Partial<
    Pick<
      StreamingServiceOptions,
      'tokenTtlMs' | 'clientCloseTimeoutMs' | 'streamCreationTimeoutMs' | 'connectionLimits'
    >
  >;
}

/** One listener of the daemon (the shape startPublished publishes on the host). */
export interface StreamingListener {
  port: number;
  address: string;
  /** Serves a connection accepted on the host's side of the published port. */
  accept(socket: import('node:net').Socket): void;
  close(): Promise<void>;
}

export interface DaemonStreaming {
  handlers: {
    Exec(request: ExecRequest): Promise<{ url: string }>;
    Attach(request: AttachRequest): Promise<{ url: string }>;
    PortForward(request: PortForwardRequest): Promise<{ url: string }>;
    ExecSync(request: ExecSyncRequest__Output): Promise<ExecSyncResponse>;
  };
  /** Starts the HTTP server on `port` (0: any free port). */
  listen(port: number): Promise<StreamingListener>;
  /** The running server, once listening. */
  readonly service: StreamingService | null;
  /** Stops the server if it runs. */
  close(): Promise<void>;
}

export function createDaemonStreaming(options: DaemonStreamingOptions): DaemonStreaming {
  const { logger, containers } = options;
  const log = logger.child({ component: 'streaming' });
  const exec =
    options.targets?.exec ??
    new ContainerExecTarget(
      containers,
      options.execLauncher ??
        new CrunExecLauncher({ crunPath: options.crun.path, crunRoot: options.crun.root, logger: log }),
    );
  const attach = options.targets?.attach ?? new ConmonAttachTarget({ containers, logger: log });
  const portForward =
    options.targets?.portForward ?? new SandboxPortForwardTarget({ sandboxes: options.sandboxes });
  let service: StreamingService | null = null;

  const running = (): StreamingService => {
    if (!service) {
      throw new UnavailableError('the streaming server is not listening yet; retry in a moment');
    }
    return service;
  };

  return {
    handlers: {
      Exec: (request) => running().handlers.exec(request),
      Attach: (request) => running().handlers.attach(request),
      PortForward: (request) => running().handlers.portForward(request),
      ExecSync: createExecSync({ containers, runtime: options.runtime }),
    },
    get service() {
      return service;
    },
    async listen(port) {
      const started = await createStreamingService({
        address: options.address,
        port,
        exec,
        attach,
        portForward,
        logger: log,
        ...options.serverOptions,
      });
      service = started;
      return {
        port: started.port,
        address: options.address,
        accept: (socket) => started.accept(socket),
        close: async () => {
          if (service === started) service = null;
          await started.close();
        },
      };
    },
    async close() {
      const current = service;
      service = null;
      await current?.close();
    },
  };
}
