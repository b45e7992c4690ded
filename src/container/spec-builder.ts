/**
 * The OCI runtime spec of a container, from its CRI ContainerConfig, its pod, its image and
 * facts about the node probed once at start. No side effects: the only I/O is reading, through
 * the `SpecFiles` interface (image /etc/passwd and /etc/group in-root, host paths of mounts and
 * devices, a Localhost seccomp profile), so tests can run it against temp dirs or fakes.
 *
 * The rules are containerd's (internal/cri/server/container_create_linux.go and pkg/oci), with
 * the rootless adjustments of DESIGN.md: the node's user namespace is the container's unless its
 * pod has one of its own (pod-user-namespace-spec.ts), limits of controllers that are not
 * delegated are dropped with a warning, an oom_score_adj below the daemon's own is raised to it
 * (lowering needs real root).
 */
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import type { ContainerConfig__Output, KeyValue__Output, Mount__Output } from '../api/proto.js';
import type { ResolvedUser } from '../core/container-store.js';
import type { SandboxInfo } from '../core/sandbox-info.js';
import { FailedPreconditionError, InternalError, InvalidArgumentError } from '../errors.js';
import type { InRootPath } from '../os/in-root.js';
import type {
  OciDevice,
  OciDeviceRule,
  OciMount,
  OciNamespace,
  OciResources,
  OciSeccomp,
  OciSpec,
} from '../os/oci-spec.js';
import { containerCapabilities } from './capabilities.js';
import type { HostDevice, HostFacts } from './host-facts.js';
import { type PodUserNamespaceFiles, withPodUserNamespace } from './pod-user-namespace-spec.js';
import { criToOciResources } from './resources.js';

export type { HostDevice, HostFacts };

import { defaultSeccompProfile, translateSeccompProfile } from './seccomp.js';
import {
  type GroupEntry,
  type PasswdEntry,
  parseGroup,
  parsePasswd,
  requestedUserString,
  resolveUser,
} from './user.js';

/** Size caps for files read from the image or the host while building a spec. */
export const MAX_ID_FILE_BYTES = 1024 * 1024;
export const MAX_SECCOMP_PROFILE_BYTES = 1024 * 1024;

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export const DEFAULT_MASKED_PATHS: readonly string[] = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];

export const DEFAULT_READONLY_PATHS: readonly string[] = [
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
];

/** Annotation keys the runtime writes (containerd's names, so tools that read them work). */
export const ANNOTATIONS = {
  containerType: 'io.kubernetes.cri.container-type',
  sandboxId: 'io.kubernetes.cri.sandbox-id',
  sandboxName: 'io.kubernetes.cri.sandbox-name',
  sandboxNamespace: 'io.kubernetes.cri.sandbox-namespace',
  sandboxUid: 'io.kubernetes.cri.sandbox-uid',
  containerName: 'io.kubernetes.cri.container-name',
  imageName: 'io.kubernetes.cri.image-name',
} as const;

/** The read-only file access the builder needs. */
export interface SpecFiles extends PodUserNamespaceFiles {
  /** A regular file of the rootfs, resolved in-root; null when absent (see in-root.ts). */
  readInRoot(root: string, p: string, maxBytes: number): Promise<Buffer | null>;
  resolveInRoot(root: string, p: string): Promise<InRootPath>;
  /** realpath(3) of a host path; rejects with code ENOENT when it does not exist. */
  realpath(hostPath: string): Promise<string>;
  /** The device node at a host path, or null when it is not a device. */
  statDevice(hostPath: string): Promise<Omit<HostDevice, 'path'> | null>;
  /** A regular host file (seccomp profile), at most maxBytes. */
  readHostFile(hostPath: string, maxBytes: number): Promise<Buffer>;
}

/** The `config` object of an OCI image config (only what a container spec uses). */
export interface ImageRuntimeConfig {
  User?: string;
  Env?: string[] | null;
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  WorkingDir?: string;
  Volumes?: Record<string, unknown> | null;
  StopSignal?: string;
}

export interface SpecInput {
  containerId: string;
  config: ContainerConfig__Output;
  sandbox: SandboxInfo;
  image: {
    /** The OCI image config document ({ config: {...}, rootfs, history, ... }). */
    config: { config?: ImageRuntimeConfig | null };
    /** The prepared rootfs (absolute host path). */
    rootfs: string;
    /** The image name as the user asked for it (annotation and status). */
    name: string;
  };
  hostFacts: HostFacts;
  files: SpecFiles;
  /** /proc/<pid>/ns/pid of the target container when pid mode is TARGET. */
  targetPidNamespace?: string | null;
}

