import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, type ConfigOverrides, loadConfig } from '../../src/config.js';
import {
  type DoctorCheck,
  type DoctorReport,
  formatDoctorReport,
  parseCniSupportedVersions,
  parseSubIdFile,
  runDoctor,
} from '../../src/rootless/doctor.js';
import {
  cgroupDirectory,
  extractVersion,
  parseCgroupMounts,
  parseProcSelfCgroup,
  RealHostProbe,
} from '../../src/rootless/host-probe.js';
import { deviceFacts, directoryFacts, FakeHostProbe } from '../fakes/fake-host-probe.js';

const ENV = { HOME: '/home/alice', XDG_RUNTIME_DIR: '/run/user/1000', XDG_CONFIG_HOME: '/nonexistent' };

const ALL_CHECK_IDS = [
  'subuid',
  'subgid',
  'subuid-pods',
  'subgid-pods',
  'newuidmap',
  'newgidmap',
  'userns',
  'dev-fuse',
  'dev-net-tun',
  'bin-rootlesskit',
  'bin-slirp4netns',
  'bin-catatonit',
  'bin-nsenter',
  'bin-crun',
  'bin-conmon',
  'bin-fuse-overlayfs',
  'bin-iptables',
  'cni-plugin-bridge',
  'cni-plugin-host-local',
  'cni-plugin-loopback',
  'cni-plugin-portmap',
  'cni-config',
  'cgroup-v2',
  'cgroup-delegation',
  'cgroup-controller-cpu',
  'cgroup-controller-memory',
  'cgroup-controller-pids',
  'cgroup-controller-io',
  'overlay-userns',
  'root-dir',
  'run-dir',
];

function config(overrides: ConfigOverrides = {}): Config {
  return loadConfig({ env: ENV, uid: 1000, overrides });
}

function healthyProbe(cfg: Config = config()): FakeHostProbe {
  return FakeHostProbe.healthy({ rootDir: cfg.rootDir, runDir: cfg.runDir });
}

function check(report: DoctorReport, id: string): DoctorCheck {
  const found = report.checks.find((c) => c.id === id);
  if (!found) throw new Error(`no check ${id} in ${report.checks.map((c) => c.id).join(', ')}`);
  return found;
}

function failing(report: DoctorReport): string[] {
  return report.checks.filter((c) => !c.ok).map((c) => c.id);
}

describe('runDoctor on a healthy host', () => {
  it('passes every check, with no fixes', async () => {
    const report = await runDoctor(config(), healthyProbe());
    expect(report.checks.map((c) => c.id)).toEqual(ALL_CHECK_IDS);
    expect(failing(report)).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.user).toEqual({ uid: 1000, name: 'alice' });
    for (const c of report.checks) expect(c.fix).toBe('');
  });

  it('reports where binaries are and their versions', async () => {
    const report = await runDoctor(config(), healthyProbe());
    expect(check(report, 'bin-rootlesskit')).toMatchObject({
      path: '/usr/bin/rootlesskit',
      version: '1.1.0',
    });
    expect(check(report, 'bin-fuse-overlayfs').version).toBe('1.10');
    expect(check(report, 'bin-catatonit').version).toBe('0.1.7_catatonit');
    expect(check(report, 'bin-nsenter').version).toBe('2.38.1');
    // iptables is in /usr/sbin, which the fake user's PATH lacks.
    expect(check(report, 'bin-iptables')).toMatchObject({ path: '/usr/sbin/iptables', version: '1.8.9' });
    expect(check(report, 'cni-plugin-bridge').detail).toContain('CNI 0.1.0..1.0.0');
    expect(check(report, 'subuid').detail).toBe('alice: 165536-1214111 (1048576 ids)');
    expect(check(report, 'subuid-pods').detail).toBe('1048576 ids: room for 15 pods of 65,536 ids');
  });

  it('uses the configured binary names and CNI dirs', async () => {
    const cfg = config({ 'runtime.crun': '/opt/crun/crun', 'network.cni_bin_dirs': ['/opt/cni/bin'] });
    const probe = FakeHostProbe.healthy({
      rootDir: cfg.rootDir,
      runDir: cfg.runDir,
      cniBinDir: '/opt/cni/bin',
    });
    probe.host.binaries.set('/opt/crun/crun', { versionOutput: 'crun version 1.9\n' });
    const report = await runDoctor(cfg, probe);
    expect(check(report, 'bin-crun')).toMatchObject({ ok: true, path: '/opt/crun/crun', version: '1.9' });
    expect(check(report, 'cni-plugin-portmap')).toMatchObject({ ok: true, path: '/opt/cni/bin/portmap' });
    expect(probe.calls).toContainEqual({
      method: 'cniReadiness',
      args: [cfg.network.cniConfDir, ['/opt/cni/bin']],
    });
  });
});

