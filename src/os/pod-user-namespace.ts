/**
 * Pod user namespaces (hostUsers: false) inside the rootless node: the node's own id map, the
 * arithmetic of nesting a pod's map in it, and the native helper that makes and pins the
 * namespaces (native/pod-userns.c) and checks whether a mount source can be id-mapped.
 *
 * Why the arithmetic: the node is itself a user namespace whose ids 1..N are the node user's
 * subordinate ids, in as many lines as /etc/subuid has ranges for it. The kernel maps each line
 * of a child's uid_map within one line of its parent's, so a pod range that crosses from one of
 * the node's lines to the next (node id 65536|65537 for a user whose range was extended by a
 * second /etc/subuid line) is written as two lines; the pod sees the same ids either way.
 * Node id 0 is the node user itself (the owner of every file of the node and its daemon):
 * a pod must never map onto it.
 */
import { chmod, mkdir, readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { FailedPreconditionError, InternalError } from '../errors.js';
import { decodeHelperReport, nativeHelperPath } from './native-helpers.js';
import type { OciSpec } from './oci-spec.js';
import { run } from './process-runner.js';

/** One line of a uid_map/gid_map: ids containerId.. inside are hostId.. in the parent. */
export interface IdMapping {
  containerId: number;
  hostId: number;
  length: number;
}

/** The node's uid and gid maps (the daemon's /proc/self/uid_map and gid_map). */
export interface NodeIdMaps {
  uids: IdMapping[];
  gids: IdMapping[];
}

/** The lines of a uid_map/gid_map text, sorted by the inside id. */
export function parseIdMap(text: string): IdMapping[] {
  return text
    .split('\n')
    .map((line) => line.trim().split(/\s+/).map(Number))
    .filter((f) => f.length === 3 && f.every((n) => Number.isSafeInteger(n) && n >= 0) && f[2]! > 0)
    .map(([containerId, hostId, length]) => ({ containerId: containerId!, hostId: hostId!, length: length! }))
    .sort((a, b) => a.containerId - b.containerId);
}

export async function readNodeIdMaps(): Promise<NodeIdMaps> {
  const [uids, gids] = await Promise.all([
    readFile('/proc/self/uid_map', 'utf8'),
    readFile('/proc/self/gid_map', 'utf8'),
  ]);
  return { uids: parseIdMap(uids), gids: parseIdMap(gids) };
}

/** How many ids, from 0, the node maps without a gap. */
export function contiguousIds(node: readonly IdMapping[]): number {
  let next = 0;
  for (const line of [...node].sort((a, b) => a.containerId - b.containerId)) {
    if (line.containerId > next) break;
    next = Math.max(next, line.containerId + line.length);
  }
  return next;
}

/**
 * A pod's map (host ids are node ids) as the kernel must be given it: each line cut where the
 * node's lines meet. Returns the node ids no line of the node maps (the first gap found) when
 * the pod's map leaves the node's range.
 */
export function nestInNode(
  pod: readonly IdMapping[],
  node: readonly IdMapping[],
): { lines: IdMapping[] } | { unmapped: { from: number; to: number } } {
  const lines: IdMapping[] = [];
  const nodeLines = [...node].sort((a, b) => a.containerId - b.containerId);
  for (const m of pod) {
    let offset = 0;
    while (offset < m.length) {
      const id = m.hostId + offset;
      const line = nodeLines.find((l) => id >= l.containerId && id < l.containerId + l.length);
      if (!line) {
        const next = nodeLines.find((l) => l.containerId > id);
        const to = Math.min(m.hostId + m.length, next ? next.containerId : Number.POSITIVE_INFINITY) - 1;
        return { unmapped: { from: id, to } };
      }
      const take = Math.min(m.length - offset, line.containerId + line.length - id);
      lines.push({ containerId: m.containerId + offset, hostId: id, length: take });
      offset += take;
    }
  }
  return { lines };
}

/** "C:H:N,C:H:N", the helper's and fuse-overlayfs's notation (fuse-overlayfs joins with ':'). */
export function mappingSpec(lines: readonly IdMapping[], separator = ','): string {
  return lines.map((l) => `${l.containerId}:${l.hostId}:${l.length}`).join(separator);
}

export type PodNamespaceKind = 'user' | 'net' | 'ipc' | 'uts';

export interface PodUserNamespaceRequest {
  /** The kernel's lines (already nested in the node: see nestInNode). */
  uids: readonly IdMapping[];
  gids: readonly IdMapping[];
  /** Existing, empty files to pin the namespaces on; `user` is required. */
  pins: readonly { kind: PodNamespaceKind; path: string }[];
  timeoutMs?: number;
  helper?: string;
}

/**
 * Creates the pod's user namespace with the given maps, and with it the pod's net/ipc/uts
 * namespaces (owned by it), pinned on the given files. Nothing is left mounted on failure.
 */
export async function createPodUserNamespace(request: PodUserNamespaceRequest): Promise<void> {
  const helper = request.helper ?? nativeHelperPath('pod-userns');
  const args = [
    'create',
    '--uid-map',
    mappingSpec(request.uids),
    '--gid-map',
    mappingSpec(request.gids),
    ...request.pins.flatMap((p) => ['--pin', `${p.kind}=${p.path}`]),
  ];
  const r = await run(helper, args, { timeoutMs: request.timeoutMs ?? 30_000 });
  const report = decodeHelperReport(r.stdout.toString('utf8'));
  if (r.exitCode === 0 && report?.ok) return;
  const detail = report?.error ?? (r.stderr.toString('utf8').trim() || `exit ${r.exitCode}`);
  if (report?.errno === 'EPERM' || report?.errno === 'EINVAL') {
    throw new FailedPreconditionError(
      `cannot create the pod user namespace: ${detail}; the pod's ids must lie within the node's (run rootless-cri doctor)`,
    );
  }
  throw new InternalError(`cannot create the pod user namespace: ${detail}`);
}

/** Whether `source` can be mounted id-mapped with the user namespace pinned at `usernsPin`. */
export async function idmapSupported(
  usernsPin: string,
  source: string,
  helper = nativeHelperPath('pod-userns'),
): Promise<{ supported: boolean; reason: string }> {
  const r = await run(helper, ['idmap-check', '--userns', usernsPin, source], { timeoutMs: 10_000 });
  const report = decodeHelperReport(r.stdout.toString('utf8'));
  if (!report) {
    throw new InternalError(
      `the idmap check of ${source} gave no report: ${r.stderr.toString('utf8').trim() || `exit ${r.exitCode}`}`,
    );
  }
  if (!report.ok) throw new InternalError(`cannot check whether ${source} can be id-mapped: ${report.error}`);
  if (report.idmap === true) return { supported: true, reason: '' };
  return { supported: false, reason: `${String(report.errno ?? '')} (${String(report.error ?? '')})` };
}

/**
 * Where a container joining a pod user namespace gets its rootfs and bind sources from (see
 * views in native/pod-userns.c): a directory on the node's own /run (rootlesskit's --copy-up
 * tmpfs, 0755), which the pod's root can search, unlike the daemon's 0700 directories.
 */
export const POD_VIEWS_ROOT = '/run/rootless-cri-pod-views';

async function runViewsHelper(args: string[], helper: string): Promise<void> {
  const r = await run(helper, args, { timeoutMs: 30_000 });
  const report = decodeHelperReport(r.stdout.toString('utf8'));
  if (r.exitCode === 0 && report?.ok) return;
  throw new InternalError(
    `pod-userns ${args[0]} failed: ${report?.error ?? (r.stderr.toString('utf8').trim() || `exit ${r.exitCode}`)}`,
  );
}

/** The user namespace a spec joins by path, or null. */
function joinedUserNamespace(spec: OciSpec): string | null {
  return spec.linux.namespaces.find((n) => n.type === 'user' && n.path)?.path ?? null;
}

/**
 * Runs `create` with a spec whose rootfs and bind sources are views the pod's root can reach,
 * when the spec joins a pod user namespace; the views are released afterwards (crun has made
 * the container's own mounts by then). Any other spec is passed through unchanged.
 */
export async function withPodViews<T>(
  containerId: string,
  spec: OciSpec,
  create: (spec: OciSpec) => Promise<T>,
  options: { root?: string; helper?: string } = {},
): Promise<T> {
  if (joinedUserNamespace(spec) === null) return create(spec);
  const helper = options.helper ?? nativeHelperPath('pod-userns');
  const root = options.root ?? POD_VIEWS_ROOT;
  const dir = path.join(root, containerId);
  await mkdir(root, { recursive: true, mode: 0o711 });
  await chmod(root, 0o711);
  const sources = [spec.root.path];
  const mounts = spec.mounts.map((m) => {
    if (m.type !== 'bind') return m;
    sources.push(m.source);
    return { ...m, source: path.join(dir, String(sources.length - 1)) };
  });
  await runViewsHelper(['release', '--dir', dir], helper);
  await runViewsHelper(['views', '--dir', dir, ...sources], helper);
  try {
    return await create({ ...spec, root: { ...spec.root, path: path.join(dir, '0') }, mounts });
  } finally {
    await runViewsHelper(['release', '--dir', dir], helper);
  }
}

/** Releases views a daemon killed in the middle of a create left behind (at start). */
export async function releaseStalePodViews(options: { root?: string; helper?: string } = {}): Promise<void> {
  const root = options.root ?? POD_VIEWS_ROOT;
  const helper = options.helper ?? nativeHelperPath('pod-userns');
  for (const name of await readdir(root).catch(() => [] as string[])) {
    await runViewsHelper(['release', '--dir', path.join(root, name)], helper);
  }
}

/** Whether POD_VIEWS_ROOT can be made here and every directory above it is searchable by all. */
export async function podViewsUsable(root = POD_VIEWS_ROOT): Promise<string | null> {
  try {
    await mkdir(root, { recursive: true, mode: 0o711 });
    await chmod(root, 0o711);
    for (let dir = path.dirname(root); ; dir = path.dirname(dir)) {
      const st = await stat(dir);
      if ((st.mode & 0o001) === 0)
        return `${dir} is not searchable by the pod's root (mode ${(st.mode & 0o777).toString(8)})`;
      if (dir === '/') break;
    }
    return null;
  } catch (err) {
    return `cannot create ${root}: ${(err as Error).message}`;
  }
}
