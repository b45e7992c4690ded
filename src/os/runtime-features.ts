/**
 * What the runtime handler can do on this node, probed once at start (as rootlesskit's
 * DetectFeatures does) and advertised in Status (RuntimeHandlerFeatures): the feature flags
 * kubelet and critest read must say exactly what works.
 *
 * - Recursive read-only mounts: crun's `rro` mount option (crun >= 1.4, which makes the mount
 *   read-only with mount_setattr(AT_RECURSIVE)) and a kernel with mount_setattr (>= 5.12).
 *   crun 1.8 has no `features` command to ask, so its version decides.
 * - Pod user namespaces: the node must have ids beyond its own 0..65535 for pods (kubelet gives
 *   each pod 65,536), the snapshotter must be able to shift a root filesystem (fuse-overlayfs's
 *   uidmapping; the kernel refuses id-mapped overlay and FUSE mounts) and the pod-userns helper
 *   must be built, and the node's /run must take the views containers of such pods are made
 *   from (POD_VIEWS_ROOT in pod-user-namespace.ts).
 */
import { existsSync } from 'node:fs';
import { release } from 'node:os';
import { nativeHelperPath } from './native-helpers.js';
import { contiguousIds, type NodeIdMaps, podViewsUsable } from './pod-user-namespace.js';
import { run } from './process-runner.js';

/** Ids a node needs for pod user namespaces: its own 65,536 and one pod's 65,536. */
export const MIN_NODE_IDS_FOR_POD_USERNS = 2 * 65536;

/** "1.8.1" → [1, 8, 1]; null when there is no version. */
export function parseVersion(text: string): number[] | null {
  const m = /(\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : null;
}

export function versionAtLeast(version: number[] | null, wanted: number[]): boolean {
  if (!version) return false;
  for (let i = 0; i < wanted.length; i++) {
    const a = version[i] ?? 0;
    const b = wanted[i]!;
    if (a !== b) return a > b;
  }
  return true;
}

/** Why the kernel/crun pair cannot make recursive read-only mounts, or null when it can. */
export function recursiveReadOnlyUnavailable(crunVersion: string, kernelRelease: string): string | null {
  if (!versionAtLeast(parseVersion(crunVersion), [1, 4])) {
    return `crun ${crunVersion || '(version unknown)'} has no rro mount option (crun 1.4 added it)`;
  }
  if (!versionAtLeast(parseVersion(kernelRelease), [5, 12])) {
    return `kernel ${kernelRelease} has no mount_setattr (Linux 5.12 added it)`;
  }
  return null;
}

/** Why pods cannot have their own user namespace on this node, or null when they can. */
export function podUserNamespacesUnavailable(facts: {
  node: NodeIdMaps;
  snapshotter: string;
  helperBuilt: boolean;
  /** Why POD_VIEWS_ROOT cannot serve (podViewsUsable), or null. */
  viewsProblem: string | null;
}): string | null {
  const ids = Math.min(contiguousIds(facts.node.uids), contiguousIds(facts.node.gids));
  if (ids < MIN_NODE_IDS_FOR_POD_USERNS) {
    return (
      `the node maps ${ids} ids, and pods need ids beyond its own 65,536 (at least ${MIN_NODE_IDS_FOR_POD_USERNS}); ` +
      'give the node user a larger /etc/subuid and /etc/subgid range (sudo deploy/setup-host.sh --user NAME), ' +
      'then restart the node (rootless-cri stop --all)'
    );
  }
  if (facts.snapshotter !== 'fuse-overlayfs') {
    return `the ${facts.snapshotter} snapshotter cannot shift a root filesystem into a pod's user namespace; use fuse-overlayfs`;
  }
  if (!facts.helperBuilt)
    return 'the pod-userns helper (native/build/pod-userns) is not built; run npm run build';
  if (facts.viewsProblem !== null) {
    return `containers of such pods need a directory their root can reach: ${facts.viewsProblem}`;
  }
  return null;
}

export interface RuntimeHandlerFacts {
  crunVersion: string;
  /** null when available, else why not. */
  recursiveReadOnlyMounts: string | null;
  userNamespaces: string | null;
}

/**
 * Runs `crun --version` once and combines what the node offers. crun makes its state root even
 * for `--version`, so it gets the daemon's (its default, $XDG_RUNTIME_DIR/crun, is the host's
 * /run/user/<uid> through the node's copied-up /run).
 */
export async function probeRuntimeHandler(options: {
  crun: string;
  crunRoot: string;
  node: NodeIdMaps;
  snapshotter: string;
}): Promise<RuntimeHandlerFacts> {
  const r = await run(options.crun, [`--root=${options.crunRoot}`, '--version'], { timeoutMs: 10_000 }).catch(
    () => null,
  );
  const first = r?.exitCode === 0 ? (r.stdout.toString('utf8').split('\n')[0] ?? '') : '';
  const crunVersion = parseVersion(first)?.join('.') ?? '';
  return {
    crunVersion,
    recursiveReadOnlyMounts: recursiveReadOnlyUnavailable(crunVersion, release()),
    userNamespaces: podUserNamespacesUnavailable({
      node: options.node,
      snapshotter: options.snapshotter,
      helperBuilt: existsSync(nativeHelperPath('pod-userns')),
      viewsProblem: await podViewsUsable(),
    }),
  };
}
