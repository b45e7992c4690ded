/**
 * A pod's own user namespace (userns_options mode POD, kubelet's hostUsers: false): the request
 * checks and the plan RunPodSandbox follows. Pure but for ownPodFiles; unit-tested without a
 * kernel.
 *
 * What a request must be (every failure InvalidArgument naming the field, as critest expects):
 * - mode POD or NODE; CONTAINER and TARGET are not modes a pod can have;
 * - exactly one uid mapping and one gid mapping, from container id 0 (the kernel would take
 *   more, but kubelet sends one, containerd and CRI-O take one, and one range is what the
 *   pod's rootfs and volumes are shifted by);
 * - host ids (node ids) within the node's own map and never node id 0, the node user itself;
 * - the pod's own network, ipc and pid (POD or CONTAINER) namespaces: a user namespace cannot
 *   take over the node's (hostNetwork/hostIPC/hostPID with hostUsers: false), and Status says
 *   so (user_namespaces_host_network false).
 * A node that cannot offer pod user namespaces (too few ids, or a snapshotter that cannot shift
 * the rootfs) answers FailedPrecondition with the reason; Status does not advertise the feature.
 */
import { chown } from 'node:fs/promises';
import path from 'node:path';
// proto.ts does not re-export IDMapping; the generated type is the same module it uses.
import type { IDMapping__Output } from '../api/generated/runtime/v1/IDMapping.js';
import type { PodSandboxConfig__Output } from '../api/proto.js';
import { FailedPreconditionError, InvalidArgumentError } from '../errors.js';
import { type IdMapping, type NodeIdMaps, nestInNode } from '../os/pod-user-namespace.js';
import type { NamespaceModes } from './sandbox-config.js';

/** What the node offers pods, probed at start. */
export interface PodUserNamespaceFacts {
  /** The node's own uid and gid maps. */
  node: NodeIdMaps;
  /** Why pods cannot have their own user namespace here, or null when they can. */
  unavailable: string | null;
}

/** The kernel's lines of the pod's maps (node ids as host ids, nested in the node's lines). */
export interface PodUserNamespacePlan {
  uids: IdMapping[];
  gids: IdMapping[];
}

const FIELD = 'namespace_options.userns_options';

function checkMappings(kind: 'uids' | 'gids', given: IDMapping__Output[], node: IdMapping[]): IdMapping[] {
  const field = `${FIELD}.${kind}`;
  if (given.length !== 1) {
    throw new InvalidArgumentError(
      `${field} has ${given.length} mappings; a pod user namespace takes exactly one, from container id 0 ` +
        '(kubelet sends one range per pod)',
    );
  }
  const m = given[0]!;
  const shown = `${m.container_id}:${m.host_id}:${m.length}`;
  if (m.container_id !== 0) {
    throw new InvalidArgumentError(
      `${field} ${shown} does not map container id 0: the pod's root must be mapped; start the mapping at container id 0`,
    );
  }
  if (m.length === 0) throw new InvalidArgumentError(`${field} ${shown} has length 0`);
  if (m.host_id === 0) {
    throw new InvalidArgumentError(
      `${field} ${shown} maps the pod onto node id 0, the node user itself; use ids of the node's subordinate range`,
    );
  }
  const nested = nestInNode([{ containerId: 0, hostId: m.host_id, length: m.length }], node);
  if ('unmapped' in nested) {
    const nodeIds = node.map((l) => `${l.containerId}-${l.containerId + l.length - 1}`).join(', ');
    throw new InvalidArgumentError(
      `${field} ${shown} maps node ids ${nested.unmapped.from}-${nested.unmapped.to}, which the rootless node does ` +
        `not have (its ids: ${nodeIds}); use host ids inside the node's range, or give the node user a larger ` +
        '/etc/subuid and /etc/subgid range (deploy/setup-host.sh, then restart the node)',
    );
  }
  return nested.lines;
}

/**
 * The pod user namespace RunPodSandbox makes, or null when the pod uses the node's (mode NODE
 * or no options). Throws InvalidArgument for a request no node could honour, FailedPrecondition
 * when this node cannot.
 */
export function podUserNamespacePlan(
  config: PodSandboxConfig__Output,
  modes: NamespaceModes,
  facts: PodUserNamespaceFacts | undefined,
): PodUserNamespacePlan | null {
  const options = config.linux?.security_context?.namespace_options?.userns_options;
  if (!options || options.mode === 'NODE') return null;
  if (options.mode !== 'POD') {
    throw new InvalidArgumentError(`${FIELD}.mode ${options.mode} is not valid for a pod: use POD or NODE`);
  }
  const node = facts?.node ?? { uids: [], gids: [] };
  const uids = checkMappings('uids', options.uids, node.uids);
  const gids = checkMappings('gids', options.gids, node.gids);
  for (const [kind, mode] of [
    ['network', modes.network],
    ['ipc', modes.ipc],
    ['pid', modes.pid],
  ] as const) {
    if (mode === 'NODE' || mode === 'TARGET') {
      throw new InvalidArgumentError(
        `namespace_options.${kind} ${mode} cannot be combined with a pod user namespace: the pod's user namespace ` +
          `must own its ${kind} namespace (hostNetwork, hostIPC and hostPID need hostUsers: true)`,
      );
    }
  }
  if (!facts || facts.unavailable !== null) {
    throw new FailedPreconditionError(
      `pod user namespaces (hostUsers: false) are not available on this node: ${facts?.unavailable ?? 'not probed'}`,
    );
  }
  return { uids, gids };
}

/** The node ids of the pod's root (container id 0), which the plan always maps. */
export function podRootIds(plan: PodUserNamespacePlan): { uid: number; gid: number } {
  return { uid: plan.uids[0]!.hostId, gid: plan.gids[0]!.hostId };
}

/**
 * The pod's own files (hosts, resolv.conf, hostname) belong to its root, as they do to the
 * node's root in a pod without its own user namespace: owned by the node's root they would
 * show as nobody and /etc/hosts could not be edited by the pod.
 */
export async function ownPodFiles(filesDir: string, plan: PodUserNamespacePlan): Promise<void> {
  const { uid, gid } = podRootIds(plan);
  for (const name of ['hosts', 'resolv.conf', 'hostname']) {
    await chown(path.join(filesDir, name), uid, gid).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}
