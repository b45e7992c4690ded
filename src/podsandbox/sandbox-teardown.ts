/**
 * Releasing what a sandbox holds, in small idempotent steps shared by StopPodSandbox,
 * RemovePodSandbox and RunPodSandbox's rollback. Each step checks what is there, so running
 * it twice, or after a daemon was killed halfway through, is fine.
 */
import { rm } from 'node:fs/promises';
import { defaultPodCgroup } from '../core/cgroup-layout.js';
import { fromGoneNode } from '../core/core-context.js';
import type { SandboxRecord } from '../core/sandbox-record.js';
import { failpoint } from '../failpoint.js';
import type { SandboxDeps } from './sandbox-deps.js';

/**
 * SIGKILL to the pod's PID 1; its pid namespace (and every process in it) ends with it. The
 * infra of a pod from a node that is gone ended with that node, and its pids now name processes
 * of the new one: nothing to stop, and nothing may be signalled by those pids.
 */
export async function stopInfra(deps: SandboxDeps, record: SandboxRecord): Promise<void> {
  const infra = record.namespaces.pid.infra;
  if (infra && !fromGoneNode(deps.core, record)) await deps.os.stopInfra(infra);
}

/**
 * Unpublishes the host ports; also any port rootlesskit still forwards to the pod IP. Ports of a
 * pod from a node that is gone ended with that node's rootlesskit, and their ids now belong to
 * the new one's ports: nothing to remove, and nothing may be removed by those ids.
 */
export async function unpublishPorts(deps: SandboxDeps, record: SandboxRecord): Promise<void> {
  if (!deps.ports || fromGoneNode(deps.core, record)) return;
  const ids = new Set(record.ports.map((p) => p.id));
  const podIp = record.network?.ip;
  if (podIp) {
    // A daemon killed between rootlesskit's add and our record write leaves a port we did not
    // record; it is found by its child address.
    const published = await deps.ports.list().catch(() => []);
    for (const p of published) if (p.childIP === podIp) ids.add(p.id);
  }
  for (const id of ids) await deps.ports.remove(id);
}

export function portMappingsForCni(record: SandboxRecord) {
  return record.ports.length > 0
    ? record.ports.map((p) => ({
        hostPort: p.hostPort,
        containerPort: p.containerPort,
        protocol: p.protocol,
        hostIP: p.hostIp === '0.0.0.0' ? '' : p.hostIp,
      }))
    : (record.config.port_mappings ?? [])
        .filter((m) => m.host_port > 0 && m.protocol !== 'SCTP')
        .map((m) => ({
          hostPort: m.host_port,
          containerPort: m.container_port,
          protocol: m.protocol === 'UDP' ? ('udp' as const) : ('tcp' as const),
          hostIP: m.host_ip,
        }));
}

/**
 * CNI DEL with the recorded configuration, when ADD may have happened. When the namespace is
 * gone (its pin is no longer mounted: the node stopped or restarted, or the pin was lost), DEL
 * runs without a netns path, as the CNI spec allows: the plugins release the IP lease and
 * what they keep outside the namespace, which is all that is left of it.
 */
export async function detachNetwork(deps: SandboxDeps, record: SandboxRecord): Promise<void> {
  const netns = record.namespaces.network.path;
  if (!record.networkConfig || !netns) return;
  const present = await deps.os.isPinned(netns).catch(() => false);
  await deps.network.tearDown({
    conflist: record.networkConfig,
    sandboxId: record.id,
    netnsPath: present ? netns : '',
    network: record.network,
    portMappings: portMappingsForCni(record),
  });
}

export async function unpinNetwork(deps: SandboxDeps, record: SandboxRecord): Promise<void> {
  const netns = record.namespaces.network.path;
  if (netns) await deps.os.unpinNamespaces([netns]);
}

export async function unpinOthers(deps: SandboxDeps, record: SandboxRecord): Promise<void> {
  // The pod's user namespace last: the others are owned by it.
  const paths = [record.namespaces.ipc.path, record.namespaces.uts.path, record.namespaces.user?.path].filter(
    (p): p is string => typeof p === 'string',
  );
  await deps.os.unpinNamespaces(paths);
}

/** The sandbox leaf, then the directories this sandbox created, deepest first. */
export async function removeCgroups(deps: SandboxDeps, record: SandboxRecord): Promise<void> {
  const cgroup = record.cgroup;
  if (!cgroup) return;
  const dirs = [cgroup.leaf, ...[...cgroup.created].reverse()];
  // The default pod cgroup is this sandbox's own even if a crash kept it out of `created`.
  if (cgroup.path === defaultPodCgroup(record.id)) dirs.push(cgroup.path);
  await deps.core.cgroups.remove([...new Set(dirs)]);
}

export async function removeFiles(_deps: SandboxDeps, record: SandboxRecord): Promise<void> {
  await rm(record.filesDir, { recursive: true, force: true });
}

/**
 * Everything StopPodSandbox releases: the processes, the host ports, the network (IP lease,
 * veth, iptables rules) and the network namespace. Returns the record as it should be saved.
 */
export async function releaseRunningResources(
  deps: SandboxDeps,
  record: SandboxRecord,
): Promise<SandboxRecord> {
  await stopInfra(deps, record);
  await unpublishPorts(deps, record);
  await detachNetwork(deps, record);
  failpoint('sandbox.network-removed');
  await unpinNetwork(deps, record);
  return {
    ...record,
    namespaces: { ...record.namespaces, pid: { ...record.namespaces.pid, infra: null } },
    ports: [],
    network: null,
    networkConfig: null,
  };
}
