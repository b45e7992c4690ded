/**
 * Both snapshotters, for real, where the daemon runs them: as uid 0 of a user namespace
 * with its own mount namespace. The test (root on the host) starts a driver process with
 * `unshare --user --map-root-user --mount` (and once more as the unprivileged test user,
 * through deploy/run-as-user.sh), which imports the compiled snapshotters from dist/ and
 * answers JSON-line commands: snapshotter calls plus the filesystem operations used to
 * build layer dirs by hand (mkdir, files, `mknod c 0 0` whiteouts, opaque xattrs) and to
 * inspect the merged view, the upper dir and the namespace's /proc/self/mountinfo.
 */
import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from 'node:child_process';
import { chmod, chown, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CriError, type ErrorKind } from '../../src/errors.js';
import type { DirectoryUsage } from '../../src/image/image-fs-info.js';
import type { PrepareOptions, Snapshotter, SnapshotterName } from '../../src/image/snapshotter.js';
import { parseMountInfo } from '../../src/os/mounts.js';
import { APP_DIR, TEST_USER, testUser } from '../harness/daemon.js';
import { snapshotterContract } from '../unit/snapshotter-contract.js';

const RUN_AS_USER = path.join(APP_DIR, 'deploy/run-as-user.sh');

/** Sets and reads xattrs: Node has no API for them and `attr` is not a dependency. */
const XATTR_TOOL_C = `
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>
int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "set") == 0) {
    if (lsetxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0) < 0) { perror("lsetxattr"); return 1; }
    return 0;
  }
  if (argc == 4 && strcmp(argv[1], "get") == 0) {
    char buf[256];
    ssize_t n = lgetxattr(argv[2], argv[3], buf, sizeof(buf));
    if (n < 0) { if (errno == ENODATA) return 3; perror("lgetxattr"); return 1; }
    fwrite(buf, 1, (size_t)n, stdout);
    return 0;
  }
  return 2;
}
`;

/** Runs inside the namespaces; argv: app dir, xattr tool. */
const DRIVER_JS = String.raw`
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
const [appDir, xattrTool] = process.argv.slice(2);
const load = (m) => import(pathToFileURL(appDir + '/dist/src/image/' + m).href);
const { FuseOverlayfsSnapshotter } = await load('fuse-overlayfs-snapshotter.js');
const { OverlaySnapshotter } = await load('overlay-snapshotter.js');
const snapshotters = new Map();
const typeOf = (st) => st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isCharacterDevice() ? 'char'
  : st.isSymbolicLink() ? 'symlink' : 'other';
const missing = (err) => { if (err.code === 'ENOENT') return null; throw err; };
const ops = {
  create: ({ handle, kind, root }) => {
    snapshotters.set(handle, kind === 'overlay' ? new OverlaySnapshotter({ root }) : new FuseOverlayfsSnapshotter({ root }));
  },
  call: ({ handle, method, args }) => snapshotters.get(handle)[method](...args),
  mkdir: ({ path }) => fs.mkdir(path, { recursive: true }),
  write: ({ path, data, size }) => fs.writeFile(path, size !== undefined ? Buffer.alloc(size, 120) : data),
  read: ({ path }) => fs.readFile(path, 'utf8').catch(missing),
  readdir: ({ path }) => fs.readdir(path).then((n) => n.sort(), missing),
  lstat: ({ path }) => fs.lstat(path).then((st) => ({ type: typeOf(st), rdev: st.rdev, size: st.size }), missing),
  unlink: ({ path }) => fs.unlink(path),
  rm: ({ path }) => fs.rm(path, { recursive: true }),
  whiteout: ({ path }) => { execFileSync('mknod', [path, 'c', '0', '0']); },
  setxattr: ({ path, name, value }) => { execFileSync(xattrTool, ['set', path, name, value]); },
  mountinfo: () => fs.readFile('/proc/self/mountinfo', 'utf8'),
  whoami: () => fs.readFile('/proc/self/uid_map', 'utf8'),
};
const replacer = (_k, v) => typeof v === 'bigint' ? { $bigint: v.toString() } : v;
createInterface({ input: process.stdin }).on('line', async (line) => {
  const { id, op, args } = JSON.parse(line);
  let answer;
  try {
    answer = { id, ok: true, result: (await ops[op](args)) ?? null };
  } catch (err) {
    answer = { id, ok: false, error: { kind: err.kind, message: String(err.message ?? err), code: err.code } };
  }
  process.stdout.write(JSON.stringify(answer, replacer) + '\n');
});
`;

