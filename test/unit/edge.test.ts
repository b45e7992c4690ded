import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CallContext, CriHandlers } from '../../src/api/handlers.js';
import { isQuietMethod, NOT_READY_MESSAGE, ReadinessGate } from '../../src/cri/edge.js';
import { type CriServer, createCriServer } from '../../src/cri/server.js';
import { CancelledError, DeadlineExceededError, NotFoundError } from '../../src/errors.js';
import type { RpcMetrics } from '../../src/metrics.js';
import { CriClient, grpcCode } from '../harness/cri-client.js';

interface LogLine {
  level: number;
  msg: string;
  method?: string;
  code?: string;
  durationMs?: number;
  requestId?: string;
  error?: string;
  messagesSent?: number;
  [key: string]: unknown;
}

const DEBUG = 20;
const INFO = 30;
const WARN = 40;
const ERROR = 50;

class RecordingMetrics implements RpcMetrics {
  calls: Array<{ method: string; code: string; seconds: number }> = [];
  observe(method: string, code: string, seconds: number): void {
    this.calls.push({ method, code, seconds });
  }
}

function waitFor(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (check()) resolve();
      else if (Date.now() - started > timeoutMs) reject(new Error('condition not met in time'));
      else setTimeout(tick, 5);
    };
    tick();
  });
}

