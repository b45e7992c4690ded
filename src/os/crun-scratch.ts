/**
 * Where crun makes its temporary files: a directory of the daemon's, not /tmp.
 *
 * crun (like runc, against CVE-2019-5736) runs a container's setup from a sealed copy of its
 * own binary; one of the ways it makes that copy binds /proc/self/exe onto a temporary file in
 * $_LIBCONTAINER_STATEDIR (default /tmp) and unmounts and removes it a moment later. A crun
 * killed in between (its output pipe gone with the run server or the daemon, an ExecSync
 * deadline) leaves that file behind, owned by the node's user, with mode 000: found in /tmp by
 * the soak. The daemon points the variable at `<runDir>/crun-tmp` for every crun it starts
 * (they inherit its environment) and clears what a killed crun left there when it starts.
 */
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { mountsAt, readSelfMountInfo } from './mounts.js';
import { run } from './process-runner.js';

/** Leftovers younger than this may belong to a crun still running (its window is milliseconds). */
const LEFTOVER_AGE_MS = 60_000;

export async function useCrunScratchDir(
  runDir: string,
  env: NodeJS.ProcessEnv = process.env,
  now: number = Date.now(),
): Promise<string> {
  const dir = path.join(runDir, 'crun-tmp');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const name of await readdir(dir)) {
    const file = path.join(dir, name);
    const st = await stat(file).catch(() => null);
    if (!st || now - st.mtimeMs < LEFTOVER_AGE_MS) continue;
    if ((await mountsAt(file, readSelfMountInfo).catch(() => [])).length > 0) {
      await run('umount', ['-l', file], { timeoutMs: 10_000 }).catch(() => undefined);
    }
    await rm(file, { force: true, recursive: true }).catch(() => undefined);
  }
  env._LIBCONTAINER_STATEDIR = dir;
  return dir;
}
