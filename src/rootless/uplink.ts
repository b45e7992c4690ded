/**
 * The node's uplink: slirp4netns, started by rootlesskit, gives the node's network namespace
 * its tap0 device and egress to the host. rootlesskit does not restart it when it dies (kill -9,
 * OOM): every pod silently loses egress while host ports (the port driver) keep working.
 *
 * The choice: restart the uplink, not the node. Pods keep running, their IPs and host ports stay;
 * only egress was lost and comes back. (Restarting the node would end every pod to fix what one
 * process of the host side broke.) The supervisor watches rootlesskit's slirp4netns at a low rate
 * (every few seconds: a /proc read) and, when it is gone, starts a new one on the same network
 * namespace with `--configure` (tap0 10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3: the
 * addresses rootlesskit gave it) and `--exit-fd` held by the supervisor, so a replacement never
 * outlives its supervisor. The daemon, inside the node, reports NetworkReady=false with reason
 * UplinkDown while tap0 is missing (runtime-info/node-health.ts).
 */
import { readFile } from 'node:fs/promises';
import type { Logger } from '../log.js';
import { type ProcessHandle, start } from '../os/process-runner.js';
import { childrenOf } from '../os/process-tree.js';

export interface UplinkOptions {
  /** The node: rootlesskit's parent and its child (whose namespaces are the node's). */
  rootlesskitPid: number;
  childPid: number;
  slirp4netns: string;
  mtu: number;
  disableHostLoopback: boolean;
  /** How often the uplink is looked at (ms). */
  intervalMs?: number;
}

async function commOf(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
}

/** Whether rootlesskit's own slirp4netns still runs. */
export async function rootlesskitUplinkAlive(rootlesskitPid: number): Promise<boolean> {
  for (const child of await childrenOf(rootlesskitPid))
    if ((await commOf(child)) === 'slirp4netns') return true;
  return false;
}

export interface UplinkWatcher {
  /** Restarts so far. */
  readonly restarts: number;
  stop(): Promise<void>;
}

export function watchUplink(options: UplinkOptions, logger: Logger): UplinkWatcher {
  let replacement: ProcessHandle | null = null;
  let restarts = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | null = null;

  const restart = () => {
    restarts += 1;
    const args = [
      '--configure',
      `--mtu=${options.mtu}`,
      ...(options.disableHostLoopback ? ['--disable-host-loopback'] : []),
      '--exit-fd=3',
      String(options.childPid),
      'tap0',
    ];
    // fd 3 stays open as long as the supervisor lives: slirp4netns exits when it closes.
    const handle = start(options.slirp4netns, args, {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
      daemon: true,
    });
    handle.stderr?.setEncoding('utf8');
    let said = '';
    handle.stderr?.on('data', (chunk: string) => {
      if (said.length < 4096) said += chunk;
    });
    handle.spawned.catch((err: unknown) =>
      logger.error({ err }, 'cannot restart the node uplink (slirp4netns)'),
    );
    void handle.exited.then((status) => {
      if (!stopped)
        logger.warn({ status, said: said.trim().slice(0, 500) }, 'the restarted node uplink ended');
      if (replacement === handle) replacement = null;
    });
    replacement = handle;
    logger.warn(
      { restarts },
      'the node uplink (slirp4netns) was gone: started a new one; pod egress is back',
    );
  };

  const check = async () => {
    if (stopped) return;
    try {
      const original = await rootlesskitUplinkAlive(options.rootlesskitPid);
      if (!original && replacement === null && (await commOf(options.childPid)) !== '') restart();
    } catch (err) {
      logger.warn({ err }, 'uplink check failed');
    }
    if (!stopped) {
      timer = setTimeout(() => void check(), options.intervalMs ?? 3_000);
      timer.unref();
    }
  };
  void check();

  return {
    get restarts() {
      return restarts;
    },
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      const current = replacement;
      replacement = null;
      if (current) {
        (current.child.stdio[3] as { destroy?: () => void } | null)?.destroy?.();
        current.kill('SIGTERM');
        await current.exited;
      }
    },
  };
}
