/**
 * RunPodSandbox request checks and the plain decisions derived from the config: namespace
 * modes, hostname, DNS, port mappings, cgroup parent. Pure functions, unit-tested without a
 * kernel; every failure is InvalidArgument naming the field.
 *
 * Decisions:
 * - runtime_handler: only "" (the default handler) exists; anything else is InvalidArgument
 *   naming it (kubelet only sends handlers the node advertises).
 * - UTS follows the network mode (CRI has no UTS option): a pod on the node network also
 *   has the node's hostname, as with containerd and CRI-O.
 * - Pod user namespaces (userns_options) are checked by pod-user-namespace.ts.
 * - cgroup_parent: a path relative to the node's cgroup root ("/kubepods/pod123" and
 *   "kubepods/pod123" mean the same), segments of [A-Za-z0-9_.:@-], no "." or "..".
 */
import { isIP } from 'node:net';
import path from 'node:path';
// proto.ts does not re-export DNSConfig; the generated type is the same module it uses.
import type { DNSConfig__Output } from '../api/generated/runtime/v1/DNSConfig.js';
import type {
  NamespaceMode__Output,
  PodSandboxConfig__Output,
  PodSandboxMetadata__Output,
  PortMapping__Output,
} from '../api/proto.js';
import { defaultPodCgroup } from '../core/cgroup-layout.js';
import type { NamespaceModeName } from '../core/sandbox-record.js';
import { InvalidArgumentError } from '../errors.js';

export interface NamespaceModes {
  network: NamespaceModeName;
  ipc: NamespaceModeName;
  pid: NamespaceModeName;
  targetId: string;
}

export function checkRuntimeHandler(handler: string): void {
  if (handler !== '') {
    throw new InvalidArgumentError(
      `runtime handler ${JSON.stringify(handler)} is not configured; rootless-cri has only the default handler ""`,
    );
  }
}

export function checkMetadata(config: PodSandboxConfig__Output | null): PodSandboxMetadata__Output {
  if (!config) throw new InvalidArgumentError('RunPodSandbox needs a config');
  const meta = config.metadata;
  if (!meta)
    throw new InvalidArgumentError(
      'the pod sandbox config has no metadata; set metadata.name, uid and namespace',
    );
  for (const field of ['name', 'uid', 'namespace'] as const) {
    const value = meta[field];
    if (value === '')
      throw new InvalidArgumentError(`metadata.${field} of the pod sandbox must not be empty`);
    if (value.length > 253 || /[\u0000-\u001f\u007f/]/.test(value)) {
      throw new InvalidArgumentError(
        `metadata.${field} ${JSON.stringify(value)} is not usable: at most 253 characters, no "/" or control characters`,
      );
    }
  }
  return meta;
}

export function namespaceModes(config: PodSandboxConfig__Output): NamespaceModes {
  const options = config.linux?.security_context?.namespace_options;
  const modes: NamespaceModes = {
    network: modeName(options?.network),
    ipc: modeName(options?.ipc),
    pid: modeName(options?.pid),
    targetId: options?.target_id ?? '',
  };
  for (const kind of ['network', 'ipc'] as const) {
    if (modes[kind] !== 'POD' && modes[kind] !== 'NODE') {
      throw new InvalidArgumentError(
        `namespace_options.${kind} ${modes[kind]} is not valid for a pod: use POD or NODE`,
      );
    }
  }
  if (modes.pid === 'TARGET' && modes.targetId === '') {
    throw new InvalidArgumentError('namespace_options.pid TARGET needs target_id');
  }
  return modes;
}

function modeName(mode: NamespaceMode__Output | undefined): NamespaceModeName {
  return (mode ?? 'POD') as NamespaceModeName;
}

// RFC 1123 labels joined by dots, as sethostname gets them from kubelet.
const HOSTNAME =
  /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** The pod's hostname: config.hostname, else the pod name cut to a valid label. */
export function podHostname(config: PodSandboxConfig__Output, meta: PodSandboxMetadata__Output): string {
  if (config.hostname !== '') {
    if (config.hostname.length > 64 || !HOSTNAME.test(config.hostname)) {
      throw new InvalidArgumentError(
        `hostname ${JSON.stringify(config.hostname)} is not a valid hostname (RFC 1123 labels, at most 64 characters)`,
      );
    }
    return config.hostname;
  }
  const derived = meta.name
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/^-+/, '')
    .slice(0, 63)
    .replace(/-+$/, '');
  return derived || 'pod';
}

