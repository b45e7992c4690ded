import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CallContext } from '../../src/api/handlers.js';
import { ReadinessGate } from '../../src/cri/edge.js';
import { type CriServer, createCriServer } from '../../src/cri/server.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import {
  createRuntimeInfoHandlers,
  parsePodCidrs,
  type RuntimeInfoHandlers,
} from '../../src/runtime-info/runtime-info.js';
import { packageVersion as readInstalledVersion } from '../../src/version.js';
import { FakePodCidrSetting, FakeRuntimeHealth } from '../fakes/fake-runtime-health.js';
import { CriClient, grpcCode } from '../harness/cri-client.js';

const packageVersion = (
  JSON.parse(readFileSync(join(import.meta.dirname, '../../package.json'), 'utf8')) as { version: string }
).version;

function testContext(method: string): CallContext {
  return {
    method,
    requestId: '0123456789abcdef',
    logger: silentLogger(),
    signal: new AbortController().signal,
    deadline: undefined,
  };
}

describe('runtime info handlers', () => {
  let health: FakeRuntimeHealth;
  let podCidr: FakePodCidrSetting;
  let statusInfo: Record<string, unknown>;
  let handlers: RuntimeInfoHandlers;

  beforeEach(() => {
    health = new FakeRuntimeHealth();
    podCidr = new FakePodCidrSetting();
    statusInfo = {};
    handlers = createRuntimeInfoHandlers({ health, podCidr, statusInfo: async () => statusInfo });
  });

  it('Version reports the package version', async () => {
    expect(readInstalledVersion()).toBe(packageVersion);
    const version = await handlers.Version({ version: '' }, testContext('Version'));
    expect(version.runtime_version).toBe(packageVersion);
    expect(version.runtime_name).toBe('rootless-cri');
  });

  it('Status reports ready conditions without reason or message', async () => {
    const response = await handlers.Status({ verbose: false }, testContext('Status'));
    expect(response.status?.conditions).toEqual([
      { type: 'RuntimeReady', status: true, reason: '', message: '' },
      { type: 'NetworkReady', status: true, reason: '', message: '' },
    ]);
    expect(response.info).toEqual({});
    expect(response.runtime_handlers).toEqual([
      { name: '', features: { recursive_read_only_mounts: false, user_namespaces: false } },
    ]);
    expect(response.features?.supplemental_groups_policy).toBe(true);
    expect(health.calls).toBe(1);
  });

  it('Status advertises the handler features probed at start, each on its own', async () => {
    for (const [recursiveReadOnlyMounts, userNamespaces] of [
      [true, false],
      [false, true],
      [true, true],
    ] as const) {
      const probed = createRuntimeInfoHandlers({
        health,
        podCidr,
        statusInfo: async () => statusInfo,
        handlerFeatures: { recursiveReadOnlyMounts, userNamespaces },
      });
      const response = await probed.Status({ verbose: false }, testContext('Status'));
      expect(response.runtime_handlers).toEqual([
        {
          name: '',
          features: { recursive_read_only_mounts: recursiveReadOnlyMounts, user_namespaces: userNamespaces },
        },
      ]);
      // Pods on the node network keep the node's user namespace.
      expect(response.features?.user_namespaces_host_network).toBe(false);
    }
  });

  it('Status reports what is not ready with its reason and message', async () => {
    health.network = {
      ready: false,
      reason: 'NetworkPluginNotReady',
      message: 'the CNI bridge plugin is missing; install containernetworking-plugins',
    };
    health.runtime = { ready: false };
    const response = await handlers.Status({ verbose: false }, testContext('Status'));
    const [runtime, network] = response.status!.conditions!;
    expect(network).toEqual({
      type: 'NetworkReady',
      status: false,
      reason: 'NetworkPluginNotReady',
      message: 'the CNI bridge plugin is missing; install containernetworking-plugins',
    });
    expect(runtime!.status).toBe(false);
    expect(runtime!.reason).not.toBe('');
    expect(runtime!.message).not.toBe('');
  });

  it('Status still answers, not ready, when the health check itself fails', async () => {
    health.failNextCheck(new Error('cannot read /sys/fs/cgroup'));
    const response = await handlers.Status({ verbose: false }, testContext('Status'));
    for (const condition of response.status!.conditions!) {
      expect(condition.status).toBe(false);
      expect(condition.reason).toBe('HealthCheckFailed');
      expect(condition.message).toContain('cannot read /sys/fs/cgroup');
    }
  });

  it('verbose Status sends every info value as JSON text, including the pod CIDR', async () => {
    podCidr.value = '10.88.0.0/16';
    statusInfo = {
      config: { root: '/data', cgroups: ['cpu', 'memory'], size: 12n },
      doctor: [{ check: 'subuid', ok: true }],
      node: 'rootlesskit',
      missing: undefined,
    };
    const response = await handlers.Status({ verbose: true }, testContext('Status'));
    const info = response.info!;
    for (const [key, text] of Object.entries(info)) {
      expect(() => JSON.parse(text), key).not.toThrow();
    }
    expect(JSON.parse(info.config!)).toEqual({ root: '/data', cgroups: ['cpu', 'memory'], size: '12' });
    expect(JSON.parse(info.doctor!)).toEqual([{ check: 'subuid', ok: true }]);
    expect(JSON.parse(info.node!)).toBe('rootlesskit');
    expect(JSON.parse(info.missing!)).toBeNull();
    expect(JSON.parse(info.podCIDR!)).toBe('10.88.0.0/16');
  });

  it('verbose Status survives a value that cannot be JSON', async () => {
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    statusInfo = { config: circular };
    const response = await handlers.Status({ verbose: true }, testContext('Status'));
    expect(JSON.parse(response.info!.config!).error).toContain('cannot be shown as JSON');
  });

  it('RuntimeConfig reports the cgroupfs driver', async () => {
    expect(await handlers.RuntimeConfig({}, testContext('RuntimeConfig'))).toEqual({
      linux: { cgroup_driver: 'CGROUPFS' },
    });
  });

  it('UpdateRuntimeConfig keeps the pod CIDR, and an empty one changes nothing', async () => {
    const ctx = testContext('UpdateRuntimeConfig');
    await handlers.UpdateRuntimeConfig(
      { runtime_config: { network_config: { pod_cidr: '10.88.0.0/16' } } },
      ctx,
    );
    expect(podCidr.value).toBe('10.88.0.0/16');
    await handlers.UpdateRuntimeConfig({ runtime_config: { network_config: { pod_cidr: '' } } }, ctx);
    await handlers.UpdateRuntimeConfig({ runtime_config: null }, ctx);
    expect(podCidr.value).toBe('10.88.0.0/16');
    await handlers.UpdateRuntimeConfig(
      { runtime_config: { network_config: { pod_cidr: '10.89.0.0/16, fd00:10:89::/64' } } },
      ctx,
    );
    expect(podCidr.sets).toEqual(['10.88.0.0/16', '10.89.0.0/16,fd00:10:89::/64']);
  });

  it.each([
    ['10.88.0.0'],
    ['10.88.0.0/33'],
    ['10.88.0/16'],
    ['fd00::/129'],
    ['example.com/16'],
    ['10.88.0.0/-1'],
  ])('UpdateRuntimeConfig refuses %s with InvalidArgument and keeps the old CIDR', async (bad) => {
    podCidr.value = '10.88.0.0/16';
    const err = await handlers
      .UpdateRuntimeConfig({ runtime_config: { network_config: { pod_cidr: bad } } }, testContext('x'))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toContain(`"${bad}"`);
    expect(podCidr.value).toBe('10.88.0.0/16');
  });

  it('parsePodCidrs accepts IPv4, IPv6 and dual-stack lists', () => {
    expect(parsePodCidrs('10.88.0.0/16')).toBe('10.88.0.0/16');
    expect(parsePodCidrs('fd00::/64')).toBe('fd00::/64');
    expect(parsePodCidrs(' 10.0.0.0/8 ,fd00::/48')).toBe('10.0.0.0/8,fd00::/48');
  });
});

