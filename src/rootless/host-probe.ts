/**
 * The questions `doctor` asks the host, behind one narrow interface so the checks above
 * it can be unit-tested with test/fakes/fake-host-probe.ts. Everything here only looks:
 * nothing is changed on the host (the overlay probe mounts inside a throw-away user and
 * mount namespace and removes its temp dir).
 */

import { constants as fsConstants } from 'node:fs';
import { access, chmod, mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { delimiter, dirname, isAbsolute, join } from 'node:path';
import { describeError } from '../errors.js';
import { type CniReadiness, checkCniReady } from '../os/cni-config.js';
import { exitStatus, outputTail, run } from '../os/process-runner.js';
import { findProgramIn } from '../os/programs.js';

export interface FileFacts {
  mode: number;
  uid: number;
  gid: number;
  isFile: boolean;
  isDirectory: boolean;
  isCharacterDevice: boolean;
}

export interface HostUser {
  uid: number;
  gid: number;
  name: string;
}

export interface CgroupFacts {
  /** Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts). */
  v2MountPoint: string | undefined;
  /** Our cgroup v2 path from /proc/self/cgroup ("0::<path>"). */
  ownPath: string | undefined;
  /** Absolute directory of our cgroup. */
  ownDir: string | undefined;
  /** The highest cgroup from ours upwards that we own and can write: what was delegated to us. */
  delegatedDir: string | undefined;
  /** cgroup.controllers of delegatedDir (or ownDir when nothing is delegated). */
  controllers: string[];
  /** Controllers bound to cgroup v1 hierarchies, which v2 therefore cannot have (hybrid hosts). */
  v1Controllers: string[];
}

export type DeviceAccess = { ok: true } | { ok: false; error: string };

export interface OverlayProbeResult {
  ok: boolean;
  detail: string;
}

export interface HostProbe {
  currentUser(): HostUser;
  /** Directories of the PATH `doctor` runs with. */
  pathDirs(): string[];
  /** File contents, or undefined when the file does not exist. Other errors throw. */
  readFile(path: string): Promise<string | undefined>;
  /** Facts about a path (not following a final symlink is not needed here), undefined when missing. */
  stat(path: string): Promise<FileFacts | undefined>;
  /** Whether this process may write the path (access(2) W_OK). */
  isWritable(path: string): Promise<boolean>;
  /** An absolute `name` if it is executable, else the first executable `dir/name`. */
  findBinary(name: string, dirs: readonly string[]): Promise<string | undefined>;
  /** What `binary --version` prints (stdout and stderr). Throws when it cannot be run. */
  runVersion(binary: string): Promise<string>;
  /** File capabilities as getcap prints them (e.g. "cap_setuid=ep"); empty when none or unknown. */
  fileCapabilities(path: string): Promise<string>;
  /** Can this process open the device read-write? */
  checkDeviceRw(path: string): Promise<DeviceAccess>;
  cgroupFacts(): Promise<CgroupFacts>;
  /** Try a kernel overlay mount with userxattr inside a new user and mount namespace. */
  tryOverlayInUserns(): Promise<OverlayProbeResult>;
  cniReadiness(confDir: string, binDirs: readonly string[]): Promise<CniReadiness>;
}

// ---------------------------------------------------------------------------------------
// Pure parsers, exported for tests.

export interface CgroupMounts {
  v2MountPoint: string | undefined;
  /** The v2 mount's root within the hierarchy (not "/" inside some cgroup namespaces). */
  v2MountRoot: string | undefined;
  v1Controllers: string[];
}

/** Cgroup mounts from /proc/self/mountinfo. */
export function parseCgroupMounts(mountinfo: string): CgroupMounts {
  const result: CgroupMounts = { v2MountPoint: undefined, v2MountRoot: undefined, v1Controllers: [] };
  for (const line of mountinfo.split('\n')) {
    // Fields before " - " are fixed-position; after it: fstype, source, super options.
    const separator = line.indexOf(' - ');
    if (separator < 0) continue;
    const before = line.slice(0, separator).split(' ');
    const [fsType, , superOptions = ''] = line.slice(separator + 3).split(' ');
    const root = before[3];
    const mountPoint = before[4];
    if (root === undefined || mountPoint === undefined) continue;
    if (fsType === 'cgroup2' && result.v2MountPoint === undefined) {
      result.v2MountPoint = unescapeMountinfo(mountPoint);
      result.v2MountRoot = unescapeMountinfo(root);
    } else if (fsType === 'cgroup') {
      for (const option of superOptions.split(',')) {
        if (V1_CONTROLLER_NAMES.has(option)) result.v1Controllers.push(option);
      }
    }
  }
  return result;
}

// Super options of a v1 mount that name controllers (others are rw, name=..., etc.).
const V1_CONTROLLER_NAMES = new Set([
  'cpu',
  'cpuacct',
  'cpuset',
  'memory',
  'devices',
  'freezer',
  'net_cls',
  'net_prio',
  'blkio',
  'perf_event',
  'hugetlb',
  'pids',
  'rdma',
  'misc',
]);

function unescapeMountinfo(value: string): string {
  return value.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/** The v2 entry ("0::<path>") of /proc/self/cgroup. */
export function parseProcSelfCgroup(text: string): string | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('0::')) return line.slice(3) || '/';
  }
  return undefined;
}