export interface SpecResult {
  spec: OciSpec;
  /** What was requested but is not applied on this node; logged and shown in verbose status. */
  warnings: string[];
  user: ResolvedUser;
  /** Image VOLUME paths, confined to the rootfs; the caller creates them in-root. */
  imageVolumes: string[];
  /** Signal that stops the container: the request's, else the image's, else SIGTERM. */
  stopSignal: string;
}

// ---------------------------------------------------------------------------------------------

/**
 * `log_directory` + `log_path`, confined to the directory (catalog 26): a log path that is
 * absolute or climbs out is an error. Empty when either is empty (no log file).
 */
export function containerLogPath(logDirectory: string, logPath: string): string {
  if (logDirectory === '' || logPath === '') return '';
  if (!path.isAbsolute(logDirectory)) {
    throw new InvalidArgumentError(`log_directory "${logDirectory}" of the pod must be an absolute path`);
  }
  if (logPath.includes('\0') || path.isAbsolute(logPath)) {
    throw new InvalidArgumentError(
      `log_path "${logPath}" must be a relative path inside the pod's log_directory`,
    );
  }
  const normalised = path.posix.normalize(logPath);
  if (normalised === '..' || normalised.startsWith('../') || normalised === '.') {
    throw new InvalidArgumentError(
      `log_path "${logPath}" leaves the pod's log_directory; use a path inside it`,
    );
  }
  return path.join(logDirectory, normalised);
}

function isUnderProc(p: string): boolean {
  return p === '/proc' || p.startsWith('/proc/');
}

function int64(value: string | undefined, what: string): number {
  if (value === undefined || value === '') return 0;
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`${what} "${value}" is not an integer`);
  return n;
}

function envValue(kv: KeyValue__Output): Buffer {
  const v = kv.value as unknown;
  if (Buffer.isBuffer(v)) return v;
  return Buffer.from(typeof v === 'string' ? v : '', 'utf8');
}

