/**
 * `rootless-cri doctor`: checks that the host has what a rootless node needs and says,
 * for each missing piece, the command that fixes it. The checks only ask questions
 * through HostProbe, so they run against a fake host in unit tests.
 *
 * A check is `required` when the node or its pods cannot work without it; the others
 * are warnings (e.g. a cgroup controller that is not delegated: the daemon runs and
 * drops those limits). The CLI exits 0 only when every required check passes.
 */

import type { Config } from '../config.js';
import type { CgroupFacts, HostProbe, HostUser } from './host-probe.js';
import { extractVersion } from './host-probe.js';

export interface DoctorCheck {
  /** Stable identifier for machines (kebab-case). */
  id: string;
  title: string;
  ok: boolean;
  required: boolean;
  /** What was found. */
  detail: string;
  /** What to run or change; empty when ok. */
  fix: string;
  /** Where a binary was found and its version, for binary checks. */
  path?: string;
  version?: string;
}

export interface DoctorReport {
  /** True when every required check passed. */
  ok: boolean;
  user: { uid: number; name: string };
  checks: DoctorCheck[];
}

/** Size of the subordinate id range a node needs: uids 0..65535 inside it. */
export const MIN_SUBID_RANGE = 65536;
/** What pods with their own user namespace need besides: at least one pod's 65,536 more. */
export const POD_USERNS_SUBID_RANGE = 2 * 65536;
/** What deploy/setup-host.sh gives: the node's own ids and 15 pods' worth. */
export const SETUP_SUBID_RANGE = 1048576;

// Administrative tools (iptables, getcap) live here and are often missing from an
// unprivileged user's PATH.
const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

export const REQUIRED_CNI_PLUGINS = ['bridge', 'host-local', 'loopback', 'portmap'] as const;

/** cgroup v2 controllers whose absence drops the matching pod and container limits. */
export const LIMIT_CONTROLLERS = [
  { name: 'cpu', v1Name: 'cpu', limits: 'CPU shares and quota' },
  { name: 'memory', v1Name: 'memory', limits: 'memory limits and OOM reporting' },
  { name: 'pids', v1Name: 'pids', limits: 'pid limits' },
  // cgroup v1 calls the io controller blkio.
  { name: 'io', v1Name: 'blkio', limits: 'block I/O weights' },
] as const;

const SETUP_SCRIPT = 'sudo deploy/setup-host.sh --user';

