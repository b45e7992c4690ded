/**
 * A process's stdio as the streaming server serves it: what `crun exec` (pipes or a pty
 * through the console relay) and conmon's attach socket hand back. The streaming server
 * (src/streaming/) consumes these; the OS layer produces them.
 */
import type { Readable, Writable } from 'node:stream';

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
