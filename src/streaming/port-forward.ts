/**
 * `portforward.k8s.io` over SPDY. The client opens streams in pairs sharing a
 * `requestid` header: first an error stream (which it FINs at once), then a data stream.
 * Each pair becomes one connection to the pod's port:
 *   - data from the client goes to the socket; the client's FIN half-closes the socket;
 *   - data from the socket goes to the client; the socket's EOF FINs the data stream,
 *     then the error stream (the client waits for the error stream to end);
 *   - a failed dial writes its message on the error stream and resets the data stream.
 * A connection carries any number of pairs, in parallel.
 */
import type { Duplex } from 'node:stream';
import type { Logger } from '../log.js';
import type { SpdyConnection, SpdyStream } from './spdy-connection.js';
import { RstStatus } from './spdy-frames.js';

export const PORT_FORWARD_PROTOCOL = 'portforward.k8s.io';

/** How long the second stream of a pair may take to arrive. */
export const PAIR_TIMEOUT_MS = 30_000;

export interface PortForwardOptions {
  logger: Logger;
  /** Connects to the port inside the sandbox. */
  dial: (port: number) => Promise<Duplex>;
  pairTimeoutMs?: number;
}

interface Pair {
  error?: SpdyStream;
  data?: SpdyStream;
  timer: NodeJS.Timeout;
}

function parsePort(value: string | undefined): number | undefined {
  if (value === undefined || !/^[0-9]{1,5}$/.test(value)) return undefined;
  const port = Number(value);
  return port >= 1 && port <= 65535 ? port : undefined;
}

/** Serves port-forward pairs until the connection closes. Resolves then. */
export async function servePortForward(
  connection: SpdyConnection,
  consume: (handler: (stream: SpdyStream) => void) => void,
  options: PortForwardOptions,
): Promise<void> {
  const { logger } = options;
  const pairs = new Map<string, Pair>();
  const sockets = new Set<Duplex>();
  const pairTimeoutMs = options.pairTimeoutMs ?? PAIR_TIMEOUT_MS;

  const onStream = (stream: SpdyStream): void => {
    stream.on('error', () => {});
    const type = stream.header('streamtype');
    if (type !== 'error' && type !== 'data') {
      logger.info({ streamType: type }, 'port-forward stream of unknown type; resetting it');
      stream.reset(RstStatus.ProtocolError);
      return;
    }
    // Old clients send no requestid: the error stream of a pair is the one just before its data stream.
    const requestId = stream.header('requestid') ?? String(type === 'error' ? stream.id : stream.id - 2);
    let pair = pairs.get(requestId);
    if (!pair) {
      const timer = setTimeout(() => {
        const stale = pairs.get(requestId);
        if (!stale) return;
        pairs.delete(requestId);
        logger.info({ requestId }, 'port-forward pair incomplete after timeout; resetting it');
        stale.error?.reset();
        stale.data?.reset();
      }, pairTimeoutMs);
      timer.unref();
      pair = { timer };
      pairs.set(requestId, pair);
    }
    if (pair[type]) {
      stream.reset(RstStatus.ProtocolError);
      return;
    }
    pair[type] = stream;
    if (pair.error && pair.data) {
      clearTimeout(pair.timer);
      pairs.delete(requestId);
      void forwardPair(pair.error, pair.data);
    }
  };

  const forwardPair = async (errorStream: SpdyStream, dataStream: SpdyStream): Promise<void> => {
    // The client never writes on the error stream; drain it so its FIN is seen.
    errorStream.resume();
    const port = parsePort(dataStream.header('port'));
    if (port === undefined) {
      errorStream.end(`invalid port ${JSON.stringify(dataStream.header('port') ?? '')}: want 1-65535`);
      dataStream.reset();
      return;
    }
    let socket: Duplex;
    try {
      socket = await options.dial(port);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      logger.info({ port, err: error }, 'port-forward dial failed');
      errorStream.end(`failed to connect to localhost:${port}: ${message}`);
      dataStream.reset();
      return;
    }
    if (dataStream.destroyed || connection.isClosed) {
      socket.destroy();
      errorStream.destroy();
      return;
    }
    sockets.add(socket);
    let socketDone = false;
    const finish = (message?: string): void => {
      if (socketDone) return;
      socketDone = true;
      sockets.delete(socket);
      if (message && !errorStream.writableEnded) errorStream.write(message);
      if (!errorStream.writableEnded) errorStream.end();
    };
    socket.on('error', (error) => {
      logger.debug({ port, err: error }, 'port-forward socket error');
      socket.destroy();
      if (!dataStream.destroyed) dataStream.reset();
      finish(`error forwarding port ${port}: ${error.message}`);
    });
    // client → pod: the client's FIN half-closes the socket.
    dataStream.pipe(socket);
    // pod → client: the socket's EOF FINs the data stream, then the error stream.
    socket.on('data', (chunk: Buffer) => {
      if (dataStream.destroyed || dataStream.writableEnded) return;
      if (!dataStream.write(chunk)) {
        socket.pause();
        dataStream.once('drain', () => socket.resume());
      }
    });
    socket.on('end', () => {
      if (!dataStream.destroyed && !dataStream.writableEnded) dataStream.end();
      finish();
    });
    socket.on('close', () => finish());
    // The client resets the data stream once it has everything, or when its user hung up.
    dataStream.on('close', () => {
      if (!socket.destroyed) socket.destroy();
      finish();
    });
  };

  consume(onStream);
  await connection.closed$;
  for (const pair of pairs.values()) clearTimeout(pair.timer);
  pairs.clear();
  for (const socket of sockets) socket.destroy();
  sockets.clear();
}