/** Image env, then request env (replacing by key); NUL anywhere and CR/LF in HOME are refused. */
function buildEnv(imageEnv: string[], requested: KeyValue__Output[], hostname: string): string[] {
  const env = new Map<string, string>();
  env.set('PATH', DEFAULT_PATH);
  if (hostname !== '') env.set('HOSTNAME', hostname);
  for (const entry of imageEnv) {
    const eq = entry.indexOf('=');
    if (eq <= 0) continue;
    env.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  for (const kv of requested) {
    const key = kv.key;
    if (key === '' || key.includes('=') || key.includes('\0')) {
      throw new InvalidArgumentError(
        `environment variable name "${key}" is invalid: names are non-empty, without "=" or NUL`,
      );
    }
    const raw = envValue(kv);
    if (raw.includes(0)) {
      throw new InvalidArgumentError(`environment variable ${key} contains a NUL byte; remove it`);
    }
    env.set(key, raw.toString('utf8'));
  }
  for (const [key, value] of env) {
    if (value.includes('\0'))
      throw new InvalidArgumentError(`environment variable ${key} contains a NUL byte`);
  }
  const home = env.get('HOME');
  // CVE-2022-4318 / CVE-2026-15809: a HOME with a real newline injected /etc/passwd lines.
  if (home !== undefined && /[\n\r]/.test(home)) {
    throw new InvalidArgumentError(
      'environment variable HOME contains a newline or carriage return; remove it',
    );
  }
  return [...env].map(([k, v]) => `${k}=${v}`);
}

/** containerd's merge of command/args with the image's Entrypoint/Cmd. */
function buildArgs(config: ContainerConfig__Output, image: ImageRuntimeConfig): string[] {
  let command = [...config.command];
  let args = [...config.args];
  if (command.length === 0) {
    if (args.length === 0) args = [...(image.Cmd ?? [])];
    const entrypoint = image.Entrypoint ?? [];
    if (!(entrypoint.length === 1 && entrypoint[0] === '')) command = [...entrypoint];
  }
  const all = [...command, ...args];
  if (all.length === 0) {
    throw new InvalidArgumentError(
      'no command specified: set command or args, or use an image with ENTRYPOINT/CMD',
    );
  }
  if (all.some((a) => a.includes('\0')))
    throw new InvalidArgumentError('a command argument contains a NUL byte');
  return all;
}

/**
 * The request's stop signal: the CRI Signal enum names a signal with a `SIGNAL_` prefix
 * (`SIGNAL_SIGTERM`; `SIGNAL_RUNTIME_DEFAULT` for "the image's or SIGTERM"). A number the
 * API does not know arrives as the number.
 */
function requestStopSignal(value: ContainerConfig__Output['stop_signal'] | undefined): string | null {
  const name = String(value ?? '');
  if (name === 'SIGNAL_RUNTIME_DEFAULT') return null;
  return signalName(name.startsWith('SIGNAL_') ? name.slice('SIGNAL_'.length) : name);
}

function signalName(value: string | undefined): string | null {
  if (value === undefined || value === '' || value === 'RUNTIME_DEFAULT') return null;
  const signals = osConstants.signals as Record<string, number>;
  const upper = value.toUpperCase();
  if (/^[0-9]+$/.test(upper)) {
    const n = Number(upper);
    const name = Object.keys(signals).find((k) => signals[k] === n);
    if (name) return name;
  } else {
    const name = upper.startsWith('SIG') ? upper : `SIG${upper}`;
    if (name in signals) return name;
  }
  throw new InvalidArgumentError(`stop signal "${value}" is not a known signal`);
}

function checkAbsolute(p: string, what: string): string {
  if (p === '' || !p.startsWith('/')) {
    throw new InvalidArgumentError(`${what} "${p}" must be an absolute path`);
  }
  if (p.includes('\0')) throw new InvalidArgumentError(`${what} contains a NUL byte`);
  return path.posix.normalize(p);
}

function checkId(id: number, what: string, facts: HostFacts): void {
  if (id >= facts.idMapSize) {
    throw new InvalidArgumentError(
      `${what} ${id} is not mapped in the node's user namespace (ids 0..${facts.idMapSize - 1}); ` +
        'use a smaller id or give the node user a larger /etc/subuid and /etc/subgid range',
    );
  }
}

const PROPAGATION_OPTION: Record<string, string> = {
  PROPAGATION_PRIVATE: 'rprivate',
  PROPAGATION_HOST_TO_CONTAINER: 'rslave',
  PROPAGATION_BIDIRECTIONAL: 'rshared',
};

interface BindRequest {
  containerPath: string;
  hostPath: string;
  readonly: boolean;
  propagation: string;
  recursiveReadOnly: boolean;
}

async function userMounts(
  mounts: Mount__Output[],
  files: SpecFiles,
  facts: HostFacts,
): Promise<BindRequest[]> {
  const out: BindRequest[] = [];
  for (const m of mounts) {
    const where = `mount ${JSON.stringify(m.container_path)}`;
    if (m.image) {
      // CreateContainer mounts image volumes first (image-volumes.ts) and hands binds on.
      throw new InternalError(`${where}: an image volume reached the spec unmounted`);
    }
    // uid/gid mappings are the pod user namespace step's (pod-user-namespace-spec.ts).
    const containerPath = checkAbsolute(m.container_path, 'mount container_path');
    if (m.host_path === '' || !m.host_path.startsWith('/')) {
      throw new InvalidArgumentError(`${where}: host_path "${m.host_path}" must be an absolute path`);
    }
    let hostPath: string;
    try {
      // The API says a symlink host path is followed: mount what it points to.
      hostPath = await files.realpath(m.host_path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new InvalidArgumentError(`${where}: host_path ${m.host_path} does not exist; create it first`, {
          cause: err,
        });
      }
      throw new InvalidArgumentError(`${where}: host_path ${m.host_path} cannot be resolved`, { cause: err });
    }
    const propagation = PROPAGATION_OPTION[String(m.propagation)];
    if (!propagation)
      throw new InvalidArgumentError(`${where}: unknown propagation ${String(m.propagation)}`);
    if (m.recursive_read_only) {
      if (!m.readonly) throw new InvalidArgumentError(`${where}: recursive_read_only needs readonly: true`);
      if (propagation !== 'rprivate') {
        throw new InvalidArgumentError(`${where}: recursive_read_only needs propagation PROPAGATION_PRIVATE`);
      }
      if (!facts.recursiveReadOnlyMounts) {
        throw new InvalidArgumentError(
          `${where}: recursive read-only mounts are not supported on this node (the OCI runtime or kernel lacks them)`,
        );
      }
    }
    out.push({
      containerPath,
      hostPath,
      readonly: m.readonly,
      propagation,
      recursiveReadOnly: m.recursive_read_only,
    });
  }
  return out;
}

function bindMount(b: BindRequest): OciMount {
  const options = ['rbind', b.propagation, b.readonly ? 'ro' : 'rw'];
  if (b.recursiveReadOnly) options.push('rro');
  return { destination: b.containerPath, type: 'bind', source: b.hostPath, options };
}

function defaultMounts(privileged: boolean): OciMount[] {
  const sysOptions = ['nosuid', 'noexec', 'nodev', ...(privileged ? ['rw'] : ['ro'])];
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    {
      destination: '/dev',
      type: 'tmpfs',
      source: 'tmpfs',
      options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'],
    },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    {
      destination: '/dev/mqueue',
      type: 'mqueue',
      source: 'mqueue',
      options: ['nosuid', 'noexec', 'nodev'],
    },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: sysOptions },
    {
      destination: '/sys/fs/cgroup',
      type: 'cgroup',
      source: 'cgroup',
      options: ['nosuid', 'noexec', 'nodev', 'relatime', ...(privileged ? ['rw'] : ['ro'])],
    },
  ];
}

