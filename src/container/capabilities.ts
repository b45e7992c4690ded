/**
 * Linux capability names and the CRI add/drop rules.
 *
 * The default set is the one containerd and CRI-O give an unprivileged container. `ALL` in
 * add or drop is applied first, so `add: [ALL], drop: [CHOWN]` means everything but CHOWN.
 * Inside the node's user namespace every capability is relative to that namespace: "all" is
 * as much as the node's root has, never more (DESIGN.md, Security defaults).
 */
import { InvalidArgumentError } from '../errors.js';

/** Capabilities by number (linux/capability.h); the index is the capability number. */
export const CAPABILITIES_BY_NUMBER: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_LINUX_IMMUTABLE',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_ADMIN',
  'CAP_NET_RAW',
  'CAP_IPC_LOCK',
  'CAP_IPC_OWNER',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_CHROOT',
  'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_NICE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD',
  'CAP_LEASE',
  'CAP_AUDIT_WRITE',
  'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE',
  'CAP_MAC_ADMIN',
  'CAP_SYSLOG',
  'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND',
  'CAP_AUDIT_READ',
  'CAP_PERFMON',
  'CAP_BPF',
  'CAP_CHECKPOINT_RESTORE',
];

/** What an unprivileged container gets when the request says nothing. */
export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

/** Every capability this kernel knows (/proc/sys/kernel/cap_last_cap). */
export function allCapabilities(capLastCap: number): string[] {
  return CAPABILITIES_BY_NUMBER.slice(0, Math.max(0, capLastCap) + 1);
}

/** `NET_ADMIN`, `net_admin` or `CAP_NET_ADMIN` → `CAP_NET_ADMIN`; unknown names are an error. */
export function normaliseCapability(name: string, known: readonly string[]): string {
  const upper = name.trim().toUpperCase();
  const full = upper.startsWith('CAP_') ? upper : `CAP_${upper}`;
  if (!known.includes(full)) {
    throw new InvalidArgumentError(
      `unknown capability "${name}": use a name from capabilities(7) such as NET_ADMIN, or ALL`,
    );
  }
  return full;
}

export interface CapabilityRequest {
  add_capabilities: string[];
  drop_capabilities: string[];
  add_ambient_capabilities: string[];
}

/**
 * The capability sets of a container. Inheritable stays empty unless ambient capabilities are
 * asked for (CVE-2022-24769 and siblings: a default inheritable set leaks into exec'd binaries).
 */
export function containerCapabilities(
  request: CapabilityRequest | null,
  privileged: boolean,
  capLastCap: number,
): {
  bounding: string[];
  effective: string[];
  permitted: string[];
  inheritable: string[];
  ambient: string[];
} {
  const known = allCapabilities(capLastCap);
  let caps: string[];
  const ambient: string[] = [];
  if (privileged) {
    caps = [...known];
  } else {
    caps = DEFAULT_CAPABILITIES.filter((c) => known.includes(c));
    if (request) {
      const isAll = (c: string) => c.trim().toUpperCase() === 'ALL';
      if (request.add_capabilities.some(isAll)) caps = [...known];
      if (request.drop_capabilities.some(isAll)) caps = [];
      for (const c of request.add_capabilities) {
        if (isAll(c)) continue;
        const full = normaliseCapability(c, known);
        if (!caps.includes(full)) caps.push(full);
      }
      for (const c of request.drop_capabilities) {
        if (isAll(c)) continue;
        const full = normaliseCapability(c, known);
        caps = caps.filter((x) => x !== full);
      }
    }
  }
  // The kernel raises an ambient capability only when it is permitted and inheritable, so an
  // explicit ambient request (and only that) lands in every set.
  for (const c of request?.add_ambient_capabilities ?? []) {
    const full = normaliseCapability(c, known);
    if (!caps.includes(full)) caps.push(full);
    if (!ambient.includes(full)) ambient.push(full);
  }
  return {
    bounding: [...caps],
    effective: [...caps],
    permitted: [...caps],
    inheritable: [...ambient],
    ambient,
  };
}
