/**
 * Merging several plugins' answers: ownership of fields, conflicts naming both plugins,
 * removal before taking over, hooks accumulating, the request updated for later plugins,
 * and updates of other containers.
 */
import { describe, expect, it } from 'vitest';
import type { Container, ContainerUpdate, CreateContainerResponse } from '../../src/nri/api.js';
import { CreateContainerMerge, UpdateMerge } from '../../src/nri/merge.js';

function container(): Container {
  return {
    id: 'ctr',
    name: 'app',
    annotations: { base: 'b' },
    env: ['PATH=/bin', 'BASE=1'],
    mounts: [{ destination: '/data', source: '/srv', type: 'bind', options: ['rbind'] }],
    args: ['/bin/app'],
    linux: { namespaces: [{ type: 'network', path: '/run/netns/p' }] },
  };
}

const adjust = (a: CreateContainerResponse['adjust']): CreateContainerResponse => ({ adjust: a });

describe('CreateContainerMerge', () => {
  it('combines non-overlapping adjustments and shows later plugins what earlier ones did', () => {
    const request = container();
    const merge = new CreateContainerMerge(request);
    merge.apply(adjust({ env: [{ key: 'A', value: '1' }], annotations: { a: '1' } }), '05-a');
    expect(request.env).toEqual(['PATH=/bin', 'BASE=1', 'A=1']);
    expect(request.annotations).toEqual({ base: 'b', a: '1' });
    merge.apply(
      adjust({
        env: [{ key: 'B', value: '2' }],
        annotations: { b: '2' },
        mounts: [{ destination: '/cache', source: '/c', type: 'bind' }],
      }),
      '10-b',
    );
    const { adjustment } = merge.result();
    expect(adjustment.env).toEqual([
      { key: 'A', value: '1' },
      { key: 'B', value: '2' },
    ]);
    expect(adjustment.annotations).toEqual({ a: '1', b: '2' });
    expect(adjustment.mounts).toEqual([{ destination: '/cache', source: '/c', type: 'bind' }]);
    expect(request.mounts?.map((m) => m.destination)).toEqual(['/data', '/cache']);
  });

  it.each([
    ['an annotation', { annotations: { k: 'x' } }, { annotations: { k: 'y' } }, 'annotation "k"'],
    [
      'an env variable',
      { env: [{ key: 'K', value: 'x' }] },
      { env: [{ key: 'K', value: 'y' }] },
      'environment variable "K"',
    ],
    ['a mount', { mounts: [{ destination: '/m' }] }, { mounts: [{ destination: '/m' }] }, 'mount "/m"'],
    ['args', { args: ['a'] }, { args: ['b'] }, 'args'],
    [
      'an rlimit',
      { rlimits: [{ type: 'RLIMIT_NOFILE' }] },
      { rlimits: [{ type: 'RLIMIT_NOFILE' }] },
      'rlimit "RLIMIT_NOFILE"',
    ],
    [
      'a memory limit',
      { linux: { resources: { memory: { limit: { value: 1n } } } } },
      { linux: { resources: { memory: { limit: { value: 2n } } } } },
      'memory.limit',
    ],
    [
      'a cpuset',
      { linux: { resources: { cpu: { cpus: '0' } } } },
      { linux: { resources: { cpu: { cpus: '1' } } } },
      'cpuset.cpus',
    ],
    [
      'a device',
      { linux: { devices: [{ path: '/dev/x' }] } },
      { linux: { devices: [{ path: '/dev/x' }] } },
      'device "/dev/x"',
    ],
    [
      'a namespace',
      { linux: { namespaces: [{ type: 'ipc' }] } },
      { linux: { namespaces: [{ type: 'ipc' }] } },
      'namespace "ipc"',
    ],
    ['the cgroups path', { linux: { cgroupsPath: '/a' } }, { linux: { cgroupsPath: '/b' } }, 'cgroups path'],
    [
      'a CDI device',
      { cdiDevices: [{ name: 'v/g=0' }] },
      { cdiDevices: [{ name: 'v/g=0' }] },
      'CDI device "v/g=0"',
    ],
  ] as [string, CreateContainerResponse['adjust'], CreateContainerResponse['adjust'], string][])(
    'refuses two plugins setting %s, naming both',
    (_what, first, second, field) => {
      const merge = new CreateContainerMerge(container());
      merge.apply(adjust(first), '05-a');
      let error: unknown;
      try {
        merge.apply(adjust(second), '10-b');
      } catch (err) {
        error = err;
      }
      expect(error).toMatchObject({ kind: 'FailedPrecondition' });
      expect((error as Error).message).toContain(`NRI plugins "05-a" and "10-b" both tried to set ${field}`);
    },
  );

  it('lets a plugin take over an entry by removing it first', () => {
    const request = container();
    const merge = new CreateContainerMerge(request);
    merge.apply(adjust({ env: [{ key: 'K', value: 'x' }], annotations: { k: 'x' } }), '05-a');
    merge.apply(
      adjust({
        env: [
          { key: '-K', value: '' },
          { key: 'K', value: 'y' },
        ],
        annotations: { '-k': '', k: 'y' },
      }),
      '10-b',
    );
    const { adjustment } = merge.result();
    expect(adjustment.env).toEqual([
      { key: '-K', value: '' },
      { key: 'K', value: 'y' },
    ]);
    expect(adjustment.annotations).toEqual({ '-k': '', k: 'y' });
    expect(request.env).toEqual(['PATH=/bin', 'BASE=1', 'K=y']);
    // A third plugin may not set it again: the taker owns it now.
    expect(() => merge.apply(adjust({ env: [{ key: 'K', value: 'z' }] }), '20-c')).toThrow(
      /"10-b" and "20-c"/,
    );
  });

  it('passes removals of original entries on, and a removed entry cannot be set by another plugin', () => {
    const request = container();
    const merge = new CreateContainerMerge(request);
    merge.apply(adjust({ env: [{ key: '-BASE', value: '' }], mounts: [{ destination: '-/data' }] }), '05-a');
    expect(request.env).toEqual(['PATH=/bin']);
    expect(request.mounts).toEqual([]);
    expect(merge.result().adjustment).toMatchObject({
      env: [{ key: '-BASE', value: '' }],
      mounts: [{ destination: '-/data' }],
    });
    expect(() => merge.apply(adjust({ env: [{ key: 'BASE', value: '2' }] }), '10-b')).toThrow(
      /"05-a" and "10-b" both tried to set environment variable "BASE" \(removed by 05-a\)/,
    );
  });

  it('accumulates hooks from every plugin', () => {
    const merge = new CreateContainerMerge(container());
    merge.apply(adjust({ hooks: { prestart: [{ path: '/a' }] } }), '05-a');
    merge.apply(adjust({ hooks: { prestart: [{ path: '/b' }], poststop: [{ path: '/c' }] } }), '10-b');
    const hooks = merge.result().adjustment.hooks!;
    expect(hooks.prestart?.map((h) => h.path)).toEqual(['/a', '/b']);
    expect(hooks.poststop?.map((h) => h.path)).toEqual(['/c']);
  });

  it('lets args be overridden on purpose with a leading ""', () => {
    const request = container();
    const merge = new CreateContainerMerge(request);
    merge.apply(adjust({ args: ['/first'] }), '05-a');
    merge.apply(adjust({ args: ['', '/second', '-v'] }), '10-b');
    expect(merge.result().adjustment.args).toEqual(['/second', '-v']);
    expect(request.args).toEqual(['/second', '-v']);
  });

  it('replaces a namespace in the request and keeps the adjustment for the spec', () => {
    const request = container();
    const merge = new CreateContainerMerge(request);
    merge.apply(
      adjust({ linux: { namespaces: [{ type: 'network', path: '/run/netns/q' }, { type: '-ipc' }] } }),
      '05-a',
    );
    expect(request.linux?.namespaces).toEqual([{ type: 'network', path: '/run/netns/q' }]);
    expect(merge.result().adjustment.linux?.namespaces).toEqual([
      { type: 'network', path: '/run/netns/q' },
      { type: '-ipc' },
    ]);
  });

  it('merges updates of other containers per container, and refuses updating the one being created', () => {
    const merge = new CreateContainerMerge(container());
    const cpu = (id: string, shares: bigint, ignoreFailure = false): ContainerUpdate => ({
      containerId: id,
      linux: { resources: { cpu: { shares: { value: shares } } } },
      ignoreFailure,
    });
    const memory = (id: string): ContainerUpdate => ({
      containerId: id,
      linux: { resources: { memory: { limit: { value: 5n } } } },
    });
    merge.apply(
      { update: [cpu('other', 100n)], evict: [{ containerId: 'victim', reason: 'space' }] },
      '05-a',
    );
    merge.apply({ update: [memory('other'), cpu('third', 7n)] }, '10-b');
    // An ignorable conflicting update is dropped; a non-ignorable one fails the request.
    merge.apply({ update: [cpu('other', 999n, true)] }, '20-c');
    const { updates, evictions } = merge.result();
    expect(updates).toEqual([
      {
        containerId: 'other',
        linux: { resources: { cpu: { shares: { value: 100n } }, memory: { limit: { value: 5n } } } },
        ignoreFailure: false,
      },
      {
        containerId: 'third',
        linux: { resources: { cpu: { shares: { value: 7n } } } },
        ignoreFailure: false,
      },
    ]);
    expect(evictions).toEqual([{ containerId: 'victim', reason: 'space', plugin: '05-a' }]);
    expect(() => merge.apply({ update: [cpu('other', 1n)] }, '30-d')).toThrow(
      /"05-a" and "30-d" both tried to set cpu.shares/,
    );
    expect(() => merge.apply({ update: [cpu('ctr', 1n)] }, '30-d')).toThrow(
      /asked to update container ctr while it is being created/,
    );
  });
});

