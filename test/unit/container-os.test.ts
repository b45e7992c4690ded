/**
 * The container layer's own OS access (NodeContainerOs) on temp dirs, the resource update
 * rules and program resolution: image VOLUME dirs stay inside the rootfs even through hostile
 * links (catalog row 19), a FIFO nobody reads is reported instead of blocking, a pid file
 * naming a process that is not conmon is a dead monitor.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeContainerOs } from '../../src/container/container-deps.js';
import { resolveProgram } from '../../src/container/container-service.js';
import { criToOciResources as updateResources } from '../../src/container/resources.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { hostFacts, resources } from '../fakes/container-fixtures.js';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'ctr-os-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('NodeContainerOs', () => {
  it('creates image VOLUME dirs in-root, even through absolute and climbing symlinks', async () => {
    const rootfs = path.join(dir, 'rootfs');
    const outside = path.join(dir, 'outside');
    await mkdir(path.join(rootfs, 'etc'), { recursive: true });
    await mkdir(outside);
    await symlink(outside, path.join(rootfs, 'abs'));
    await symlink('../../../../outside', path.join(rootfs, 'rel'));
    const os = new NodeContainerOs(path.join(dir, 'cgroup'));
    await os.makeVolumeDirs(rootfs, ['/data', '/abs/x', '/rel/y', '/../../../etc/z']);
    expect(existsSync(path.join(rootfs, 'data'))).toBe(true);
    expect(existsSync(path.join(rootfs, outside, 'x'))).toBe(true);
    expect(existsSync(path.join(rootfs, 'outside', 'y'))).toBe(true);
    expect(existsSync(path.join(rootfs, 'etc', 'z'))).toBe(true);
    expect(existsSync(path.join(outside, 'x'))).toBe(false);
    expect(existsSync(path.join(outside, 'y'))).toBe(false);
  });

  it('writes to a FIFO with a reader, reports one without a reader, and refuses cgroup paths that climb', async () => {
    const os = new NodeContainerOs(path.join(dir, 'cgroup'));
    const fifo = path.join(dir, 'ctl');
    execFileSync('mkfifo', [fifo]);
    expect(await os.writeFifo(fifo, '2 0 0\n')).toBe(false);
    expect(await os.writeFifo(path.join(dir, 'missing'), 'x')).toBe(false);
    const { open } = await import('node:fs/promises');
    const { constants } = await import('node:fs');
    const reader = await open(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      expect(await os.writeFifo(fifo, '2 0 0\n')).toBe(true);
      const buf = Buffer.alloc(16);
      const { bytesRead } = await reader.read(buf, 0, 16, null);
      expect(buf.subarray(0, bytesRead).toString()).toBe('2 0 0\n');
    } finally {
      await reader.close();
    }
    await expect(os.ensureCgroup('/pods/../../etc')).rejects.toThrow(/bad cgroup path/);
    expect(await os.ensureCgroup('/pods/p1/conmon')).toBe(path.join(dir, 'cgroup', 'pods', 'p1', 'conmon'));
    await writeFile(path.join(dir, 'cgroup', 'pods', 'p1', 'cpu.stat'), 'usage_usec 1\n');
    expect(await os.readCgroupFile('/pods/p1', 'cpu.stat')).toBe('usage_usec 1\n');
    expect(await os.readCgroupFile('/pods/p1', 'memory.current')).toBeNull();
    await os.removeCgroup('/pods/p1/conmon');
    await os.removeCgroup('/pods/p1/conmon');
    expect(existsSync(path.join(dir, 'cgroup', 'pods', 'p1', 'conmon'))).toBe(false);
  });

  it('a monitor pid file naming a live non-conmon process, a bad pid or nothing is not a live conmon', async () => {
    const os = new NodeContainerOs();
    const file = path.join(dir, 'conmon.pid');
    expect(await os.monitorAlive(file)).toBeNull();
    await writeFile(file, String(process.pid));
    expect(await os.monitorAlive(file)).toBe(false);
    await writeFile(file, 'garbage');
    expect(await os.monitorAlive(file)).toBe(false);
    expect(await readFile(file, 'utf8')).toBe('garbage');
  });
});

describe('updateResources', () => {
  it('maps delegated limits and warns about the rest', () => {
    const facts = hostFacts({ controllers: ['cpu', 'pids'] });
    const r = updateResources(
      resources({
        cpu_shares: '512',
        cpu_quota: '-1',
        cpu_period: '100000',
        memory_limit_in_bytes: '1000',
        hugepage_limits: [{ page_size: '2MB', limit: '4096' }],
        unified: { 'pids.max': '10', 'io.max': 'x' },
      }),
      facts,
      true,
    );
    expect(r.resources).toEqual({
      cpu: { shares: 512, quota: -1, period: 100000 },
      unified: { 'pids.max': '10' },
    });
    expect(r.warnings.join('\n')).toMatch(/memory limit dropped/);
    expect(r.warnings.join('\n')).toMatch(/hugepage limits dropped/);
    expect(r.warnings.join('\n')).toMatch(/unified io.max dropped/);
    const none = updateResources(resources({ cpu_shares: '2' }), facts, false);
    expect(none.resources).toEqual({});
    expect(none.warnings[0]).toMatch(/has no cgroup/);
  });

  it('rejects malformed values', () => {
    const facts = hostFacts();
    expect(() => updateResources(resources({ memory_limit_in_bytes: '-5' }), facts, true)).toThrow(
      InvalidArgumentError,
    );
    expect(() => updateResources(resources({ cpuset_cpus: '0;rm' }), facts, true)).toThrow(
      InvalidArgumentError,
    );
    expect(() => updateResources(resources({ unified: { '../x': '1' } }), facts, true)).toThrow(
      InvalidArgumentError,
    );
    expect(() => updateResources(resources({ unified: { 'pids.max': '1\n2' } }), facts, true)).toThrow(
      InvalidArgumentError,
    );
  });
});

describe('resolveProgram', () => {
  it('finds a bare name on PATH or the standard dirs, keeps paths as given', async () => {
    const bin = path.join(dir, 'bin');
    await mkdir(bin);
    await writeFile(path.join(bin, 'my-tool'), '#!/bin/sh\n', { mode: 0o755 });
    expect(resolveProgram('my-tool', bin)).toBe(path.join(bin, 'my-tool'));
    expect(resolveProgram('sh', '')).toMatch(/^\/(usr\/)?bin\/sh$/);
    expect(resolveProgram('./relative/tool', bin)).toBe('./relative/tool');
    expect(resolveProgram('no-such-program-anywhere', bin)).toBe('no-such-program-anywhere');
  });
});
