/**
 * What the streaming server needs from the layers behind it. The container layer
 * implements ExecTarget and AttachTarget (crun exec / conmon attach, with a pty from the
 * console-socket helper when tty is set); the pod layer implements PortForwardTarget
 * (dialInNetns into the sandbox's network namespace). Tests use fakes.
 */
import type { Duplex, Readable, Writable } from 'node:stream';

export interface StdioOptions {
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

/**
 * A running exec or an attachment. Streams are present when the matching option was
 * asked for (with tty, stdout carries the terminal and stderr is absent).
 */
export interface StreamSession {
  /** The process's stdin (the pty master with tty); the server `end()`s it when the client half-closes stdin. */
  stdin?: Writable;
  stdout?: Readable;
  stderr?: Readable;
  /** Sets the terminal size; called for every resize message while tty is on. */
  resize(width: number, height: number): void;
  /** Resolves with the exit code once the process (exec) or container (attach) has exited. */
  wait(): Promise<number>;
  /**
   * The client went away: for exec, kill the process; for attach, detach only (the
   * container keeps running). Called at most once, never after wait() resolved.
   */
  kill(): void;
}

export interface ExecTarget {
  /** Checked when the URL is issued: throw NotFoundError / FailedPreconditionError for a missing or stopped container. */
  validate?(containerId: string): Promise<void>;
  exec(containerId: string, cmd: string[], options: StdioOptions): Promise<StreamSession>;
}

export interface AttachTarget {
  validate?(containerId: string): Promise<void>;
  attach(containerId: string, options: StdioOptions): Promise<StreamSession>;
}

export interface PortForwardTarget {
  /** Checked when the URL is issued: throw NotFoundError for a missing sandbox. */
  validate?(podSandboxId: string): Promise<void>;
  /** A connection to 127.0.0.1:port (or [::1]:port) in the sandbox's network namespace; rejects if nothing listens. */
  dial(podSandboxId: string, port: number): Promise<Duplex>;
}