export async function runDoctor(config: Config, probe: HostProbe): Promise<DoctorReport> {
  const user = probe.currentUser();
  const checks: DoctorCheck[] = [];
  const run = async (
    fallback: Omit<DoctorCheck, 'ok' | 'detail' | 'fix'>,
    body: () => Promise<DoctorCheck>,
  ) => {
    // One broken probe must not hide every other answer.
    try {
      checks.push(await body());
    } catch (err) {
      checks.push({
        ...fallback,
        ok: false,
        detail: `the check itself failed: ${err instanceof Error ? err.message : String(err)}`,
        fix: 'run doctor again; if it keeps failing, report it with this message',
      });
    }
  };

  for (const kind of ['uid', 'gid'] as const) {
    const id = `sub${kind}`;
    await run({ id, title: `/etc/sub${kind} range`, required: true }, () => checkSubIds(probe, user, kind));
  }
  for (const kind of ['uid', 'gid'] as const) {
    const id = `sub${kind}-pods`;
    await run({ id, title: `/etc/sub${kind} room for pod user namespaces`, required: false }, () =>
      checkPodSubIds(probe, user, kind),
    );
  }
  for (const tool of ['newuidmap', 'newgidmap'] as const) {
    await run({ id: tool, title: `${tool} is setuid root`, required: true }, () =>
      checkIdMapper(probe, tool),
    );
  }
  await run({ id: 'userns', title: 'unprivileged user namespaces', required: true }, () =>
    checkUserns(probe),
  );

  const fuseRequired = config.image.snapshotter === 'fuse-overlayfs';
  await run({ id: 'dev-fuse', title: '/dev/fuse usable', required: fuseRequired }, () =>
    checkDevice(probe, '/dev/fuse', 'fuse', fuseRequired, user),
  );
  await run({ id: 'dev-net-tun', title: '/dev/net/tun usable', required: true }, () =>
    checkDevice(probe, '/dev/net/tun', 'tun', true, user),
  );

  const tools: BinarySpec[] = [
    { tool: 'rootlesskit', name: config.node.rootlesskit, pkg: 'rootlesskit', required: true },
    { tool: 'slirp4netns', name: config.node.slirp4netns, pkg: 'slirp4netns', required: true },
    { tool: 'catatonit', name: config.node.catatonit, pkg: 'catatonit', required: true },
    { tool: 'nsenter', name: config.node.nsenter, pkg: 'util-linux', required: true },
    { tool: 'crun', name: config.runtime.crun, pkg: 'crun', required: true },
    { tool: 'conmon', name: config.runtime.conmon, pkg: 'conmon', required: true },
    {
      tool: 'fuse-overlayfs',
      name: config.image.fuseOverlayfs,
      pkg: 'fuse-overlayfs',
      required: fuseRequired,
    },
    // The daemon (pods' egress masquerade, src/os/pod-egress.ts) and portmap run iptables inside the node.
    { tool: 'iptables', name: 'iptables', pkg: 'iptables', required: true },
  ];
  const searchDirs = [...probe.pathDirs(), ...SBIN_DIRS];
  for (const spec of tools) {
    await run({ id: `bin-${spec.tool}`, title: `${spec.tool} installed`, required: spec.required }, () =>
      checkBinary(probe, spec, searchDirs),
    );
  }

  const binDirs = config.network.cniBinDirs;
  const cni = await probe
    .cniReadiness(config.network.cniConfDir, binDirs)
    .catch((err: unknown) => err as Error);
  const conflistVersion = cni instanceof Error ? undefined : cni.conflist?.cniVersion;
  for (const plugin of REQUIRED_CNI_PLUGINS) {
    await run({ id: `cni-plugin-${plugin}`, title: `CNI plugin ${plugin} installed`, required: true }, () =>
      checkCniPlugin(probe, plugin, binDirs, conflistVersion),
    );
  }
  await run({ id: 'cni-config', title: 'CNI network config', required: true }, async () => {
    if (cni instanceof Error) throw cni;
    const base = { id: 'cni-config', title: 'CNI network config', required: true };
    if (cni.ready && cni.conflist) {
      const plugins = cni.conflist.plugins.map((p) => p.type).join(', ');
      return pass(
        base,
        `${cni.conflist.file}: network "${cni.conflist.name}" (cniVersion ${cni.conflist.cniVersion}; ${plugins})`,
      );
    }
    const fix =
      cni.reason === 'CniPluginMissing'
        ? `sudo apt-get install containernetworking-plugins, or set network.cni_bin_dirs to where the plugins are`
        : `copy deploy/cni/10-rootless-cri.conflist into ${config.network.cniConfDir} (or fix the file named above), or set network.cni_conf_dir`;
    return failed(base, `${cni.reason}: ${cni.message}`, fix);
  });

  const cgroups = await probe.cgroupFacts().catch((err: unknown) => err as Error);
  const cgroupFacts = async () => {
    if (cgroups instanceof Error) throw cgroups;
    return cgroups;
  };
  await run({ id: 'cgroup-v2', title: 'cgroup v2 hierarchy', required: true }, async () =>
    checkCgroupV2(await cgroupFacts()),
  );
  await run(
    { id: 'cgroup-delegation', title: 'cgroup v2 subtree delegated to this user', required: true },
    async () => checkCgroupDelegation(await cgroupFacts(), user),
  );
  for (const controller of LIMIT_CONTROLLERS) {
    const id = `cgroup-controller-${controller.name}`;
    await run({ id, title: `cgroup ${controller.name} controller delegated`, required: false }, async () =>
      checkController(await cgroupFacts(), controller, user),
    );
  }

  const overlayRequired = config.image.snapshotter === 'overlay';
  await run(
    { id: 'overlay-userns', title: 'kernel overlay in a user namespace', required: overlayRequired },
    () => checkOverlay(probe, overlayRequired),
  );

  for (const [key, dir] of [
    ['root_dir', config.rootDir],
    ['run_dir', config.runDir],
  ] as const) {
    const id = key.replace('_', '-');
    await run({ id, title: `${key} usable`, required: true }, () =>
      checkDirectory(probe, id, key, dir, user),
    );
  }

  return {
    ok: checks.every((check) => check.ok || !check.required),
    user: { uid: user.uid, name: user.name },
    checks,
  };
}