describe('runtime info over gRPC', () => {
  let dir: string;
  let server: CriServer;
  let client: CriClient;
  const podCidr = new FakePodCidrSetting();

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'runtime-info-'));
    const readiness = new ReadinessGate();
    readiness.open();
    server = createCriServer({
      logger: silentLogger(),
      readiness,
      handlers: createRuntimeInfoHandlers({
        health: new FakeRuntimeHealth(),
        podCidr,
        statusInfo: async () => ({ config: { cgroupDriver: 'cgroupfs' } }),
      }),
    });
    await server.listen(join(dir, 'cri.sock'));
    client = new CriClient(server.socketPath!);
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('Status conditions and verbose JSON survive the wire', async () => {
    const response = await client.runtime('Status', { verbose: true });
    expect(response.status?.conditions.map((c) => [c.type, c.status])).toEqual([
      ['RuntimeReady', true],
      ['NetworkReady', true],
    ]);
    expect(JSON.parse(response.info.config!)).toEqual({ cgroupDriver: 'cgroupfs' });
    expect(response.runtime_handlers[0]?.features?.user_namespaces).toBe(false);
  });

  it('UpdateRuntimeConfig with a bad CIDR answers INVALID_ARGUMENT; a good one shows in Status', async () => {
    const err = await client
      .runtime('UpdateRuntimeConfig', { runtime_config: { network_config: { pod_cidr: '10.88.0.0/99' } } })
      .catch((e: unknown) => e);
    expect(grpcCode(err)).toBe(grpc.status.INVALID_ARGUMENT);
    expect((err as grpc.ServiceError).details).toContain('10.88.0.0/99');
    await client.runtime('UpdateRuntimeConfig', {
      runtime_config: { network_config: { pod_cidr: '10.42.0.0/24' } },
    });
    const status = await client.runtime('Status', { verbose: true });
    expect(JSON.parse(status.info.podCIDR!)).toBe('10.42.0.0/24');
  });

  it('RuntimeConfig answers CGROUPFS on the wire', async () => {
    const response = await client.runtime('RuntimeConfig', {});
    expect(response.linux?.cgroup_driver).toBe('CGROUPFS');
  });
});
