/**
 * Failpoints: named places where the daemon can be made to die (SIGKILL of itself) to prove
 * that recovery copes with a crash at exactly that point — between two side effects of a pull,
 * a pod start, a container start, a stop, an exec or a removal. Like containerd's and etcd's
 * failpoints they exist for tests: none is armed unless ROOTLESS_CRI_FAILPOINTS names some
 * (comma-separated), read once at start, and an operator never sets it. Unknown names are
 * refused at start (a typo must not make a test pass without crashing anything).
 */
import { writeSync } from 'node:fs';

export const FAILPOINTS = [
  /** A blob verified and synced, not yet renamed into the content store. */
  'pull.blob-verified',
  /** A layer unpacked into its temp dir, not yet renamed into place. */
  'pull.layer-unpacked',
  /** The pod's namespaces and infra process exist and are recorded; no network yet. */
  'sandbox.namespaces-made',
  /** CNI ADD done (an IP leased), not recorded. */
  'sandbox.network-added',
  /** The writable layer and any image volumes are mounted; the runtime has not created the container. */
  'container.rootfs-mounted',
  /** conmon and crun created the container; the record still says "creating". */
  'container.runtime-created',
  /** crun started the process; the record still says "created". */
  'container.runtime-started',
  /** The stop signal was sent; the exit is not recorded. */
  'container.stop-signalled',
  /** An ExecSync process runs in the container. */
  'exec.started',
  /** The runtime deleted the container; its record and rootfs remain. */
  'container.runtime-deleted',
  /** The pod network is torn down; the sandbox record remains. */
  'sandbox.network-removed',
] as const;

export type Failpoint = (typeof FAILPOINTS)[number];

function armedFrom(value: string | undefined): ReadonlySet<Failpoint> {
  const names = (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const name of names) {
    if (!(FAILPOINTS as readonly string[]).includes(name)) {
      throw new Error(
        `ROOTLESS_CRI_FAILPOINTS names an unknown failpoint "${name}"; known: ${FAILPOINTS.join(', ')}`,
      );
    }
  }
  return new Set(names as Failpoint[]);
}

const armed = armedFrom(process.env.ROOTLESS_CRI_FAILPOINTS);

/** Dies here, at once, when `name` is armed; does nothing otherwise. */
export function failpoint(name: Failpoint): void {
  if (armed.size === 0 || !armed.has(name)) return;
  // Written synchronously: the logger's buffered lines die with the process.
  writeSync(2, `rootless-cri: failpoint ${name}: killing the daemon\n`);
  process.kill(process.pid, 'SIGKILL');
}

/** For the unit test of the parser. */
export const parseFailpoints = armedFrom;
