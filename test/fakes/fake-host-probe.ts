/**
 * A host made of plain data for doctor's unit tests. `FakeHostProbe.healthy()` is a host
 * where every check passes; a test changes one fact and looks at the one check that
 * should now fail. Calls are recorded, and `failNext(method)` makes the next call of a
 * method throw, to test that one broken probe does not hide the other checks.
 */

import type { CniReadiness } from '../../src/os/cni-config.js';
import type {
  CgroupFacts,
  DeviceAccess,
  FileFacts,
  HostProbe,
  HostUser,
  OverlayProbeResult,
} from '../../src/rootless/host-probe.js';

export interface FakeBinary {
  /** What `--version` prints; an Error makes runVersion throw it. */
  versionOutput: string | Error;
  mode?: number;
  uid?: number;
  capabilities?: string;
}

export interface FakeHost {
  user: HostUser;
  pathDirs: string[];
  files: Map<string, string>;
  /** Paths that stat() sees besides binaries (devices, directories). */
  stats: Map<string, FileFacts>;
  writable: Set<string>;
  binaries: Map<string, FakeBinary>;
  devices: Map<string, DeviceAccess>;
  cgroups: CgroupFacts;
  overlay: OverlayProbeResult;
  cni: CniReadiness;
}

type ProbeMethod = keyof HostProbe;

export function directoryFacts(uid: number): FileFacts {
  return { mode: 0o40755, uid, gid: uid, isFile: false, isDirectory: true, isCharacterDevice: false };
}

export function deviceFacts(mode = 0o20666): FileFacts {
  return { mode, uid: 0, gid: 0, isFile: false, isDirectory: false, isCharacterDevice: true };
}

const CNI_VERSION_OUTPUT = (name: string) =>
  `CNI ${name} plugin v1.1.1\nCNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0\n`;

export class FakeHostProbe implements HostProbe {
  readonly calls: { method: ProbeMethod; args: unknown[] }[] = [];
  private readonly failures = new Map<ProbeMethod, Error>();

  constructor(readonly host: FakeHost) {}

  /**
   * A host where every doctor check passes for user alice (uid 1000) with the given
   * directories: root_dir/run_dir parents writable, binaries in /usr/bin and /usr/sbin,
   * CNI plugins in /usr/lib/cni.
   */
  static healthy(options: { rootDir: string; runDir: string; cniBinDir?: string }): FakeHostProbe {
    const uid = 1000;
    const cniBinDir = options.cniBinDir ?? '/usr/lib/cni';
    const binaries = new Map<string, FakeBinary>([
      ['/usr/bin/newuidmap', { versionOutput: '', mode: 0o104755, uid: 0 }],
      ['/usr/bin/newgidmap', { versionOutput: '', mode: 0o104755, uid: 0 }],
      ['/usr/bin/rootlesskit', { versionOutput: 'rootlesskit version 1.1.0\n' }],
      [
        '/usr/bin/slirp4netns',
        { versionOutput: 'slirp4netns version 1.2.0\ncommit: abc\nlibslirp: 4.7.0\n' },
      ],
      ['/usr/bin/catatonit', { versionOutput: 'tini version 0.1.7_catatonit\n' }],
      ['/usr/bin/nsenter', { versionOutput: 'nsenter from util-linux 2.38.1\n' }],
      ['/usr/bin/crun', { versionOutput: 'crun version 1.8.1\ncommit: f8a0\nrundir: /run/crun\n' }],
      ['/usr/bin/conmon', { versionOutput: 'conmon version 2.1.6\ncommit: unknown\n' }],
      [
        '/usr/bin/fuse-overlayfs',
        {
          versionOutput:
            'fusermount3 version: 3.14.0\nfuse-overlayfs: version 1.10\nFUSE library version 3.14.0\n',
        },
      ],
      ['/usr/sbin/iptables', { versionOutput: 'iptables v1.8.9 (nf_tables)\n' }],
    ]);
    for (const plugin of ['bridge', 'host-local', 'loopback', 'portmap']) {
      binaries.set(`${cniBinDir}/${plugin}`, { versionOutput: CNI_VERSION_OUTPUT(plugin) });
    }
    const parentOf = (dir: string) => dir.replace(/\/[^/]*$/, '') || '/';
    const stats = new Map<string, FileFacts>([
      ['/dev/fuse', deviceFacts()],
      ['/dev/net/tun', deviceFacts()],
      [parentOf(options.rootDir), directoryFacts(uid)],
      [parentOf(options.runDir), directoryFacts(uid)],
    ]);
    return new FakeHostProbe({
      user: { uid, gid: uid, name: 'alice' },
      pathDirs: ['/usr/local/bin', '/usr/bin', '/bin'],
      files: new Map([
        // What deploy/setup-host.sh gives: room for pods with their own user namespace.
        ['/etc/subuid', 'bob:100000:65536\nalice:165536:1048576\n'],
        ['/etc/subgid', 'bob:100000:65536\nalice:165536:1048576\n'],
        ['/proc/sys/user/max_user_namespaces', '63704\n'],
        ['/proc/sys/kernel/unprivileged_userns_clone', '1\n'],
      ]),
      stats,
      writable: new Set([parentOf(options.rootDir), parentOf(options.runDir)]),
      binaries,
      devices: new Map([
        ['/dev/fuse', { ok: true }],
        ['/dev/net/tun', { ok: true }],
      ]),
      cgroups: {
        v2MountPoint: '/sys/fs/cgroup',
        ownPath: '/user.slice/user-1000.slice/user@1000.service/app.slice/rootless-cri.service',
        ownDir: '/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/rootless-cri.service',
        delegatedDir: '/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service',
        controllers: ['cpuset', 'cpu', 'io', 'memory', 'pids'],
        v1Controllers: [],
      },
      overlay: { ok: true, detail: 'kernel overlay with userxattr mounts inside a user namespace' },
      cni: {
        ready: true,
        reason: '',
        message: '',
        conflist: {
          file: '/etc/cni/net.d/10-rootless-cri.conflist',
          cniVersion: '1.0.0',
          name: 'rootless-cri',
          plugins: [{ type: 'bridge' }, { type: 'portmap' }],
          raw: {},
        },
      },
    });
  }

