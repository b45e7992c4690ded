/**
 * The little of the Kubernetes API the overlay agent needs: list and watch Nodes, patch the
 * annotations of its own. HTTPS with a client certificate (kubelet's, which kubelet rotates:
 * the files are read again for every request), the API server checked against the cluster CA.
 * A watch is one long GET whose body is a stream of JSON events, one per line.
 */
import { readFile } from 'node:fs/promises';
import https from 'node:https';
import { FailedPreconditionError, UnavailableError } from '../errors.js';

export interface KubeApiOptions {
  /** https://host:port as reachable from where the caller runs. */
  server: string;
  caFile: string;
  /** PEM client certificate; `keyFile` may be the same file (kubelet-client-current.pem holds both). */
  certFile: string;
  keyFile: string;
  /** Per request, except watches (which end on the server's timeoutSeconds). */
  timeoutMs?: number;
}

export interface KubeNode {
  metadata: { name: string; resourceVersion?: string; annotations?: Record<string, string> };
  spec?: { podCIDR?: string; podCIDRs?: string[]; unschedulable?: boolean };
  status?: { addresses?: { type: string; address: string }[] };
}

export interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: KubeNode & { code?: number; message?: string };
}

/** An answer other than 2xx, with the status the API server gave. */
export class KubeApiError extends UnavailableError {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const MAX_BODY_BYTES = 16 * 1024 * 1024;
const MAX_EVENT_BYTES = 4 * 1024 * 1024;

export class KubeApi {
  constructor(private readonly options: KubeApiOptions) {}

  private async tls(): Promise<{ ca: Buffer; cert: Buffer; key: Buffer }> {
    const read = async (file: string, what: string) => {
      try {
        return await readFile(file);
      } catch (err) {
        throw new FailedPreconditionError(
          `cannot read the ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
          { cause: err },
        );
      }
    };
    return {
      ca: await read(this.options.caFile, 'cluster CA'),
      cert: await read(this.options.certFile, 'client certificate'),
      key: await read(this.options.keyFile, 'client key'),
    };
  }

  private async open(
    method: string,
    path: string,
    options: { body?: string; contentType?: string; timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<import('node:http').IncomingMessage> {
    const url = new URL(path, this.options.server);
    const tls = await this.tls();
    return new Promise((resolve, reject) => {
      const req = https.request(url, {
        method,
        ...tls,
        agent: false,
        headers: {
          Accept: 'application/json',
          ...(options.body !== undefined
            ? {
                'Content-Type': options.contentType ?? 'application/json',
                'Content-Length': Buffer.byteLength(options.body),
              }
            : {}),
        },
        ...(options.signal ? { signal: options.signal } : {}),
      });
      if (options.timeoutMs) {
        req.setTimeout(options.timeoutMs, () =>
          req.destroy(
            new UnavailableError(`${method} ${url.pathname}: no answer within ${options.timeoutMs} ms`),
          ),
        );
      }
      req.on('response', resolve);
      req.on('error', (err) =>
        reject(
          err instanceof UnavailableError
            ? err
            : new UnavailableError(`${method} ${url.origin}${url.pathname}: ${err.message}`, { cause: err }),
        ),
      );
      req.end(options.body);
    });
  }

  private async call<T>(method: string, path: string, body?: string, contentType?: string): Promise<T> {
    const res = await this.open(method, path, {
      ...(body !== undefined ? { body } : {}),
      ...(contentType !== undefined ? { contentType } : {}),
      timeoutMs: this.options.timeoutMs ?? 30_000,
    });
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of res as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        res.destroy();
        throw new UnavailableError(`${method} ${path}: answer larger than ${MAX_BODY_BYTES} bytes`);
      }
      chunks.push(chunk);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    const status = res.statusCode ?? 0;
    if (status < 200 || status > 299) {
      let message = text.slice(0, 500);
      try {
        message = (JSON.parse(text) as { message?: string }).message ?? message;
      } catch {
        // not a Status object
      }
      throw new KubeApiError(status, `${method} ${path}: ${status} ${message}`);
    }
    return JSON.parse(text) as T;
  }

  listNodes(): Promise<{ metadata: { resourceVersion: string }; items: KubeNode[] }> {
    return this.call('GET', '/api/v1/nodes');
  }

  /** Merge-patches the node's annotations (a value of null removes one). */
  patchNodeAnnotations(name: string, annotations: Record<string, string | null>): Promise<KubeNode> {
    return this.call(
      'PATCH',
      `/api/v1/nodes/${encodeURIComponent(name)}`,
      JSON.stringify({ metadata: { annotations } }),
      'application/merge-patch+json',
    );
  }

  /**
   * Watches Nodes from `resourceVersion`, calling `onEvent` for each event, until the server
   * ends the watch (resolves) or it fails (rejects). An ERROR event with code 410 means the
   * version is too old: the caller lists again.
   */
  async watchNodes(
    resourceVersion: string,
    onEvent: (event: WatchEvent) => void,
    signal: AbortSignal,
    timeoutSeconds = 300,
  ): Promise<void> {
    const query = new URLSearchParams({
      watch: '1',
      resourceVersion,
      allowWatchBookmarks: 'true',
      timeoutSeconds: String(timeoutSeconds),
    });
    // A watch that goes quiet past the server's own end (a peer gone without a FIN) is dropped.
    const res = await this.open('GET', `/api/v1/nodes?${query}`, {
      signal,
      timeoutMs: (timeoutSeconds + 60) * 1000,
    });
    if ((res.statusCode ?? 0) !== 200) {
      res.resume();
      throw new KubeApiError(res.statusCode ?? 0, `watch of nodes: ${res.statusCode}`);
    }
    let buffered = '';
    for await (const chunk of res as AsyncIterable<Buffer>) {
      buffered += chunk.toString('utf8');
      let newline = buffered.indexOf('\n');
      while (newline >= 0) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (line !== '') onEvent(JSON.parse(line) as WatchEvent);
        newline = buffered.indexOf('\n');
      }
      if (buffered.length > MAX_EVENT_BYTES) {
        res.destroy();
        throw new UnavailableError(`watch of nodes: an event longer than ${MAX_EVENT_BYTES} bytes`);
      }
    }
  }
}
