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
 * So the supervisor (native/node-supervisor.c), which lives in the host's namespaces, binds
 * the host's address itself and hands the listening socket to the daemon over the Node.js
 * IPC channel it started the daemon with (fd 3; the socket travels with SCM_RIGHTS in the
 * message shape child.send() gives a net.Server; it survives nsenter's exec). IP literals
 * only: the daemon's own listeners ask for 127.0.0.1, pods' TCP host ports
 * (host-port-forwarder.ts) for the address of their port mapping. The daemon then accepts host connections itself, in Node, where an
 * accept EMFILE is an 'error' event and libuv keeps listening, and puts each one through
 * the same connection limits as its node-side listener (connection-guard.ts). A flood
 * costs the daemon a bounded number of fds, costs rootlesskit none, and pods' host ports
 * (still rootlesskit's) are untouched by it.
 *
 *   daemon → supervisor  {type:'rcri:listen', id, host, port}
 *   supervisor → daemon  {type:'rcri:listener', id, port} + the listening socket
 *                        {type:'rcri:listener-error', id, code: errno name, message}
 */

import net from 'node:net';
import type { Logger } from '../log.js';

export interface ListenRequest {
  type: 'rcri:listen';
  id: number;
  host: string;
  port: number;
}

export type ListenAnswer =
  | { type: 'rcri:listener'; id: number; port: number }
  | { type: 'rcri:listener-error'; id: number; code: string; message: string };

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
  process.on('message', (message: ListenAnswer, handle: unknown) => {
    if (typeof message !== 'object' || message === null) return;
    const waiter = pending.get(message.id);
    if (waiter === undefined) return;
    settled(message.id);
    if (message.type === 'rcri:listener' && handle instanceof net.Server) {
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