  /** The next call of `method` throws `error`. */
  failNext(method: ProbeMethod, error: Error): void {
    this.failures.set(method, error);
  }

  private record(method: ProbeMethod, args: unknown[]): void {
    this.calls.push({ method, args });
    const failure = this.failures.get(method);
    if (failure) {
      this.failures.delete(method);
      throw failure;
    }
  }

  currentUser(): HostUser {
    this.record('currentUser', []);
    return this.host.user;
  }

  pathDirs(): string[] {
    this.record('pathDirs', []);
    return this.host.pathDirs;
  }

  async readFile(path: string): Promise<string | undefined> {
    this.record('readFile', [path]);
    return this.host.files.get(path);
  }

  async stat(path: string): Promise<FileFacts | undefined> {
    this.record('stat', [path]);
    const binary = this.host.binaries.get(path);
    if (binary) {
      return {
        mode: binary.mode ?? 0o100755,
        uid: binary.uid ?? 0,
        gid: 0,
        isFile: true,
        isDirectory: false,
        isCharacterDevice: false,
      };
    }
    return this.host.stats.get(path);
  }

  async isWritable(path: string): Promise<boolean> {
    this.record('isWritable', [path]);
    return this.host.writable.has(path);
  }

  async findBinary(name: string, dirs: readonly string[]): Promise<string | undefined> {
    this.record('findBinary', [name, dirs]);
    const candidates = name.startsWith('/') ? [name] : dirs.map((dir) => `${dir}/${name}`);
    return candidates.find((candidate) => this.host.binaries.has(candidate));
  }

  async runVersion(binary: string): Promise<string> {
    this.record('runVersion', [binary]);
    const output = this.host.binaries.get(binary)?.versionOutput;
    if (output === undefined) throw new Error(`${binary}: not found`);
    if (output instanceof Error) throw output;
    return output;
  }

  async fileCapabilities(path: string): Promise<string> {
    this.record('fileCapabilities', [path]);
    return this.host.binaries.get(path)?.capabilities ?? '';
  }

  async checkDeviceRw(path: string): Promise<DeviceAccess> {
    this.record('checkDeviceRw', [path]);
    return this.host.devices.get(path) ?? { ok: false, error: 'ENOENT' };
  }

  async cgroupFacts(): Promise<CgroupFacts> {
    this.record('cgroupFacts', []);
    return this.host.cgroups;
  }

  async tryOverlayInUserns(): Promise<OverlayProbeResult> {
    this.record('tryOverlayInUserns', []);
    return this.host.overlay;
  }

  async cniReadiness(confDir: string, binDirs: readonly string[]): Promise<CniReadiness> {
    this.record('cniReadiness', [confDir, binDirs]);
    return this.host.cni;
  }
}
