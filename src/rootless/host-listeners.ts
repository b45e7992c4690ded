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
 *
 * The same channel carries the daemon's outbound connections to the host (registries): the
 * supervisor connects from the host's network namespace and hands the connected socket over,
 * so no process copies a pull's bytes (os/host-dialer.ts's socket, which relays them, stays
 * for host names other than localhost, which the supervisor does not resolve):
 *
 *   daemon → supervisor  {type:'rcri:dial', id, host, port}        host: an IP literal
 *   supervisor → daemon  {type:'rcri:dialed', id} + the connected socket
 *                        {type:'rcri:dial-error', id, code: errno name, message}
 */

import net from 'node:net';
import { UnavailableError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Dialer } from '../os/host-dialer.js';

/** As long as the supervisor's own connect may take. */
const DIAL_TIMEOUT_MS = 10_000;

export interface ListenRequest {
  type: 'rcri:listen';
  id: number;
  host: string;
  port: number;
}

export interface DialRequest {
  type: 'rcri:dial';
  id: number;
  host: string;
  port: number;
}

export type ChannelAnswer =
  | { type: 'rcri:listener'; id: number; port: number }
  | { type: 'rcri:listener-error'; id: number; code: string; message: string }
  | { type: 'rcri:dialed'; id: number }
  | { type: 'rcri:dial-error'; id: number; code: string; message: string };

/** Daemon side: where host listeners come from. */
export interface HostListenerSource {
  /** A listening socket on the host's `host:port`; rejects with the bind error's code. */
  open(host: string, port: number): Promise<net.Server>;
}

/** The supervisor's channel: host listeners, and connections made from the host's network. */
export interface SupervisorChannel extends HostListenerSource {
  /**
   * A TCP connection to `host:port` (an IP literal) made in the host's network namespace and
   * handed over connected: the daemon reads and writes it itself, no process copies the bytes.
   */
  dial(host: string, port: number, signal?: AbortSignal): Promise<net.Socket>;
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
export function ipcHostListeners(logger: Logger): SupervisorChannel | null {
  if (typeof process.send !== 'function' || process.channel === undefined) return null;
  // The channel must not keep the daemon alive on its own, except while an answer is awaited
  // (a daemon that starts by opening its pods' host ports again has nothing else to wait on).
  process.channel.unref();
  let nextId = 1;
  const pending = new Map<
    number,
    { answer: (m: ChannelAnswer, handle: unknown) => void; fail: (e: Error) => void }
  >();
  const settled = (id: number) => {
    pending.delete(id);
    if (pending.size === 0) process.channel?.unref();
  };
  process.on('message', (message: ChannelAnswer, handle: unknown) => {
    if (typeof message !== 'object' || message === null) return;
    const waiter = pending.get(message.id);
    if (waiter === undefined) {
      // An answer nobody waits for any more (a dial given up on): let its socket go.
      if (handle instanceof net.Socket) handle.destroy();
      else if (handle instanceof net.Server) handle.close();
      return;
    }
    settled(message.id);
    waiter.answer(message, handle);
  });
  process.on('disconnect', () => {
    logger.warn('the supervisor closed its channel: host listeners can no longer be (re)opened');
    for (const waiter of pending.values())
      waiter.fail(new HostListenError('EPIPE', 'the supervisor is gone'));
    pending.clear();
  });
  const ask = (request: ListenRequest | DialRequest, waiter: NonNullable<ReturnType<typeof pending.get>>) => {
    if (!process.connected || typeof process.send !== 'function') {
      waiter.fail(new HostListenError('EPIPE', 'the supervisor is gone'));
      return;
    }
    pending.set(request.id, waiter);
    process.channel?.ref();
    process.send(request, undefined, {}, (err) => {
      if (!err) return;
      settled(request.id);
      waiter.fail(new HostListenError('EPIPE', `cannot ask the supervisor: ${err.message}`));
    });
  };
  return {
    open(host, port) {
      return new Promise<net.Server>((resolve, reject) => {
        ask(
          { type: 'rcri:listen', id: nextId++, host, port },
          {
            answer: (message, handle) => {
              if (message.type === 'rcri:listener' && handle instanceof net.Server) resolve(handle);
              else if (message.type === 'rcri:listener-error')
                reject(new HostListenError(message.code, message.message));
              else reject(new HostListenError('EIO', 'the supervisor answered without a listener'));
            },
            fail: reject,
          },
        );
      });
    },
    dial(host, port, signal) {
      return new Promise<net.Socket>((resolve, reject) => {
        const id = nextId++;
        let done = false;
        const finish = (err: Error | null, socket?: net.Socket) => {
          if (done) {
            socket?.destroy();
            return;
          }
          done = true;
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          if (err) reject(err);
          else resolve(socket!);
        };
        const onAbort = () => {
          settled(id);
          finish(new UnavailableError(`connection to ${host}:${port} cancelled`));
        };
        const timer = setTimeout(() => {
          settled(id);
          finish(
            new UnavailableError(
              `cannot reach ${host}:${port}: the supervisor did not answer within ${DIAL_TIMEOUT_MS} ms`,
            ),
          );
        }, DIAL_TIMEOUT_MS);
        if (signal?.aborted) {
          onAbort();
          return;
        }
        signal?.addEventListener('abort', onAbort, { once: true });
        ask(
          { type: 'rcri:dial', id, host, port },
          {
            answer: (message, handle) => {
              if (message.type === 'rcri:dialed' && handle instanceof net.Socket) finish(null, handle);
              else if (message.type === 'rcri:dial-error')
                finish(new UnavailableError(`cannot reach ${host}:${port}: ${message.message}`));
              else
                finish(
                  new UnavailableError(
                    `cannot reach ${host}:${port}: the supervisor answered without a connection`,
                  ),
                );
            },
            fail: (err) => finish(new UnavailableError(`cannot reach ${host}:${port}: ${err.message}`)),
          },
        );
      });
    },
  };
}

/**
 * The daemon's registry dialer: IP literals and `localhost` through the channel (a connected
 * socket handed over), other names through `byName` (the supervisor's relaying dialer socket,
 * which resolves them on the host).
 */
export function supervisorDialer(channel: SupervisorChannel, byName: Dialer | null): Dialer {
  return (host, port, signal) => {
    const literal = host === 'localhost' ? '127.0.0.1' : host;
    if (net.isIP(literal) !== 0) return channel.dial(literal, port, signal);
    if (byName) return byName(host, port, signal);
    return Promise.reject(
      new UnavailableError(`cannot reach ${host}:${port}: no dialer resolves host names here`),
    );
  };
}
