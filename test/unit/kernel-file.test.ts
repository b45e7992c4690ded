import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mayExistBelow, NodeCgroupManager } from '../../src/os/cgroup-manager.js';
import {
  kernelFileIdentity,
  readKernelDirectory,
  readKernelFile,
  readKernelLink,
} from '../../src/os/kernel-file.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'rcri-kernel-file-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('readKernelFile', () => {
  it('reads files the kernel reports as size 0, to their end', async () => {
    const stat = await readKernelFile('/proc/self/stat');
    expect(stat).toMatch(new RegExp(`^${process.pid} \\(`));
    expect(await readKernelFile('/proc/self/status')).toMatch(/^Name:/);
  });

  it('reads a file bigger than its buffer whole, empty files as "", and many at once in order', async () => {
    const big = `${'x'.repeat(40_000)}é${'y'.repeat(40_000)}\n`;
    await writeFile(path.join(dir, 'big'), big);
    await writeFile(path.join(dir, 'empty'), '');
    expect(await readKernelFile(path.join(dir, 'big'))).toBe(big);
    expect(await readKernelFile(path.join(dir, 'empty'))).toBe('');
    const files = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        await writeFile(path.join(dir, `f${i}`), `file ${i}\n`);
        return readKernelFile(path.join(dir, `f${i}`));
      }),
    );
    expect(files).toEqual(Array.from({ length: 50 }, (_, i) => `file ${i}\n`));
  });

  it('is null for what cannot be read: a missing file, a directory, a gone process', async () => {
    expect(await readKernelFile(path.join(dir, 'missing'))).toBeNull();
    expect(await readKernelFile(dir)).toBeNull();
    expect(await readKernelFile('/proc/999999999/status')).toBeNull();
  });

  it('many reads at once let the event loop run in between', async () => {
    let ranBetween = false;
    let readsBefore = -1;
    let reads = 0;
    setImmediate(() => {
      ranBetween = true;
      readsBefore = reads;
    });
    await Promise.all(
      Array.from({ length: 200 }, async () => {
        await readKernelFile('/proc/self/stat');
        reads += 1;
      }),
    );
    expect(ranBetween).toBe(true);
    expect(readsBefore).toBeGreaterThan(0);
    expect(readsBefore).toBeLessThan(200);
  });

  it('lists directories with their types and reads links; [] and null for what cannot be read', async () => {
    await mkdir(path.join(dir, 'child'));
    await symlink('socket:[123]', path.join(dir, 'link'));
    const entries = await readKernelDirectory(dir);
    expect(entries.map((e) => [e.name, e.isDirectory()]).sort()).toEqual([
      ['child', true],
      ['link', false],
    ]);
    expect(await readKernelLink(path.join(dir, 'link'))).toBe('socket:[123]');
    expect((await readKernelDirectory('/proc/self/fd')).length).toBeGreaterThan(2);
    expect(await readKernelDirectory(path.join(dir, 'missing'))).toEqual([]);
    expect(await readKernelLink(path.join(dir, 'child'))).toBeNull();
  });

  it('kernelFileIdentity tells namespaces apart by their nsfs inode; null when absent', async () => {
    const mine = await kernelFileIdentity('/proc/self/ns/net');
    expect(mine).toMatch(/^\d+:\d+$/);
    expect(await kernelFileIdentity(`/proc/${process.pid}/ns/net`)).toBe(mine);
    expect(await kernelFileIdentity('/proc/self/ns/user')).not.toBe(mine);
    expect(await kernelFileIdentity(path.join(dir, 'missing'))).toBeNull();
    await writeFile(path.join(dir, 'plain'), '');
    expect(await kernelFileIdentity(path.join(dir, 'plain', 'below'))).toBeNull(); // ENOTDIR
  });
});

describe('cgroup files of controllers that are not delegated', () => {
  it('mayExistBelow: a controller file exists only with its controller; core, cpu.stat and pressure files always', () => {
    expect(mayExistBelow('memory.current', ['cpu', 'pids'])).toBe(false);
    expect(mayExistBelow('memory.current', ['memory'])).toBe(true);
    expect(mayExistBelow('pids.current', [])).toBe(false);
    expect(mayExistBelow('cpu.max', [])).toBe(false);
    expect(mayExistBelow('io.stat', ['io'])).toBe(true);
    for (const file of ['cpu.stat', 'cpu.stat.local', 'memory.pressure', 'cgroup.procs', 'cgroup.events']) {
      expect(mayExistBelow(file, [])).toBe(true);
    }
  });

  it('a manager over a fixed root still reads every file (tests and the supervisor give no probe)', async () => {
    await writeFile(path.join(dir, 'memory.current'), '42\n');
    const cgroups = NodeCgroupManager.at(dir);
    expect(await cgroups.readFile('/', 'memory.current')).toBe('42\n');
  });
});
