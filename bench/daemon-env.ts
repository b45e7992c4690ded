/**
 * A bench daemon with extra environment: BENCH_DAEMON_ENV="K=V K=V" (ROOTLESS_CRI_RUN_SERVER=0,
 * for one) is added to the daemon's environment, so one bench compares two builds of behaviour
 * against the same floor or peer measured in the same run.
 */
import { TestDaemon } from '../test/harness/daemon.js';

/** The K=V pairs of an environment variable (BENCH_DAEMON_ENV, BENCH_DAEMON_ENV_B). */
export function daemonEnvFrom(variable: string): Record<string, string> {
  const pairs = (process.env[variable] ?? '').split(/\s+/).filter((p) => p.includes('='));
  return Object.fromEntries(pairs.map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
}

/** A test daemon, served again with `env` added when there is any. */
export async function startBenchDaemon(env: Record<string, string>): Promise<TestDaemon> {
  const daemon = await TestDaemon.start();
  if (Object.keys(env).length > 0) {
    await daemon.cli(['stop']);
    await daemon.supervisorExited();
    await daemon.serve(env);
  }
  return daemon;
}
