/**
 * What the container layer needs to know about a pod sandbox. The pod sandbox layer
 * (src/podsandbox/) owns the records; it hands containers this narrow view, so container code
 * and its tests do not depend on how sandboxes are stored.
 */
import type { PodSandboxConfig__Output } from '../api/proto.js';
import type { IdMapping } from '../os/pod-user-namespace.js';

export interface SandboxInfo {
  id: string;
  /** The config RunPodSandbox received (metadata, log_directory, security context, ...). */
  config: PodSandboxConfig__Output;
  /** The pod's hostname (already set in its UTS namespace). */
  hostname: string;
  /** Pinned namespace files; null = the pod uses the node's namespace (hostNetwork, hostIPC). */
  namespaces: {
    network: string | null;
    ipc: string | null;
    uts: string | null;
  };
  /**
   * The pod's own user namespace (hostUsers: false): its pin and the kernel's lines of its maps
   * (node ids as host ids); null or absent when the pod is in the node's user namespace.
   */
  userNamespace?: { path: string; uids: IdMapping[]; gids: IdMapping[] } | null;
  /** The pod's PID 1 (pid namespace mode POD) as seen from the daemon; null otherwise. */
  infraPid: number | null;
  /** The pod cgroup relative to the node's /sys/fs/cgroup (e.g. /pods/<id>); null = no cgroups. */
  cgroupParent: string | null;
  /** Files shared by the pod's containers; null = not provided. */
  files: {
    hosts: string | null;
    resolvConf: string | null;
    hostname: string | null;
    /** The pod's /dev/shm (a tmpfs the sandbox mounted), used when IPC is POD. */
    shm: string | null;
  };
  /** Whether the sandbox is ready (containers may only be created in a ready sandbox). */
  ready: boolean;
}

/** Finds sandboxes by id (full id; prefixes are resolved at the CRI edge). */
export interface SandboxLookup {
  getSandbox(id: string): Promise<SandboxInfo | null>;
}
