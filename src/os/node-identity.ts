/**
 * Which node this is. A node (rootlesskit + catatonit) lives from its start to `stop --all`, the
 * death of its holder, or a reboot; the daemon may come and go within one node. What the daemon
 * recorded about a pod (namespace pins, the infra pid, host port ids, leases) is only meaningful
 * inside the node that made it, so every sandbox record carries the id of its node and recovery
 * compares it with the node the daemon joined.
 *
 * The id is read from inside the node: the boot id (a reboot), the node's user namespace
 * (inode), and the start time of the node's PID 1 (catatonit): a namespace inode can be reused
 * after a node is gone, the three together cannot.
 */
import { createHash } from 'node:crypto';
import { readFile, readlink } from 'node:fs/promises';

export interface NodeIdentity {
  /** A short, stable digest of the three facts below. */
  id: string;
  bootId: string;
  userNamespace: string;
  initStartTime: string;
}

export async function readNodeIdentity(): Promise<NodeIdentity> {
  const [bootId, userNamespace, initStat] = await Promise.all([
    readFile('/proc/sys/kernel/random/boot_id', 'utf8').then(
      (t) => t.trim(),
      () => 'unknown-boot',
    ),
    readlink('/proc/self/ns/user').catch(() => 'unknown-userns'),
    readFile('/proc/1/stat', 'utf8').catch(() => ''),
  ]);
  const initStartTime = initStat ? (initStat.slice(initStat.lastIndexOf(')') + 2).split(' ')[19] ?? '') : '';
  const id = createHash('sha256')
    .update(`${bootId}\n${userNamespace}\n${initStartTime}`)
    .digest('hex')
    .slice(0, 16);
  return { id, bootId, userNamespace, initStartTime };
}
