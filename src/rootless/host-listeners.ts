/**
 * Host listeners handed to the daemon (issue 12 item 1, catalogue row 47).
 *
 * Why not rootlesskit's builtin port driver for the daemon's own listeners (streaming,
 * /metrics)? Read in rootlesskit v1.1.0 (Debian 12) and still so upstream:
 * pkg/port/builtin/parent/tcp/tcp.go runs `for { c, err := ln.Accept(); if err != nil {
 * close(newConns); return } ... }` and then closes the listener: the first EMFILE ends the
 * port for good, while ListPorts keeps listing it. Every connection costs the parent two
 * fds (the accepted one and the one the child dials and passes back) for as long as the
 * client keeps it open (bicopy has no timeout), and the Go runtime already raised its soft
 * nofile to the hard limit, so raising limits only moves the number of connections another
 * local user needs (about 7,300 at 20,000 fds). Whatever the daemon does with the
 * connection, the parent's fds stay held by the client.
 *
 * So the supervisor, which lives in the host's namespaces, binds the host's
 * 127.0.0.1:<port> itself and hands the listening socket to the daemon over the IPC
 * channel it started the daemon with (Node passes the fd with SCM_RIGHTS; it survives
 * nsenter's exec). The daemon then accepts host connections itself, in Node, where an
 * accept EMFILE is an 'error' event and libuv keeps listening, and puts each one through
 * the same connection limits as its node-side listener (connection-guard.ts). A flood
 * costs the daemon a bounded number of fds, costs rootlesskit none, and pods' host ports
 * (still rootlesskit's) are untouched by it.
 *
 *   daemon → supervisor  {type:'rcri:listen', id, host, port}
 *   supervisor → daemon  {type:'rcri:listener', id, port} + the listening socket
 *                        {type:'rcri:listener-error', id, code, message}
 *                        {type:'rcri:connection', id} + a socket the supervisor accepted
 *                        before it closed its copy of the listener (rare)
 */

import net from 'node:net';
import type { Logger } from '../log.js';
import type { ChildProcess } from '../os/process-runner.js';

export interface ListenRequest {
  type: 'rcri:listen';
  id: number;
  host: string;
  port: number;
}

export type ListenAnswer =
  | { type: 'rcri:listener'; id: number; port: number }
  | { type: 'rcri:listener-error'; id: number; code: string; message: string }
  | { type: 'rcri:connection'; id: number };

function isListenRequest(message: unknown): message is ListenRequest {
  const m = message as Partial<ListenRequest> | null;
  return (
    typeof m === 'object' &&
    m !== null &&
    m.type === 'rcri:listen' &&
    Number.isSafeInteger(m.id) &&
    typeof m.host === 'string' &&
    Number.isInteger(m.port) &&
    m.port! >= 0 &&
    m.port! <= 65535
  );
}

/**
 * Supervisor side: answers the daemon's listen requests on `child`'s IPC channel. The daemon's
 * own listeners ask for 127.0.0.1; pods' TCP host ports (host-port-forwarder.ts) for the
 * address of their port mapping, which rootlesskit's driver would have bound the same way.
 * IP literals only.
 */
export function serveHostListeners(child: ChildProcess, logger: Logger): void {
  child.on('message', (message: unknown) => {
    if (!isListenRequest(message)) return;
    const { id, host, port } = message;
    const fail = (code: string, why: string) => {
      if (child.connected)
        child.send({ type: 'rcri:listener-error', id, code, message: why } satisfies ListenAnswer);
    };
    if (net.isIP(host) === 0) {
      fail('EINVAL', `the supervisor binds IP addresses only, not ${JSON.stringify(host)}`);
      return;
    }
    // Paused: a connection this process accepts before it closes its copy of the listener
    // is passed on unread.
    const server = net.createServer({ pauseOnConnect: true });
    server.on('connection', (socket) => {
      if (child.connected) child.send({ type: 'rcri:connection', id } satisfies ListenAnswer, socket);
      else socket.destroy();
    });
    server.once('error', (err: NodeJS.ErrnoException) => {
      fail(err.code ?? 'EIO', err.message);
      server.close();
    });
    server.listen({ host, port, exclusive: true }, () => {
      const bound = (server.address() as net.AddressInfo).port;
      if (!child.connected) {
        server.close();
        return;
      }
      child.send({ type: 'rcri:listener', id, port: bound } satisfies ListenAnswer, server, (err) => {
        // The daemon holds the socket now; this process's copy goes.
        server.close();
        if (err) logger.warn({ err, port: bound }, 'could not hand a host listener to the daemon');
        else logger.debug({ port: bound }, 'handed a host listener to the daemon');
      });
    });
  });
}

/** Daemon side: where host listeners come from. */
export interface HostListenerSource {
  /** A listening socket on the host's `host:port`; rejects with the bind error's code. */
  open(host: string, port: number): Promise<net.Server>;
}

export class HostListenError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The daemon's side of the channel, when its supervisor started it with one (`process.send`
 * exists); null otherwise (a daemon in namespaces someone else made).
 */
export function ipcHostListeners(logger: Logger): HostListenerSource | null {
  if (typeof process.send !== 'function' || process.channel === undefined) return null;
  // The channel must not keep the daemon alive on its own, except while an answer is awaited
  // (a daemon that starts by opening its pods' host ports again has nothing else to wait on).
  process.channel.unref();
  let nextId = 1;
  const pending = new Map<number, { resolve: (s: net.Server) => void; reject: (e: Error) => void }>();
  const settled = (id: number) => {
    pending.delete(id);
    if (pending.size === 0) process.channel?.unref();
  };
  const servers = new Map<number, net.Server>();
  process.on('message', (message: ListenAnswer, handle: unknown) => {
    if (typeof message !== 'object' || message === null) return;
    if (message.type === 'rcri:connection') {
      // Accepted by the supervisor in the moment before it let go of the listener.
      const server = servers.get(message.id);
      if (server && handle instanceof net.Socket) server.emit('connection', handle);
      else if (handle instanceof net.Socket) handle.destroy();
      return;
    }
    const waiter = pending.get(message.id);
    if (waiter === undefined) return;
    settled(message.id);
    if (message.type === 'rcri:listener' && handle instanceof net.Server) {
      servers.set(message.id, handle);
      handle.once('close', () => servers.delete(message.id));
      waiter.resolve(handle);
    } else if (message.type === 'rcri:listener-error') {
      waiter.reject(new HostListenError(message.code, message.message));
    } else {
      waiter.reject(new HostListenError('EIO', 'the supervisor answered without a listener'));
    }
  });
  process.on('disconnect', () => {
    logger.warn('the supervisor closed its channel: host listeners can no longer be (re)opened');
    for (const waiter of pending.values())
      waiter.reject(new HostListenError('EPIPE', 'the supervisor is gone'));
    pending.clear();
  });
  return {
    open(host, port) {
      return new Promise<net.Server>((resolve, reject) => {
        if (!process.connected || typeof process.send !== 'function') {
          reject(new HostListenError('EPIPE', 'the supervisor is gone'));
          return;
        }
        const id = nextId++;
        pending.set(id, { resolve, reject });
        process.channel?.ref();
        process.send(
          { type: 'rcri:listen', id, host, port } satisfies ListenRequest,
          undefined,
          {},
          (err) => {
            if (!err) return;
            settled(id);
            reject(
              new HostListenError('EPIPE', `cannot ask the supervisor for a host listener: ${err.message}`),
            );
          },
        );
      });
    },
  };
}
