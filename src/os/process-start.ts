/**
 * When a process started, from /proc: field 22 of /proc/<pid>/stat (clock ticks since boot)
 * plus the boot time (btime in /proc/stat). The kernel reports both in USER_HZ, which is 100
 * on every architecture Linux exports to user space this way (x86, arm64, ...).
 */
import { readKernelFile } from './kernel-file.js';

const USER_HZ = 100;

/** Nanoseconds since the epoch when `pid` started; null when it is gone or unreadable. */
export async function processStartedAt(pid: number): Promise<bigint | null> {
  const stat = await readKernelFile(`/proc/${pid}/stat`);
  const system = await readKernelFile('/proc/stat');
  if (stat === null || system === null) return null;
  // Fields after the command name (which may hold spaces and parentheses): state is field 3.
  const ticks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  const btime = Number(/^btime\s+(\d+)$/m.exec(system)?.[1]);
  if (!Number.isFinite(ticks) || !Number.isFinite(btime)) return null;
  const ns = BigInt(btime) * 1_000_000_000n + (BigInt(ticks) * 1_000_000_000n) / BigInt(USER_HZ);
  return ns;
}
