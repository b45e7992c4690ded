/**
 * What the streaming server needs from the runtime behind it. The container layer
 * implements ExecTarget and AttachTarget (crun exec / conmon attach through the OCI runtime);
 * the pod layer implements PortForwardTarget (a dial into the sandbox's network namespace).
 * The composition root hands them to the streaming server; tests use fakes.
 */
import type { Duplex } from 'node:stream';
import type { StdioOptions, StreamSession } from '../os/stream-session.js';

export type { StdioOptions, StreamSession };

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