function isUnder(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir === '/' ? '/' : `${dir}/`);
}

async function readIdFiles(
  input: SpecInput,
): Promise<{ passwd: PasswdEntry[] | null; group: GroupEntry[] | null }> {
  const { files, image } = input;
  // Side by side: each is a few round trips through the rootfs mount (fuse-overlayfs).
  const [passwd, group] = await Promise.all([
    files.readInRoot(image.rootfs, '/etc/passwd', MAX_ID_FILE_BYTES),
    files.readInRoot(image.rootfs, '/etc/group', MAX_ID_FILE_BYTES),
  ]);
  return {
    passwd: passwd === null ? null : parsePasswd(passwd.toString('utf8')),
    group: group === null ? null : parseGroup(group.toString('utf8')),
  };
}

async function seccompFor(
  input: SpecInput,
  privileged: boolean,
  capabilities: string[],
): Promise<OciSeccomp | undefined> {
  if (privileged) return undefined;
  const sc = input.config.linux?.security_context;
  let kind: 'default' | 'unconfined' | 'localhost';
  let ref = '';
  if (sc?.seccomp) {
    const type = String(sc.seccomp.profile_type);
    if (type === 'RuntimeDefault') kind = 'default';
    else if (type === 'Unconfined') kind = 'unconfined';
    else if (type === 'Localhost') {
      kind = 'localhost';
      ref = sc.seccomp.localhost_ref;
    } else throw new InvalidArgumentError(`unknown seccomp profile type ${type}`);
  } else {
    const legacy = sc?.seccomp_profile_path ?? '';
    if (legacy === '' || legacy === 'unconfined') kind = 'unconfined';
    else if (legacy === 'runtime/default' || legacy === 'docker/default') kind = 'default';
    else if (legacy.startsWith('localhost/')) {
      kind = 'localhost';
      ref = legacy.slice('localhost/'.length);
    } else {
      throw new InvalidArgumentError(
        `seccomp_profile_path "${legacy}" is not supported: use runtime/default, unconfined or localhost/<absolute path>`,
      );
    }
  }
  if (kind === 'unconfined') return undefined;
  if (kind === 'default') return defaultSeccompProfile(capabilities, input.hostFacts.nodeArch);
  if (!ref.startsWith('/') || ref.includes('\0') || path.posix.normalize(ref) !== ref) {
    throw new InvalidArgumentError(
      `seccomp Localhost profile "${ref}" must be an absolute, normalised path to a JSON file on the node`,
    );
  }
  let text: Buffer;
  try {
    text = await input.files.readHostFile(ref, MAX_SECCOMP_PROFILE_BYTES);
  } catch (err) {
    throw new InvalidArgumentError(`cannot read the seccomp Localhost profile ${ref}`, { cause: err });
  }
  return translateSeccompProfile(text.toString('utf8'), ref, {
    capabilities,
    nodeArch: input.hostFacts.nodeArch,
    kernelVersion: input.hostFacts.kernelVersion,
  });
}

