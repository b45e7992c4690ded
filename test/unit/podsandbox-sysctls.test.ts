import { describe, expect, it } from 'vitest';
import { sysctlNamespace, sysctlPath, validateSysctls } from '../../src/podsandbox/sysctls.js';

const own = { podNetwork: true, podIpc: true };

describe('sysctl validation', () => {
  it.each([
    ['kernel.shm_rmid_forced', '1', '/proc/sys/kernel/shm_rmid_forced'],
    ['fs.mqueue.msg_max', '100', '/proc/sys/fs/mqueue/msg_max'],
    ['kernel.sem', '250 32000 32 128', '/proc/sys/kernel/sem'],
    ['kernel.msgmax', '8192', '/proc/sys/kernel/msgmax'],
    ['net.ipv4.ip_local_port_range', '32768 60999', '/proc/sys/net/ipv4/ip_local_port_range'],
    ['net.ipv4.conf.all.rp_filter', '1', '/proc/sys/net/ipv4/conf/all/rp_filter'],
    ['net/ipv4/conf/eth0.100/forwarding', '1', '/proc/sys/net/ipv4/conf/eth0.100/forwarding'],
  ])('accepts %s=%s and writes %s', (key, value, path) => {
    expect(validateSysctls({ [key]: value }, own)).toEqual([{ key, value, path }]);
  });

  it.each([
    ['kernel.core_pattern', '|/x', /not namespaced/],
    ['vm.overcommit_memory', '1', /not namespaced/],
    ['fs.file-max', '1', /not namespaced/],
    ['kernel.hostname', 'x', /not namespaced/],
    ['net/../x', '1', /not a sysctl name/],
    ['net/../../kernel/core_pattern', '1', /not a sysctl name/],
    ['net..ipv4', '1', /not a sysctl name/],
    ['/net/ipv4/ip_forward', '1', /not a sysctl name/],
    ['net.ipv4.', '1', /not a sysctl name/],
    ['net', '1', /not a sysctl name/],
    ['', '1', /not a sysctl name/],
    ['net.ipv4.ip forward', '1', /not a sysctl name/],
    ['net.ipv4.ip_forward\n', '1', /not a sysctl name/],
    ['NET.ipv4.ip_forward', '1', /not a sysctl name/],
    // Catalog row 21: a value that smuggles a second key.
    ['kernel.shm_rmid_forced', '1 2+kernel.core_pattern=|/x', /not a sysctl value/],
    ['kernel.shm_rmid_forced', '1\nkernel.core_pattern=|/x', /not a sysctl value/],
    ['kernel.shm_rmid_forced', '1\u0000', /not a sysctl value/],
    ['kernel.shm_rmid_forced', '', /not a sysctl value/],
    ['kernel.shm_rmid_forced', 'x'.repeat(5000), /not a sysctl value/],
  ])('refuses %j=%j', (key, value, message) => {
    expect(() => validateSysctls({ [key]: value }, own)).toThrow(message);
    try {
      validateSysctls({ [key]: value }, own);
    } catch (err) {
      expect((err as { kind: string }).kind).toBe('InvalidArgument');
    }
  });

  it('names the offending key among good ones', () => {
    expect(() =>
      validateSysctls({ 'kernel.shm_rmid_forced': '1', 'kernel.core_pattern': '|/x' }, own),
    ).toThrow(/"kernel\.core_pattern"/);
  });

  it('refuses net.* on the node network and ipc keys in the node IPC namespace', () => {
    expect(() =>
      validateSysctls({ 'net.ipv4.ip_forward': '1' }, { podNetwork: false, podIpc: true }),
    ).toThrow(/hostNetwork/);
    expect(() =>
      validateSysctls({ 'kernel.shm_rmid_forced': '1' }, { podNetwork: true, podIpc: false }),
    ).toThrow(/hostIPC/);
    expect(() => validateSysctls({ 'fs.mqueue.msg_max': '10' }, { podNetwork: true, podIpc: false })).toThrow(
      /hostIPC/,
    );
  });

  it('returns each key as its own write, sorted, never joined', () => {
    const writes = validateSysctls({ 'net.ipv4.ip_forward': '1', 'kernel.shm_rmid_forced': '1' }, own);
    expect(writes.map((w) => w.key)).toEqual(['kernel.shm_rmid_forced', 'net.ipv4.ip_forward']);
  });

  it('classifies keys by namespace', () => {
    expect(sysctlNamespace('net.core.somaxconn')).toBe('net');
    expect(sysctlNamespace('kernel.shmmax')).toBe('ipc');
    expect(sysctlNamespace('kernel.msgmnb')).toBe('ipc');
    expect(sysctlNamespace('kernel.semx')).toBeNull();
    expect(sysctlNamespace('kernel.pid_max')).toBeNull();
    expect(sysctlPath('net/ipv4/ip_forward')).toBe('/proc/sys/net/ipv4/ip_forward');
  });
});
