/**
 * For integration tests that drive a layer directly inside a test daemon's node (below the CRI):
 * compile a driver script, give it a busybox rootfs and a leaf cgroup in the node's subtree.
 */
import { copyFile, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { nsenterArgs } from '../../src/rootless/node.js';
import type { TestDaemon } from './daemon.js';

const REPO = path.resolve(import.meta.dirname, '../..');

/** Compiles test/fixtures/<name>.ts where node_modules resolves; returns the .js path. */
export async function compileDriver(name: string, outName: string): Promise<string> {
  const outDir = path.join(REPO, 'dist', outName);
  await rm(outDir, { recursive: true, force: true });
  const tsc = await execa(
    path.join(REPO, 'node_modules/.bin/tsc'),
    [
      ...['--outDir', outDir, '--rootDir', REPO],
      ...['--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--target', 'ES2022'],
      ...['--strict', '--skipLibCheck', '--types', 'node'],
      path.join(REPO, `test/fixtures/${name}.ts`),
    ],
    { reject: false },
  );
  if (tsc.exitCode !== 0) throw new Error(`compiling ${name}: ${tsc.stdout}\n${tsc.stderr}`);
  return path.join(outDir, `test/fixtures/${name}.js`);
}

/** A busybox-static rootfs with the given applets, owned by the test user (with `work`). */
export async function busyboxRootfs(daemon: TestDaemon, work: string, applets: string[]): Promise<string> {
  const rootfs = path.join(work, 'rootfs');
  for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp'])
    await mkdir(path.join(rootfs, d), { recursive: true });
  await copyFile('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  for (const applet of applets) await symlink('busybox', path.join(rootfs, 'bin', applet));
  await writeFile(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\n');
  await execa('chown', ['-R', `${daemon.user.uid}:${daemon.user.gid}`, work]);
  return rootfs;
}

/** A leaf cgroup inside the node's subtree for a driver (and the conmons it starts). */
export async function driverCgroup(daemon: TestDaemon, name: string): Promise<string> {
  const delegated = (await readFile(`/run/user/${daemon.user.uid}/.rootless-cri-cgroup`, 'utf8')).trim();
  const dir = path.join(delegated, daemon.cgroupSubtree, name);
  await mkdir(dir, { recursive: true });
  await execa('chown', [`${daemon.user.uid}:${daemon.user.gid}`, dir, path.join(dir, 'cgroup.procs')]);
  return dir;
}

/**
 * Runs a compiled driver with its job file the way the daemon runs: as the test user, in
 * `cgroup`, inside the node's namespaces (like `rootless-cri enter`). Returns the driver's last
 * stdout line parsed as JSON, and its stderr.
 */
export async function runDriver(
  daemon: TestDaemon,
  options: { cgroup: string; workdir: string; driverJs: string; jobFile: string; timeoutMs: number },
): Promise<{ value: unknown; stderr: string }> {
  // As root: join the driver cgroup, drop to the test user, enter the node.
  const r = await execa(
    'sh',
    [
      ...['-c', 'echo $$ > "$0/cgroup.procs" && shift && exec "$@"', options.cgroup, 'x'],
      ...[
        'setpriv',
        `--reuid=${daemon.user.uid}`,
        `--regid=${daemon.user.gid}`,
        '--init-groups',
        '--reset-env',
      ],
      ...['env', 'PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin', `HOME=${daemon.user.home}`],
      ...['nsenter', ...nsenterArgs(await daemon.nodePid(), { workdir: options.workdir })],
      ...[process.execPath, options.driverJs, options.jobFile],
    ],
    { reject: false, timeout: options.timeoutMs },
  );
  const line = String(r.stdout).trim().split('\n').pop() ?? '';
  try {
    return { value: JSON.parse(line) as unknown, stderr: String(r.stderr) };
  } catch {
    throw new Error(`driver printed no JSON (exit ${r.exitCode}):\n${r.stdout}\n${r.stderr}`);
  }
}
