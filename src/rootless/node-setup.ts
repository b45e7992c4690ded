/**
 * What kubelet needs of the node beyond its namespaces. Done by the daemon at every start,
 * inside the node it supervises (idempotent; the node keeps it until it stops):
 *
 * - the node's hostname (config `node.hostname`; the node has its own UTS namespace) and
 *   `<node IP> <hostname>` in its /etc/hosts (the copy-up one): kubelet registers the node under
 *   its hostname and an API server in the node dials the kubelet by that name. The node IP (the
 *   address of the default-route interface, kubelet's InternalIP) rather than 127.0.0.1: the API
 *   server refuses to proxy to a node name that resolves to loopback (nodes/proxy, e.g.
 *   /stats/summary, answers "address not allowed"); 127.0.0.1 only when the node has no route;
 * - a writable /var/log with `pods/` and `containers/` (kubelet's podLogsDir and its hard-coded
 *   symlink dir): the host's /var/log shows in the node owned by `nobody`. A persistent
 *   directory under the root dir is bind-mounted there rather than a tmpfs, so container logs
 *   do not live in memory and `kubectl logs --previous` survives a node restart.
 *
 * Failures are logged, not fatal: the daemon serves CRI clients that need none of this.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { hostname as currentHostname, networkInterfaces } from 'node:os';
import path from 'node:path';
import type { Logger } from '../log.js';
import { runChecked } from '../os/process-runner.js';
import { withSbin } from './node.js';

export interface NodeSetupOptions {
  /** The daemon's root dir; the node's /var/log lives in `<rootDir>/node/log`. */
  rootDir: string;
  /** Hostname to give the node; undefined keeps the one it has. */
  hostname: string | undefined;
  logger: Logger;
}

const HOSTS_FILE = '/etc/hosts';
const VAR_LOG = '/var/log';

/** Subdirectories of /var/log that kubelet writes. */
export const KUBELET_LOG_DIRS = ['pods', 'containers'];

export async function prepareNodeForKubelet(options: NodeSetupOptions): Promise<void> {
  const { logger } = options;
  try {
    // sethostname(2) through hostname(1): /proc/sys/kernel/hostname belongs to the host's root.
    if (options.hostname !== undefined && options.hostname !== currentHostname()) {
      await runChecked('hostname', [options.hostname], {
        env: { PATH: withSbin(undefined) },
        timeoutMs: 10_000,
        what: `hostname ${options.hostname}`,
      });
    }
    const name = options.hostname ?? currentHostname();
    const address =
      defaultRouteAddress(await readFile('/proc/net/route', 'utf8').catch(() => '')) ?? '127.0.0.1';
    if (await ensureHostsEntry(HOSTS_FILE, address, name))
      logger.info({ hostname: name, address }, 'mapped the node name in /etc/hosts');
  } catch (err) {
    logger.warn(
      { err },
      'could not set the node hostname or map it in /etc/hosts; the API server may not reach a kubelet in this node by name',
    );
  }
  try {
    const persistent = path.join(options.rootDir, 'node', 'log');
    if (!isMountPoint(await readFile('/proc/self/mountinfo', 'utf8'), VAR_LOG)) {
      await mkdir(persistent, { recursive: true, mode: 0o755 });
      await runChecked('mount', ['--bind', persistent, VAR_LOG], {
        env: { PATH: withSbin(undefined) },
        timeoutMs: 10_000,
        what: `mount --bind ${persistent} ${VAR_LOG}`,
      });
      logger.info({ source: persistent }, 'bind-mounted a persistent /var/log into the node for kubelet');
    }
    for (const dir of KUBELET_LOG_DIRS)
      await mkdir(path.join(VAR_LOG, dir), { recursive: true, mode: 0o755 });
  } catch (err) {
    logger.warn({ err }, 'could not give the node a writable /var/log; kubelet cannot run in it');
  }
}

/** Appends `<address> <name>` to the hosts file unless a line already maps name to address; true if it did. */
export async function ensureHostsEntry(hostsFile: string, address: string, name: string): Promise<boolean> {
  const text = await readFile(hostsFile, 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const fields = line.replace(/#.*/, '').trim().split(/\s+/);
    if (fields[0] === address && fields.slice(1).includes(name)) return false;
  }
  await appendFile(hostsFile, `${text === '' || text.endsWith('\n') ? '' : '\n'}${address} ${name}\n`);
  return true;
}

/** The IPv4 address of the interface holding the default route (/proc/net/route), if any. */
export function defaultRouteAddress(
  procNetRoute: string,
  interfaces: ReturnType<typeof networkInterfaces> = networkInterfaces(),
): string | undefined {
  for (const line of procNetRoute.split('\n').slice(1)) {
    const [iface, destination, , , , , , mask] = line.trim().split(/\s+/);
    if (iface && destination === '00000000' && mask === '00000000') {
      return interfaces[iface]?.find((a) => a.family === 'IPv4' && !a.internal)?.address;
    }
  }
  return undefined;
}

/** True when `dir` is a mount point in this mount namespace (field 5 of mountinfo). */
export function isMountPoint(mountinfo: string, dir: string): boolean {
  return mountinfo.split('\n').some((line) => line.split(' ')[4] === dir);
}
