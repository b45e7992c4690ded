/**
 * The CRI gRPC server: registers every RuntimeService and ImageService RPC of
 * proto/api.proto through the edge adapter, and owns the unix socket.
 *
 * Only wiring lives here (STYLE.md habit 1): each handler sits in a module named after
 * what it does and is passed in by the composition root (src/daemon.ts). An RPC without a
 * handler still goes through the edge and answers UNIMPLEMENTED naming itself, so kubelet
 * and critest get a clear answer instead of grpc-js's generic one.
 */

import { chmod, lstat, mkdir, stat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, resolve } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  UnimplementedError,
} from '../errors.js';
import type { Logger } from '../log.js';
import type { RpcMetrics } from '../metrics.js';
import {
  type EdgeOptions,
  type Readiness,
  type ServerStreamHandler,
  type UnaryHandler,
  wrapServerStream,
  wrapUnary,
} from './edge.js';
import {
  type CriDefinitions,
  type ImageServiceHandlers,
  loadCriDefinitions,
  type RuntimeServiceHandlers,
} from './proto.js';

/** kubelet's CRI client accepts at most 16 MiB per message; we accept the same from it. */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/** sockaddr_un.sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

type KnownKeys<T> = keyof {
  [K in keyof T as string extends K ? never : number extends K ? never : K]: T[K];
};

/** The plain async handler type for one generated grpc-js handler type. */
type PlainHandler<H> =
  H extends grpc.handleServerStreamingCall<infer Request, infer Response>
    ? ServerStreamHandler<Request, Response>
    : H extends grpc.handleUnaryCall<infer Request, infer Response>
      ? UnaryHandler<Request, Response>
      : never;

export type RuntimeHandlers = {
  [K in KnownKeys<RuntimeServiceHandlers>]: PlainHandler<RuntimeServiceHandlers[K]>;
};
export type ImageHandlers = {
  [K in KnownKeys<ImageServiceHandlers>]: PlainHandler<ImageServiceHandlers[K]>;
};

/** Handlers by RPC name (the two services share no names); missing ones answer UNIMPLEMENTED. */
export type CriHandlers = Partial<RuntimeHandlers & ImageHandlers>;

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
      const socketPath = resolve(requestedPath);
      if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
        throw new InvalidArgumentError(
          `socket path ${socketPath} is ${Buffer.byteLength(socketPath)} bytes; unix sockets allow at most ` +
            `${MAX_SOCKET_PATH_BYTES}; choose a shorter path`,
        );
      }
      await prepareSocketDirectory(dirname(socketPath), logger);
      await clearStaleSocket(socketPath, logger);
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

async function prepareSocketDirectory(dir: string, logger: Logger): Promise<void> {
  const uid = process.getuid?.() ?? 0;
  const existing = await stat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new FailedPreconditionError(`cannot inspect the socket directory ${dir}: ${err.message}`, {
      cause: err,
    });
  });
  if (existing === undefined) {
    await mkdir(dir, { recursive: true, mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      throw new FailedPreconditionError(
        `cannot create the socket directory ${dir}: ${err.message}; create it (mode 0700, owned by uid ${uid}) ` +
          'or choose a socket path in a directory you own',
        { cause: err },
      );
    });
    // mkdir's mode passes through the umask; make the result exact.
    await chmod(dir, 0o700);
    logger.debug({ dir }, 'created the socket directory');
  }
  const info = await stat(dir);
  if (!info.isDirectory()) {
    throw new FailedPreconditionError(
      `socket directory ${dir} is not a directory; choose another socket path`,
    );
  }
  if (info.uid !== uid) {
    throw new FailedPreconditionError(
      `socket directory ${dir} is owned by uid ${info.uid}, not by uid ${uid} that runs rootless-cri; ` +
        'choose a socket path in a directory you own (the default is $XDG_RUNTIME_DIR/rootless-cri)',
    );
  }
  if ((info.mode & 0o022) !== 0) {
    const mode = (info.mode & 0o7777).toString(8).padStart(4, '0');
    throw new FailedPreconditionError(
      `socket directory ${dir} has mode ${mode}, writable by other users who could replace the socket; ` +
        `run chmod 700 ${dir}`,
    );
  }
}

/** live: something accepted a connection; stale: nothing listens on the file. */
function probeSocket(path: string, timeoutMs = 1_000): Promise<'live' | 'stale'> {
  return new Promise((resolveProbe, rejectProbe) => {
    const socket = connect(path);
    const done = (result: 'live' | 'stale' | Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (result instanceof Error) rejectProbe(result);
      else resolveProbe(result);
    };
    // A listener too busy to accept within the timeout is still a listener.
    const timer = setTimeout(() => done('live'), timeoutMs);
    socket.once('connect', () => done('live'));
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') done('stale');
      else
        done(
          new FailedPreconditionError(`cannot check whether ${path} is in use: ${err.message}`, {
            cause: err,
          }),
        );
    });
  });
}

async function clearStaleSocket(socketPath: string, logger: Logger): Promise<void> {
  const info = await lstat(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new FailedPreconditionError(`cannot inspect ${socketPath}: ${err.message}`, { cause: err });
  });
  if (info === undefined) return;
  if (!info.isSocket()) {
    throw new FailedPreconditionError(
      `${socketPath} exists and is not a socket; remove it or choose another socket path`,
    );
  }
  if ((await probeSocket(socketPath)) === 'live') {
    throw new FailedPreconditionError(
      `another rootless-cri daemon is already serving ${socketPath}; stop it (rootless-cri stop) ` +
        'or choose another socket path',
    );
  }
  logger.info({ socket: socketPath }, 'removing a stale socket file left by an earlier daemon');
  await unlink(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}

/** Removes the socket file only if it is still the one we bound (not a successor's). */
async function removeOwnSocket(path: string, inode: number | undefined, logger: Logger): Promise<void> {
  try {
    const info = await lstat(path);
    if (inode !== undefined && info.ino !== inode) return;
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      logger.warn({ err, socket: path }, 'could not remove the socket file');
    }
  }
}
