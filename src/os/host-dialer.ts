/**
 * Outbound TCP from the host's network namespace, for the daemon inside the node.
 *
 * The daemon lives in the node's network namespace, whose loopback is not the host's (and
 * rootlesskit's --disable-host-loopback keeps 10.0.2.2 closed, so pods cannot reach host
 * services). Registry traffic, though, belongs to the host: "127.0.0.1:5000" in an image name
 * means the operator's registry on the host, as it does for containerd's rootless
 * detach-netns mode. The supervisor (native/node-supervisor.c), which stays in the host
 * namespaces, serves a unix socket (a path socket, so the daemon reaches it from any netns;
 * mode 0600 in the 0700 run dir); the daemon asks it for connections:
 *
 *   client -> "CONNECT <host> <port>\n"     host: an IP literal or a DNS name
 *   server -> "OK\n" then raw bytes both ways, or "ERR <message>\n" and close
 */
import net from 'node:net';
import { UnavailableError } from '../errors.js';

const HANDSHAKE_TIMEOUT_MS = 10_000;

export type Dialer = (host: string, port: number, signal?: AbortSignal) => Promise<net.Socket>;

/** A Dialer that opens connections from the host's network namespace through `socketPath`. */
export function hostDialer(socketPath: string): Dialer {
  return (host, port, signal) =>
    new Promise((resolve, reject) => {
      const socket = net.connect(socketPath);
      let buffered = Buffer.alloc(0);
      const fail = (err: Error) => {
        socket.destroy();
        reject(err);
      };
      const onAbort = () => fail(new UnavailableError(`connection to ${host}:${port} cancelled`));
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.setTimeout(HANDSHAKE_TIMEOUT_MS, () =>
        fail(new UnavailableError(`cannot reach ${host}:${port}: the host dialer did not answer`)),
      );
      socket.once('error', (err) =>
        fail(new UnavailableError(`cannot reach ${host}:${port} through the host dialer: ${err.message}`)),
      );
      socket.once('connect', () =>
        socket.write(`CONNECT ${host.includes(':') ? `[${host}]` : host} ${port}\n`),
      );
      const onData = (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        const newline = buffered.indexOf(0x0a);
        if (newline < 0) return;
        socket.off('data', onData);
        socket.pause();
        signal?.removeEventListener('abort', onAbort);
        socket.setTimeout(0);
        const answer = buffered.subarray(0, newline).toString('utf8');
        const rest = buffered.subarray(newline + 1);
        if (answer !== 'OK') {
          fail(new UnavailableError(`cannot reach ${host}:${port}: ${answer.replace(/^ERR /, '')}`));
          return;
        }
        if (rest.length > 0) socket.unshift(rest);
        socket.removeAllListeners('error');
        // Back to flowing for the consumer. The server sends nothing before the client's first
        // bytes (HTTP, TLS), so nothing can be emitted before the consumer listens.
        socket.resume();
        resolve(socket);
      };
      socket.on('data', onData);
    });
}
