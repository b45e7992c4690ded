import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CriHandlers } from '../../src/api/handlers.js';
import { loadCriDefinitions } from '../../src/api/proto.js';
import { ReadinessGate } from '../../src/cri/edge.js';
import {
  type CriServer,
  createCriServer,
  MAX_MESSAGE_BYTES,
  unimplementedMessage,
} from '../../src/cri/server.js';
import { FailedPreconditionError, InternalError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { createMetrics } from '../../src/metrics.js';
import { type MetricsServer, startMetricsServer } from '../../src/os/metrics-server.js';
import { createRuntimeInfoHandlers } from '../../src/runtime-info/runtime-info.js';
import { FakePodCidrSetting, FakeRuntimeHealth } from '../fakes/fake-runtime-health.js';
import { CriClient, grpcCode } from '../harness/cri-client.js';

const packageVersion = (
  JSON.parse(readFileSync(join(import.meta.dirname, '../../package.json'), 'utf8')) as { version: string }
).version;

function openGate(): ReadinessGate {
  const gate = new ReadinessGate();
  gate.open();
  return gate;
}

function runtimeInfo() {
  return createRuntimeInfoHandlers({
    health: new FakeRuntimeHealth(),
    podCidr: new FakePodCidrSetting(),
    statusInfo: async () => ({}),
  });
}

let root: string;
const servers: CriServer[] = [];
const clients: CriClient[] = [];

function newServer(handlers: CriHandlers = runtimeInfo()): CriServer {
  const server = createCriServer({ logger: silentLogger(), readiness: openGate(), handlers });
  servers.push(server);
  return server;
}

function newClient(socketPath: string): CriClient {
  const client = new CriClient(socketPath);
  clients.push(client);
  return client;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'cri-server-'));
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) await s.close(1_000);
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('RPC registration', () => {
  it('answers Version with the four fields', async () => {
    const server = newServer();
    await server.listen(join(root, 'version', 'cri.sock'));
    const version = await newClient(server.socketPath!).runtime('Version', { version: '0.1.0' });
    expect(version).toEqual({
      version: '0.1.0',
      runtime_name: 'rootless-cri',
      runtime_version: packageVersion,
      runtime_api_version: 'v1',
    });
  });

  it('answers UNIMPLEMENTED naming the RPC for every method without a handler, in both services', async () => {
    const server = newServer({});
    await server.listen(join(root, 'unimplemented', 'cri.sock'));
    const client = newClient(server.socketPath!);
    const definitions = loadCriDefinitions();
    const services = [
      [client.runtimeClient, definitions.runtimeService],
      [client.imageClient, definitions.imageService],
    ] as const;
    let checked = 0;
    for (const [stub, service] of services) {
      for (const [method, definition] of Object.entries(service)) {
        const fn = (stub as unknown as Record<string, (...args: unknown[]) => unknown>)[method]!.bind(stub);
        const err = await new Promise<unknown>((resolve) => {
          if (definition.responseStream) {
            const call = fn({}) as grpc.ClientReadableStream<unknown>;
            call.on('data', () => {});
            call.on('error', resolve);
            call.on('end', () => resolve(undefined));
          } else {
            fn({}, (e: unknown) => resolve(e));
          }
        });
        expect(grpcCode(err), method).toBe(grpc.status.UNIMPLEMENTED);
        expect((err as grpc.ServiceError).details).toBe(`${method} is not implemented yet in rootless-cri`);
        checked++;
      }
    }
    // Every RPC of the pinned CRI API file (proto/cri-api.json) answered.
    expect(checked).toBe(
      Object.keys(definitions.runtimeService).length + Object.keys(definitions.imageService).length,
    );
    expect(Object.keys(definitions.imageService)).toContain('PullImage');
    expect(unimplementedMessage('RunPodSandbox')).toBe(
      'RunPodSandbox is not implemented yet in rootless-cri',
    );
  });

  it('refuses a handler for a name that is not a CRI RPC', () => {
    expect(() =>
      createCriServer({
        logger: silentLogger(),
        readiness: openGate(),
        handlers: { RunPodSandboxx: async () => ({}) } as never,
      }),
    ).toThrow(InternalError);
  });

  it('accepts requests up to 16 MiB and refuses bigger ones with RESOURCE_EXHAUSTED', async () => {
    const server = newServer();
    await server.listen(join(root, 'size', 'cri.sock'));
    const client = newClient(server.socketPath!);
    const ok = await client.runtime('Version', { version: 'x'.repeat(MAX_MESSAGE_BYTES - 1024) });
    expect(ok.runtime_name).toBe('rootless-cri');
    const err = await client
      .runtime('Version', { version: 'x'.repeat(MAX_MESSAGE_BYTES + 1) })
      .catch((e) => e);
    expect(grpcCode(err)).toBe(grpc.status.RESOURCE_EXHAUSTED);
  });
});

