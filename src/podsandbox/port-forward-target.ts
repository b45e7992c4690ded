/**
 * PortForward for the streaming server: each forwarded connection is a TCP connection to
 * the pod's loopback, made inside the pod's network namespace by the netns-dial helper
 * (never a name lookup). A host-network pod shares the node's network namespace, where the
 * daemon already is, so a plain connect to the node's loopback does.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { SandboxRecord } from '../core/sandbox-record.js';
import type { SandboxReader } from '../core/sandbox-store.js';
import type { PortForwardTarget } from '../core/stream-targets.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from '../errors.js';
import { dialInNetns } from '../os/netns-dial.js';

export interface SandboxPortForwardOptions {
  sandboxes: SandboxReader;
  /** Connects inside a pinned network namespace (default: the netns-dial helper). */
  dialInNetns?: (netnsFile: string, port: number) => Promise<Duplex>;
  /** Connects to the node's own loopback (default: 127.0.0.1, then ::1). */
  dialNodeLoopback?: (port: number) => Promise<Duplex>;
}

export class SandboxPortForwardTarget implements PortForwardTarget {
  private readonly dialNetns: (netnsFile: string, port: number) => Promise<Duplex>;
  private readonly dialNode: (port: number) => Promise<Duplex>;

  constructor(private readonly options: SandboxPortForwardOptions) {
    this.dialNetns = options.dialInNetns ?? ((file, port) => dialInNetns(file, port));
    this.dialNode = options.dialNodeLoopback ?? dialNodeLoopback;
  }

  async validate(podSandboxId: string): Promise<void> {
    this.readySandbox(podSandboxId);
  }

  async dial(podSandboxId: string, port: number): Promise<Duplex> {
    const sandbox = this.readySandbox(podSandboxId);
    const network = sandbox.namespaces.network;
    if (network.mode === 'NODE' || network.path === null) return this.dialNode(port);
    return this.dialNetns(network.path, port);
  }

  private readySandbox(idOrPrefix: string): SandboxRecord {
    if (idOrPrefix === '') throw new InvalidArgumentError('PortForward: pod_sandbox_id is required');
    const sandbox = findSandbox(this.options.sandboxes, idOrPrefix);
    if (!sandbox) {
      throw new NotFoundError(
        `PortForward: pod sandbox ${idOrPrefix} does not exist; list pods with \`crictl pods\``,
      );
    }
    if (sandbox.state !== 'ready') {
      throw new FailedPreconditionError(
        `PortForward: pod sandbox ${sandbox.id} is not ready (${sandbox.state}); its network is gone`,
      );
    }
    return sandbox;
  }
}

/** By full id, else by unique prefix (as the other RPCs accept). */
function findSandbox(sandboxes: SandboxReader, idOrPrefix: string): SandboxRecord | undefined {
  const exact = sandboxes.get(idOrPrefix);
  if (exact) return exact;
  const matches = sandboxes.list().filter((s) => s.id.startsWith(idOrPrefix));
  if (matches.length > 1) {
    throw new InvalidArgumentError(
      `PortForward: pod sandbox id prefix ${JSON.stringify(idOrPrefix)} matches ${matches.length} pods; give more of the id`,
    );
  }
  return matches[0];
}

/** localhost of the node: 127.0.0.1, then [::1] (a server may listen on one only). */
export async function dialNodeLoopback(port: number): Promise<Duplex> {
  let firstError: unknown;
  for (const host of ['127.0.0.1', '::1']) {
    try {
      return await connect(host, port);
    } catch (error) {
      firstError ??= error;
    }
  }
  throw new UnavailableError(
    `connecting to localhost:${port} on the node failed (${(firstError as Error).message}): is anything listening on port ${port}?`,
    { cause: firstError },
  );
}

function connect(host: string, port: number): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, allowHalfOpen: true });
    const timer = setTimeout(() => socket.destroy(new Error('connect timed out')), 10_000);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}
