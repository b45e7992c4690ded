/**
 * Pod sysctls: only keys whose kernel state lives in a namespace the pod owns are accepted,
 * each key and each value checked on its own and later written on its own (never joined into
 * one "k=v" string anything parses again; catalog row 21 of the security reference).
 *
 * Namespaced, as runc/kubelet classify them:
 *   net.*                                       the pod network namespace (not with network NODE)
 *   kernel.shm*, kernel.msg*, kernel.sem,
 *   fs.mqueue.*                                  the pod IPC namespace (not with ipc NODE)
 * Everything else (kernel.core_pattern, vm.*, fs.* outside mqueue, ...) is node-wide and
 * refused with InvalidArgument naming the key. Keys may use "/" as the separator, as kubelet
 * accepts (net/ipv4/ip_forward); "." in such a key is part of an interface name.
 */
import path from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import type { SysctlWrite } from '../os/sandbox-os.js';

export type SysctlNamespace = 'net' | 'ipc';

// A segment is what the kernel names entries with: letters, digits, "_", "-" and, for
// interface names, "." and "@" (eth0.100, veth@if3) when "/" separates segments.
const DOT_KEY = /^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$/;
const SLASH_KEY = /^[a-z0-9_]+(\/[A-Za-z0-9_.@-]+)+$/;
const MAX_VALUE_BYTES = 4096;

/** Which namespace a key belongs to, or null if it is node-wide. */
export function sysctlNamespace(key: string): SysctlNamespace | null {
  const dotted = key.replaceAll('/', '.');
  if (dotted.startsWith('net.')) return 'net';
  if (dotted === 'kernel.sem' || dotted.startsWith('kernel.shm') || dotted.startsWith('kernel.msg'))
    return 'ipc';
  if (dotted.startsWith('fs.mqueue.')) return 'ipc';
  return null;
}

/** The /proc/sys path of a checked key. */
export function sysctlPath(key: string): string {
  const segments = key.includes('/') ? key.split('/') : key.split('.');
  return path.posix.join('/proc/sys', ...segments);
}

export interface SysctlContext {
  /** The pod has its own network namespace. */
  podNetwork: boolean;
  /** The pod has its own IPC namespace. */
  podIpc: boolean;
}

/** Checks every sysctl and returns the writes in a stable (sorted) order. */
export function validateSysctls(sysctls: Record<string, string>, context: SysctlContext): SysctlWrite[] {
  const writes: SysctlWrite[] = [];
  for (const key of Object.keys(sysctls).sort()) {
    const value = sysctls[key]!;
    const shown = JSON.stringify(key);
    const keyOk =
      (DOT_KEY.test(key) || SLASH_KEY.test(key)) &&
      !key.split(/[./]/).some((segment) => segment === '' || segment === '.' || segment === '..');
    if (!keyOk || key.length > 256) {
      throw new InvalidArgumentError(
        `sysctl key ${shown} is not a sysctl name (lowercase words joined by "." or "/", no "..", no empty parts)`,
      );
    }
    const namespace = sysctlNamespace(key);
    if (namespace === null) {
      throw new InvalidArgumentError(
        `sysctl ${shown} is not namespaced and would change the whole node; only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* can be set for a pod`,
      );
    }
    if (namespace === 'net' && !context.podNetwork) {
      throw new InvalidArgumentError(
        `sysctl ${shown} needs the pod's own network namespace, but the pod uses the node network (hostNetwork)`,
      );
    }
    if (namespace === 'ipc' && !context.podIpc) {
      throw new InvalidArgumentError(
        `sysctl ${shown} needs the pod's own IPC namespace, but the pod uses the node IPC namespace (hostIPC)`,
      );
    }
    if (
      value.length === 0 ||
      Buffer.byteLength(value) > MAX_VALUE_BYTES ||
      // One value for one key: no line breaks, NUL or other control characters that could
      // smuggle a second setting into anything that reads it back line by line.
      /[\u0000-\u0008\u000a-\u001f\u007f]/.test(value) ||
      /[=+]/.test(value)
    ) {
      throw new InvalidArgumentError(
        `sysctl ${shown} has value ${JSON.stringify(value)}, which is not a sysctl value (non-empty, at most ${MAX_VALUE_BYTES} bytes, no control characters, "=" or "+")`,
      );
    }
    writes.push({ key, path: sysctlPath(key), value });
  }
  return writes;
}
