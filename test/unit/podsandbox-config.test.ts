import { describe, expect, it } from 'vitest';
import type { PodSandboxConfig__Output } from '../../src/api/proto.js';
import {
  checkLogDirectory,
  checkMetadata,
  checkRuntimeHandler,
  hostPortRequests,
  hostsFileFor,
  namespaceModes,
  podCgroupPath,
  podHostname,
  resolvConfFrom,
} from '../../src/podsandbox/sandbox-config.js';
import { podConfig } from '../fakes/pod-config-builder.js';

function kindOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as { kind: string }).kind;
  }
  return 'none';
}

describe('RunPodSandbox request checks', () => {
  it('needs a config with metadata whose name, uid and namespace are set', () => {
    expect(() => checkMetadata(null)).toThrow(/needs a config/);
    expect(() => checkMetadata({ ...podConfig(), metadata: null })).toThrow(/no metadata/);
    for (const field of ['name', 'uid', 'namespace'] as const) {
      const config = podConfig();
      config.metadata![field] = '';
      expect(() => checkMetadata(config)).toThrow(new RegExp(`metadata\\.${field}.*empty`));
      expect(kindOf(() => checkMetadata(config))).toBe('InvalidArgument');
    }
    const slash = podConfig();
    slash.metadata!.name = 'a/../b';
    expect(() => checkMetadata(slash)).toThrow(/not usable/);
    expect(checkMetadata(podConfig()).name).toBe('pod');
  });

  it('knows only the default runtime handler and names an unknown one', () => {
    expect(() => checkRuntimeHandler('')).not.toThrow();
    expect(() => checkRuntimeHandler('kata')).toThrow(/"kata" is not configured/);
    expect(kindOf(() => checkRuntimeHandler('runc'))).toBe('InvalidArgument');
  });

  it('reads namespace modes and refuses the ones a pod cannot have', () => {
    expect(namespaceModes(podConfig())).toEqual({ network: 'POD', ipc: 'POD', pid: 'POD', targetId: '' });
    const host = withNamespaces({ network: 'NODE', ipc: 'NODE', pid: 'NODE' });
    expect(namespaceModes(host)).toMatchObject({ network: 'NODE', ipc: 'NODE', pid: 'NODE' });
    expect(() => namespaceModes(withNamespaces({ network: 'CONTAINER' }))).toThrow(/network CONTAINER/);
    expect(() => namespaceModes(withNamespaces({ pid: 'TARGET' }))).toThrow(/target_id/);
    // User namespace options are pod-user-namespace.ts's (test/unit/pod-user-namespace.test.ts).
    expect(
      namespaceModes(withNamespaces({ userns_options: { mode: 'POD', uids: [], gids: [] } })),
    ).toMatchObject({ network: 'POD' });
  });

  it('checks the hostname, or derives one from the pod name', () => {
    expect(podHostname({ ...podConfig(), hostname: 'test-hostname' }, podConfig().metadata!)).toBe(
      'test-hostname',
    );
    for (const bad of ['-x', 'a b', 'x\ny', 'a'.repeat(65), 'a..b']) {
      expect(() => podHostname({ ...podConfig(), hostname: bad }, podConfig().metadata!)).toThrow(
        /not a valid hostname/,
      );
    }
    const meta = { ...podConfig().metadata!, name: 'My_Pod.Name' };
    expect(podHostname(podConfig(), meta)).toBe('my-pod-name');
  });

  it('builds resolv.conf from DNSConfig and refuses entries that would add lines', () => {
    expect(resolvConfFrom(null)).toBeNull();
    expect(resolvConfFrom({ servers: [], searches: [], options: [] })).toBeNull();
    expect(resolvConfFrom({ servers: ['10.10.10.10'], searches: ['google.com'], options: ['ndots:8'] })).toBe(
      'search google.com\nnameserver 10.10.10.10\noptions ndots:8\n',
    );
    expect(() =>
      resolvConfFrom({ servers: ['1.1.1.1\nnameserver 6.6.6.6'], searches: [], options: [] }),
    ).toThrow(/single word/);
    expect(() => resolvConfFrom({ servers: ['dns.example'], searches: [], options: [] })).toThrow(
      /not an IP/,
    );
    expect(() => resolvConfFrom({ servers: [], searches: ['a b'], options: [] })).toThrow(/single word/);
  });

  it('writes hosts with localhost and the pod address', () => {
    const hosts = hostsFileFor('10.88.0.7', 'web');
    expect(hosts).toMatch(/^127\.0\.0\.1\tlocalhost$/m);
    expect(hosts).toMatch(/^10\.88\.0\.7\tweb$/m);
  });

  it('turns port mappings into host port requests', () => {
    const mappings = [
      { protocol: 'TCP' as const, container_port: 80, host_port: 0, host_ip: '' },
      { protocol: 'TCP' as const, container_port: 80, host_port: 12000, host_ip: '' },
      { protocol: 'UDP' as const, container_port: 53, host_port: 12053, host_ip: '127.0.0.1' },
    ];
    expect(hostPortRequests(mappings)).toEqual([
      { protocol: 'tcp', hostIp: '0.0.0.0', hostPort: 12000, containerPort: 80 },
      { protocol: 'udp', hostIp: '127.0.0.1', hostPort: 12053, containerPort: 53 },
    ]);
    const dup = { protocol: 'TCP' as const, container_port: 81, host_port: 12000, host_ip: '' };
    expect(() => hostPortRequests([...mappings, dup])).toThrow(/mapped twice/);
    expect(() =>
      hostPortRequests([{ protocol: 'TCP', container_port: 80, host_port: 70000, host_ip: '' }]),
    ).toThrow(/between 0 and 65535/);
    expect(() =>
      hostPortRequests([{ protocol: 'TCP', container_port: 80, host_port: 1, host_ip: 'localhost' }]),
    ).toThrow(/not an IP/);
    expect(() =>
      hostPortRequests([{ protocol: 'SCTP', container_port: 80, host_port: 1, host_ip: '' }]),
    ).toThrow(/SCTP/);
  });

  it('keeps cgroup_parent below the node cgroup', () => {
    const id = 'a'.repeat(64);
    expect(podCgroupPath('', id)).toBe(`/pods/${id}`);
    expect(podCgroupPath('/kubepods/burstable/pod123', id)).toBe('/kubepods/burstable/pod123');
    expect(podCgroupPath('kubepods.slice/x', id)).toBe('/kubepods.slice/x');
    for (const bad of ['/../x', 'a/../../b', '/a/./b', '/a/cgroup.procs', 'a b', '/']) {
      expect(() => podCgroupPath(bad, id)).toThrow(/cgroup_parent/);
    }
  });

  it('wants an absolute log directory without ".."', () => {
    expect(() => checkLogDirectory('')).not.toThrow();
    expect(() => checkLogDirectory('/var/log/pods/x')).not.toThrow();
    expect(() => checkLogDirectory('logs')).toThrow(/absolute/);
    expect(() => checkLogDirectory('/var/log/../../etc')).toThrow(/absolute/);
  });
});

function withNamespaces(options: Record<string, unknown>): PodSandboxConfig__Output {
  const config = podConfig();
  config.linux!.security_context!.namespace_options = {
    network: 'POD',
    ipc: 'POD',
    pid: 'POD',
    target_id: '',
    userns_options: null,
    ...options,
  } as never;
  return config;
}
