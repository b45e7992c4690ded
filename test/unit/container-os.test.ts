/**
 * The container layer's own file access (NodeContainerOs), the node cgroup manager and the
 * runtime's monitor check on temp dirs, the resource update rules and program lookup: image
 * VOLUME dirs stay inside the rootfs even through hostile links (catalog row 19), a FIFO nobody
 * reads is reported instead of blocking, cgroup paths that climb are refused, a pid file naming
 * a process that is not conmon is a dead monitor.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeContainerOs } from '../../src/container/container-deps.js';
import { criToOciResources as updateResources } from '../../src/container/resources.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { NodeCgroupManager } from '../../src/os/cgroup-manager.js';
import { writeFifoNonBlocking } from '../../src/os/conmon-attach.js';
import { CrunConmonRuntime } from '../../src/os/oci-runtime.js';
import { findProgram } from '../../src/os/programs.js';
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
    const os = new NodeContainerOs();
    await os.makeVolumeDirs(rootfs, ['/data', '/abs/x', '/rel/y', '/../../../etc/z']);
    expect(existsSync(path.join(rootfs, 'data'))).toBe(true);
    expect(existsSync(path.join(rootfs, outside, 'x'))).toBe(true);
    expect(existsSync(path.join(rootfs, 'outside', 'y'))).toBe(true);
    expect(existsSync(path.join(rootfs, 'etc', 'z'))).toBe(true);
    expect(existsSync(path.join(outside, 'x'))).toBe(false);
    expect(existsSync(path.join(outside, 'y'))).toBe(false);
  });

  it('writes to a FIFO with a reader and reports one without a reader instead of blocking', async () => {
    const fifo = path.join(dir, 'ctl');
    execFileSync('mkfifo', [fifo]);
    expect(await writeFifoNonBlocking(fifo, '2 0 0\n')).toBe(false);
    expect(await writeFifoNonBlocking(path.join(dir, 'missing'), 'x')).toBe(false);
    const { open } = await import('node:fs/promises');
    const { constants } = await import('node:fs');
    const reader = await open(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      expect(await writeFifoNonBlocking(fifo, '2 0 0\n')).toBe(true);
      const buf = Buffer.alloc(16);
      const { bytesRead } = await reader.read(buf, 0, 16, null);
      expect(buf.subarray(0, bytesRead).toString()).toBe('2 0 0\n');
    } finally {
      await reader.close();
    }
  });
});

describe('NodeCgroupManager', () => {
  it('creates, reads and removes cgroups below its root, and refuses paths that climb', async () => {
    await mkdir(path.join(dir, 'cgroup'));
    const cgroups = NodeCgroupManager.at(path.join(dir, 'cgroup'));
    await expect(cgroups.create('/pods/../../etc')).rejects.toThrow(/bad cgroup path/);
    expect(await cgroups.create('/pods/p1/conmon')).toEqual(['/pods', '/pods/p1', '/pods/p1/conmon']);
    expect(await cgroups.create('/pods/p1/conmon')).toEqual([]);
    expect(cgroups.dir('/pods/p1/conmon')).toBe(path.join(dir, 'cgroup', 'pods', 'p1', 'conmon'));
    await writeFile(path.join(dir, 'cgroup', 'pods', 'p1', 'cpu.stat'), 'usage_usec 1\n');
    await writeFile(path.join(dir, 'cgroup', 'pods', 'p1', 'memory.stat'), 'anon 4\ninactive_file 2\n');
    expect(await cgroups.readFile('/pods/p1', 'cpu.stat')).toBe('usage_usec 1\n');
    expect(await cgroups.readFile('/pods/p1', 'memory.current')).toBeNull();
    const stats = await cgroups.stats('/pods/p1');
    expect(stats.cpuUsageNs).toBe(1000n);
    expect(stats.memoryBytes).toBeNull();
    expect(stats.memoryStat.get('anon')).toBe(4n);
    await cgroups.remove(['/pods/p1/conmon']);
    await cgroups.remove(['/pods/p1/conmon']);
    expect(existsSync(path.join(dir, 'cgroup', 'pods', 'p1', 'conmon'))).toBe(false);
  });

  it('removes the cgroups below one it removes (a container cgroup left in a pod cgroup)', async () => {
    const root = path.join(dir, 'cgroup');
    await mkdir(root);
    const cgroups = NodeCgroupManager.at(root);
    await cgroups.create('/pods/p2/c1/inner');
    await cgroups.create('/pods/p2/c2');
    await cgroups.remove(['/pods/p2']);
    expect(existsSync(path.join(root, 'pods', 'p2'))).toBe(false);
    // A directory that is not empty of files is not a cgroup: refused, and nothing is written to it.
    await cgroups.create('/pods/p3/c1');
    await writeFile(path.join(root, 'pods', 'p3', 'c1', 'note'), 'x');
    await expect(cgroups.remove(['/pods/p3'])).rejects.toThrow(/cannot remove cgroup/);
    expect(existsSync(path.join(root, 'pods', 'p3', 'cgroup.kill'))).toBe(false);
  });
});

describe('the runtime monitor check', () => {
  it('a monitor pid file naming a live non-conmon process, a bad pid or nothing is not a live conmon', async () => {
    const runtime = new CrunConmonRuntime({
      conmonPath: '/nonexistent/conmon',
      crunPath: '/nonexistent/crun',
      crunRoot: path.join(dir, 'crun'),
      stateDir: path.join(dir, 'containers'),
      exitDir: path.join(dir, 'exits'),
      socketDir: path.join(dir, 's'),
      logger: silentLogger(),
    });
    const id = 'c1';
    const file = runtime.paths.conmonPidFile(id);
    expect(await runtime.monitorAlive(id)).toBeNull();
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, String(process.pid));
    expect(await runtime.monitorAlive(id)).toBe(false);
    await writeFile(file, 'garbage');
    expect(await runtime.monitorAlive(id)).toBe(false);
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

describe('findProgram', () => {
  it('finds a bare name on PATH or the standard dirs, checks paths as given', async () => {
    const bin = path.join(dir, 'bin');
    await mkdir(bin);
    await writeFile(path.join(bin, 'my-tool'), '#!/bin/sh\n', { mode: 0o755 });
    await writeFile(path.join(bin, 'not-executable'), 'x', { mode: 0o644 });
    expect(findProgram('my-tool', [bin])).toBe(path.join(bin, 'my-tool'));
    expect(findProgram('sh', [])).toMatch(/^\/(usr\/)?bin\/sh$/);
    expect(findProgram(path.join(bin, 'my-tool'), [])).toBe(path.join(bin, 'my-tool'));
    expect(findProgram('not-executable', [bin])).toBeNull();
    expect(findProgram('no-such-program-anywhere', [bin])).toBeNull();
  });
});