function buildResources(
  input: SpecInput,
  warnings: string[],
  haveCgroup: boolean,
): { resources: OciResources | undefined; oomScoreAdj: number | undefined } {
  const r = input.config.linux?.resources;
  if (!r) return { resources: undefined, oomScoreAdj: undefined };
  const facts = input.hostFacts;
  const converted = criToOciResources(r, facts, haveCgroup);
  warnings.push(...converted.warnings);
  const resources = converted.resources;

  let oomScoreAdj: number | undefined;
  if (r.oom_score_adj !== '' && r.oom_score_adj !== '0') {
    oomScoreAdj = int64(r.oom_score_adj, 'oom_score_adj');
    if (oomScoreAdj < -1000 || oomScoreAdj > 1000) {
      throw new InvalidArgumentError(`oom_score_adj ${oomScoreAdj} is outside -1000..1000`);
    }
    if (oomScoreAdj < facts.oomScoreAdjMin) {
      warnings.push(
        `oom_score_adj ${oomScoreAdj} raised to ${facts.oomScoreAdjMin}: lowering it below the daemon's needs real root`,
      );
      oomScoreAdj = facts.oomScoreAdjMin;
    }
  }
  return { resources: Object.keys(resources).length > 0 ? resources : undefined, oomScoreAdj };
}

function namespacesFor(input: SpecInput): {
  namespaces: OciNamespace[];
  hostNetwork: boolean;
  ipcMode: string;
} {
  const { sandbox } = input;
  const containerOptions = input.config.linux?.security_context?.namespace_options;
  const podOptions = sandbox.config.linux?.security_context?.namespace_options;
  const network = String(containerOptions?.network ?? podOptions?.network ?? 'POD');
  const ipc = String(containerOptions?.ipc ?? podOptions?.ipc ?? 'POD');
  const pid = String(containerOptions?.pid ?? podOptions?.pid ?? 'CONTAINER');
  // The user namespace (userns_options) is the pod user namespace step's.
  const namespaces: OciNamespace[] = [{ type: 'mount' }];
  const hostNetwork = network === 'NODE';
  if (!hostNetwork) {
    namespaces.push(
      sandbox.namespaces.network
        ? { type: 'network', path: sandbox.namespaces.network }
        : { type: 'network' },
    );
    if (sandbox.namespaces.uts) namespaces.push({ type: 'uts', path: sandbox.namespaces.uts });
  }
  if (ipc !== 'NODE') {
    namespaces.push(sandbox.namespaces.ipc ? { type: 'ipc', path: sandbox.namespaces.ipc } : { type: 'ipc' });
  }
  switch (pid) {
    case 'NODE':
      break;
    case 'CONTAINER':
      namespaces.push({ type: 'pid' });
      break;
    case 'POD':
      if (sandbox.infraPid === null) {
        throw new FailedPreconditionError(
          `pod ${sandbox.id} has no infra process to share its pid namespace (was it created with pid mode POD?)`,
        );
      }
      namespaces.push({ type: 'pid', path: `/proc/${sandbox.infraPid}/ns/pid` });
      break;
    case 'TARGET':
      if (!input.targetPidNamespace) {
        throw new InvalidArgumentError(
          `pid namespace mode TARGET needs a running target container (target_id)`,
        );
      }
      namespaces.push({ type: 'pid', path: input.targetPidNamespace });
      break;
    default:
      throw new InvalidArgumentError(`unknown pid namespace mode ${pid}`);
  }
  if (input.hostFacts.cgroupV2) namespaces.push({ type: 'cgroup' });
  return { namespaces, hostNetwork, ipcMode: ipc };
}

/** Builds the OCI spec; throws InvalidArgument (etc.) naming the offending field. */
/**
 * The spec as the steps build it: the OCI document, and what the steps learn for the ones after
 * them and for the caller.
 */
export interface SpecDraft {
  spec: OciSpec;
  /** What was requested but is not applied on this node. */
  warnings: string[];
  user: ResolvedUser;
  imageVolumes: string[];
  stopSignal: string;
  /** Shared by the steps. */
  privileged: boolean;
  hostNetwork: boolean;
  ipcMode: string;
  haveCgroup: boolean;
}