interface DriverError {
  kind?: ErrorKind;
  message: string;
  code?: string;
}

/** A driver process inside a user+mount namespace. */
class NamespaceDriver {
  #next = 0;
  #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #stderr = '';
  #exited: Promise<void>;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    createInterface({ input: child.stdout }).on('line', (line) => {
      const answer = JSON.parse(line, (_k, v) =>
        v !== null && typeof v === 'object' && typeof v.$bigint === 'string' ? BigInt(v.$bigint) : v,
      ) as { id: number; ok: boolean; result?: unknown; error?: DriverError };
      const pending = this.#pending.get(answer.id);
      this.#pending.delete(answer.id);
      if (answer.ok) pending?.resolve(answer.result);
      else {
        const e = answer.error!;
        pending?.reject(
          e.kind !== undefined
            ? new CriError(e.kind, e.message)
            : Object.assign(new Error(e.message), { code: e.code }),
        );
      }
    });
    child.stderr.on('data', (chunk: Buffer) => {
      this.#stderr += chunk.toString();
    });
    this.#exited = new Promise((resolve) =>
      child.on('exit', (code, signal) => {
        for (const p of this.#pending.values()) {
          p.reject(new Error(`driver exited (${code ?? signal}): ${this.#stderr}`));
        }
        this.#pending.clear();
        resolve();
      }),
    );
  }

  static start(command: string, args: string[]): NamespaceDriver {
    return new NamespaceDriver(spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] }));
  }

  request<T>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.stdin.write(`${JSON.stringify({ id, op, args })}\n`);
    });
  }

  async stop(): Promise<void> {
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await this.#exited;
    clearTimeout(timer);
  }
}

/** A Snapshotter whose calls run in the driver's namespaces. */
class RemoteSnapshotter implements Snapshotter {
  constructor(
    private readonly driver: NamespaceDriver,
    readonly name: SnapshotterName,
    private readonly handle: string,
  ) {}

  #call<T>(method: string, ...args: unknown[]): Promise<T> {
    return this.driver.request<T>('call', { handle: this.handle, method, args });
  }
  prepare(id: string, lowerDirs: readonly string[], options?: PrepareOptions) {
    return this.#call<{ rootfs: string }>(
      'prepare',
      id,
      lowerDirs,
      ...(options === undefined ? [] : [options]),
    );
  }
  unmount(id: string) {
    return this.#call<void>('unmount', id);
  }
  remove(id: string) {
    return this.#call<void>('remove', id);
  }
  usage(id: string) {
    return this.#call<DirectoryUsage>('usage', id);
  }
  list() {
    return this.#call<string[]>('list');
  }
  isMounted(id: string) {
    return this.#call<boolean>('isMounted', id);
  }
}

interface Mode {
  label: string;
  /** null: run as root (the test's own user) */
  user: string | null;
}

const MODES: Mode[] = [
  { label: 'as root in unshare -r -m', user: null },
  { label: `as ${TEST_USER} in unshare -r -m`, user: TEST_USER },
];
const KINDS: SnapshotterName[] = ['fuse-overlayfs', 'overlay'];

/** fuse-overlayfs daemons (any user) whose command line names `dir`. */
async function fuseDaemonsUnder(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const cmdline = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('fuse-overlayfs') && cmdline.includes(dir)) pids.push(Number(name));
  }
  return pids;
}

let toolsDir: string;
let xattrTool: string;
let driverFile: string;

beforeAll(async () => {
  toolsDir = await mkdtemp('/tmp/rcri-snap-tools-');
  await chmod(toolsDir, 0o755);
  xattrTool = path.join(toolsDir, 'xattr-tool');
  await writeFile(`${xattrTool}.c`, XATTR_TOOL_C);
  execFileSync('cc', ['-O2', '-Wall', '-Werror', '-o', xattrTool, `${xattrTool}.c`]);
  driverFile = path.join(toolsDir, 'driver.mjs');
  await writeFile(driverFile, DRIVER_JS, { mode: 0o644 });
});

afterAll(async () => {
  await rm(toolsDir, { recursive: true, force: true });
});

