/**
 * conmon, the per-container monitor: it holds the container's stdio, writes the CRI log file
 * and the exit file, and outlives the daemon.
 *
 * Creation is synchronous with conmon's work: conmon gets a sync pipe (`_OCI_SYNCPIPE`, fd 3)
 * on which it reports `{"data": <pid>}` once `crun create` finished, or a negative value and
 * crun's error. Without the sync pipe conmon returns before crun is done (DESIGN.md).
 */
import path from 'node:path';
import type { Readable } from 'node:stream';
import { startReporting } from './process-runner.js';

export interface ConmonLayout {
  conmonPath: string;
  crunPath: string;
  crunRoot: string;
  exitDir: string;
  socketDir: string;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
}

export interface ConmonContainer {
  id: string;
  bundleDir: string;
  /** conmon's -l k8s-file:<path>. */
  logPath: string;
  terminal: boolean;
  stdin: boolean;
  stdinOnce: boolean;
}

/** The files conmon keeps for one container, under its bundle (persist) dir. */
export function conmonFiles(bundleDir: string): {
  pidFile: string;
  containerPidFile: string;
  oomFile: string;
} {
  return {
    pidFile: path.join(bundleDir, 'conmon.pid'),
    containerPidFile: path.join(bundleDir, 'container.pid'),
    oomFile: path.join(bundleDir, 'oom'),
  };
}

export function conmonArgs(layout: ConmonLayout, c: ConmonContainer): string[] {
  const files = conmonFiles(c.bundleDir);
  const args = [
    '--api-version',
    '1',
    '-c',
    c.id,
    '-u',
    c.id,
    '-n',
    c.id,
    '-r',
    layout.crunPath,
    '-b',
    c.bundleDir,
    '-p',
    files.containerPidFile,
    '-P',
    files.pidFile,
    '-l',
    `k8s-file:${c.logPath}`,
    '--exit-dir',
    layout.exitDir,
    '--persist-dir',
    c.bundleDir,
    '--socket-dir-path',
    layout.socketDir,
    '--runtime-arg',
    `--root=${layout.crunRoot}`,
    '--runtime-arg',
    '--cgroup-manager=cgroupfs',
    '--log-level',
    layout.logLevel,
  ];
  if (c.terminal) args.push('-t');
  if (c.stdin) args.push('-i');
  if (c.stdin && !c.stdinOnce) args.push('--leave-stdin-open');
  return args;
}

export interface StartedConmon {
  /** Settles once conmon (or its cgroup wrapper) runs; rejects when it cannot start. */
  spawned: Promise<void>;
  /** conmon's report once `crun create` is done: the container pid, or -1 and crun's message. */
  report: Promise<{ pid: number; message: string }>;
  /** What conmon itself printed (when it failed before reporting). */
  output(): Promise<string>;
  /** SIGKILL to the process started (conmon's daemonized child is not in its group). */
  kill(): void;
  /** Stops reading conmon's pipes (conmon keeps running, detached). */
  detach(): void;
}

/**
 * Starts conmon, through the run server when it is up (process-runner's startReporting: the
 * daemon does not fork itself, which cost ~6 ms of every CreateContainer). With `cgroup` (a
 * cgroup v2 directory and the spawn-in-cgroup helper), conmon starts inside that cgroup (clone3
 * CLONE_INTO_CGROUP): no migration of a running process, which costs an RCU grace period
 * (~10 ms) in the kernel. No start pipe: nothing needs conmon to wait before it forks.
 */
export function startConmon(
  layout: ConmonLayout,
  container: ConmonContainer,
  cgroup?: { dir: string; helperPath: string },
): StartedConmon {
  const args = conmonArgs(layout, container);
  const [program, argv] = cgroup
    ? [cgroup.helperPath, [cgroup.dir, layout.conmonPath, ...args]]
    : [layout.conmonPath, args];
  const conmon = startReporting(program, argv, {
    env: { ...process.env, _OCI_SYNCPIPE: '3' },
    cwd: container.bundleDir,
    runs: layout.conmonPath,
  });
  return {
    spawned: conmon.started.then(() => undefined),
    report: readSyncReport(conmon.report),
    output: async () => (await conmon.exited).output,
    kill: () => conmon.kill('SIGKILL'),
    detach: () => conmon.release(),
  };
}

/** The first JSON line conmon writes on the sync pipe; EOF without one = failure. */
function readSyncReport(pipe: Readable): Promise<{ pid: number; message: string }> {
  return new Promise((resolve) => {
    let text = '';
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      const line = text.split('\n')[0] ?? '';
      try {
        const parsed = JSON.parse(line) as { data?: number; message?: string };
        resolve({ pid: typeof parsed.data === 'number' ? parsed.data : -1, message: parsed.message ?? '' });
      } catch {
        resolve({ pid: -1, message: line.trim() });
      }
    };
    pipe.on('data', (chunk: Buffer) => {
      if (text.length < 64 * 1024) text += chunk.toString('utf8');
      if (text.includes('\n')) {
        pipe.removeAllListeners('data');
        finish();
      }
    });
    pipe.once('end', finish);
    pipe.once('close', finish);
    pipe.once('error', finish);
  });
}