/** One step of spec generation: reads the request, fills its part of the draft, may warn. */
export type SpecOpt = (draft: SpecDraft, input: SpecInput) => Promise<string[]> | string[];

function imageConfigOf(input: SpecInput): ImageRuntimeConfig {
  return input.image.config.config ?? {};
}

function securityContextOf(input: SpecInput) {
  return input.config.linux?.security_context ?? null;
}

/** The request as a whole: a name, and privileges the pod allows. */
export const withValidRequest: SpecOpt = (draft, { config, sandbox }) => {
  if (!config.metadata || config.metadata.name === '') {
    throw new InvalidArgumentError('container metadata.name is required');
  }
  if (draft.privileged && !sandbox.config.linux?.security_context?.privileged) {
    throw new InvalidArgumentError('a privileged container needs a privileged pod sandbox');
  }
  return [];
};

/** Command, environment, working directory, terminal, stop signal. */
export const withProcess: SpecOpt = async (draft, input) => {
  const { config, sandbox, files } = input;
  const imageConfig = imageConfigOf(input);
  let cwd = config.working_dir !== '' ? config.working_dir : imageConfig.WorkingDir || '/';
  cwd = checkAbsolute(cwd, 'working directory');
  // CVE-2024-21626: a cwd under /proc (e.g. /proc/self/fd/7) can reach a leaked host fd.
  const resolvedCwd = await files.resolveInRoot(input.image.rootfs, cwd);
  if (isUnderProc(cwd) || isUnderProc(resolvedCwd.containerPath)) {
    throw new InvalidArgumentError(`working directory ${cwd} is under /proc; use a directory of the image`);
  }
  draft.spec.process = {
    ...draft.spec.process,
    terminal: config.tty,
    args: buildArgs(config, imageConfig),
    env: buildEnv(imageConfig.Env ?? [], config.envs, sandbox.hostname),
    cwd,
  };
  draft.stopSignal = requestStopSignal(config.stop_signal) ?? signalName(imageConfig.StopSignal) ?? 'SIGTERM';
  return [];
};

/** uid, gid and groups, from the request or the image, resolved against the image's files. */
export const withUser: SpecOpt = async (draft, input) => {
  const sc = securityContextOf(input);
  const userString = sc ? requestedUserString(sc) : '';
  const ids = await readIdFiles(input);
  const user = resolveUser(
    userString || imageConfigOf(input).User || '',
    sc?.supplemental_groups ?? [],
    ids.passwd,
    ids.group,
    String(sc?.supplemental_groups_policy ?? 'Merge') === 'Strict' ? 'Strict' : 'Merge',
  );
  checkId(user.uid, 'uid', input.hostFacts);
  for (const gid of user.additionalGids) checkId(gid, 'gid', input.hostFacts);
  draft.user = user;
  draft.spec.process.user = { uid: user.uid, gid: user.gid, additionalGids: user.additionalGids };
  return [];
};

/** Which of the pod's namespaces the container joins, and which it gets of its own. */
export const withNamespaces: SpecOpt = (draft, input) => {
  const { namespaces, hostNetwork, ipcMode } = namespacesFor(input);
  draft.spec.linux.namespaces = namespaces;
  draft.hostNetwork = hostNetwork;
  draft.ipcMode = ipcMode;
  return [];
};

/**
 * Mounts: the defaults, then the pod's files, then the request's; a request mount replaces any
 * default at or under its destination. The image's VOLUMEs are noted for the caller.
 */