for (const mode of MODES) {
  describe(`snapshotters ${mode.label}`, () => {
    let base: string;
    let driver: NamespaceDriver;

    beforeAll(async () => {
      base = await mkdtemp('/tmp/rcri-snap-');
      await chmod(base, 0o755);
      const unshare = [
        'unshare',
        '--user',
        '--map-root-user',
        '--mount',
        process.execPath,
        driverFile,
        APP_DIR,
        xattrTool,
      ];
      if (mode.user === null) {
        driver = NamespaceDriver.start(unshare[0]!, unshare.slice(1));
      } else {
        const user = await testUser();
        await chown(base, user.uid, user.gid);
        driver = NamespaceDriver.start('bash', [RUN_AS_USER, mode.user, '--', ...unshare]);
      }
      // uid 0 inside maps to the outside user: root, or the test user.
      const uidMap = (await driver.request<string>('whoami')).trim().split(/\s+/);
      expect(uidMap[0]).toBe('0');
      expect(uidMap[1]).toBe(mode.user === null ? '0' : String((await testUser()).uid));
    });

    afterAll(async () => {
      await driver?.stop();
      const stray = await fuseDaemonsUnder(base);
      for (const pid of stray) process.kill(pid, 'SIGKILL');
      await rm(base, { recursive: true, force: true });
      expect(stray, 'fuse-overlayfs processes left running').toEqual([]);
    });

    for (const kind of KINDS) {
      describe(kind, () => {
        let snapshotter: RemoteSnapshotter;
        let root: string;
        let layerCount = 0;

        const req = <T>(op: string, args: Record<string, unknown> = {}) => driver.request<T>(op, args);
        const newLayer = async (files: Record<string, string> = {}): Promise<string> => {
          const dir = path.join(base, `layers-${kind}`, String(++layerCount));
          await req('mkdir', { path: dir });
          for (const [name, data] of Object.entries(files)) {
            await req('mkdir', { path: path.dirname(path.join(dir, name)) });
            await req('write', { path: path.join(dir, name), data });
          }
          return dir;
        };
        const mountsUnder = async (dir: string) =>
          parseMountInfo(await req<string>('mountinfo')).filter(
            (m) => m.mountPoint === dir || m.mountPoint.startsWith(`${dir}/`),
          );

        beforeAll(async () => {
          root = path.join(base, `root-${kind}`);
          const handle = `${kind}-handle`;
          await req('create', { handle, kind, root });
          snapshotter = new RemoteSnapshotter(driver, kind, handle);
        });

        describe('lifecycle contract', () => {
          snapshotterContract({ snapshotter: () => snapshotter, makeLayer: () => newLayer({ f: 'x' }) });
        });

        it('shows the files of every layer, the top layer winning', async () => {
          const bottom = await newLayer({ 'etc/a': 'bottom', 'etc/b': 'bottom-b', 'bin/tool': 'tool' });
          const middle = await newLayer({ 'etc/a': 'middle', 'usr/m': 'm' });
          const top = await newLayer({ 'etc/a': 'top', 'etc/c': 'top-c' });
          const { rootfs } = await snapshotter.prepare('layers', [top, middle, bottom]);
          expect(rootfs).toBe(path.join(root, 'snapshots/layers/merged'));
          expect(await req('read', { path: `${rootfs}/etc/a` })).toBe('top');
          expect(await req('readdir', { path: `${rootfs}/etc` })).toEqual(['a', 'b', 'c']);
          expect(await req('read', { path: `${rootfs}/etc/b` })).toBe('bottom-b');
          expect(await req('read', { path: `${rootfs}/bin/tool` })).toBe('tool');
          expect(await req('read', { path: `${rootfs}/usr/m` })).toBe('m');
          expect(await req('readdir', { path: rootfs })).toEqual(['bin', 'etc', 'usr']);
          const here = await mountsUnder(path.join(root, 'snapshots/layers'));
          expect(here.map((m) => m.fsType)).toEqual([kind === 'overlay' ? 'overlay' : 'fuse.fuse-overlayfs']);
          await snapshotter.remove('layers');
        });

        it('writes land in the upper dir and never in a layer', async () => {
          const lower = await newLayer({ 'etc/conf': 'original', keep: 'k' });
          const { rootfs } = await snapshotter.prepare('writes', [lower]);
          await req('write', { path: `${rootfs}/etc/conf`, data: 'changed' });
          await req('write', { path: `${rootfs}/new-file`, data: 'new' });
          const upper = path.join(root, 'snapshots/writes/upper');
          expect(await req('read', { path: `${rootfs}/etc/conf` })).toBe('changed');
          expect(await req('read', { path: `${upper}/etc/conf` })).toBe('changed');
          expect(await req('read', { path: `${upper}/new-file` })).toBe('new');
          expect(await req('readdir', { path: upper })).toEqual(['etc', 'new-file']);
          expect(await req('read', { path: `${lower}/etc/conf` })).toBe('original');
          expect(await req('readdir', { path: lower })).toEqual(['etc', 'keep']);
          // The upper dir survives an unmount; a second prepare shows the same data.
          await snapshotter.unmount('writes');
          expect(await req('read', { path: `${rootfs}/new-file` })).toBeNull();
          const again = await snapshotter.prepare('writes', [lower]);
          expect(await req('read', { path: `${again.rootfs}/new-file` })).toBe('new');
          await snapshotter.remove('writes');
        });

        it('a whiteout (char 0:0) in an upper layer hides the lower file', async () => {
          const bottom = await newLayer({ 'etc/gone': 'should be hidden', 'etc/stays': 's', 'dir/x': 'x' });
          const top = await newLayer({ 'etc/other': 'o' });
          await req('whiteout', { path: `${top}/etc/gone` });
          await req('whiteout', { path: `${top}/dir` });
          const { rootfs } = await snapshotter.prepare('whiteout', [top, bottom]);
          expect(await req('readdir', { path: `${rootfs}/etc` })).toEqual(['other', 'stays']);
          expect(await req('lstat', { path: `${rootfs}/etc/gone` })).toBeNull();
          expect(await req('lstat', { path: `${rootfs}/dir` })).toBeNull();
          expect(await req('readdir', { path: rootfs })).toEqual(['etc']);
          await snapshotter.remove('whiteout');
        });

        it('an opaque dir (user.overlay.opaque=y) hides the lower dir entries but keeps its own', async () => {
          const bottom = await newLayer({ 'app/old1': '1', 'app/old2': '2', 'other/o': 'o' });
          const top = await newLayer({ 'app/own': 'own' });
          await req('setxattr', { path: `${top}/app`, name: 'user.overlay.opaque', value: 'y' });
          const { rootfs } = await snapshotter.prepare('opaque', [top, bottom]);
          expect(await req('readdir', { path: `${rootfs}/app` })).toEqual(['own']);
          expect(await req('read', { path: `${rootfs}/app/old1` })).toBeNull();
          expect(await req('readdir', { path: `${rootfs}/other` })).toEqual(['o']);
          await snapshotter.remove('opaque');
        });

        it('deleting a lower file in the merged view writes a whiteout (char 0:0) to the upper dir', async () => {
          const lower = await newLayer({ 'etc/victim': 'v', 'etc/keep': 'k', 'tree/a': 'a', 'tree/b': 'b' });
          const { rootfs } = await snapshotter.prepare('delete', [lower]);
          await req('unlink', { path: `${rootfs}/etc/victim` });
          expect(await req('readdir', { path: `${rootfs}/etc` })).toEqual(['keep']);
          const upper = path.join(root, 'snapshots/delete/upper');
          expect(await req('lstat', { path: `${upper}/etc/victim` })).toEqual({
            type: 'char',
            rdev: 0,
            size: 0,
          });
          expect(await req('read', { path: `${lower}/etc/victim` })).toBe('v');
          // A dir removed and made again in the merged view starts empty.
          await req('rm', { path: `${rootfs}/tree` });
          await req('mkdir', { path: `${rootfs}/tree` });
          await req('write', { path: `${rootfs}/tree/c`, data: 'c' });
          expect(await req('readdir', { path: `${rootfs}/tree` })).toEqual(['c']);
          expect(await req('readdir', { path: `${lower}/tree` })).toEqual(['a', 'b']);
          // ...and stays so after a remount, since the upper dir records it.
          await snapshotter.unmount('delete');
          const again = await snapshotter.prepare('delete', [lower]);
          expect(await req('readdir', { path: `${again.rootfs}/tree` })).toEqual(['c']);
          expect(await req('readdir', { path: `${again.rootfs}/etc` })).toEqual(['keep']);
          await snapshotter.remove('delete');
        });

        it('remove leaves nothing mounted, no directory and no fuse-overlayfs process', async () => {
          const lower = await newLayer({ f: 'f' });
          const { rootfs } = await snapshotter.prepare('removal', [lower]);
          await req('write', { path: `${rootfs}/data`, data: 'd' });
          const dir = path.join(root, 'snapshots/removal');
          expect(await mountsUnder(dir)).toHaveLength(1);
          if (kind === 'fuse-overlayfs') expect(await fuseDaemonsUnder(dir)).toHaveLength(1);
          await snapshotter.remove('removal');
          expect(await mountsUnder(dir)).toEqual([]);
          expect(await req('lstat', { path: dir })).toBeNull();
          expect(await fuseDaemonsUnder(dir)).toEqual([]);
          expect(await req('read', { path: `${lower}/f` })).toBe('f');
        });

        if (kind === 'fuse-overlayfs') {
          it('replaces a mount whose fuse-overlayfs daemon was killed, keeping the upper data', async () => {
            const lower = await newLayer({ f: 'f' });
            const { rootfs } = await snapshotter.prepare('revive', [lower]);
            await req('write', { path: `${rootfs}/mine`, data: 'kept' });
            const dir = path.join(root, 'snapshots/revive');
            const daemons = await fuseDaemonsUnder(dir);
            expect(daemons).toHaveLength(1);
            process.kill(daemons[0]!, 'SIGKILL');
            // A dead FUSE daemon: ECONNABORTED while the kernel is still aborting the
            // connection, ENOTCONN once it has.
            await expect(req('read', { path: `${rootfs}/f` })).rejects.toMatchObject({
              code: expect.stringMatching(/^(ENOTCONN|ECONNABORTED)$/),
            });
            expect(await snapshotter.isMounted('revive')).toBe(true);
            await snapshotter.prepare('revive', [lower]);
            expect(await req('read', { path: `${rootfs}/f` })).toBe('f');
            expect(await req('read', { path: `${rootfs}/mine` })).toBe('kept');
            expect(await mountsUnder(dir)).toHaveLength(1);
            await snapshotter.remove('revive');
          });
        }

        it('usage counts the upper dir only', async () => {
          const lower = await newLayer();
          await req('write', { path: `${lower}/big-lower`, size: 4 * 1024 * 1024 });
          const { rootfs } = await snapshotter.prepare('usage', [lower]);
          const before = await snapshotter.usage('usage');
          expect(before.bytes).toBeLessThan(1024n * 1024n);
          await req('write', { path: `${rootfs}/big-upper`, size: 1024 * 1024 });
          const after = await snapshotter.usage('usage');
          expect(after.bytes - before.bytes).toBeGreaterThanOrEqual(1024n * 1024n);
          expect(after.bytes).toBeLessThan(4n * 1024n * 1024n);
          expect(after.inodes).toBe(before.inodes + 1n);
          await snapshotter.remove('usage');
        });

        it('a read-only prepare refuses writes', async () => {
          const lower = await newLayer({ f: 'f' });
          const { rootfs } = await snapshotter.prepare('readonly', [lower], { readOnly: true });
          expect(await req('read', { path: `${rootfs}/f` })).toBe('f');
          await expect(req('write', { path: `${rootfs}/g`, data: 'g' })).rejects.toMatchObject({
            code: 'EROFS',
          });
          await snapshotter.remove('readonly');
        });

        it('stacks 150 layers with long paths (more than one page of absolute lowerdir paths)', async () => {
          const layers: string[] = [];
          const deep = path.join(base, `many-${kind}`, 'a-long-directory-name-'.repeat(3));
          for (let i = 0; i < 150; i++) {
            const dir = path.join(deep, `layer-${String(i).padStart(4, '0')}-${'x'.repeat(24)}`);
            await req('mkdir', { path: dir });
            await req('write', { path: `${dir}/from-${i}`, data: String(i) });
            await req('write', { path: `${dir}/shared`, data: String(i) });
            layers.push(dir);
          }
          expect(layers.join(':').length).toBeGreaterThan(4096);
          const { rootfs } = await snapshotter.prepare('many', layers);
          expect(await req('read', { path: `${rootfs}/shared` })).toBe('0');
          expect(await req('read', { path: `${rootfs}/from-149` })).toBe('149');
          expect(await req<string[]>('readdir', { path: rootfs })).toHaveLength(151);
          await snapshotter.remove('many');
        });

        it('a missing layer dir is NotFound and leaves no snapshot behind', async () => {
          const lower = await newLayer({ f: 'f' });
          await expect(snapshotter.prepare('missing', [lower, `${lower}-absent`])).rejects.toMatchObject({
            kind: 'NotFound',
          });
          expect(await snapshotter.list()).not.toContain('missing');
        });
      });
    }
  });
}
