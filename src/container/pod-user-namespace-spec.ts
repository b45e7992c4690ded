/**
 * The spec step for a container whose pod has its own user namespace (hostUsers: false): the
 * container joins that namespace, its ids must be mapped in it, and its bind mounts are made
 * the way crun 1.8.1 and this kernel allow inside a rootless node.
 *
 * - The root filesystem is shifted by the snapshotter (fuse-overlayfs uidmapping/gidmapping,
 *   container-create.ts): the kernel refuses id-mapped mounts of overlayfs and FUSE.
 * - A bind mount's submounts are listed as mounts of their own: crun 1.8.1 drops the submounts
 *   of an rbind when the container has a user namespace. Each keeps its own read-only flag,
 *   and is read-only under a recursive read-only (rro) mount, as rro makes it.
 * - A mount that comes with uid/gid mappings (kubelet sends the pod's on every volume) is
 *   id-mapped when the kernel allows it for its source — a tmpfs the node mounted (secrets,
 *   projected volumes, emptyDir medium Memory) — and otherwise mounted as it is, with a warning:
 *   the kernel refuses id-mapped mounts of the host's filesystems to a rootless node (EPERM),
 *   so such files keep their node owners (node root shows as nobody in the pod).
 *
 * crun resolves the rootfs and bind sources as the pod's root once it has joined the namespace;
 * the OCI runtime hands it views of them it can reach (withPodViews, os/pod-user-namespace.ts).
 *
 * The step is written against the shapes it needs, not spec-builder's types, so that the spec
 * builder can list it among its steps without an import cycle.
 */
import path from 'node:path';
import type { ContainerConfig__Output, Mount__Output } from '../api/proto.js';
import type { SandboxInfo } from '../core/sandbox-info.js';
import { FailedPreconditionError, InvalidArgumentError } from '../errors.js';
import type { OciIdMapping, OciMount, OciSpec } from '../os/oci-spec.js';
import type { IdMapping } from '../os/pod-user-namespace.js';

/** A mount of the node's mount table (what crun would drop below an rbind). */
export interface NodeMount {
  mountPoint: string;
  readonly: boolean;
}

/** What the step asks of the node; the spec builder's SpecFiles provides it. */
export interface PodUserNamespaceFiles {
  /** The node's mounts, parents before children. */
  mountTable?(): Promise<NodeMount[]>;
  /** Whether `source` can be mounted id-mapped with the user namespace pinned at `usernsPin`. */
  idmapSupported?(usernsPin: string, source: string): Promise<{ supported: boolean; reason: string }>;
}

export interface PodUserNamespaceDraft {
  spec: OciSpec;
  user: { uid: number; gid: number; additionalGids: number[] };
  hostNetwork: boolean;
  ipcMode: string;
}

export interface PodUserNamespaceInput {
  config: ContainerConfig__Output;
  sandbox: SandboxInfo;
  files: PodUserNamespaceFiles;
}

export function toOciMappings(lines: readonly IdMapping[]): OciIdMapping[] {
  return lines.map((l) => ({ containerID: l.containerId, hostID: l.hostId, size: l.length }));
}

/** Ids 0..n-1 the pod maps (the lines are nested from one range starting at container id 0). */
function mappedCount(lines: readonly IdMapping[]): number {
  return lines.reduce((n, l) => (l.containerId === n ? n + l.length : n), 0);
}

function sameMapping(a: Mount__Output['uidMappings'], b: Mount__Output['uidMappings'] | undefined): boolean {
  if (!b || a.length !== b.length) return false;
  return a.every(
    (m, i) =>
      m.container_id === b[i]!.container_id && m.host_id === b[i]!.host_id && m.length === b[i]!.length,
  );
}

function isUnder(p: string, dir: string): boolean {
  return p.startsWith(dir === '/' ? '/' : `${dir}/`);
}