export const withMounts: SpecOpt = async (draft, input) => {
  const { config, sandbox, files, hostFacts } = input;
  const requested = await userMounts(config.mounts, files, hostFacts);
  const requestedPaths = requested.map((m) => m.containerPath);
  const overridden = (dest: string) => requestedPaths.some((p) => isUnder(dest, p));
  const readonlyRootfs = securityContextOf(input)?.readonly_rootfs ?? false;
  const podBinds: BindRequest[] = [];
  const podFile = (containerPath: string, hostPath: string | null) => {
    if (hostPath !== null) {
      podBinds.push({
        containerPath,
        hostPath,
        readonly: readonlyRootfs,
        propagation: 'rprivate',
        recursiveReadOnly: false,
      });
    }
  };
  podFile('/etc/hosts', sandbox.files.hosts);
  podFile('/etc/resolv.conf', sandbox.files.resolvConf);
  if (!draft.hostNetwork) podFile('/etc/hostname', sandbox.files.hostname);
  const shmSource = draft.ipcMode === 'NODE' ? '/dev/shm' : sandbox.files.shm;
  const mounts: OciMount[] = defaultMounts(draft.privileged);
  if (shmSource !== null) {
    podBinds.push({
      containerPath: '/dev/shm',
      hostPath: shmSource,
      readonly: false,
      propagation: 'rprivate',
      recursiveReadOnly: false,
    });
  } else {
    mounts.push({
      destination: '/dev/shm',
      type: 'tmpfs',
      source: 'shm',
      options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'],
    });
  }
  draft.spec.mounts = [
    ...mounts.filter((m) => !overridden(m.destination)),
    ...podBinds.filter((b) => !overridden(b.containerPath)).map(bindMount),
    // Parents before children, so a mount at /a/b is not hidden by a later mount at /a.
    ...[...requested]
      .sort((a, b) => a.containerPath.split('/').length - b.containerPath.split('/').length)
      .map(bindMount),
  ];
  draft.spec.root = { path: input.image.rootfs, readonly: readonlyRootfs };
  if (requested.some((m) => m.propagation === 'rshared')) draft.spec.linux.rootfsPropagation = 'rshared';
  else if (requested.some((m) => m.propagation === 'rslave')) draft.spec.linux.rootfsPropagation = 'rslave';
  draft.imageVolumes = Object.keys(imageConfigOf(input).Volumes ?? {}).map(
    // CVE-2022-23648: a VOLUME of /../../../etc must stay inside the rootfs.
    (v) => path.posix.normalize(`/${v}`),
  );
  return [];
};

/** Device nodes: all of the node's for a privileged container, else the ones asked for. */
export const withDevices: SpecOpt = async (draft, { config, files, hostFacts }) => {
  const devices: OciDevice[] = [];
  const deviceRules: OciDeviceRule[] = [{ allow: draft.privileged, access: 'rwm' }];
  if (draft.privileged) {
    for (const d of hostFacts.devices) devices.push({ ...d });
  }
  for (const d of config.devices) {
    const containerPath = checkAbsolute(d.container_path, 'device container_path');
    const permissions = d.permissions === '' ? 'rwm' : d.permissions;
    if (!/^[rwm]{1,3}$/.test(permissions) || new Set(permissions).size !== permissions.length) {
      throw new InvalidArgumentError(
        `device ${d.host_path}: permissions "${d.permissions}" must be letters of "rwm"`,
      );
    }
    let hostPath: string;
    try {
      hostPath = await files.realpath(d.host_path);
    } catch (err) {
      throw new InvalidArgumentError(`device host_path ${d.host_path} does not exist on the node`, {
        cause: err,
      });
    }
    const dev = await files.statDevice(hostPath);
    if (!dev) throw new InvalidArgumentError(`device host_path ${d.host_path} is not a device node`);
    devices.push({ path: containerPath, ...dev });
    if (!draft.privileged) {
      deviceRules.push({
        allow: true,
        type: dev.type,
        major: dev.major,
        minor: dev.minor,
        access: permissions,
      });
    }
  }
  if (devices.length > 0) draft.spec.linux.devices = devices;
  draft.spec.linux.resources = { ...draft.spec.linux.resources, devices: deviceRules };
  return [];
};

/** Limits the node can apply (the others dropped with a warning), oom_score_adj, the cgroup. */
export const withResources: SpecOpt = (draft, input) => {
  const { sandbox, hostFacts } = input;
  draft.haveCgroup = hostFacts.cgroupV2 && sandbox.cgroupParent !== null;
  const warnings: string[] = [];
  const { resources, oomScoreAdj } = buildResources(input, warnings, draft.haveCgroup);
  draft.spec.linux.resources = { ...resources, ...draft.spec.linux.resources };
  if (oomScoreAdj !== undefined) draft.spec.process.oomScoreAdj = oomScoreAdj;
  if (draft.haveCgroup) draft.spec.linux.cgroupsPath = `${sandbox.cgroupParent}/${input.containerId}`;
  else if (!hostFacts.cgroupV2)
    warnings.push('no cgroup v2 inside the node: the container runs without a cgroup');
  return warnings;
};