describe('socket handling', () => {
  it('creates the parent directory 0700 and the socket 0600, and removes the socket on close', async () => {
    const dir = join(root, 'modes', 'nested');
    const server = newServer();
    await server.listen(join(dir, 'cri.sock'));
    expect((await stat(dir)).mode & 0o7777).toBe(0o700);
    const socket = await lstat(join(dir, 'cri.sock'));
    expect(socket.isSocket()).toBe(true);
    expect(socket.mode & 0o7777).toBe(0o600);
    await server.close();
    await expect(lstat(join(dir, 'cri.sock'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('replaces a stale socket file left by a killed process', async () => {
    const dir = join(root, 'stale');
    await mkdir(dir, { mode: 0o700 });
    const path = join(dir, 'cri.sock');
    // A process that binds the socket and dies without cleaning up, like a daemon after kill -9.
    const child = spawnSync(process.execPath, [
      '-e',
      `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    expect(child.signal).toBe('SIGKILL');
    const before = await lstat(path);
    expect(before.isSocket()).toBe(true);
    const server = newServer();
    await server.listen(path);
    // Binding over the old file would have failed with EADDRINUSE, so answering proves it was replaced.
    const version = await newClient(path).runtime('Version', {});
    expect(version.runtime_name).toBe('rootless-cri');
  }, 10_000);

  it('refuses a live socket with FailedPrecondition and leaves the first server serving', async () => {
    const path = join(root, 'live', 'cri.sock');
    const first = newServer();
    await first.listen(path);
    const second = newServer();
    const err = await second.listen(path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect((err as Error).message).toContain(`another rootless-cri daemon is already serving ${path}`);
    const version = await newClient(path).runtime('Version', {});
    expect(version.runtime_name).toBe('rootless-cri');
  });

  it('refuses a parent directory owned by another user', async () => {
    const dir = join(root, 'foreign');
    await mkdir(dir, { mode: 0o700 });
    await chown(dir, 65534, 65534);
    const err = await newServer()
      .listen(join(dir, 'cri.sock'))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect((err as Error).message).toContain(`socket directory ${dir} is owned by uid 65534`);
    await expect(lstat(join(dir, 'cri.sock'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('refuses a parent directory others can write to', async () => {
    const dir = join(root, 'shared');
    await mkdir(dir);
    await chmod(dir, 0o777);
    const err = await newServer()
      .listen(join(dir, 'cri.sock'))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect((err as Error).message).toContain('mode 0777');
    expect((err as Error).message).toContain(`chmod 700 ${dir}`);
  });

  it('refuses a path that exists and is not a socket, without touching it', async () => {
    const dir = join(root, 'regular');
    await mkdir(dir, { mode: 0o700 });
    const path = join(dir, 'cri.sock');
    await writeFile(path, 'keep me');
    const err = await newServer()
      .listen(path)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect((err as Error).message).toContain('is not a socket');
    expect((await lstat(path)).isFile()).toBe(true);
  });
});

describe('metrics', () => {
  let metricsServer: MetricsServer | undefined;
  afterEach(async () => {
    await metricsServer?.close();
    metricsServer = undefined;
  });

  it('serves per-RPC request counts, latency histograms and process metrics on /metrics', async () => {
    const metrics = createMetrics();
    const server = createCriServer({
      logger: silentLogger(),
      readiness: openGate(),
      metrics: metrics.rpc,
      handlers: runtimeInfo(),
    });
    servers.push(server);
    await server.listen(join(root, 'metrics', 'cri.sock'));
    const client = newClient(server.socketPath!);
    await client.runtime('Version', {});
    await client.runtime('Version', {});
    await client.runtime('RunPodSandbox', {}).catch(() => {});
    metricsServer = await startMetricsServer({ port: 0, registry: metrics.registry, logger: silentLogger() });
    expect(metricsServer.port).toBeGreaterThan(0);
    const response = await fetch(`http://127.0.0.1:${metricsServer.port}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toContain('text/plain');
    const body = await response.text();
    expect(body).toContain('rootless_cri_grpc_requests_total{method="Version",code="OK"} 2');
    expect(body).toContain('rootless_cri_grpc_requests_total{method="RunPodSandbox",code="UNIMPLEMENTED"} 1');
    expect(body).toContain('rootless_cri_grpc_request_duration_seconds_count{method="Version"} 2');
    expect(body).toMatch(/rootless_cri_grpc_request_duration_seconds_bucket\{le="0\.1",method="Version"\} 2/);
    expect(body).toContain('process_cpu_user_seconds_total');
    expect((await fetch(`http://127.0.0.1:${metricsServer.port}/other`)).status).toBe(404);
  });

  it('names the port when it is taken', async () => {
    const metrics = createMetrics();
    metricsServer = await startMetricsServer({ port: 0, registry: metrics.registry, logger: silentLogger() });
    const err = await startMetricsServer({
      port: metricsServer.port,
      registry: metrics.registry,
      logger: silentLogger(),
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FailedPreconditionError);
    expect((err as Error).message).toContain(`127.0.0.1:${metricsServer.port}`);
  });
});
