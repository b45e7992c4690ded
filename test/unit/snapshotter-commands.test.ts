/**
 * The snapshotters' commands, error kinds and directory handling, with the OS faked
 * (no mounts happen): a temp dir holds the layers and snapshots; the fake records each
 * command and keeps a mount table that the mount/unmount commands change.
 */
import { chmod, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/errors.js';
import { FuseOverlayfsSnapshotter } from '../../src/image/fuse-overlayfs-snapshotter.js';
import { OverlaySnapshotter } from '../../src/image/overlay-snapshotter.js';
import type { ProcessInfo, SnapshotterOs } from '../../src/image/snapshotter.js';
import type { CommandOptions, CommandResult } from '../../src/os/mounts.js';
import { withRunsFailing } from '../fakes/failing-runs.js';
import { makeDeepTree } from '../fixtures/deep-tree.js';

interface RecordedCommand {
  argv: string[];
  cwd: string | undefined;
}

class FakeOs implements SnapshotterOs {
  readonly commands: RecordedCommand[] = [];
  readonly mounted: string[] = [];
  readonly processes: ProcessInfo[] = [];
  /** Daemons started by the fake fuse-overlayfs get pids from 1000 on. */
  nextPid = 1000;
  readonly signals: string[] = [];
  /** pids that ignore SIGTERM. */
  readonly stubborn = new Set<number>();
  /** The next mount command answers this instead of mounting. */
  mountResult: Partial<CommandResult> | undefined;
  /** The next mount command "succeeds" without mounting anything. */
  mountSilently = false;
  /** Mount commands wait for this before answering. */
  mountGate: Promise<void> = Promise.resolve();
  deviceError: NodeJS.ErrnoException | undefined;

  run = async (
    command: string,
    args: readonly string[],
    options?: CommandOptions,
  ): Promise<CommandResult> => {
    this.commands.push({ argv: [command, ...args], cwd: options?.cwd });
    const target = args.at(-1)!;
    if (command === 'mount' || command === 'fuse-overlayfs') {
      await this.mountGate;
      const scripted = this.mountResult;
      this.mountResult = undefined;
      if (scripted !== undefined) return { exitCode: 1, stdout: '', stderr: '', ...scripted };
      if (this.mountSilently) return { exitCode: 0, stdout: '', stderr: '' };
      this.mounted.push(target);
      if (command === 'fuse-overlayfs')
        this.processes.push({ pid: this.nextPid++, argv: [command, ...args] });
      return { exitCode: 0, stdout: '', stderr: '' };
    }
    const index = this.mounted.lastIndexOf(target);
    if (index < 0) return { exitCode: 1, stdout: '', stderr: `${target}: not mounted` };
    this.mounted.splice(index, 1);
    // The daemon of a FUSE mount exits when it is unmounted.
    const daemon = this.processes.findIndex((p) => p.pid >= 1000 && p.argv.at(-1) === target);
    if (daemon >= 0) this.processes.splice(daemon, 1);
    return { exitCode: 0, stdout: '', stderr: '' };
  };

  readMountTable = async () =>
    this.mounted.map((p, i) => `${100 + i} 1 0:${i} / ${p} rw - fake fake rw`).join('\n');
  listProcesses = async () => this.processes.map((p) => ({ ...p, argv: [...p.argv] }));
  kill = (pid: number, signal: NodeJS.Signals) => {
    this.signals.push(`${pid}:${signal}`);
    if (signal === 'SIGTERM' && this.stubborn.has(pid)) return;
    const index = this.processes.findIndex((p) => p.pid === pid);
    if (index >= 0) this.processes.splice(index, 1);
  };
  checkReadWrite = async (_path: string) => {
    if (this.deviceError !== undefined) throw this.deviceError;
  };
  sleep = async (_ms: number) => {};
}

let dir: string;
let root: string;
let os: FakeOs;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'snapshotter-unit-'));
  root = join(dir, 'root');
  os = new FakeOs();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function layers(n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const layer = join(dir, 'layers', `layer:${i},odd`);
    await mkdir(layer, { recursive: true });
    out.push(layer);
  }
  return out;
}

