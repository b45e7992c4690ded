/**
 * How much of a CRI call's wall time was spent waiting for helper processes (crun, conmon,
 * CNI plugins, unshare, ...). The edge opens an account per call; the process runner adds
 * each run's wall time to the account of the call it ran under (AsyncLocalStorage follows
 * the call through every await). "Daemon time" = wall time minus helper time: the figure the
 * performance issue asks for, measured where the processes are started.
 *
 * Helpers run concurrently within a call (Promise.all) count each; the figure is an upper
 * bound of the time the call spent waiting.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

export interface HelperTimeAccount {
  helperMs: number;
  helperRuns: number;
}

const accounts = new AsyncLocalStorage<HelperTimeAccount>();

/** Runs `fn` with a fresh account and returns both its result and the account. */
export function withHelperTimeAccount<T>(fn: () => T): { result: T; account: HelperTimeAccount } {
  const account: HelperTimeAccount = { helperMs: 0, helperRuns: 0 };
  const result = accounts.run(account, fn);
  return { result, account };
}

export function recordHelperTime(ms: number): void {
  const account = accounts.getStore();
  if (!account) return;
  account.helperMs += ms;
  account.helperRuns += 1;
}