/** Capabilities, no_new_privs, seccomp, masked and read-only /proc paths; LSMs are not enforced. */
export const withSecurity: SpecOpt = async (draft, input) => {
  const sc = securityContextOf(input);
  const warnings: string[] = [];
  const capabilities = containerCapabilities(
    sc?.capabilities ?? null,
    draft.privileged,
    input.hostFacts.capLastCap,
  );
  draft.spec.process.capabilities = capabilities;
  draft.spec.process.noNewPrivileges = sc?.no_new_privs ?? false;
  const seccomp = await seccompFor(input, draft.privileged, capabilities.bounding);
  if (seccomp) draft.spec.linux.seccomp = seccomp;
  const apparmor = sc?.apparmor ? String(sc.apparmor.profile_type) : sc?.apparmor_profile || '';
  if (apparmor !== '' && apparmor !== 'Unconfined' && apparmor !== 'unconfined') {
    warnings.push(
      `AppArmor profile ${sc?.apparmor?.localhost_ref || apparmor} not enforced: rootless-cri does not apply AppArmor`,
    );
  }
  const selinux = sc?.selinux_options;
  if (selinux && (selinux.user || selinux.role || selinux.type || selinux.level)) {
    warnings.push('SELinux options not enforced: rootless-cri does not apply SELinux labels');
  }
  if (!draft.privileged) {
    // An empty list (kubelet's "Unmasked", or nothing set) means the defaults (catalog row 28).
    draft.spec.linux.maskedPaths = (sc?.masked_paths?.length ? sc.masked_paths : DEFAULT_MASKED_PATHS).map(
      (p) => checkAbsolute(p, 'masked path'),
    );
    draft.spec.linux.readonlyPaths = (
      sc?.readonly_paths?.length ? sc.readonly_paths : DEFAULT_READONLY_PATHS
    ).map((p) => checkAbsolute(p, 'read-only path'));
  }
  return warnings;
};

/** The annotations containerd and CRI-O set, so tools reading the bundle find the pod. */
export const withAnnotations: SpecOpt = (draft, { config, sandbox, image }) => {
  const podMeta = sandbox.config.metadata;
  draft.spec.annotations = {
    [ANNOTATIONS.containerType]: 'container',
    [ANNOTATIONS.sandboxId]: sandbox.id,
    [ANNOTATIONS.sandboxName]: podMeta?.name ?? '',
    [ANNOTATIONS.sandboxNamespace]: podMeta?.namespace ?? '',
    [ANNOTATIONS.sandboxUid]: podMeta?.uid ?? '',
    [ANNOTATIONS.containerName]: config.metadata!.name,
    [ANNOTATIONS.imageName]: image.name,
  };
  return [];
};

/** The steps, in order: later ones may read what earlier ones decided. */
export const SPEC_STEPS: readonly (readonly [name: string, step: SpecOpt])[] = [
  ['request', withValidRequest],
  ['process', withProcess],
  ['user', withUser],
  ['namespaces', withNamespaces],
  ['mounts', withMounts],
  ['user-namespace', withPodUserNamespace],
  ['devices', withDevices],
  ['resources', withResources],
  ['security', withSecurity],
  ['annotations', withAnnotations],
];

/** Builds the OCI spec of a container by running the steps in order over an empty draft. */
export async function buildOciSpec(input: SpecInput, steps = SPEC_STEPS): Promise<SpecResult> {
  const draft: SpecDraft = {
    spec: {
      ociVersion: '1.0.2',
      process: {
        terminal: false,
        user: { uid: 0, gid: 0 },
        args: [],
        env: [],
        cwd: '/',
        capabilities: { bounding: [], effective: [], inheritable: [], permitted: [], ambient: [] },
        noNewPrivileges: false,
      },
      root: { path: input.image.rootfs, readonly: false },
      mounts: [],
      annotations: {},
      linux: { namespaces: [] },
    },
    warnings: [],
    user: { uid: 0, gid: 0, additionalGids: [], username: null },
    imageVolumes: [],
    stopSignal: 'SIGTERM',
    privileged: securityContextOf(input)?.privileged ?? false,
    hostNetwork: false,
    ipcMode: 'POD',
    haveCgroup: false,
  };
  for (const [, step] of steps) draft.warnings.push(...(await step(draft, input)));
  const { spec, warnings, user, imageVolumes, stopSignal } = draft;
  return { spec, warnings, user, imageVolumes, stopSignal };
}