// Each DNS entry becomes one word of resolv.conf: no whitespace, no control characters.
const DNS_WORD = /^[^\s\u0000-\u001f\u007f#;]+$/;

/** resolv.conf content from DNSConfig, or null when the config asks for nothing (use the node's). */
export function resolvConfFrom(dns: DNSConfig__Output | null): string | null {
  if (!dns || (dns.servers.length === 0 && dns.searches.length === 0 && dns.options.length === 0))
    return null;
  const lists = { servers: dns.servers, searches: dns.searches, options: dns.options };
  for (const [field, values] of Object.entries(lists)) {
    for (const value of values) {
      if (!DNS_WORD.test(value) || value.length > 253) {
        throw new InvalidArgumentError(
          `dns_config.${field} entry ${JSON.stringify(value)} is not a single word`,
        );
      }
    }
  }
  for (const server of dns.servers) {
    if (!isIp(server))
      throw new InvalidArgumentError(
        `dns_config.servers entry ${JSON.stringify(server)} is not an IP address`,
      );
  }
  const lines: string[] = [];
  if (dns.searches.length > 0) lines.push(`search ${dns.searches.join(' ')}`);
  for (const server of dns.servers) lines.push(`nameserver ${server}`);
  if (dns.options.length > 0) lines.push(`options ${dns.options.join(' ')}`);
  return `${lines.join('\n')}\n`;
}

/** /etc/hosts of a pod with its own network. */
export function hostsFileFor(ip: string, hostname: string): string {
  const lines = [
    '127.0.0.1\tlocalhost',
    '::1\tlocalhost ip6-localhost ip6-loopback',
    'fe00::0\tip6-localnet',
    'fe00::0\tip6-mcastprefix',
    'fe00::1\tip6-allnodes',
    'fe00::2\tip6-allrouters',
  ];
  if (ip) lines.push(`${ip}\t${hostname}`);
  return `${lines.join('\n')}\n`;
}

export interface HostPortRequest {
  protocol: 'tcp' | 'udp';
  hostIp: string;
  hostPort: number;
  containerPort: number;
}

/** Port mappings that need a host port, checked; duplicates of one host port are refused. */
export function hostPortRequests(mappings: PortMapping__Output[]): HostPortRequest[] {
  const requests: HostPortRequest[] = [];
  const seen = new Set<string>();
  for (const [index, m] of mappings.entries()) {
    const where = `port_mappings[${index}]`;
    if (m.container_port < 0 || m.container_port > 65535 || m.host_port < 0 || m.host_port > 65535) {
      throw new InvalidArgumentError(`${where}: ports must be between 0 and 65535`);
    }
    if (m.host_ip !== '' && !isIp(m.host_ip)) {
      throw new InvalidArgumentError(`${where}: host_ip ${JSON.stringify(m.host_ip)} is not an IP address`);
    }
    if (m.host_port === 0) continue;
    if (m.container_port === 0)
      throw new InvalidArgumentError(`${where}: host_port ${m.host_port} needs a container_port`);
    if (m.protocol === 'SCTP') {
      throw new InvalidArgumentError(
        `${where}: SCTP host ports cannot be published from a rootless node (TCP and UDP can)`,
      );
    }
    const protocol = m.protocol === 'UDP' ? 'udp' : 'tcp';
    // No host_ip = every host address, as kubelet expects of a hostPort (rootlesskit's builtin
    // driver listens on the real host); tests and careful operators set 127.0.0.1.
    const hostIp = m.host_ip === '' ? '0.0.0.0' : m.host_ip;
    const key = `${protocol}/${m.host_port}`;
    if (seen.has(key))
      throw new InvalidArgumentError(`${where}: host port ${m.host_port}/${protocol} is mapped twice`);
    seen.add(key);
    requests.push({ protocol, hostIp, hostPort: m.host_port, containerPort: m.container_port });
  }
  return requests;
}

const CGROUP_SEGMENT = /^[A-Za-z0-9_.:@-]+$/;

/** The pod cgroup relative to the node cgroup root. */
export function podCgroupPath(cgroupParent: string, sandboxId: string): string {
  if (cgroupParent === '') return defaultPodCgroup(sandboxId);
  const segments = cgroupParent.split('/').filter((s) => s !== '');
  if (
    segments.length === 0 ||
    cgroupParent.length > 1024 ||
    segments.some((s) => s === '.' || s === '..' || !CGROUP_SEGMENT.test(s)) ||
    segments.some((s) => s.startsWith('cgroup.'))
  ) {
    throw new InvalidArgumentError(
      `cgroup_parent ${JSON.stringify(cgroupParent)} is not a cgroup path below the node (segments of letters, digits, "_.:@-", no ".." or cgroup.* files)`,
    );
  }
  // systemd-style slice names (kubepods.slice) from a kubelet using the systemd driver are
  // taken as plain directory names: the node has no systemd.
  return `/${segments.join('/')}`;
}

/**
 * System trees no pod's logs belong in: writing there would change the node (/etc), reach the
 * kernel (/proc, /sys) or devices (/dev), or alter programs (/usr, /bin, ...).
 */
const FORBIDDEN_LOG_ROOTS = [
  '/proc',
  '/sys',
  '/dev',
  '/etc',
  '/boot',
  '/usr',
  '/bin',
  '/sbin',
  '/lib',
  '/lib32',
  '/lib64',
];

export function checkLogDirectory(dir: string): void {
  if (dir === '') return;
  if (!dir.startsWith('/') || dir.includes('\u0000') || dir.split('/').includes('..')) {
    throw new InvalidArgumentError(
      `log_directory ${JSON.stringify(dir)} must be an absolute path without ".."`,
    );
  }
  const normal = path.posix.normalize(dir);
  const root = FORBIDDEN_LOG_ROOTS.find((r) => normal === r || normal.startsWith(`${r}/`));
  if (root) {
    throw new InvalidArgumentError(
      `log_directory ${JSON.stringify(dir)} is under ${root}, a system directory; put pod logs under /var/log/pods or a directory of your own`,
    );
  }
}

function isIp(value: string): boolean {
  return isIP(value) !== 0;
}