/** The container joins its pod's user namespace; see the file comment. */
export async function withPodUserNamespace(
  draft: PodUserNamespaceDraft,
  input: PodUserNamespaceInput,
): Promise<string[]> {
  const { config, sandbox, files } = input;
  const userns = sandbox.userNamespace ?? null;
  const mode = String(config.linux?.security_context?.namespace_options?.userns_options?.mode ?? '');
  const mappedMounts = config.mounts.filter((m) => m.uidMappings.length > 0 || m.gidMappings.length > 0);
  if (!userns) {
    if (mode !== '' && mode !== 'NODE') {
      throw new InvalidArgumentError(
        `user namespace mode ${mode} is not available to this container: its pod uses the node's user namespace ` +
          '(only a pod created with userns_options mode POD has one of its own)',
      );
    }
    if (mappedMounts.length > 0) {
      throw new InvalidArgumentError(
        `mount ${JSON.stringify(mappedMounts[0]!.container_path)} has uid/gid mappings: id-mapped mounts are for ` +
          'pods with their own user namespace (hostUsers: false)',
      );
    }
    return [];
  }
  if (mode !== '' && mode !== 'POD') {
    throw new InvalidArgumentError(
      `user namespace mode ${mode}: this container's pod has its own user namespace, which all its containers share (mode POD)`,
    );
  }
  const namespaces = draft.spec.linux.namespaces;
  const sharesNode = draft.hostNetwork
    ? 'network'
    : draft.ipcMode === 'NODE'
      ? 'ipc'
      : namespaces.some((n) => n.type === 'pid')
        ? null
        : 'pid';
  if (sharesNode !== null) {
    throw new InvalidArgumentError(
      `a container of a pod with its own user namespace cannot use the node's ${sharesNode} namespace`,
    );
  }

  const uidCount = mappedCount(userns.uids);
  const gidCount = mappedCount(userns.gids);
  const { uid, gid, additionalGids } = draft.user;
  for (const [what, id, count] of [
    ['uid', uid, uidCount],
    ['gid', gid, gidCount],
    ...additionalGids.map((g) => ['supplementary gid', g, gidCount] as const),
  ] as const) {
    if (id >= count) {
      throw new InvalidArgumentError(
        `${what} ${id} is not mapped in the pod's user namespace (ids 0..${count - 1}); use a smaller id or ` +
          'give the pod a longer mapping',
      );
    }
  }

  // Joined by path, without linux.uidMappings: with them crun 1.8.1 would id-map a volume with
  // the container's own user namespace before the container has joined it (EINVAL), instead
  // of a namespace of its own made with the mount's maps.
  draft.spec.linux.namespaces = [{ type: 'user', path: userns.path }, ...namespaces];

  const warnings: string[] = [];
  const podMapping = sandbox.config.linux?.security_context?.namespace_options?.userns_options ?? null;
  const table = files.mountTable ? await files.mountTable() : [];
  const mounts: OciMount[] = [];
  for (const m of draft.spec.mounts) {
    mounts.push(m);
    if (m.type !== 'bind' || !m.options.includes('rbind')) continue;
    const requested = mappedMounts.find((r) => path.posix.normalize(r.container_path) === m.destination);
    if (requested) {
      if (
        !sameMapping(requested.uidMappings, podMapping?.uids) ||
        !sameMapping(requested.gidMappings, podMapping?.gids)
      ) {
        throw new InvalidArgumentError(
          `mount ${JSON.stringify(requested.container_path)}: its uid/gid mappings differ from the pod's user ` +
            "namespace; rootless-cri id-maps a volume with the pod's own mapping",
        );
      }
      if (!files.idmapSupported) {
        throw new FailedPreconditionError('id-mapped mounts cannot be checked on this node');
      }
      const check = await files.idmapSupported(userns.path, m.source);
      if (check.supported) {
        m.options.push('idmap');
        m.uidMappings = toOciMappings(userns.uids);
        m.gidMappings = toOciMappings(userns.gids);
      } else {
        warnings.push(
          `mount ${m.destination}: the kernel refuses to id-map ${m.source} inside the rootless node (${check.reason}); ` +
            'it is mounted without id mapping, so its files keep their node owners (node root shows as nobody)',
        );
      }
    }
    const recursiveReadOnly = m.options.includes('rro');
    const propagation =
      m.options.find((o) => o === 'rprivate' || o === 'rslave' || o === 'rshared') ?? 'rprivate';
    for (const sub of table) {
      if (!isUnder(sub.mountPoint, m.source)) continue;
      mounts.push({
        destination: path.posix.join(m.destination, path.posix.relative(m.source, sub.mountPoint)),
        type: 'bind',
        source: sub.mountPoint,
        options: ['rbind', propagation, recursiveReadOnly || sub.readonly ? 'ro' : 'rw'],
      });
    }
  }
  draft.spec.mounts = mounts;
  return warnings;
}