/** A change to the healthy host, the one check it must fail, and words its fix must contain. */
interface Breakage {
  name: string;
  breakHost: (probe: FakeHostProbe, cfg: Config) => void;
  id: string;
  required: boolean;
  fix: string;
  detail?: string;
  overrides?: Parameters<typeof config>[0];
}

const BREAKAGES: Breakage[] = [
  {
    name: 'no subuid range for the user',
    breakHost: (p) => p.host.files.set('/etc/subuid', 'bob:100000:65536\ncarol:165536:65536\n'),
    id: 'subuid',
    required: true,
    detail: 'no range for alice (uid 1000) in /etc/subuid',
    // After every existing range, aligned to 65536.
    fix: 'sudo usermod --add-subuids 262144-327679 alice',
  },
  {
    name: 'no /etc/subuid at all',
    breakHost: (p) => p.host.files.delete('/etc/subuid'),
    id: 'subuid',
    required: true,
    fix: 'sudo usermod --add-subuids 131072-196607 alice',
  },
  {
    name: 'a subuid range that is too small',
    breakHost: (p) => p.host.files.set('/etc/subuid', 'alice:165536:1000\n'),
    id: 'subuid',
    required: true,
    detail: 'only 1000 ids (165536-166535)',
    fix: 'sudo deploy/setup-host.sh --user alice',
  },
  {
    name: "the old 65,536 ids: nothing left for pods' own user namespaces",
    breakHost: (p) => p.host.files.set('/etc/subuid', 'bob:100000:65536\nalice:165536:65536\n'),
    id: 'subuid-pods',
    required: false,
    detail: '65536 ids in /etc/subuid: pods with their own user namespace (hostUsers: false) need ids beyond',
    fix: 'sudo deploy/setup-host.sh --user alice (gives 1048576 ids), or sudo usermod --add-subuids 262144-1245183 alice',
  },
  {
    name: 'no subgid range for the user',
    breakHost: (p) => p.host.files.set('/etc/subgid', ''),
    id: 'subgid',
    required: true,
    fix: 'sudo usermod --add-subgids 131072-196607 alice',
  },
  {
    name: 'newuidmap without setuid',
    breakHost: (p) => p.host.binaries.set('/usr/bin/newuidmap', { versionOutput: '', mode: 0o100755 }),
    id: 'newuidmap',
    required: true,
    fix: 'sudo chmod u+s /usr/bin/newuidmap',
  },
  {
    name: 'newgidmap setuid but not owned by root',
    breakHost: (p) =>
      p.host.binaries.set('/usr/bin/newgidmap', { versionOutput: '', mode: 0o104755, uid: 1000 }),
    id: 'newgidmap',
    required: true,
    fix: 'sudo setcap cap_setgid+ep /usr/bin/newgidmap',
  },
  {
    name: 'newuidmap missing',
    breakHost: (p) => p.host.binaries.delete('/usr/bin/newuidmap'),
    id: 'newuidmap',
    required: true,
    fix: 'sudo apt-get install uidmap',
  },
  {
    name: 'unprivileged user namespaces disabled (Debian switch)',
    breakHost: (p) => p.host.files.set('/proc/sys/kernel/unprivileged_userns_clone', '0\n'),
    id: 'userns',
    required: true,
    fix: 'sudo sysctl -w kernel.unprivileged_userns_clone=1',
  },
  {
    name: 'user namespaces limited to zero',
    breakHost: (p) => p.host.files.set('/proc/sys/user/max_user_namespaces', '0\n'),
    id: 'userns',
    required: true,
    fix: 'sudo sysctl -w user.max_user_namespaces=',
  },
  {
    name: 'AppArmor restricting user namespaces',
    breakHost: (p) => p.host.files.set('/proc/sys/kernel/apparmor_restrict_unprivileged_userns', '1\n'),
    id: 'userns',
    required: true,
    fix: 'kernel.apparmor_restrict_unprivileged_userns=0',
  },
  {
    name: '/dev/fuse mode 0600',
    breakHost: (p) => {
      p.host.stats.set('/dev/fuse', deviceFacts(0o20600));
      p.host.devices.set('/dev/fuse', { ok: false, error: 'EACCES' });
    },
    id: 'dev-fuse',
    required: true,
    detail: '/dev/fuse (mode 0600) cannot be opened read-write: EACCES',
    fix: 'sudo chmod 0666 /dev/fuse',
  },
  {
    name: '/dev/fuse unusable with the overlay snapshotter',
    overrides: { 'image.snapshotter': 'overlay' },
    breakHost: (p) => p.host.devices.set('/dev/fuse', { ok: false, error: 'EACCES' }),
    id: 'dev-fuse',
    required: false,
    fix: 'sudo chmod 0666 /dev/fuse',
  },
  {
    name: '/dev/net/tun missing',
    breakHost: (p) => p.host.stats.delete('/dev/net/tun'),
    id: 'dev-net-tun',
    required: true,
    fix: 'sudo modprobe tun',
  },
  {
    name: '/dev/net/tun not openable',
    breakHost: (p) => p.host.devices.set('/dev/net/tun', { ok: false, error: 'EACCES' }),
    id: 'dev-net-tun',
    required: true,
    fix: 'sudo chmod 0666 /dev/net/tun',
  },
  ...(
    [
      ['rootlesskit', '/usr/bin/rootlesskit', 'rootlesskit'],
      ['slirp4netns', '/usr/bin/slirp4netns', 'slirp4netns'],
      ['catatonit', '/usr/bin/catatonit', 'catatonit'],
      ['nsenter', '/usr/bin/nsenter', 'util-linux'],
      ['crun', '/usr/bin/crun', 'crun'],
      ['conmon', '/usr/bin/conmon', 'conmon'],
      ['fuse-overlayfs', '/usr/bin/fuse-overlayfs', 'fuse-overlayfs'],
      ['iptables', '/usr/sbin/iptables', 'iptables'],
    ] as const
  ).map(
    ([tool, path, pkg]): Breakage => ({
      name: `${tool} missing`,
      breakHost: (p) => p.host.binaries.delete(path),
      id: `bin-${tool}`,
      required: true,
      fix: `sudo apt-get install ${pkg}`,
    }),
  ),
  {
    name: 'fuse-overlayfs missing with the overlay snapshotter',
    overrides: { 'image.snapshotter': 'overlay' },
    breakHost: (p) => p.host.binaries.delete('/usr/bin/fuse-overlayfs'),
    id: 'bin-fuse-overlayfs',
    required: false,
    fix: 'sudo apt-get install fuse-overlayfs',
  },
  {
    name: 'a binary that does not run',
    breakHost: (p) =>
      p.host.binaries.set('/usr/bin/conmon', {
        versionOutput: new Error('error while loading shared libraries'),
      }),
    id: 'bin-conmon',
    required: true,
    detail: 'does not run: error while loading shared libraries',
    fix: 'sudo apt-get install --reinstall conmon',
  },
  ...(['bridge', 'host-local', 'loopback', 'portmap'] as const).map(
    (plugin): Breakage => ({
      name: `CNI plugin ${plugin} missing`,
      breakHost: (p) => p.host.binaries.delete(`/usr/lib/cni/${plugin}`),
      id: `cni-plugin-${plugin}`,
      required: true,
      detail: `${plugin} not found in /usr/lib/cni, /opt/cni/bin`,
      fix: 'sudo apt-get install containernetworking-plugins',
    }),
  ),
  {
    name: 'CNI plugins too old for the conflist',
    breakHost: (p) => {
      if (p.host.cni.conflist) p.host.cni.conflist.cniVersion = '1.1.0';
    },
    id: 'cni-plugin-bridge',
    required: true,
    detail: "not the config's cniVersion 1.1.0",
    fix: 'set "cniVersion" in the conflist to 1.0.0',
  },
  {
    name: 'CNI config not ready',
    breakHost: (p) => {
      p.host.cni = { ready: false, reason: 'NoCniConfig', message: 'no CNI config in /x' };
    },
    id: 'cni-config',
    required: true,
    detail: 'NoCniConfig: no CNI config in /x',
    fix: 'copy deploy/cni/10-rootless-cri.conflist into',
  },
  {
    name: 'no cgroup v2 mount',
    breakHost: (p) => {
      p.host.cgroups = { ...p.host.cgroups, v2MountPoint: undefined, ownDir: undefined };
    },
    id: 'cgroup-v2',
    required: true,
    fix: 'sudo mount -t cgroup2 none /sys/fs/cgroup/unified',
  },
  {
    name: 'no delegated cgroup',
    breakHost: (p) => {
      p.host.cgroups = { ...p.host.cgroups, delegatedDir: undefined };
    },
    id: 'cgroup-delegation',
    required: true,
    fix: 'sudo deploy/setup-host.sh --user alice',
  },
  {
    name: 'cpu bound to cgroup v1 on a hybrid host',
    breakHost: (p) => {
      p.host.cgroups = {
        ...p.host.cgroups,
        controllers: ['memory', 'pids', 'io'],
        v1Controllers: ['cpu', 'cpuacct'],
      };
    },
    id: 'cgroup-controller-cpu',
    required: false,
    detail: 'CPU shares and quota will be dropped',
    fix: 'systemd.unified_cgroup_hierarchy=1',
  },
  {
    name: 'memory not delegated on a v2 host',
    breakHost: (p) => {
      p.host.cgroups = { ...p.host.cgroups, controllers: ['cpu', 'pids', 'io'] };
    },
    id: 'cgroup-controller-memory',
    required: false,
    detail: 'memory limits and OOM reporting will be dropped',
    fix: 'Delegate=cpu cpuset io memory pids',
  },
  {
    name: 'io bound to cgroup v1 as blkio on a hybrid host',
    breakHost: (p) => {
      p.host.cgroups = {
        ...p.host.cgroups,
        controllers: ['cpu', 'memory', 'pids'],
        v1Controllers: ['blkio'],
      };
    },
    id: 'cgroup-controller-io',
    required: false,
    detail: 'io (v1: blkio) is bound to a cgroup v1 hierarchy',
    fix: 'cgroup_no_v1=blkio',
  },
  {
    name: 'pids not delegated',
    breakHost: (p) => {
      p.host.cgroups = { ...p.host.cgroups, controllers: ['cpu', 'memory', 'io'] };
    },
    id: 'cgroup-controller-pids',
    required: false,
    detail: 'pid limits will be dropped',
    fix: 'echo +pids',
  },
  {
    name: 'overlay not allowed in a user namespace (fuse-overlayfs snapshotter)',
    breakHost: (p) => {
      p.host.overlay = { ok: false, detail: 'mount: permission denied' };
    },
    id: 'overlay-userns',
    required: false,
    fix: 'nothing to do while image.snapshotter is "fuse-overlayfs"',
  },
  {
    name: 'overlay not allowed in a user namespace (overlay snapshotter)',
    overrides: { 'image.snapshotter': 'overlay' },
    breakHost: (p) => {
      p.host.overlay = { ok: false, detail: 'mount: permission denied' };
    },
    id: 'overlay-userns',
    required: true,
    fix: 'set image.snapshotter = "fuse-overlayfs"',
  },
  {
    name: 'run_dir owned by another user',
    breakHost: (p, cfg) => {
      p.host.stats.set(cfg.runDir, directoryFacts(0));
      p.host.writable.add(cfg.runDir);
    },
    id: 'run-dir',
    required: true,
    detail: 'belongs to uid 0, not alice',
    fix: 'sudo chown -R alice /run/user/1000/rootless-cri',
  },
  {
    name: 'root_dir cannot be created',
    breakHost: (p) => {
      p.host.writable.delete('/home/alice/.local/share');
    },
    id: 'root-dir',
    required: true,
    fix: 'sudo install -d -o alice -m 0700 /home/alice/.local/share/rootless-cri',
  },
];

