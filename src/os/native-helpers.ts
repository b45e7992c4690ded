/**
 * The native helpers (native/*.c, built by `npm run build` into native/build/) and the one
 * way their reports are read. Node cannot setns() a thread, use openat2, make ptys or
 * SOCK_SEQPACKET sockets; the helpers do exactly that and report back one JSON line.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export type NativeHelper =
  | 'layer-unpack'
  | 'netns-dial'
  | 'console-relay'
  | 'attach-relay'
  | 'remove-tree'
  | 'pod-userns'
  | 'spawn-in-cgroup'
  | 'node-supervisor'
  | 'run-server';

export const NATIVE_HELPERS: readonly NativeHelper[] = [
  'layer-unpack',
  'netns-dial',
  'console-relay',
  'attach-relay',
  'pod-userns',
];

/**
 * native/build/<name>, found from src/os/ (vitest), dist/src/os/ (built) or
 * dist/<driver>/src/os/ (a test driver compiled on its own, test/harness/node-driver.ts).
 */
export function nativeHelperPath(name: NativeHelper): string {
  const candidates = ['../..', '../../..', '../../../..'].map((up) =>
    fileURLToPath(new URL(`${up}/native/build/${name}`, import.meta.url)),
  );
  return candidates.find((p) => existsSync(p)) ?? candidates[0]!;
}

/** The shape every helper's report shares: ok, or an error with a kind and errno name. */
export interface HelperReport {
  ok: boolean;
  kind?: string;
  errno?: string;
  error?: string;
  [field: string]: unknown;
}

/**
 * A helper's report from its output: the first complete JSON object line (`which: 'first'`,
 * reports written before a stream starts) or the last one (`'last'`, reports at the end).
 * undefined when there is none or it is not a report.
 */
export function decodeHelperReport(text: string, which: 'first' | 'last' = 'last'): HelperReport | undefined {
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  const line = which === 'first' ? lines[0] : lines[lines.length - 1];
  if (!line) return undefined;
  try {
    const value: unknown = JSON.parse(line);
    if (typeof value !== 'object' || value === null || typeof (value as { ok?: unknown }).ok !== 'boolean') {
      return undefined;
    }
    return value as HelperReport;
  } catch {
    return undefined;
  }
}