/** Our cgroup's directory given the v2 mount and the path /proc/self/cgroup shows. */
export function cgroupDirectory(mountPoint: string, mountRoot: string, ownPath: string): string | undefined {
  const root = mountRoot === '/' ? '' : mountRoot;
  if (root !== '' && ownPath !== root && !ownPath.startsWith(`${root}/`)) return undefined;
  const relative = ownPath.slice(root.length);
  return relative === '' || relative === '/' ? mountPoint : join(mountPoint, relative);
}

/** Version number in a tool's --version output, preferring the line that names the tool. */
export function extractVersion(output: string, tool: string): string | undefined {
  const lines = output.split('\n');
  const version = /\bv?(\d+\.\d+(?:\.\d+)?(?:[-+_~][0-9A-Za-z.+_~-]*)?)/;
  const ordered = [
    ...lines.filter((line) => line.includes(tool) && /version/i.test(line)),
    ...lines.filter((line) => /version/i.test(line)),
    ...lines,
  ];
  for (const line of ordered) {
    const match = version.exec(line);
    if (match) return match[1];
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------
// The real host.

export class RealHostProbe implements HostProbe {
  currentUser(): HostUser {
    const info = userInfo();
    return { uid: info.uid, gid: info.gid, name: info.username };
  }

  pathDirs(): string[] {
    return (process.env.PATH ?? '').split(delimiter).filter((dir) => isAbsolute(dir));
  }

  async readFile(path: string): Promise<string | undefined> {
    try {
      return await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async stat(path: string): Promise<FileFacts | undefined> {
    try {
      const info = await stat(path);
      return {
        mode: info.mode,
        uid: info.uid,
        gid: info.gid,
        isFile: info.isFile(),
        isDirectory: info.isDirectory(),
        isCharacterDevice: info.isCharacterDevice(),
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async isWritable(path: string): Promise<boolean> {
    try {
      await access(path, fsConstants.W_OK);
      return true;
    } catch {
      return false;
    }
  }

  async findBinary(name: string, dirs: readonly string[]): Promise<string | undefined> {
    // Exactly the given directories (doctor reports where it looked), as a shell's PATH lookup.
    if (!isAbsolute(name) && name.includes('/')) return undefined;
    return findProgramIn(name, dirs) ?? undefined;
  }

  async runVersion(binary: string): Promise<string> {
    // Some tools print their version on stderr; both streams count.
    const result = await run(binary, ['--version'], {
      timeoutMs: 5_000,
      env: { ...process.env, LC_ALL: 'C' },
    }).catch((err: unknown) => {
      throw new Error(`${binary} --version failed: ${describeError(err)}`);
    });
    const output = `${result.stdout.toString('utf8')}${result.stderr.toString('utf8')}`;
    if (result.exitCode !== 0 && output.trim() === '') {
      throw new Error(`${binary} --version failed with exit status ${exitStatus(result)}`);
    }
    return output;
  }

  async fileCapabilities(path: string): Promise<string> {
    const getcap = await this.findBinary('getcap', ['/usr/sbin', '/sbin', ...this.pathDirs()]);
    if (!getcap) return '';
    const result = await run(getcap, [path], { timeoutMs: 5_000 }).catch(() => null);
    // Output is "<path> cap_a,cap_b=ep" (older versions: "<path> = cap_a+ep").
    return result?.exitCode === 0
      ? result.stdout
          .toString('utf8')
          .slice(path.length)
          .replace(/^\s*=?\s*/, '')
      : '';
  }

  async checkDeviceRw(path: string): Promise<DeviceAccess> {
    try {
      const handle = await open(path, 'r+');
      await handle.close();
      return { ok: true };
    } catch (err) {
      const error = err as NodeJS.ErrnoException;
      return { ok: false, error: error.code ?? error.message };
    }
  }

  async cgroupFacts(): Promise<CgroupFacts> {
    const [mountinfo, selfCgroup] = await Promise.all([
      this.readFile('/proc/self/mountinfo'),
      this.readFile('/proc/self/cgroup'),
    ]);
    const mounts = parseCgroupMounts(mountinfo ?? '');
    const ownPath = parseProcSelfCgroup(selfCgroup ?? '');
    const facts: CgroupFacts = {
      v2MountPoint: mounts.v2MountPoint,
      ownPath,
      ownDir: undefined,
      delegatedDir: undefined,
      controllers: [],
      v1Controllers: mounts.v1Controllers,
    };
    if (mounts.v2MountPoint === undefined || ownPath === undefined) return facts;
    facts.ownDir = cgroupDirectory(mounts.v2MountPoint, mounts.v2MountRoot ?? '/', ownPath);
    if (facts.ownDir === undefined) return facts;
    const uid = process.getuid?.() ?? 0;
    // Walk up while the cgroup is ours: that chain is what someone delegated to us.
    const top = mounts.v2MountPoint;
    let current = facts.ownDir;
    while (current === top || current.startsWith(`${top}/`)) {
      const info = await this.stat(current).catch(() => undefined);
      const writable = await this.isWritable(join(current, 'cgroup.procs'));
      if (!info || info.uid !== uid || !writable) break;
      facts.delegatedDir = current;
      if (current === top) break;
      current = dirname(current);
    }
    const controllersOf = facts.delegatedDir ?? facts.ownDir;
    const text = await this.readFile(join(controllersOf, 'cgroup.controllers')).catch(() => undefined);
    facts.controllers = (text ?? '').split(/\s+/).filter(Boolean);
    return facts;
  }

  async tryOverlayInUserns(): Promise<OverlayProbeResult> {
    const unshare = await this.findBinary('unshare', [...this.pathDirs(), '/usr/bin', '/bin']);
    if (!unshare) return { ok: false, detail: 'unshare (util-linux) not found, so the probe could not run' };
    const dir = await mkdtemp(join(tmpdir(), 'rootless-cri-overlay-probe-'));
    try {
      const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((name) =>
        join(dir, name),
      ) as [string, string, string, string];
      for (const path of [lower, upper, work, merged]) await mkdir(path);
      await writeFile(join(lower, 'probe'), 'ok');
      // Paths go in as positional arguments so no quoting is involved.
      const script =
        'mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3,userxattr" "$4" && ' +
        'test -f "$4/probe" && umount "$4"';
      const result = await run(unshare, ['-rm', 'sh', '-c', script, 'sh', lower, upper, work, merged], {
        timeoutMs: 10_000,
      });
      if (result.exitCode === 0) {
        return { ok: true, detail: 'kernel overlay with userxattr mounts inside a user namespace' };
      }
      const output = outputTail(result) || `exit status ${exitStatus(result)}`;
      return { ok: false, detail: `overlay mount in a user namespace failed: ${output}` };
    } finally {
      // The kernel creates work/work with mode 000; make it removable first.
      await chmod(join(dir, 'work', 'work'), 0o700).catch(() => undefined);
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    }
  }

  cniReadiness(confDir: string, binDirs: readonly string[]): Promise<CniReadiness> {
    return checkCniReady(confDir, binDirs);
  }
}