describe('UpdateMerge', () => {
  it('adjusts the updated container with the owning rules and collects updates of others', () => {
    const merge = new UpdateMerge({
      containerId: 'ctr',
      resources: { cpu: { shares: { value: 100n } }, memory: { limit: { value: 1000n } } },
    });
    merge.apply(
      { update: [{ containerId: 'ctr', linux: { resources: { cpu: { shares: { value: 200n } } } } }] },
      '05-a',
    );
    merge.apply(
      {
        update: [{ containerId: 'other', linux: { resources: { cpu: { cpus: '1' } } } }],
        evict: [{ containerId: 'x' }],
      },
      '10-b',
    );
    expect(() =>
      merge.apply(
        { update: [{ containerId: 'ctr', linux: { resources: { cpu: { shares: { value: 1n } } } } }] },
        '20-c',
      ),
    ).toThrow(/"05-a" and "20-c" both tried to set cpu.shares/);
    const result = merge.result();
    expect(result.resources).toEqual({
      cpu: { shares: { value: 200n } },
      memory: { limit: { value: 1000n } },
    });
    expect(result.updates.map((u) => u.containerId)).toEqual(['other']);
    expect(result.evictions).toEqual([{ containerId: 'x', reason: '', plugin: '10-b' }]);
  });
});
