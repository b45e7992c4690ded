/**
 * applyAdjustment: every kind of NRI container adjustment applied to an OCI spec, as a pure
 * function, with warnings for what this runtime cannot express.
 */
import { describe, expect, it } from 'vitest';
import { applyAdjustment } from '../../src/nri/adjust-spec.js';
import type { ContainerAdjustment } from '../../src/nri/api.js';
import type { NriOciSpec } from '../../src/nri/oci-spec.js';
import type { OciSpec } from '../../src/os/oci-spec.js';

function spec(): NriOciSpec {
  return {
    process: {
      args: ['/bin/app', '--flag'],
      env: ['PATH=/usr/bin', 'KEEP=1', 'CHANGE=old', 'DROP=x'],
      user: { uid: 0, gid: 0 },
    },
    annotations: { keep: 'k', drop: 'd' },
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: [] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid'] },
      { destination: '/etc/hosts', type: 'bind', source: '/run/hosts', options: ['rbind', 'ro'] },
      { destination: '/dev/shm', type: 'bind', source: '/run/shm', options: ['rbind'] },
    ],
    linux: {
      namespaces: [{ type: 'pid' }, { type: 'network', path: '/run/netns/pod' }, { type: 'mount' }],
      resources: { cpu: { shares: 2 }, memory: { limit: 1000 } },
      sysctl: { 'net.ipv4.ping_group_range': '0 0' },
      devices: [{ type: 'c', path: '/dev/old', major: 1, minor: 1 }],
    },
  };
}

