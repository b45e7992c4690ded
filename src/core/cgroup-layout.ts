/**
 * Where a pod's processes go in the node's cgroup tree (relative to /sys/fs/cgroup in the
 * node). A process may not sit in the pod cgroup itself once controllers are enabled for its
 * children, so every process lives in a leaf:
 *
 *   <pod cgroup>/sandbox-<id12>   the pod's infra process (catatonit)
 *   <pod cgroup>/conmon           the pod's conmon processes
 *   <pod cgroup>/<container id>   a container (crun)
 */

/** The leaf conmon processes of a pod live in. */
export function conmonCgroupOf(podCgroup: string): string {
  return `${podCgroup}/conmon`;
}

/** The default pod cgroup when the request names none. */
export function defaultPodCgroup(podId: string): string {
  return `/pods/${podId}`;
}
