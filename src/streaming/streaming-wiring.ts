/**
 * Streaming as the composition root (src/daemon.ts) sees it: the CRI handlers of Exec,
 * Attach and PortForward, and the HTTP server behind the URLs, serving the targets the
 * composition root hands in (the container layer's crun exec and conmon attach, the pod
 * layer's netns dial). The server listens on
 * 127.0.0.1 inside the node; the daemon publishes that port on the host's 127.0.0.1 at the
 * same number, so the URL handed out works from both sides.
 *
 * `listen` has the shape the daemon's startPublished expects and may be called again after
 * `close` of that listener (when the port is taken on the host, another is tried).
 */

import type { AttachRequest } from '../api/generated/runtime/v1/AttachRequest.js';
import type { ExecRequest } from '../api/generated/runtime/v1/ExecRequest.js';
import type { PortForwardRequest } from '../api/generated/runtime/v1/PortForwardRequest.js';
import type { AttachTarget, ExecTarget, PortForwardTarget } from '../core/stream-targets.js';
import { UnavailableError } from '../errors.js';
import type { Logger } from '../log.js';
import { createStreamingService, type StreamingService, type StreamingServiceOptions } from './server.js';

export interface DaemonStreamingOptions {
  /** Listen address inside the node (config streaming.address, normally 127.0.0.1). */
  address: string;
  logger: Logger;
  /** What the URLs lead to: the container layer's exec and attach, the pod layer's port-forward. */
  targets: { exec: ExecTarget; attach: AttachTarget; portForward: PortForwardTarget };
  /** Passed to the streaming server (tests: short timeouts; the config: connection limits). */
  serverOptions?: Partial<
    Pick<
      StreamingServiceOptions,
      'tokenTtlMs' | 'clientCloseTimeoutMs' | 'streamCreationTimeoutMs' | 'connectionLimits' | 'metrics'
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
  };
  /** Starts the HTTP server on `port` (0: any free port). */
  listen(port: number): Promise<StreamingListener>;
  /** The running server, once listening. */
  readonly service: StreamingService | null;
  /** Stops the server if it runs. */
  close(): Promise<void>;
}

export function createDaemonStreaming(options: DaemonStreamingOptions): DaemonStreaming {
  const log = options.logger.child({ component: 'streaming' });
  const { exec, attach, portForward } = options.targets;
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