async function kindOf(promise: Promise<unknown>): Promise<{ kind: string; message: string }> {
  try {
    await promise;
  } catch (err) {
    return { kind: (err as { kind?: string }).kind ?? 'none', message: (err as Error).message };
  }
  return { kind: 'resolved', message: '' };
}

const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  );

describe('overlay snapshotter', () => {
  it('mounts overlay with userxattr and short relative lowerdirs, top layer first', async () => {
    const [top, middle, bottom] = await layers(3);
    await chmod(top!, 0o750);
    const s = new OverlaySnapshotter({ root, os });
    const { rootfs } = await s.prepare('c1', [top!, middle!, bottom!]);
    const snap = join(root, 'snapshots/c1');
    expect(rootfs).toBe(`${snap}/merged`);
    expect(os.commands).toEqual([
      {
        argv: [
          'mount',
          '-t',
          'overlay',
          'overlay',
          '-o',
          `lowerdir=0:1:2,upperdir=${snap}/upper,workdir=${snap}/work,userxattr`,
          `${snap}/merged`,
        ],
        cwd: `${snap}/lower`,
      },
    ]);
    // Paths with ':' and ',' are fine: only the link names reach the options.
    expect(await readlink(`${snap}/lower/0`)).toBe(top);
    expect(await readlink(`${snap}/lower/2`)).toBe(bottom);
    expect(await readdir(`${snap}/lower`)).toEqual(['0', '1', '2']);
    // The rootfs "/" takes the top layer's mode.
    expect((await stat(`${snap}/upper`)).mode & 0o7777).toBe(0o750);
    expect(await s.isMounted('c1')).toBe(true);
  });

  it('mounts read-only with ro, and an image without layers over an empty dir', async () => {
    const s = new OverlaySnapshotter({ root, os });
    await s.prepare('c1', [], { readOnly: true });
    const snap = join(root, 'snapshots/c1');
    expect(os.commands[0]!.argv[5]).toBe(
      `lowerdir=0,upperdir=${snap}/upper,workdir=${snap}/work,userxattr,ro`,
    );
    expect(await readlink(`${snap}/lower/0`)).toBe(`${snap}/empty`);
    expect(await readdir(`${snap}/empty`)).toEqual([]);
  });

  it('does not mount again an id that is mounted', async () => {
    const s = new OverlaySnapshotter({ root, os });
    const l = await layers(1);
    await s.prepare('c1', l);
    await s.prepare('c1', l);
    expect(os.commands).toHaveLength(1);
  });

  it('refuses more than 500 layers, and options longer than a page, before running anything', async () => {
    const s = new OverlaySnapshotter({ root, os });
    const many = Array.from({ length: 501 }, (_, i) => `/layers/${i}`);
    const tooMany = await kindOf(s.prepare('c1', many));
    expect(tooMany.kind).toBe('InvalidArgument');
    expect(tooMany.message).toMatch(/501 layers .* at most 500; .*fuse-overlayfs snapshotter$/);
    const longRoot = join(dir, ...Array.from({ length: 6 }, () => 'r'.repeat(250)));
    const long = new OverlaySnapshotter({ root: longRoot, os });
    const deep = await kindOf(long.prepare('c'.repeat(128), await layers(400)));
    expect(deep.kind).toBe('InvalidArgument');
    expect(deep.message).toMatch(/more than the 4095 mount\(2\) accepts/);
    expect(os.commands).toEqual([]);
    expect(await long.list()).toEqual([]);
  });

  it('turns a refused mount into FailedPrecondition that points at fuse-overlayfs', async () => {
    const s = new OverlaySnapshotter({ root, os });
    os.mountResult = { exitCode: 32, stderr: 'mount: /x/merged: permission denied.' };
    const err = await kindOf(s.prepare('c1', await layers(1)));
    expect(err.kind).toBe('FailedPrecondition');
    expect(err.message).toMatch(/Linux >= 5.11.*fuse-overlayfs snapshotter.*rootless-cri doctor/);
    expect(await exists(join(root, 'snapshots/c1'))).toBe(false);
  });

  it('refuses to shift a rootfs into a pod user namespace (the kernel has no id-mapped overlay here)', async () => {
    const s = new OverlaySnapshotter({ root, os });
    const err = await kindOf(
      s.prepare('c1', await layers(1), {
        idMapping: { uids: [{ containerId: 0, hostId: 131072, length: 65536 }], gids: [] },
      }),
    );
    expect(err.kind).toBe('FailedPrecondition');
    expect(err.message).toMatch(/needs the fuse-overlayfs snapshotter/);
    expect(os.commands).toEqual([]);
    expect(await exists(join(root, 'snapshots/c1'))).toBe(false);
  });

  it('reports success-without-a-mount as Internal', async () => {
    const s = new OverlaySnapshotter({ root, os });
    os.mountSilently = true;
    expect((await kindOf(s.prepare('c1', await layers(1)))).kind).toBe('Internal');
  });

  it('keeps the upper dir of an existing snapshot when a re-mount fails', async () => {
    const s = new OverlaySnapshotter({ root, os });
    const l = await layers(1);
    await s.prepare('c1', l);
    await s.unmount('c1');
    await writeFile(join(root, 'snapshots/c1/upper/data'), 'keep me');
    os.mountResult = { exitCode: 32, stderr: 'mount: something odd' };
    const err = await kindOf(s.prepare('c1', l));
    expect(err).toEqual({ kind: 'Internal', message: expect.stringContaining('something odd') });
    expect(await readFile(join(root, 'snapshots/c1/upper/data'), 'utf8')).toBe('keep me');
  });

  it('a missing layer dir is NotFound, before anything is created', async () => {
    const s = new OverlaySnapshotter({ root, os });
    const err = await kindOf(s.prepare('c1', [join(dir, 'nope')]));
    expect(err.kind).toBe('NotFound');
    expect(err.message).toMatch(/pull it again/);
    expect(await exists(join(root, 'snapshots/c1'))).toBe(false);
  });

  it('remove refuses to delete while something is still mounted below the snapshot', async () => {
    const s = new OverlaySnapshotter({ root, os });
    await s.prepare('c1', await layers(1));
    os.mounted.push(join(root, 'snapshots/c1/upper/bind'));
    const err = await kindOf(s.remove('c1'));
    expect(err.kind).toBe('Unavailable');
    expect(err.message).toContain('upper/bind is still mounted');
    expect(await exists(join(root, 'snapshots/c1/upper'))).toBe(true);
    expect(await s.isMounted('c1')).toBe(false);
  });

  it('serialises operations on one id: a remove waits for the prepare before it', async () => {
    const s = new OverlaySnapshotter({ root, os });
    const l = await layers(1);
    let open!: () => void;
    os.mountGate = new Promise((resolve) => {
      open = resolve;
    });
    const prepared = s.prepare('c1', l);
    const removed = s.remove('c1');
    await new Promise((resolve) => setTimeout(resolve, 20));
    open();
    await prepared;
    await removed;
    expect(os.commands.map((c) => c.argv[0])).toEqual(['mount', 'umount']);
    expect(await s.list()).toEqual([]);
  });

  it('lists snapshot dirs with valid ids only, and an absent root as empty', async () => {
    const s = new OverlaySnapshotter({ root, os });
    expect(await s.list()).toEqual([]);
    await mkdir(join(root, 'snapshots/b-2'), { recursive: true });
    await mkdir(join(root, 'snapshots/a1'));
    await mkdir(join(root, 'snapshots/.tmp'));
    await writeFile(join(root, 'snapshots/file'), '');
    expect(await s.list()).toEqual(['a1', 'b-2']);
  });

  it('removes a snapshot whose upper dir a container grew past PATH_MAX (row 45)', async () => {
    const s = new OverlaySnapshotter({ root, os });
    await s.prepare('deep', await layers(1));
    makeDeepTree(join(root, 'snapshots/deep/upper'), 150);
    await s.remove('deep');
    expect(await exists(join(root, 'snapshots/deep'))).toBe(false);
  });

  it('remove keeps the kind of a failed tree removal: Unavailable when the run server ended under it', async () => {
    const s = new OverlaySnapshotter({ root, os });
    await s.prepare('c1', await layers(1));
    // Past the in-process bound, so the helper removes it.
    for (let i = 0; i < 600; i++) await writeFile(join(root, `snapshots/c1/upper/f${i}`), '');
    const gone = new UnavailableError('remove-tree was started but the run server ended before it reported');
    await withRunsFailing(gone, () => expect(s.remove('c1')).rejects.toBe(gone));
    await s.remove('c1');
    expect(await exists(join(root, 'snapshots/c1'))).toBe(false);
  });

  it('usage measures the upper dir', async () => {
    const s = new OverlaySnapshotter({ root, os });
    await s.prepare('c1', await layers(1));
    const before = await s.usage('c1');
    await writeFile(join(root, 'snapshots/c1/upper/f'), Buffer.alloc(64 * 1024));
    const after = await s.usage('c1');
    expect(after.inodes).toBe(before.inodes + 1n);
    expect(after.bytes - before.bytes).toBeGreaterThanOrEqual(64n * 1024n);
  });

  it('refuses a root that mount options cannot carry', () => {
    expect(() => new OverlaySnapshotter({ root: '/a,b', os })).toThrow(/comma, colon/);
    expect(() => new OverlaySnapshotter({ root: 'relative', os })).toThrow(/absolute/);
  });
});