describe('each broken piece fails its own check and names the fix', () => {
  it.each(BREAKAGES)('$name', async (breakage) => {
    const cfg = config(breakage.overrides ?? {});
    const probe = healthyProbe(cfg);
    const before = await runDoctor(cfg, probe);
    expect(failing(before)).toEqual([]);

    breakage.breakHost(probe, cfg);
    const report = await runDoctor(cfg, probe);
    const broken = check(report, breakage.id);
    expect(broken.ok).toBe(false);
    expect(broken.required).toBe(breakage.required);
    expect(broken.fix).toContain(breakage.fix);
    if (breakage.detail) expect(broken.detail).toContain(breakage.detail);
    // Only the checks this breakage is about fail (some break two, e.g. too-old plugins).
    expect(
      failing(report).every((id) => id === breakage.id || id.startsWith(breakage.id.split('-')[0]!)),
    ).toBe(true);
    expect(report.ok).toBe(!breakage.required);
    expect(report.checks.map((c) => c.id)).toEqual(ALL_CHECK_IDS);
  });
});

describe('runDoctor', () => {
  it('counts every range of the user for pods, and says a pod may then be mapped in several lines', async () => {
    const probe = healthyProbe();
    probe.host.files.set('/etc/subuid', 'alice:100000:65536\nbob:165536:65536\nalice:231072:983040\n');
    const report = await runDoctor(config(), probe);
    expect(check(report, 'subuid-pods')).toMatchObject({
      ok: true,
      detail: expect.stringMatching(/^1048576 ids, in 2 ranges \(a pod's ids that cross .* several lines\)/),
    });
  });

  it('accepts a subuid range listed by uid instead of name', async () => {
    const probe = healthyProbe();
    probe.host.files.set('/etc/subuid', '1000:100000:65536\n');
    expect(check(await runDoctor(config(), probe), 'subuid').ok).toBe(true);
  });

  it('accepts newuidmap with file capabilities instead of setuid', async () => {
    const probe = healthyProbe();
    probe.host.binaries.set('/usr/bin/newuidmap', {
      versionOutput: '',
      mode: 0o100755,
      capabilities: 'cap_setuid=ep',
    });
    const result = check(await runDoctor(config(), probe), 'newuidmap');
    expect(result.ok).toBe(true);
    expect(result.detail).toContain('cap_setuid=ep');
  });

  it('is ok with only warnings failing', async () => {
    const probe = healthyProbe();
    probe.host.cgroups = { ...probe.host.cgroups, controllers: [] };
    probe.host.overlay = { ok: false, detail: 'no' };
    const report = await runDoctor(config(), probe);
    expect(failing(report).sort()).toEqual(
      [
        'cgroup-controller-cpu',
        'cgroup-controller-io',
        'cgroup-controller-memory',
        'cgroup-controller-pids',
        'overlay-userns',
      ].sort(),
    );
    expect(report.ok).toBe(true);
  });

  it('keeps going when one probe throws, failing only what depended on it', async () => {
    const probe = healthyProbe();
    probe.failNext('cgroupFacts', new Error('EIO reading /proc/self/mountinfo'));
    const report = await runDoctor(config(), probe);
    expect(report.checks.map((c) => c.id)).toEqual(ALL_CHECK_IDS);
    const cgroupChecks = report.checks.filter((c) => c.id.startsWith('cgroup-'));
    for (const c of cgroupChecks) {
      expect(c.ok).toBe(false);
      expect(c.detail).toContain('EIO reading /proc/self/mountinfo');
    }
    expect(failing(report)).toEqual(cgroupChecks.map((c) => c.id));
    expect(report.ok).toBe(false);
  });
});

describe('formatDoctorReport', () => {
  it('marks failures and warnings and prints their fixes', async () => {
    const probe = healthyProbe();
    probe.host.devices.set('/dev/fuse', { ok: false, error: 'EACCES' });
    probe.host.cgroups = { ...probe.host.cgroups, controllers: ['memory', 'pids', 'io'] };
    const text = formatDoctorReport(await runDoctor(config(), probe));
    expect(text).toMatch(/^rootless-cri doctor: alice \(uid 1000\)\n/);
    expect(text).toContain(
      '[FAIL] /dev/fuse usable: /dev/fuse (mode 0666) cannot be opened read-write: EACCES',
    );
    expect(text).toContain('       fix: sudo chmod 0666 /dev/fuse');
    expect(text).toContain('[warn] cgroup cpu controller delegated:');
    expect(text).toContain('[ ok ] rootlesskit installed: /usr/bin/rootlesskit, version 1.1.0');
    expect(text.trimEnd().split('\n').at(-1)).toBe('1 required check failed, 1 warning: dev-fuse');
  });

  it('ends with a success line when everything required passed', async () => {
    const text = formatDoctorReport(await runDoctor(config(), healthyProbe()));
    expect(text).not.toContain('FAIL');
    expect(text.trimEnd().split('\n').at(-1)).toBe('All required checks passed.');
  });
});

describe('parsers', () => {
  const HYBRID_MOUNTINFO = [
    '25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw',
    '31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
    '32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu',
    '35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory',
    '39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids',
    '40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd',
    '41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw',
  ].join('\n');

  it('finds the v2 mount and the v1 controllers on a hybrid host', () => {
    expect(parseCgroupMounts(HYBRID_MOUNTINFO)).toEqual({
      v2MountPoint: '/sys/fs/cgroup/unified',
      v2MountRoot: '/',
      v1Controllers: ['cpu', 'memory', 'pids'],
    });
  });

  it('finds a pure v2 mount, unescaping octal escapes', () => {
    const info = '30 23 0:26 /user.slice /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw,nsdelegate';
    expect(parseCgroupMounts(info)).toEqual({
      v2MountPoint: '/sys/fs/my cgroup',
      v2MountRoot: '/user.slice',
      v1Controllers: [],
    });
  });

  it('reads the v2 line of /proc/self/cgroup', () => {
    expect(parseProcSelfCgroup('4:memory:/x\n0::/user.slice/a.scope\n')).toBe('/user.slice/a.scope');
    expect(parseProcSelfCgroup('4:memory:/x\n')).toBeUndefined();
  });

  it('places our cgroup under the mount, allowing for the mount root', () => {
    expect(cgroupDirectory('/sys/fs/cgroup/unified', '/', '/')).toBe('/sys/fs/cgroup/unified');
    expect(cgroupDirectory('/sys/fs/cgroup', '/', '/a/b')).toBe('/sys/fs/cgroup/a/b');
    expect(cgroupDirectory('/sys/fs/cgroup', '/a', '/a/b')).toBe('/sys/fs/cgroup/b');
    expect(cgroupDirectory('/sys/fs/cgroup', '/a', '/other')).toBeUndefined();
  });

  it('extracts versions from --version output', () => {
    expect(
      extractVersion(
        'unknown argument ignored: lazytime\nfusermount3 version: 3.14.0\nfuse-overlayfs: version 1.10\n',
        'fuse-overlayfs',
      ),
    ).toBe('1.10');
    expect(extractVersion('iptables v1.8.9 (nf_tables)', 'iptables')).toBe('1.8.9');
    expect(extractVersion('no digits here', 'x')).toBeUndefined();
  });

  it('reads subid files and CNI version lists', () => {
    expect(parseSubIdFile('# comment\nalice:100000:65536\nbroken line\n1000:200000:10\n')).toEqual([
      { owner: 'alice', start: 100000, count: 65536 },
      { owner: '1000', start: 200000, count: 10 },
    ]);
    expect(
      parseCniSupportedVersions(
        'CNI bridge plugin version unknown\nCNI protocol versions supported: 0.4.0, 1.0.0\n',
      ),
    ).toEqual(['0.4.0', '1.0.0']);
  });
});

describe('RealHostProbe on this machine', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'doctor-real-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('gives a complete, consistent report and finds the Debian-packaged tools', async () => {
    const cfg = loadConfig({ env: { HOME: dir, XDG_RUNTIME_DIR: dir } });
    const report = await runDoctor(cfg, new RealHostProbe());
    expect(report.checks.map((c) => c.id)).toEqual(ALL_CHECK_IDS);
    expect(report.ok).toBe(report.checks.every((c) => c.ok || !c.required));
    for (const c of report.checks) {
      // Every failure says what to do; no pass carries a fix.
      expect(c.ok ? c.fix === '' : c.fix.length > 0).toBe(true);
    }
    for (const tool of [
      'rootlesskit',
      'slirp4netns',
      'catatonit',
      'nsenter',
      'crun',
      'conmon',
      'fuse-overlayfs',
      'iptables',
    ]) {
      const found = check(report, `bin-${tool}`);
      expect(found.ok, `${tool}: ${found.detail}`).toBe(true);
      expect(found.version).toMatch(/^\d+\.\d+/);
    }
    for (const plugin of ['bridge', 'host-local', 'loopback', 'portmap']) {
      expect(check(report, `cni-plugin-${plugin}`).path).toBe(`/usr/lib/cni/${plugin}`);
    }
    // No config in the temp root dir, so the shipped conflist is used with /usr/lib/cni.
    expect(check(report, 'cni-config')).toMatchObject({ ok: true });
    expect(check(report, 'cni-config').detail).toContain('10-rootless-cri.conflist');
    expect(formatDoctorReport(report)).toContain('[ ok ] crun installed');
  });

  it('finds executables only, in the order of the dirs given', async () => {
    const probe = new RealHostProbe();
    const tool = join(dir, 'tool');
    writeFileSync(tool, '#!/bin/sh\necho "tool version 3.2.1"\n');
    chmodSync(tool, 0o755);
    const data = join(dir, 'data');
    writeFileSync(data, 'x');
    chmodSync(data, 0o644);
    expect(await probe.findBinary('tool', ['/nonexistent', dir])).toBe(tool);
    expect(await probe.findBinary('data', [dir])).toBeUndefined();
    expect(await probe.findBinary(tool, [])).toBe(tool);
    expect(await probe.findBinary('sub/tool', [dir])).toBeUndefined();
    expect(extractVersion(await probe.runVersion(tool), 'tool')).toBe('3.2.1');
    await expect(probe.runVersion(join(dir, 'missing'))).rejects.toThrow(/--version failed/);
  });

  it('opens devices read-write and reports why it cannot', async () => {
    const probe = new RealHostProbe();
    const file = join(dir, 'rw');
    writeFileSync(file, '');
    expect(await probe.checkDeviceRw(file)).toEqual({ ok: true });
    expect(await probe.checkDeviceRw(join(dir, 'absent'))).toEqual({ ok: false, error: 'ENOENT' });
    expect((await probe.stat('/dev/null'))?.isCharacterDevice).toBe(true);
    expect(await probe.readFile(join(dir, 'absent'))).toBeUndefined();
  });
});