describe('edge adapter', () => {
  let dir: string;
  let server: CriServer;
  let client: CriClient;
  const lines: LogLine[] = [];
  const metrics = new RecordingMetrics();
  const readiness = new ReadinessGate();
  const contexts: CallContext[] = [];
  const abortedInside: boolean[] = [];
  let abortReason: unknown;
  let sendFailure: unknown;

  const handlers: CriHandlers = {
    Version: async (_request, ctx) => {
      contexts.push(ctx);
      abortedInside.push(ctx.signal.aborted);
      ctx.logger.info('inside the handler');
      return { version: '0.1.0', runtime_name: 'x', runtime_version: 'y', runtime_api_version: 'v1' };
    },
    RunPodSandbox: async () => ({ pod_sandbox_id: 'abc' }),
    RemovePodSandbox: async () => {
      throw new Error('disk on fire');
    },
    StopPodSandbox: async (request) => {
      throw new NotFoundError(`pod sandbox ${request.pod_sandbox_id} not found`);
    },
    // Not async: a synchronous throw must be caught too.
    StartContainer: ((): Promise<object> => {
      throw new TypeError('synchronous failure');
    }) as CriHandlers['StartContainer'] & object,
    // Waits until the client cancels or the deadline passes.
    ExecSync: async (_request, ctx) => {
      contexts.push(ctx);
      await new Promise<void>((resolve) =>
        ctx.signal.addEventListener('abort', () => resolve(), { once: true }),
      );
      abortReason = ctx.signal.reason;
      throw ctx.signal.reason;
    },
    GetContainerEvents: async (_request, send, ctx) => {
      contexts.push(ctx);
      for (let i = 0; i < 3; i++)
        await send({ container_id: `c${i}`, container_event_type: 'CONTAINER_CREATED_EVENT' });
    },
    StreamContainers: async (_request, send) => {
      await send({ containers: [] });
      throw new NotFoundError('the container store went away');
    },
    StreamPodSandboxes: async (_request, send, ctx) => {
      // Sends until the client goes away; send must then reject instead of hanging.
      try {
        for (;;) {
          await send({ pod_sandboxes: [] });
          await new Promise((r) => setTimeout(r, 5));
        }
      } catch (err) {
        sendFailure = err;
        abortReason = ctx.signal.aborted ? ctx.signal.reason : undefined;
      }
    },
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edge-'));
    const logger = pino({ level: 'debug' }, { write: (s: string) => lines.push(JSON.parse(s) as LogLine) });
    server = createCriServer({ logger, readiness, metrics, handlers });
    await server.listen(join(dir, 'cri.sock'));
    client = new CriClient(server.socketPath!);
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  afterEach(() => {
    lines.length = 0;
    metrics.calls.length = 0;
    contexts.length = 0;
    abortedInside.length = 0;
  });

  const rpcLines = () => lines.filter((l) => l.msg.startsWith('rpc'));

  it('answers UNAVAILABLE until the readiness gate opens, then calls the handler', async () => {
    const err = await client.runtime('Version', {}).catch((e: unknown) => e);
    expect(grpcCode(err)).toBe(grpc.status.UNAVAILABLE);
    expect((err as grpc.ServiceError).details).toBe(NOT_READY_MESSAGE);
    expect(contexts).toHaveLength(0);
    const streamErr = await new Promise<unknown>((resolve) => {
      const call = client.runtimeClient.GetContainerEvents({});
      call.on('data', () => {});
      call.on('error', resolve);
      call.on('end', () => resolve(undefined));
    });
    expect(grpcCode(streamErr)).toBe(grpc.status.UNAVAILABLE);
    expect(metrics.calls.map((c) => c.code)).toEqual(['UNAVAILABLE', 'UNAVAILABLE']);

    readiness.open();
    const response = await client.runtime('Version', {});
    expect(response.runtime_api_version).toBe('v1');
    expect(contexts).toHaveLength(1);
  });

  it('gives each call its own short hex request id, on the call line and on the handler logger', async () => {
    await client.runtime('Version', {});
    await client.runtime('Version', {});
    expect(contexts).toHaveLength(2);
    const [first, second] = contexts;
    expect(first!.requestId).toMatch(/^[0-9a-f]{16}$/);
    expect(second!.requestId).not.toBe(first!.requestId);
    expect(first!.method).toBe('Version');
    const inside = lines.filter((l) => l.msg === 'inside the handler');
    expect(inside.map((l) => l.requestId)).toEqual([first!.requestId, second!.requestId]);
    expect(rpcLines().map((l) => l.requestId)).toEqual([first!.requestId, second!.requestId]);
  });

  it('logs one line per call: polling successes at debug, changes at info, failures with their error', async () => {
    await client.runtime('Version', {});
    await client.runtime('RunPodSandbox', {});
    await client.runtime('StopPodSandbox', { pod_sandbox_id: 'p1' }).catch(() => {});
    await client.runtime('RemovePodSandbox', {}).catch(() => {});
    const calls = rpcLines();
    expect(calls.map((l) => [l.method, l.code, l.level])).toEqual([
      ['Version', 'OK', DEBUG],
      ['RunPodSandbox', 'OK', INFO],
      ['StopPodSandbox', 'NOT_FOUND', WARN],
      ['RemovePodSandbox', 'INTERNAL', ERROR],
    ]);
    for (const line of calls) {
      expect(line.durationMs).toBeTypeOf('number');
      expect(line.durationMs).toBeGreaterThanOrEqual(0);
      expect(line.requestId).toMatch(/^[0-9a-f]{16}$/);
    }
    expect(calls[2]!.error).toBe('pod sandbox p1 not found');
    expect(calls[3]!.error).toBe('disk on fire');
    expect((calls[3]!.err as { stack?: string }).stack).toContain('disk on fire');
    expect(metrics.calls.map((c) => `${c.method} ${c.code}`)).toEqual([
      'Version OK',
      'RunPodSandbox OK',
      'StopPodSandbox NOT_FOUND',
      'RemovePodSandbox INTERNAL',
    ]);
    for (const c of metrics.calls) expect(c.seconds).toBeGreaterThanOrEqual(0);
  });

  it('counts polling and probes as quiet, and calls that change state as not', () => {
    for (const method of [
      'Version',
      'Status',
      'ListContainers',
      'ContainerStatus',
      'ListPodSandboxStats',
      'ExecSync',
    ])
      expect(isQuietMethod(method), method).toBe(true);
    for (const method of ['RunPodSandbox', 'CreateContainer', 'StopContainer', 'PullImage', 'Exec', 'Attach'])
      expect(isQuietMethod(method), method).toBe(false);
  });

  it('turns plain and synchronous throws into INTERNAL and keeps serving', async () => {
    const plain = await client.runtime('RemovePodSandbox', {}).catch((e: unknown) => e);
    expect(grpcCode(plain)).toBe(grpc.status.INTERNAL);
    expect((plain as grpc.ServiceError).details).toBe('disk on fire');
    const sync = await client.runtime('StartContainer', {}).catch((e: unknown) => e);
    expect(grpcCode(sync)).toBe(grpc.status.INTERNAL);
    expect((sync as grpc.ServiceError).details).toBe('synchronous failure');
    expect((await client.runtime('Version', {})).version).toBe('0.1.0');
  });

  it('aborts the signal with a CancelledError when the client cancels', async () => {
    abortReason = undefined;
    const call = client.runtimeClient.ExecSync({ container_id: 'c', cmd: ['true'] }, () => {});
    await waitFor(() => contexts.length === 1);
    expect(contexts[0]!.signal.aborted).toBe(false);
    call.cancel();
    await waitFor(() => abortReason !== undefined);
    expect(abortReason).toBeInstanceOf(CancelledError);
    expect((abortReason as Error).message).toContain('ExecSync');
    await waitFor(() => rpcLines().length === 1);
    expect(rpcLines()[0]!.code).toBe('CANCELLED');
  });

  it('aborts the signal with a DeadlineExceededError at the deadline and exposes the deadline', async () => {
    abortReason = undefined;
    const before = Date.now();
    const err = await client
      .runtime('ExecSync', { container_id: 'c' }, { timeoutMs: 300 })
      .catch((e: unknown) => e);
    expect(grpcCode(err)).toBe(grpc.status.DEADLINE_EXCEEDED);
    await waitFor(() => abortReason !== undefined);
    expect(abortReason).toBeInstanceOf(DeadlineExceededError);
    const deadline = contexts[0]!.deadline!;
    expect(deadline).toBeInstanceOf(Date);
    expect(deadline.getTime()).toBeGreaterThanOrEqual(before + 200);
    expect(deadline.getTime()).toBeLessThanOrEqual(Date.now() + 100);
    await waitFor(() => rpcLines().length === 1);
    expect(rpcLines()[0]!.code).toBe('DEADLINE_EXCEEDED');
  });

  it('a call without a deadline has none and its signal stays quiet', async () => {
    await client.runtime('Version', {});
    expect(contexts[0]!.deadline).toBeInstanceOf(Date); // the harness client always sets one
    const noDeadline = await new Promise<CallContext>((resolve, reject) => {
      client.runtimeClient.Version({}, (err) => {
        if (err) reject(err);
        else resolve(contexts[1]!);
      });
    });
    expect(noDeadline.deadline).toBeUndefined();
    expect(abortedInside).toEqual([false, false]);
  });

  it('streams every message a streaming handler sends, then OK', async () => {
    const received: unknown[] = [];
    const err = await new Promise<unknown>((resolve) => {
      const call = client.runtimeClient.GetContainerEvents({});
      call.on('data', (m) => received.push(m));
      call.on('error', resolve);
      call.on('status', (s: grpc.StatusObject) => {
        if (s.code === grpc.status.OK) resolve(undefined);
      });
    });
    expect(err).toBeUndefined();
    expect(received.map((m) => (m as { container_id: string }).container_id)).toEqual(['c0', 'c1', 'c2']);
    await waitFor(() => rpcLines().length === 1);
    expect(rpcLines()[0]).toMatchObject({ method: 'GetContainerEvents', code: 'OK', messagesSent: 3 });
  });

  it('ends a stream with the mapped status when the handler throws after sending', async () => {
    const received: unknown[] = [];
    const err = await new Promise<unknown>((resolve) => {
      const call = client.runtimeClient.StreamContainers({});
      call.on('data', (m) => received.push(m));
      call.on('error', resolve);
      call.on('end', () => resolve(undefined));
    });
    expect(received).toHaveLength(1);
    expect(grpcCode(err)).toBe(grpc.status.NOT_FOUND);
    expect((err as grpc.ServiceError).details).toBe('the container store went away');
  });

  it('rejects send and aborts the signal once a streaming client cancels', async () => {
    sendFailure = undefined;
    abortReason = undefined;
    const call = client.runtimeClient.StreamPodSandboxes({});
    let count = 0;
    call.on('error', () => {});
    await new Promise<void>((resolve) =>
      call.on('data', () => {
        count++;
        if (count === 3) resolve();
      }),
    );
    call.cancel();
    await waitFor(() => sendFailure !== undefined);
    expect(sendFailure).toBeInstanceOf(CancelledError);
    await waitFor(() => rpcLines().length === 1);
    expect(rpcLines()[0]!.code).toBe('CANCELLED');
  });
});
