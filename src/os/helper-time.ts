/**
 * How much of a CRI call's wall time was spent waiting for helper processes (crun, conmon,
 * CNI plugins, unshare, ...). The edge opens an account per call; the process runner adds
 * each run's interval to the account of the call it ran under (AsyncLocalStorage follows
 * the call through every await). "Daemon time outside helpers" = wall time minus the time at
 * least one helper was running: the figure the performance issue asks for, measured where the
 * processes are started.
 *
 * A process started with `start` counts from spawn until its 'spawn' event; a caller that
 * then waits for such a process to report (conmon's sync pipe, a pod's infra) wraps that wait
 * in `waitingOnHelper` (or ends it with `recordHelperWait`) so that it counts too. Helpers that overlap within a call count once
 * (the union of their intervals); `helperRuns` counts every run.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

export class HelperTimeAccount {
  helperRuns = 0;
  /** [start, end] pairs in performance.now() milliseconds. */
  readonly #intervals: number[] = [];

  add(startMs: number, endMs: number): void {
    this.#intervals.push(startMs, endMs);
  }

  /** The time at least one helper ran (the union of the intervals), in ms. */
  get helperMs(): number {
    const pairs: [number, number][] = [];
    for (let i = 0; i < this.#intervals.length; i += 2) {
      pairs.push([this.#intervals[i]!, this.#intervals[i + 1]!]);
    }
    pairs.sort((a, b) => a[0] - b[0]);
    let total = 0;
    let start = Number.NEGATIVE_INFINITY;
    let end = Number.NEGATIVE_INFINITY;
    for (const [s, e] of pairs) {
      if (s > end) {
        if (end > start) total += end - start;
        start = s;
        end = e;
      } else if (e > end) end = e;
    }
    if (end > start) total += end - start;
    return total;
  }
}

const accounts = new AsyncLocalStorage<HelperTimeAccount>();

/** Runs `fn` with a fresh account and returns both its result and the account. */
export function withHelperTimeAccount<T>(fn: () => T): { result: T; account: HelperTimeAccount } {
  const account = new HelperTimeAccount();
  const result = accounts.run(account, fn);
  return { result, account };
}

/** A finished run of `ms` that ended now. */
export function recordHelperTime(ms: number): void {
  const account = accounts.getStore();
  if (!account) return;
  const end = performance.now();
  account.add(end - ms, end);
  account.helperRuns += 1;
}

/** Counts the time since `startMs` (performance.now()) as helper time: a wait for a started process. */
export function recordHelperWait(startMs: number): void {
  accounts.getStore()?.add(startMs, performance.now());
}

/** Counts the time until `pending` settles as helper time (waiting for a started process). */
export function waitingOnHelper<T>(pending: Promise<T>): Promise<T> {
  const account = accounts.getStore();
  if (!account) return pending;
  const start = performance.now();
  const done = () => account.add(start, performance.now());
  return pending.then(
    (value) => {
      done();
      return value;
    },
    (err: unknown) => {
      done();
      throw err;
    },
  );
}