describe('applyAdjustment', () => {
  it('returns an equal copy for no adjustment and never modifies its input', () => {
    const input = spec();
    const frozen = structuredClone(input);
    const { spec: out, warnings } = applyAdjustment(input, undefined);
    expect(out).toEqual(frozen);
    expect(out).not.toBe(input);
    expect(warnings).toEqual([]);

    applyAdjustment(input, {
      annotations: { '-drop': '', added: 'a' },
      env: [{ key: 'NEW', value: '1' }],
      mounts: [{ destination: '-/proc' }],
      linux: { resources: { cpu: { shares: { value: 9n } } } },
    });
    expect(input).toEqual(frozen);
  });

  it('adds and removes annotations', () => {
    const { spec: out } = applyAdjustment(spec(), {
      annotations: { '-drop': '', added: 'a', keep: 'changed' },
    });
    expect(out.annotations).toEqual({ keep: 'changed', added: 'a' });
  });

  it('changes env in place, removes marked variables and appends new ones in order', () => {
    const { spec: out } = applyAdjustment(spec(), {
      env: [
        { key: 'CHANGE', value: 'new' },
        { key: '-DROP', value: '' },
        { key: 'FIRST', value: '1' },
        { key: 'SECOND', value: 'a=b' },
      ],
    });
    expect(out.process?.env).toEqual(['PATH=/usr/bin', 'KEEP=1', 'CHANGE=new', 'FIRST=1', 'SECOND=a=b']);
  });

  it('replaces args, ignoring the leading "" that only matters for merging', () => {
    expect(applyAdjustment(spec(), { args: ['/other'] }).spec.process?.args).toEqual(['/other']);
    expect(applyAdjustment(spec(), { args: ['', '/other', 'x'] }).spec.process?.args).toEqual([
      '/other',
      'x',
    ]);
    expect(applyAdjustment(spec(), { args: [] }).spec.process?.args).toEqual(['/bin/app', '--flag']);
  });

  it('appends hooks of each kind, with args, env and timeout', () => {
    const { spec: out } = applyAdjustment(spec(), {
      hooks: {
        prestart: [{ path: '/hooks/a', args: ['a', '1'], env: ['X=1'], timeout: { value: 5n } }],
        createRuntime: [{ path: '/hooks/b' }],
        poststop: [{ path: '/hooks/c' }, { path: '' }],
      },
    });
    expect(out.hooks).toEqual({
      prestart: [{ path: '/hooks/a', args: ['a', '1'], env: ['X=1'], timeout: 5 }],
      createRuntime: [{ path: '/hooks/b' }],
      poststop: [{ path: '/hooks/c' }],
    });
    const again = applyAdjustment(out, { hooks: { prestart: [{ path: '/hooks/d' }] } });
    expect(again.spec.hooks?.prestart?.map((h) => h.path)).toEqual(['/hooks/a', '/hooks/d']);
    expect(applyAdjustment(spec(), { hooks: { poststop: [{ path: '' }] } }).warnings).toEqual([
      'hook without a path; left out',
    ]);
  });

  it('replaces a mount with the same destination, removes marked ones and keeps parents first', () => {
    const { spec: out } = applyAdjustment(spec(), {
      mounts: [
        { destination: '/data/cache', type: 'bind', source: '/srv/cache', options: ['rbind'] },
        { destination: '-/dev/shm' },
        { destination: '/etc/hosts', type: 'bind', source: '/plugin/hosts', options: ['rbind', 'ro'] },
        { destination: '/data', type: 'tmpfs', source: 'tmpfs', options: [] },
      ],
    });
    expect(out.mounts?.map((m) => `${m.destination} ${m.source}`)).toEqual([
      '/proc proc',
      '/dev tmpfs',
      '/data tmpfs',
      '/data/cache /srv/cache',
      '/etc/hosts /plugin/hosts',
    ]);
  });

  it('sets rootfs propagation for rshared and rslave mounts', () => {
    const slave = applyAdjustment(spec(), {
      mounts: [{ destination: '/m', type: 'bind', source: '/s', options: ['rbind', 'rslave'] }],
    });
    expect(slave.spec.linux?.rootfsPropagation).toBe('rslave');
    const shared = applyAdjustment(slave.spec, {
      mounts: [{ destination: '/n', type: 'bind', source: '/t', options: ['rbind', 'rshared'] }],
    });
    expect(shared.spec.linux?.rootfsPropagation).toBe('rshared');
    const stillShared = applyAdjustment(shared.spec, {
      mounts: [{ destination: '/o', type: 'bind', source: '/u', options: ['rslave'] }],
    });
    expect(stillShared.spec.linux?.rootfsPropagation).toBe('rshared');
  });

  it('adds devices with a cgroup rule and removes marked ones', () => {
    const { spec: out, warnings } = applyAdjustment(spec(), {
      linux: {
        devices: [
          {
            path: '/dev/fuse',
            type: 'c',
            major: 10n,
            minor: 229n,
            fileMode: { value: 0o666 },
            uid: { value: 0 },
          },
          { path: '/dev/sdz', type: 'b', major: 8n, minor: 0n, fileMode: { value: 0o440 } },
          { path: '-/dev/old' },
          { path: '/dev/odd', type: 'x', major: 1n, minor: 1n },
        ],
      },
    });
    expect(out.linux?.devices).toEqual([
      { path: '/dev/fuse', type: 'c', major: 10, minor: 229, fileMode: 0o666, uid: 0 },
      { path: '/dev/sdz', type: 'b', major: 8, minor: 0, fileMode: 0o440 },
    ]);
    expect(out.linux?.resources?.devices).toEqual([
      { allow: true, type: 'c', major: 10, minor: 229, access: 'rw' },
      { allow: true, type: 'b', major: 8, minor: 0, access: 'rm' },
    ]);
    expect(warnings).toEqual(['device /dev/odd: unknown type "x"; left out']);
  });

  it('applies cpu, memory (swap = limit unless given), pids, hugepages, unified and device rules', () => {
    const { spec: out, warnings } = applyAdjustment(spec(), {
      linux: {
        resources: {
          cpu: {
            shares: { value: 512n },
            quota: { value: -1n },
            period: { value: 100000n },
            cpus: '0-1',
            mems: '0',
          },
          memory: { limit: { value: 1n << 30n }, reservation: { value: 1n << 20n }, kernel: { value: 1n } },
          pids: { limit: 64n },
          hugepageLimits: [{ pageSize: '2MB', limit: 1n << 21n }],
          unified: { 'memory.high': '900M' },
          devices: [{ allow: false, access: 'rwm' }],
          blockioClass: { value: 'slow' },
        },
      },
    });
    expect(out.linux?.resources).toEqual({
      cpu: { shares: 512, quota: -1, period: 100000, cpus: '0-1', mems: '0' },
      memory: { limit: 1 << 30, swap: 1 << 30, reservation: 1 << 20 },
      pids: { limit: 64 },
      hugepageLimits: [{ pageSize: '2MB', limit: 1 << 21 }],
      unified: { 'memory.high': '900M' },
      devices: [{ allow: false, access: 'rwm' }],
    });
    expect(warnings).toEqual([
      'memory kernel: cgroup v1 settings, not available with cgroup v2; left out',
      'block I/O class "slow": no block I/O classes are configured; left out',
    ]);
    const withSwap = applyAdjustment(spec(), {
      linux: { resources: { memory: { limit: { value: 100n }, swap: { value: 300n } } } },
    });
    expect(withSwap.spec.linux?.resources?.memory).toEqual({ limit: 100, swap: 300 });
  });

  it('adds, replaces and removes namespaces, refusing unknown types', () => {
    const { spec: out, warnings } = applyAdjustment(spec(), {
      linux: {
        namespaces: [
          { type: 'network', path: '/run/netns/other' },
          { type: '-pid' },
          { type: 'cgroup' },
          { type: 'bogus' },
        ],
      },
    });
    expect(out.linux?.namespaces).toEqual([
      { type: 'mount' },
      { type: 'network', path: '/run/netns/other' },
      { type: 'cgroup' },
    ]);
    expect(warnings).toEqual(['namespace type "bogus" is not an OCI namespace; left out']);
  });

  it('sets and removes sysctls and net devices', () => {
    const { spec: out } = applyAdjustment(spec(), {
      linux: {
        sysctl: { '-net.ipv4.ping_group_range': '', 'net.core.somaxconn': '1024' },
        netDevices: { eth9: { name: 'net9' }, '-eth8': {} },
      },
    });
    expect(out.linux?.sysctl).toEqual({ 'net.core.somaxconn': '1024' });
    expect(out.linux?.netDevices).toEqual({ eth9: { name: 'net9' } });
  });

  it('sets process knobs: oom score, I/O priority, scheduler; and cgroups path, seccomp, memory policy, RDT', () => {
    const { spec: out, warnings } = applyAdjustment(spec(), {
      linux: {
        cgroupsPath: '/kubepods/plugin',
        oomScoreAdj: { value: -500n },
        ioPriority: { class: 2, priority: 4 },
        scheduler: { policy: 3, priority: 10, flags: [0, 9] },
        seccompPolicy: {
          defaultAction: 'SCMP_ACT_ERRNO',
          defaultErrno: { value: 38 },
          architectures: ['SCMP_ARCH_X86_64'],
          syscalls: [
            {
              names: ['mkdir'],
              action: 'SCMP_ACT_ALLOW',
              args: [{ index: 1, value: 2n, op: 'SCMP_CMP_EQ' }],
            },
          ],
        },
        memoryPolicy: { mode: 2, nodes: '0-1', flags: [0] },
        rdt: { closId: { value: 'gold' }, enableMonitoring: { value: true } },
      },
    });
    expect(out.linux?.cgroupsPath).toBe('/kubepods/plugin');
    expect(out.process?.oomScoreAdj).toBe(-500);
    expect(out.process?.ioPriority).toEqual({ class: 'IOPRIO_CLASS_BE', priority: 4 });
    expect(out.process?.scheduler).toEqual({
      policy: 'SCHED_RR',
      priority: 10,
      flags: ['SCHED_FLAG_RESET_ON_FORK'],
    });
    expect(warnings).toEqual(['scheduler.flags: unknown value 9; left out']);
    expect(out.linux?.seccomp).toEqual({
      defaultAction: 'SCMP_ACT_ERRNO',
      defaultErrnoRet: 38,
      architectures: ['SCMP_ARCH_X86_64'],
      syscalls: [
        { names: ['mkdir'], action: 'SCMP_ACT_ALLOW', args: [{ index: 1, value: 2, op: 'SCMP_CMP_EQ' }] },
      ],
    });
    expect(out.linux?.memoryPolicy).toEqual({
      mode: 'MPOL_BIND',
      nodes: '0-1',
      flags: ['MPOL_F_STATIC_NODES'],
    });
    expect(out.linux?.intelRdt).toEqual({ closID: 'gold', enableMonitoring: true });
    expect(applyAdjustment(out, { linux: { rdt: { remove: true } } }).spec.linux?.intelRdt).toBeUndefined();
  });

  it('replaces rlimits by type and leaves out values a JSON number cannot hold', () => {
    const base = applyAdjustment(spec(), {
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024n, soft: 1024n }],
    }).spec;
    const { spec: out, warnings } = applyAdjustment(base, {
      rlimits: [
        { type: 'RLIMIT_NOFILE', hard: 4096n, soft: 2048n },
        { type: 'RLIMIT_MEMLOCK', hard: (1n << 64n) - 1n, soft: (1n << 64n) - 1n },
        { type: 'nofile', hard: 1n, soft: 1n },
      ],
    });
    expect(out.process?.rlimits).toEqual([{ type: 'RLIMIT_NOFILE', hard: 4096, soft: 2048 }]);
    expect(warnings).toEqual([
      'rlimit RLIMIT_MEMLOCK hard: value 18446744073709551615 does not fit in config.json as a JSON number here; left out',
      'rlimit RLIMIT_MEMLOCK soft: value 18446744073709551615 does not fit in config.json as a JSON number here; left out',
      'rlimit type "nofile" is not an RLIMIT_* name; left out',
    ]);
  });

  it('hands CDI devices to the injector, or warns without one', () => {
    const adjustment: ContainerAdjustment = { cdiDevices: [{ name: 'vendor.com/gpu=0' }] };
    expect(applyAdjustment(spec(), adjustment).warnings).toEqual([
      'CDI devices vendor.com/gpu=0: this runtime has no CDI registry; left out',
    ]);
    const { spec: out } = applyAdjustment(spec(), adjustment, {
      injectCdiDevices: (s, names) => {
        s.process?.env?.push(`CDI=${names.join(',')}`);
      },
    });
    expect(out.process?.env).toContain('CDI=vendor.com/gpu=0');
  });

  it("accepts the runtime's own spec type and returns the same type", () => {
    const runtimeSpec: OciSpec = {
      ociVersion: '1.0.2',
      process: {
        terminal: false,
        user: { uid: 0, gid: 0 },
        args: ['sh'],
        env: ['A=1'],
        cwd: '/',
        capabilities: { bounding: [], effective: [], inheritable: [], permitted: [], ambient: [] },
        noNewPrivileges: true,
      },
      root: { path: 'rootfs' },
      mounts: [],
      annotations: {},
      linux: { namespaces: [{ type: 'mount' }] },
    };
    const { spec: out } = applyAdjustment(runtimeSpec, { env: [{ key: 'B', value: '2' }] });
    const typed: OciSpec = out;
    expect(typed.process.env).toEqual(['A=1', 'B=2']);
    expect(typed.process.capabilities.bounding).toEqual([]);
  });
});
