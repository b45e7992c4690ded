/**
 * Publishing ports on the real host: rootlesskit's port driver API (the REST API on
 * <state-dir>/api.sock that `rootlessctl add-ports` calls). The builtin driver listens on the
 * host's parentIP:parentPort and connects to childIP:childPort inside the node netns.
 */
import http from 'node:http';
import { FailedPreconditionError, InvalidArgumentError, UnavailableError } from '../errors.js';

export type PortProtocol = 'tcp' | 'udp';

export interface PortSpec {
  protocol: PortProtocol;
  parentIP: string;
  parentPort: number;
  childIP: string;
  childPort: number;
}

export interface PublishedPort extends PortSpec {
  id: number;
}

export interface PortManager {
  add(spec: PortSpec): Promise<PublishedPort>;
  remove(id: number): Promise<void>;
  list(): Promise<PublishedPort[]>;
}

interface RawPortStatus {
  id: number;
  spec: { proto: string; parentIP?: string; parentPort: number; childIP?: string; childPort: number };
}

export class RootlesskitPortManager implements PortManager {
  constructor(private readonly apiSocket: string) {}

  async add(spec: PortSpec): Promise<PublishedPort> {
    const body = {
      proto: spec.protocol,
      parentIP: spec.parentIP,
      parentPort: spec.parentPort,
      childIP: spec.childIP,
      childPort: spec.childPort,
    };
    const { status, text } = await this.request('POST', '/v1/ports', JSON.stringify(body));
    if (status !== 200 && status !== 201) {
      const detail = parseApiError(text);
      if (/address already in use|port.*in use|conflict/i.test(detail)) {
        throw new FailedPreconditionError(
          `host port ${spec.parentIP}:${spec.parentPort}/${spec.protocol} is already in use: ${detail}`,
        );
      }
      if (/permission denied/i.test(detail)) {
        throw new FailedPreconditionError(
          `cannot publish host port ${spec.parentPort}: ${detail}; ports below ` +
            `net.ipv4.ip_unprivileged_port_start need root on the host ` +
            `(sudo sysctl net.ipv4.ip_unprivileged_port_start=${spec.parentPort})`,
        );
      }
      throw new InvalidArgumentError(`rootlesskit refused to publish ${describe(spec)}: ${detail}`);
    }
    const parsed = JSON.parse(text) as RawPortStatus;
    return { ...spec, id: parsed.id };
  }

  async remove(id: number): Promise<void> {
    const { status, text } = await this.request('DELETE', `/v1/ports/${id}`);
    // Already gone (a retried stop): rootlesskit answers "unknown id".
    if (status === 404 || /not found|no such|unknown id/i.test(text)) return;
    if (status >= 300) {
      throw new UnavailableError(`rootlesskit could not remove published port ${id}: ${parseApiError(text)}`);
    }
  }

  async list(): Promise<PublishedPort[]> {
    const { status, text } = await this.request('GET', '/v1/ports');
    if (status !== 200) throw new UnavailableError(`rootlesskit port list failed: ${parseApiError(text)}`);
    const raw = JSON.parse(text) as RawPortStatus[] | null;
    return (raw ?? []).map((p) => ({
      id: p.id,
      protocol: p.spec.proto as PortProtocol,
      parentIP: p.spec.parentIP ?? '',
      parentPort: p.spec.parentPort,
      childIP: p.spec.childIP ?? '',
      childPort: p.spec.childPort,
    }));
  }

  private request(method: string, urlPath: string, body?: string): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.apiSocket,
          path: urlPath,
          method,
          headers: body ? { 'content-type': 'application/json' } : {},
          timeout: 10_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
          );
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error('timed out after 10s')));
      req.on('error', (err) =>
        reject(new UnavailableError(`rootlesskit API ${this.apiSocket} is not reachable`, { cause: err })),
      );
      req.end(body);
    });
  }
}

function parseApiError(text: string): string {
  try {
    const parsed = JSON.parse(text) as { message?: string };
    if (parsed.message) return parsed.message;
  } catch {
    // not JSON: use the text itself
  }
  return text.trim() || 'no detail';
}

function describe(spec: PortSpec): string {
  return `${spec.parentIP}:${spec.parentPort} -> ${spec.childIP}:${spec.childPort}/${spec.protocol}`;
}
