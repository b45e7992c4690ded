import { describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/errors.js';
import {
  type CommandResult,
  type CommandRunner,
  escapeMountField,
  mountsAt,
  mountsAtOrUnder,
  parseMountInfo,
  unescapeMountField,
  unmountWithRetries,
} from '../../src/os/mounts.js';

const MOUNTINFO = [
  '22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw',
  '95 30 0:50 / /var/lib/x/snapshots/c1/merged rw,nosuid,nodev,relatime - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=0,group_id=0,default_permissions,allow_other',
  '96 30 0:51 / /tmp/with\\040space\\011tab\\134back rw master:3 propagate_from:2 - overlay overlay rw,lowerdir=0:1,upperdir=/u,workdir=/w,userxattr',
  'garbage line',
  '',
].join('\n');

describe('mountinfo parsing', () => {
  it('reads every field, optional fields included, and unescapes octal sequences', () => {
    const entries = parseMountInfo(MOUNTINFO);
    expect(entries).toHaveLength(3);
    expect(entries[1]).toEqual({
      mountId: 95,
      parentId: 30,
      device: '0:50',
      root: '/',
      mountPoint: '/var/lib/x/snapshots/c1/merged',
      mountOptions: 'rw,nosuid,nodev,relatime',
      optionalFields: [],
      fsType: 'fuse.fuse-overlayfs',
      source: 'fuse-overlayfs',
      superOptions: 'rw,user_id=0,group_id=0,default_permissions,allow_other',
    });
    expect(entries[2]!.mountPoint).toBe('/tmp/with space\ttab\\back');
    expect(entries[2]!.optionalFields).toEqual(['master:3', 'propagate_from:2']);
    expect(entries[0]!.optionalFields).toEqual(['shared:12']);
  });

  it('unescapes only three-digit octal escapes', () => {
    expect(unescapeMountField('a\\012b\\1c')).toBe('a\nb\\1c');
  });

  it('finds mounts at a path and below a directory, not at a sibling with the same prefix', async () => {
    const read = async () =>
      [
        '1 0 0:1 / /s/c1 rw - tmpfs t rw',
        '2 0 0:1 / /s/c1/merged rw - tmpfs t rw',
        '3 0 0:1 / /s/c10/merged rw - tmpfs t rw',
      ].join('\n');
    expect((await mountsAt('/s/c1/merged', read)).map((m) => m.mountId)).toEqual([2]);
    expect((await mountsAtOrUnder('/s/c1', read)).map((m) => m.mountId)).toEqual([1, 2]);
  });

  it("finds paths with escaped characters, and a path that is also another mount's source or root", async () => {
    const read = async () =>
      [
        '96 30 0:51 / /tmp/with\\040space\\011tab\\134back rw - overlay overlay rw',
        '97 30 0:51 / /tmp/with\\040space\\011tab\\134back/below rw - tmpfs t rw',
        '98 30 0:52 /tmp/with\\040space\\011tab\\134back /elsewhere rw - tmpfs /tmp/with\\040space rw',
      ].join('\n');
    const odd = '/tmp/with space\ttab\\back';
    expect(escapeMountField(odd)).toBe('/tmp/with\\040space\\011tab\\134back');
    expect((await mountsAt(odd, read)).map((m) => m.mountId)).toEqual([96]);
    expect((await mountsAtOrUnder(odd, read)).map((m) => m.mountId)).toEqual([96, 97]);
    expect((await mountsAt('/tmp/with space', read)).map((m) => m.mountId)).toEqual([]);
  });

  it('parses only the lines holding a text when asked, the same entries as a whole parse', () => {
    const all = parseMountInfo(MOUNTINFO);
    expect(parseMountInfo(MOUNTINFO, ' /var/lib/x/snapshots/c1/merged ')).toEqual([all[1]]);
    expect(parseMountInfo(MOUNTINFO, 'nowhere')).toEqual([]);
  });
});

/** A mount table with one path whose unmount answers from a script of results. */
function scriptedUnmount(mounted: number, results: Partial<CommandResult>[]) {
  let stacked = mounted;
  const calls: string[] = [];
  const sleeps: number[] = [];
  const run: CommandRunner = async (command, args) => {
    calls.push([command, ...args].join(' '));
    const result: CommandResult = { exitCode: 0, stdout: '', stderr: '', ...(results.shift() ?? {}) };
    if (result.exitCode === 0) stacked--;
    return result;
  };
  const readMountTable = async () =>
    Array.from({ length: stacked }, (_, i) => `${i + 10} 1 0:9 / /m rw - fuse x rw`).join('\n');
  return {
    calls,
    sleeps,
    options: {
      run,
      readMountTable,
      commands: [['fusermount3', '-u'], ['umount']],
      sleep: async (ms: number) => {
        sleeps.push(ms);
      },
    },
  };
}

const busy = { exitCode: 1, stderr: 'fusermount3: failed to unmount /m: Device or resource busy' };
const enoent = Object.assign(new Error('spawn fusermount3 ENOENT'), { code: 'ENOENT' });

describe('unmountWithRetries', () => {
  it('does nothing when nothing is mounted', async () => {
    const s = scriptedUnmount(0, []);
    await unmountWithRetries('/m', s.options);
    expect(s.calls).toEqual([]);
  });

  it('retries while busy with a growing delay, then succeeds', async () => {
    const s = scriptedUnmount(1, [busy, busy, { exitCode: 0 }]);
    await unmountWithRetries('/m', s.options);
    expect(s.calls).toEqual(['fusermount3 -u /m', 'fusermount3 -u /m', 'fusermount3 -u /m']);
    expect(s.sleeps).toEqual([50, 100]);
  });

  it('falls back to the next command when one is missing', async () => {
    const s = scriptedUnmount(1, [{ exitCode: null, spawnError: enoent }, { exitCode: 0 }]);
    await unmountWithRetries('/m', s.options);
    expect(s.calls).toEqual(['fusermount3 -u /m', 'umount /m']);
  });

  it('unmounts every mount stacked at the path', async () => {
    const s = scriptedUnmount(2, [{ exitCode: 0 }, { exitCode: 0 }]);
    await unmountWithRetries('/m', s.options);
    expect(s.calls).toHaveLength(2);
  });

  it('gives up after the attempts with Unavailable naming the path and the cause', async () => {
    const s = scriptedUnmount(
      1,
      Array.from({ length: 10 }, () => busy),
    );
    const err = await unmountWithRetries('/m', { ...s.options, attempts: 4 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toMatch(/cannot unmount \/m: still busy after 4 attempts/);
    expect((err as Error).message).toMatch(/Device or resource busy/);
    expect(s.calls).toHaveLength(4);
    expect(s.sleeps).toEqual([50, 100, 200]);
  });

  it('reports a non-busy failure at once, with every command tried', async () => {
    const s = scriptedUnmount(1, [
      { exitCode: 1, stderr: 'fusermount3: entry for /m not found in /etc/mtab' },
      { exitCode: 32, stderr: 'umount: /m: must be superuser to unmount.' },
    ]);
    const err = await unmountWithRetries('/m', s.options).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as Error).message).toContain('umount: umount: /m: must be superuser to unmount.');
    expect(s.sleeps).toEqual([]);
  });
});
