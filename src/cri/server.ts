/**
 * The CRI gRPC server: registers every RuntimeService and ImageService RPC of
 * the CRI API (proto/cri-api/api.proto, see src/api/proto.ts) through the edge adapter, and owns the unix socket.
 *
 * Only wiring lives here (STYLE.md habit 1): each handler sits in a module named after
 * what it does and is passed in by the composition root (src/daemon.ts). An RPC without a
 * handler still goes through the edge and answers UNIMPLEMENTED naming itself, so kubelet
 * and critest get a clear answer instead of grpc-js's generic one.
 */

import { chmod, lstat } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import type { CriHandlers, ServerStreamHandler, UnaryHandler } from '../api/handlers.js';
import { type CriDefinitions, loadCriDefinitions } from '../api/proto.js';
import { FailedPreconditionError, InternalError, UnimplementedError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RpcMetrics } from '../metrics.js';
import { preflightSocket, removeOwnSocket } from '../os/socket-file.js';
import { type EdgeOptions, type Readiness, wrapServerStream, wrapUnary } from './edge.js';

/** kubelet's CRI client accepts at most 16 MiB per message; we accept the same from it. */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export interface CriServerOptions {
  handlers: CriHandlers;
  logger: Logger;
  readiness: Readiness;
  metrics?: RpcMetrics;
  /** Defaults to loadCriDefinitions(). */
  definitions?: CriDefinitions;
}

export interface CriServer {
  readonly grpcServer: grpc.Server;
  /** The socket being served, once listen() has succeeded. */
  readonly socketPath: string | undefined;
  /** Checks the directory and any existing socket file, binds, and restricts the socket to its owner. */
  listen(socketPath: string): Promise<void>;
  /** Lets running calls finish for up to `graceMs`, then cancels them; removes the socket file. */
  close(graceMs?: number): Promise<void>;
}

export function unimplementedMessage(method: string): string {
  return `${method} is not implemented yet in rootless-cri`;
}

type AnyPlainHandler = (...args: never[]) => Promise<unknown>;

function buildImplementation(
  service: grpc.ServiceDefinition,
  handlers: Record<string, AnyPlainHandler | undefined>,
  edge: EdgeOptions,
): grpc.UntypedServiceImplementation {
  const implementation: grpc.UntypedServiceImplementation = {};
  for (const [method, definition] of Object.entries(service)) {
    const handler = handlers[method];
    if (definition.requestStream) {
      // CRI v1 has no client-streaming RPCs; a proto that grows one needs a new wrapper here.
      throw new InternalError(`${method} streams requests, which the CRI edge adapter cannot serve`);
    }
    if (definition.responseStream) {
      const streamHandler: ServerStreamHandler<unknown, unknown> =
        (handler as ServerStreamHandler<unknown, unknown> | undefined) ??
        (async () => {
          throw new UnimplementedError(unimplementedMessage(method));
        });
      implementation[method] = wrapServerStream(method, streamHandler, edge);
    } else {
      const unaryHandler: UnaryHandler<unknown, unknown> =
        (handler as UnaryHandler<unknown, unknown> | undefined) ??
        (async () => {
          throw new UnimplementedError(unimplementedMessage(method));
        });
      implementation[method] = wrapUnary(method, unaryHandler, edge);
    }
  }
  return implementation;
}

export function createCriServer(options: CriServerOptions): CriServer {
  const definitions = options.definitions ?? loadCriDefinitions();
  const { logger } = options;
  const edge: EdgeOptions = { logger, readiness: options.readiness };
  if (options.metrics !== undefined) edge.metrics = options.metrics;

  const handlers = options.handlers as Record<string, AnyPlainHandler | undefined>;
  const known = new Set([
    ...Object.keys(definitions.runtimeService),
    ...Object.keys(definitions.imageService),
  ]);
  for (const name of Object.keys(handlers)) {
    if (!known.has(name)) {
      throw new InternalError(`a handler was given for ${name}, which is not an RPC of CRI v1`);
    }
  }

  const grpcServer = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  });
  grpcServer.addService(
    definitions.runtimeService,
    buildImplementation(definitions.runtimeService, handlers, edge),
  );
  grpcServer.addService(
    definitions.imageService,
    buildImplementation(definitions.imageService, handlers, edge),
  );

  let boundPath: string | undefined;
  let boundInode: number | undefined;

  return {
    grpcServer,
    get socketPath() {
      return boundPath;
    },

    async listen(requestedPath: string): Promise<void> {
      if (boundPath !== undefined) {
        throw new InternalError(`the CRI server already listens on ${boundPath}`);
      }
      const socketPath = await preflightSocket(requestedPath, logger);
      await new Promise<void>((resolveBind, rejectBind) => {
        grpcServer.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => {
          if (err) {
            rejectBind(
              new FailedPreconditionError(`cannot listen on ${socketPath}: ${err.message}`, { cause: err }),
            );
          } else resolveBind();
        });
      });
      // The socket appears with the umask's mode; the 0700 parent owned by us keeps others
      // out until this chmod.
      await chmod(socketPath, 0o600);
      boundInode = (await lstat(socketPath)).ino;
      boundPath = socketPath;
      logger.info({ socket: socketPath }, 'CRI server listening');
    },

    async close(graceMs = 5_000): Promise<void> {
      await new Promise<void>((resolveShutdown) => {
        const timer = setTimeout(() => {
          logger.warn({ graceMs }, 'CRI calls still running after the grace period; cancelling them');
          grpcServer.forceShutdown();
          resolveShutdown();
        }, graceMs);
        grpcServer.tryShutdown(() => {
          clearTimeout(timer);
          resolveShutdown();
        });
      });
      if (boundPath !== undefined) {
        await removeOwnSocket(boundPath, boundInode, logger);
        boundPath = undefined;
      }
    },
  };
}