type CheckBase = Pick<DoctorCheck, 'id' | 'title' | 'required'>;

function pass(base: CheckBase, detail: string, extra: Partial<DoctorCheck> = {}): DoctorCheck {
  return { ...base, ok: true, detail, fix: '', ...extra };
}

function failed(base: CheckBase, detail: string, fix: string, extra: Partial<DoctorCheck> = {}): DoctorCheck {
  return { ...base, ok: false, detail, fix, ...extra };
}

// ---------------------------------------------------------------------------------------
// subuid / subgid

interface SubIdRange {
  owner: string;
  start: number;
  count: number;
}

/** Entries of /etc/subuid or /etc/subgid ("owner:start:count"); malformed lines are skipped. */
export function parseSubIdFile(text: string): SubIdRange[] {
  const ranges: SubIdRange[] = [];
  for (const line of text.split('\n')) {
    const match = /^([^:#\s][^:]*):(\d+):(\d+)\s*$/.exec(line.trim());
    if (match) ranges.push({ owner: match[1]!, start: Number(match[2]), count: Number(match[3]) });
  }
  return ranges;
}

async function checkSubIds(probe: HostProbe, user: HostUser, kind: 'uid' | 'gid'): Promise<DoctorCheck> {
  const file = `/etc/sub${kind}`;
  const base = { id: `sub${kind}`, title: `${file} range`, required: true };
  const ranges = parseSubIdFile((await probe.readFile(file)) ?? '');
  const mine = ranges.filter((range) => range.owner === user.name || range.owner === String(user.uid));
  const total = mine.reduce((sum, range) => sum + range.count, 0);
  const listed = mine.map((range) => `${range.start}-${range.start + range.count - 1}`).join(', ');
  if (total >= MIN_SUBID_RANGE) {
    return pass(base, `${user.name}: ${listed} (${total} ids)`);
  }
  // Propose a range after every existing one so it cannot overlap another user's.
  const end = ranges.reduce((max, range) => Math.max(max, range.start + range.count), 100000);
  const start = Math.ceil(end / MIN_SUBID_RANGE) * MIN_SUBID_RANGE;
  const proposed = `${start}-${start + MIN_SUBID_RANGE - 1}`;
  const found =
    mine.length === 0 ? `no range for ${user.name} (uid ${user.uid})` : `only ${total} ids (${listed})`;
  return failed(
    base,
    `${found} in ${file}; the node needs ${MIN_SUBID_RANGE} to map uids 0-65535`,
    `sudo usermod --add-sub${kind}s ${proposed} ${user.name}   (or: ${SETUP_SCRIPT} ${user.name})`,
  );
}

/**
 * Pods with their own user namespace (hostUsers: false) take their ids from the node's beyond
 * its own 0..65535 (kubelet gives each 65,536). A warning, not a requirement: only such pods
 * need it, and Status does not advertise them without it.
 */
async function checkPodSubIds(probe: HostProbe, user: HostUser, kind: 'uid' | 'gid'): Promise<DoctorCheck> {
  const file = `/etc/sub${kind}`;
  const base = { id: `sub${kind}-pods`, title: `${file} room for pod user namespaces`, required: false };
  const ranges = parseSubIdFile((await probe.readFile(file)) ?? '');
  const mine = ranges.filter((range) => range.owner === user.name || range.owner === String(user.uid));
  const total = mine.reduce((sum, range) => sum + range.count, 0);
  if (total >= POD_USERNS_SUBID_RANGE) {
    const split =
      mine.length > 1
        ? `, in ${mine.length} ranges (a pod's ids that cross from one to the next are mapped in several lines)`
        : '';
    return pass(base, `${total} ids${split}: room for ${Math.floor(total / 65536) - 1} pods of 65,536 ids`);
  }
  const end = ranges.reduce((max, range) => Math.max(max, range.start + range.count), 100000);
  const start = Math.ceil(end / MIN_SUBID_RANGE) * MIN_SUBID_RANGE;
  const missing = SETUP_SUBID_RANGE - total;
  return failed(
    base,
    `${total} ids in ${file}: pods with their own user namespace (hostUsers: false) need ids beyond the node's own 65,536, ` +
      'so Status does not offer them',
    `${SETUP_SCRIPT} ${user.name} (gives ${SETUP_SUBID_RANGE} ids), or sudo usermod --add-sub${kind}s ` +
      `${start}-${start + missing - 1} ${user.name}; then restart the node (rootless-cri stop --all)`,
  );
}

// ---------------------------------------------------------------------------------------
// newuidmap / newgidmap

async function checkIdMapper(probe: HostProbe, tool: 'newuidmap' | 'newgidmap'): Promise<DoctorCheck> {
  const base = { id: tool, title: `${tool} is setuid root`, required: true };
  const path = await probe.findBinary(tool, [...probe.pathDirs(), '/usr/bin', '/bin', ...SBIN_DIRS]);
  if (!path) {
    return failed(
      base,
      `${tool} not found; rootlesskit needs it to map the subordinate ids`,
      'sudo apt-get install uidmap',
    );
  }
  const facts = await probe.stat(path);
  if (facts && (facts.mode & 0o4000) !== 0 && facts.uid === 0) {
    return pass(base, `${path} is setuid root`, { path });
  }
  const capability = tool === 'newuidmap' ? 'cap_setuid' : 'cap_setgid';
  const capabilities = await probe.fileCapabilities(path);
  if (capabilities.includes(capability)) {
    return pass(base, `${path} has file capabilities ${capabilities}`, { path });
  }
  return failed(
    base,
    `${path} is neither setuid root nor has ${capability}, so it cannot write the id maps`,
    `sudo chown root ${path} && sudo chmod u+s ${path}   (or: sudo setcap ${capability}+ep ${path})`,
    { path },
  );
}

// ---------------------------------------------------------------------------------------
// user namespaces

async function checkUserns(probe: HostProbe): Promise<DoctorCheck> {
  const base = { id: 'userns', title: 'unprivileged user namespaces', required: true };
  const read = async (path: string) => (await probe.readFile(path))?.trim();
  const max = await read('/proc/sys/user/max_user_namespaces');
  if (max === '0') {
    return failed(base, 'user.max_user_namespaces is 0', 'sudo sysctl -w user.max_user_namespaces=28633');
  }
  // Debian's own switch (absent on other kernels).
  if ((await read('/proc/sys/kernel/unprivileged_userns_clone')) === '0') {
    return failed(
      base,
      'kernel.unprivileged_userns_clone is 0: unprivileged users cannot create user namespaces',
      'sudo sysctl -w kernel.unprivileged_userns_clone=1',
    );
  }
  // Ubuntu 23.10+ restricts them through AppArmor.
  if ((await read('/proc/sys/kernel/apparmor_restrict_unprivileged_userns')) === '1') {
    return failed(
      base,
      'kernel.apparmor_restrict_unprivileged_userns is 1: AppArmor blocks unprivileged user namespaces',
      'sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0   (or add an AppArmor profile allowing userns for rootlesskit)',
    );
  }
  return pass(base, `allowed (user.max_user_namespaces = ${max ?? 'unknown'})`);
}

// ---------------------------------------------------------------------------------------
// devices

async function checkDevice(
  probe: HostProbe,
  path: string,
  module: string,
  required: boolean,
  user: HostUser,
): Promise<DoctorCheck> {
  const id = path === '/dev/fuse' ? 'dev-fuse' : 'dev-net-tun';
  const base = { id, title: `${path} usable`, required };
  const why =
    path === '/dev/fuse' ? 'fuse-overlayfs mounts container filesystems through it' : 'slirp4netns needs it';
  const facts = await probe.stat(path);
  if (!facts?.isCharacterDevice) {
    return failed(base, `${path} does not exist; ${why}`, `sudo modprobe ${module}`);
  }
  const access = await probe.checkDeviceRw(path);
  if (access.ok) return pass(base, `${path} opens read-write`);
  const mode = (facts.mode & 0o777).toString(8).padStart(4, '0');
  return failed(
    base,
    `${path} (mode ${mode}) cannot be opened read-write: ${access.error}; ${why}`,
    `sudo chmod 0666 ${path}   (kept across reboots by: ${SETUP_SCRIPT} ${user.name})`,
  );
}

// ---------------------------------------------------------------------------------------
// binaries

interface BinarySpec {
  tool: string;
  /** As configured: a name looked up on PATH (and the sbin dirs) or an absolute path. */
  name: string;
  pkg: string;
  required: boolean;
}

async function checkBinary(probe: HostProbe, spec: BinarySpec, searchDirs: string[]): Promise<DoctorCheck> {
  const base = { id: `bin-${spec.tool}`, title: `${spec.tool} installed`, required: spec.required };
  const path = await probe.findBinary(spec.name, searchDirs);
  if (!path) {
    const where = spec.name.startsWith('/') ? spec.name : `PATH or ${SBIN_DIRS.join(', ')}`;
    return failed(base, `${spec.name} not found (looked in ${where})`, `sudo apt-get install ${spec.pkg}`);
  }
  let output: string;
  try {
    output = await probe.runVersion(path);
  } catch (err) {
    return failed(
      base,
      `${path} is installed but does not run: ${err instanceof Error ? err.message : String(err)}`,
      `sudo apt-get install --reinstall ${spec.pkg}`,
      { path },
    );
  }
  const version = extractVersion(output, spec.tool);
  return pass(base, `${path}, version ${version ?? 'unknown'}`, { path, ...(version ? { version } : {}) });
}

/** "CNI protocol versions supported: 0.1.0, ..., 1.0.0" from a plugin's version output. */
export function parseCniSupportedVersions(output: string): string[] {
  const match = /supported:\s*(.+)/i.exec(output);
  return match ? match[1]!.split(/[,\s]+/).filter((v) => /^\d+\.\d+\.\d+$/.test(v)) : [];
}

async function checkCniPlugin(
  probe: HostProbe,
  plugin: string,
  binDirs: readonly string[],
  conflistVersion: string | undefined,
): Promise<DoctorCheck> {
  const base = { id: `cni-plugin-${plugin}`, title: `CNI plugin ${plugin} installed`, required: true };
  const path = await probe.findBinary(plugin, binDirs);
  if (!path) {
    return failed(
      base,
      `${plugin} not found in ${binDirs.join(', ')}`,
      'sudo apt-get install containernetworking-plugins   (or set network.cni_bin_dirs)',
    );
  }
  let output: string;
  try {
    output = await probe.runVersion(path);
  } catch (err) {
    return failed(
      base,
      `${path} does not run: ${err instanceof Error ? err.message : String(err)}`,
      'sudo apt-get install --reinstall containernetworking-plugins',
      { path },
    );
  }
  const supported = parseCniSupportedVersions(output);
  const range =
    supported.length > 0 ? `CNI ${supported[0]}..${supported[supported.length - 1]}` : 'CNI versions unknown';
  if (conflistVersion && supported.length > 0 && !supported.includes(conflistVersion)) {
    return failed(
      base,
      `${path} supports ${supported.join(', ')}, not the config's cniVersion ${conflistVersion}`,
      `install a newer containernetworking-plugins, or set "cniVersion" in the conflist to ${supported[supported.length - 1]}`,
      { path },
    );
  }
  const version = extractVersion(output.replace(/supported:.*/i, ''), plugin);
  return pass(base, `${path} (${range})`, { path, ...(version ? { version } : {}) });
}

// ---------------------------------------------------------------------------------------
// cgroups

const HYBRID_FIX =
  'boot with systemd.unified_cgroup_hierarchy=1 (pure cgroup v2), or free the controller from v1 with the kernel parameter cgroup_no_v1=';

function checkCgroupV2(facts: CgroupFacts): DoctorCheck {
  const base = { id: 'cgroup-v2', title: 'cgroup v2 hierarchy', required: true };
  if (!facts.v2MountPoint) {
    return failed(
      base,
      'no cgroup2 mount in /proc/self/mountinfo: pods cannot get cgroups',
      'sudo mkdir -p /sys/fs/cgroup/unified && sudo mount -t cgroup2 none /sys/fs/cgroup/unified   (permanently: boot with systemd.unified_cgroup_hierarchy=1)',
    );
  }
  if (!facts.ownPath || !facts.ownDir) {
    return failed(
      base,
      `cgroup2 is mounted at ${facts.v2MountPoint} but this process's v2 cgroup is not visible under it`,
      `start rootless-cri from a shell whose cgroup is under ${facts.v2MountPoint} (see ${SETUP_SCRIPT} USER)`,
    );
  }
  const hybrid =
    facts.v1Controllers.length > 0 ? ` (hybrid host: v1 has ${facts.v1Controllers.join(', ')})` : '';
  return pass(base, `mounted at ${facts.v2MountPoint}; our cgroup is ${facts.ownPath}${hybrid}`);
}

function checkCgroupDelegation(facts: CgroupFacts, user: HostUser): DoctorCheck {
  const base = { id: 'cgroup-delegation', title: 'cgroup v2 subtree delegated to this user', required: true };
  if (facts.delegatedDir) {
    return pass(base, `${facts.delegatedDir} is owned by ${user.name} and writable`);
  }
  return failed(
    base,
    `our cgroup ${facts.ownDir ?? facts.ownPath ?? '(unknown)'} is not owned by ${user.name} or not writable, so the daemon cannot create pod cgroups`,
    `${SETUP_SCRIPT} ${user.name} creates a delegated subtree (then start from inside it, e.g. with deploy/run-as-user.sh); on systemd hosts run under a unit with Delegate=yes (systemd-run --user --scope -p Delegate=yes ...)`,
  );
}

function checkController(
  facts: CgroupFacts,
  controller: (typeof LIMIT_CONTROLLERS)[number],
  user: HostUser,
): DoctorCheck {
  const { name } = controller;
  const base = {
    id: `cgroup-controller-${name}`,
    title: `cgroup ${name} controller delegated`,
    required: false,
  };
  const where = facts.delegatedDir ?? facts.ownDir;
  if (facts.controllers.includes(name)) return pass(base, `available in ${where}`);
  const consequence = `${controller.limits} will be dropped`;
  const { v1Name } = controller;
  if (facts.v1Controllers.includes(v1Name)) {
    const bound = v1Name === name ? name : `${name} (v1: ${v1Name})`;
    return failed(
      base,
      `${bound} is bound to a cgroup v1 hierarchy (hybrid host), so cgroup v2 cannot use it; ${consequence}`,
      `${HYBRID_FIX}${v1Name}`,
    );
  }
  return failed(
    base,
    `${name} is not in ${where ?? 'our cgroup'}/cgroup.controllers; ${consequence}`,
    `enable it in the parent's cgroup.subtree_control (echo +${name} | sudo tee <parent>/cgroup.subtree_control), ` +
      `or on systemd hosts: printf '[Service]\\nDelegate=cpu cpuset io memory pids\\n' | sudo tee /etc/systemd/system/user@.service.d/delegate.conf && sudo systemctl daemon-reload, then log in again as ${user.name}`,
  );
}

// ---------------------------------------------------------------------------------------
// overlay

async function checkOverlay(probe: HostProbe, required: boolean): Promise<DoctorCheck> {
  const base = { id: 'overlay-userns', title: 'kernel overlay in a user namespace', required };
  const result = await probe.tryOverlayInUserns();
  if (result.ok) return pass(base, result.detail);
  const fix = required
    ? 'set image.snapshotter = "fuse-overlayfs" (the default), or use a kernel >= 5.11 that allows overlay with userxattr in user namespaces'
    : 'nothing to do while image.snapshotter is "fuse-overlayfs"; the "overlay" snapshotter needs a kernel >= 5.11 that allows it';
  return failed(base, result.detail, fix);
}

// ---------------------------------------------------------------------------------------
// directories

async function checkDirectory(
  probe: HostProbe,
  id: string,
  key: string,
  dir: string,
  user: HostUser,
): Promise<DoctorCheck> {
  const base = { id, title: `${key} usable`, required: true };
  const facts = await probe.stat(dir);
  if (facts) {
    if (!facts.isDirectory) {
      return failed(
        base,
        `${dir} exists but is not a directory`,
        `remove ${dir} or set ${key} to another path`,
      );
    }
    if (facts.uid !== user.uid) {
      return failed(
        base,
        `${dir} belongs to uid ${facts.uid}, not ${user.name}; the daemon keeps private state there`,
        `sudo chown -R ${user.name} ${dir}, or set ${key} to a directory of ${user.name}'s`,
      );
    }
    if (!(await probe.isWritable(dir))) {
      return failed(base, `${dir} is not writable by ${user.name}`, `chmod u+rwx ${dir}`);
    }
    return pass(base, `${dir} exists and belongs to ${user.name}`);
  }
  // Not there yet: the daemon creates it, so the nearest existing parent must be writable.
  let parent = dir;
  for (;;) {
    const next = parent.replace(/\/[^/]*$/, '') || '/';
    parent = next;
    const parentFacts = await probe.stat(parent);
    if (parentFacts) {
      if (parentFacts.isDirectory && (await probe.isWritable(parent))) {
        return pass(base, `${dir} will be created in ${parent}`);
      }
      return failed(
        base,
        `${dir} does not exist and ${parent} is not writable by ${user.name}`,
        `sudo install -d -o ${user.name} -m 0700 ${dir}, or set ${key} to a directory of ${user.name}'s`,
      );
    }
    if (parent === '/') {
      return failed(base, `no parent of ${dir} exists`, `set ${key} to an existing directory's child`);
    }
  }
}

// ---------------------------------------------------------------------------------------
// text output

/** The report as a person reads it on a terminal. */
export function formatDoctorReport(report: DoctorReport): string {
  const lines: string[] = [];
  const failedRequired = report.checks.filter((c) => !c.ok && c.required);
  const warnings = report.checks.filter((c) => !c.ok && !c.required);
  lines.push(`rootless-cri doctor: ${report.user.name} (uid ${report.user.uid})`);
  for (const check of report.checks) {
    const mark = check.ok ? ' ok ' : check.required ? 'FAIL' : 'warn';
    lines.push(`[${mark}] ${check.title}: ${check.detail}`);
    if (!check.ok && check.fix) lines.push(`       fix: ${check.fix}`);
  }
  lines.push('');
  if (report.ok) {
    lines.push(
      `All required checks passed${warnings.length > 0 ? `; ${warnings.length} warning${warnings.length > 1 ? 's' : ''}` : ''}.`,
    );
  } else {
    lines.push(
      `${failedRequired.length} required check${failedRequired.length > 1 ? 's' : ''} failed` +
        `${warnings.length > 0 ? `, ${warnings.length} warning${warnings.length > 1 ? 's' : ''}` : ''}: ` +
        failedRequired.map((c) => c.id).join(', '),
    );
  }
  return `${lines.join('\n')}\n`;
}