describe('fuse-overlayfs snapshotter', () => {
  it('runs fuse-overlayfs with relative lowerdirs from the lower/ dir', async () => {
    const s = new FuseOverlayfsSnapshotter({ root, os });
    await s.prepare('c1', await layers(2), { readOnly: true });
    const snap = join(root, 'snapshots/c1');
    expect(os.commands).toEqual([
      {
        argv: [
          'fuse-overlayfs',
          '-o',
          `lowerdir=0:1,upperdir=${snap}/upper,workdir=${snap}/work,ro`,
          `${snap}/merged`,
        ],
        cwd: `${snap}/lower`,
      },
    ]);
  });

  it('shifts the files into a pod user namespace with uidmapping/gidmapping, line by line', async () => {
    const s = new FuseOverlayfsSnapshotter({ root, os });
    await s.prepare('c1', await layers(1), {
      idMapping: {
        uids: [
          { containerId: 0, hostId: 1000, length: 64537 },
          { containerId: 64537, hostId: 65537, length: 35463 },
        ],
        gids: [{ containerId: 0, hostId: 131072, length: 65536 }],
      },
    });
    const snap = join(root, 'snapshots/c1');
    expect(os.commands[0]!.argv[2]).toBe(
      `lowerdir=0,upperdir=${snap}/upper,workdir=${snap}/work,` +
        'uidmapping=0:1000:64537:64537:65537:35463,gidmapping=0:131072:65536',
    );
  });

  it('returns a live mount as it is, and replaces one whose daemon died', async () => {
    const s = new FuseOverlayfsSnapshotter({ root, os });
    const l = await layers(1);
    await s.prepare('c1', l);
    await s.prepare('c1', l);
    expect(os.commands.map((c) => c.argv[0])).toEqual(['fuse-overlayfs']);
    os.processes.length = 0; // killed: the mount stays, answering ENOTCONN
    await s.prepare('c1', l);
    expect(os.commands.map((c) => c.argv[0])).toEqual(['fuse-overlayfs', 'fusermount3', 'fuse-overlayfs']);
    expect(os.mounted).toEqual([join(root, 'snapshots/c1/merged')]);
    expect(os.processes).toHaveLength(1);
  });

  it('an unmount that saw its daemon gone is not looked at again by remove; one mounted since is', async () => {
    let scans = 0;
    const list = os.listProcesses;
    os.listProcesses = async () => {
      scans += 1;
      return list();
    };
    const s = new FuseOverlayfsSnapshotter({ root, os });
    const l = await layers(1);
    await s.prepare('c1', l);
    await s.unmount('c1');
    expect(scans).toBe(1);
    await s.remove('c1');
    expect(scans).toBe(1);
    expect(await exists(join(root, 'snapshots/c1'))).toBe(false);
    // Mounted again after an unmount: its remove looks for the new daemon.
    await s.prepare('c2', l);
    await s.unmount('c2');
    await s.prepare('c2', l);
    scans = 0;
    await s.remove('c2');
    expect(scans).toBe(1);
    expect(os.processes).toEqual([]);
  });

  it('says /dev/fuse is not usable and points at doctor, without running anything', async () => {
    os.deviceError = Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES' });
    const s = new FuseOverlayfsSnapshotter({ root, os });
    const err = await kindOf(s.prepare('c1', await layers(1)));
    expect(err.kind).toBe('FailedPrecondition');
    expect(err.message).toMatch(
      /^\/dev\/fuse is not usable: EACCES; .*chmod 0666.*\(run rootless-cri doctor\)$/,
    );
    expect(os.commands).toEqual([]);
    expect(await exists(join(root, 'snapshots/c1'))).toBe(false);
  });

  it('maps a missing binary, a FUSE device error and other failures to their kinds', async () => {
    const s = new FuseOverlayfsSnapshotter({ root, os });
    const l = await layers(1);
    os.mountResult = {
      exitCode: null,
      spawnError: Object.assign(new Error('spawn ENOENT'), { code: 'ENOENT' }),
    };
    expect(await kindOf(s.prepare('c1', l))).toEqual({
      kind: 'FailedPrecondition',
      message: expect.stringMatching(/install the fuse-overlayfs package/),
    });
    os.mountResult = {
      stderr: "unknown argument ignored: lazytime\nfuse: device not found, try 'modprobe fuse' first\n",
    };
    const device = await kindOf(s.prepare('c1', l));
    expect(device.kind).toBe('FailedPrecondition');
    expect(device.message).not.toContain('lazytime');
    os.mountResult = { stderr: 'cannot read upper dir: Input/output error' };
    expect(await kindOf(s.prepare('c1', l))).toEqual({
      kind: 'Internal',
      message: expect.stringContaining('Input/output error'),
    });
  });

  it('unmounts with fusermount3 and ends a daemon that does not exit, SIGTERM then SIGKILL', async () => {
    const s = new FuseOverlayfsSnapshotter({ root, os });
    await s.prepare('c1', await layers(1));
    const merged = join(root, 'snapshots/c1/merged');
    os.processes.push(
      { pid: 41, argv: ['fuse-overlayfs', '-o', 'lowerdir=0', merged] },
      { pid: 42, argv: ['/usr/bin/fuse-overlayfs', '-o', 'lowerdir=0', merged] },
      { pid: 43, argv: ['fuse-overlayfs', '-o', 'lowerdir=0', `${merged}-other`] },
      { pid: 44, argv: ['sleep', merged] },
    );
    os.stubborn.add(42);
    await s.remove('c1');
    expect(os.commands.at(-1)!.argv).toEqual(['fusermount3', '-u', merged]);
    expect(os.signals).toEqual(['41:SIGTERM', '42:SIGTERM', '42:SIGKILL']);
    expect(os.processes.map((p) => p.pid)).toEqual([43, 44]);
    expect(await exists(join(root, 'snapshots/c1'))).toBe(false);
  });
});
