/**
 * RunPodSandbox: a pod's namespaces, infra process, cgroup, network, host ports and files.
 *
 * Order of steps, each pushing its undo on a RollbackStack:
 *   check the request (no side effects) → reserve the name → load the CNI config (read only)
 *   → record "creating" (names every path the sandbox will use, so a daemon killed from here
 *   on leaves a record that Stop and Remove can clean) → files dir → cgroup → one process
 *   chain that pins the net/ipc/uts namespaces, brings lo up, sets the hostname, writes the
 *   IPC sysctls and starts the infra process (pid POD) inside the cgroup leaf (with
 *   hostUsers: false all of it inside the pod's own user namespace, pod-user-namespace.ts,
 *   and the pod's files then belong to its root) → record the
 *   infra pid and the CNI config → CNI ADD, while resolv.conf, hostname and the log directory
 *   are written → host ports → net.* sysctls (they may name eth0, which ADD creates) → NRI
 *   plugins (a veto rolls back) → hosts (it needs the IP) → log directory → record "ready".
 *
 * A record is saved before every external side effect that recovery must undo, naming it. A
 * save is skipped only when it would tell recovery nothing new: the cgroups created when they
 * are the ones recovery removes anyway, and the ADD result when no host port follows (DEL
 * runs without a prevResult then, as after a daemon killed during ADD); the next save carries
 * them.
 *
 * Name reservation follows containerd: the key is name_namespace_uid_attempt; a second
 * request for a reserved key fails at once with AlreadyExists naming the sandbox that holds
 * it, while the first one continues. The reservation is released when the request fails and
 * when the sandbox is removed.
 *
 * A cancelled request (client gone, deadline passed) stops between steps and rolls back, so
 * a retry with the same config gets a clean new sandbox, never a stuck reservation. The undos
 * run with their own timeout. If an undo itself fails, the record stays as a visible
 * NOTREADY sandbox (naming what could not be released) for Stop/Remove or kubelet's garbage
 * collection, and the name is released so a retry is not blocked (catalog rows 34 and 40).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { defaultPodCgroup } from '../core/cgroup-layout.js';
import { describeUndoFailures, RollbackStack } from '../core/rollback.js';
import { SANDBOX_RECORD_VERSION, type SandboxRecord, sandboxName } from '../core/sandbox-record.js';
import { CancelledError, CriError, describeError, InternalError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import type { CniPortMapping } from '../os/cni-network.js';
import type { NamespacePaths, PinnableNamespace, SysctlWrite } from '../os/sandbox-os.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import { ownPodFiles, podUserNamespacePlan } from './pod-user-namespace.js';
import {
  checkLogDirectory,
  checkMetadata,
  checkRuntimeHandler,
  hostPortRequests,
  hostsFileFor,
  namespaceModes,
  podCgroupPath,
  podHostname,
  resolvConfFrom,
} from './sandbox-config.js';
import type { SandboxDeps } from './sandbox-deps.js';
import {
  detachNetwork,
  removeCgroups,
  removeFiles,
  stopInfra,
  unpinNetwork,
  unpinOthers,
  unpublishPorts,
} from './sandbox-teardown.js';
import { sysctlNamespace, validateSysctls } from './sysctls.js';

export function newSandboxId(): string {
  return randomBytes(32).toString('hex');
}

export function createRunPodSandbox(deps: SandboxDeps) {
  return async function RunPodSandbox(
    request: RuntimeRequest<'RunPodSandbox'>,
    ctx: Pick<CallContext, 'signal' | 'logger'>,
  ): Promise<RuntimeResponse<'RunPodSandbox'>> {
    checkRuntimeHandler(request.runtime_handler);
    const config = request.config;
    const meta = checkMetadata(config);
    // checkMetadata has thrown when config is null.
    const podConfig = config!;
    const modes = namespaceModes(podConfig);
    const podNetwork = modes.network === 'POD';
    const podIpc = modes.ipc === 'POD';
    const sysctls = validateSysctls(podConfig.linux?.sysctls ?? {}, { podNetwork, podIpc });
    const hostname = podNetwork ? podHostname(podConfig, meta) : deps.nodeHostname();
    const resolvConf = resolvConfFrom(podConfig.dns_config);
    const hostPorts = hostPortRequests(podConfig.port_mappings ?? []);
    checkLogDirectory(podConfig.log_directory);
    const userns = podUserNamespacePlan(podConfig, modes, deps.userNamespaces);

    const id = deps.newId();
    const name = sandboxName(meta);
    deps.core.sandboxNames.reserve(name, id);
    return deps.core.sandboxLocks.run(id, async () => {
      const rollback = new RollbackStack(deps.undoTimeoutMs);
      const ns = (dir: string, own: boolean) => (own ? path.join(deps.paths.runDir, dir, id) : null);
      let record: SandboxRecord = {
        version: SANDBOX_RECORD_VERSION,
        id,
        state: 'creating',
        createdAt: deps.core.now().toString(),
        runtimeHandler: request.runtime_handler,
        config: podConfig,
        hostname,
        namespaces: {
          network: { mode: modes.network, path: ns('netns', podNetwork) },
          ipc: { mode: modes.ipc, path: ns('ipcns', podIpc) },
          uts: { mode: modes.network, path: ns('utsns', podNetwork) },
          pid: { mode: modes.pid, targetId: modes.targetId, infra: null },
          ...(userns ? { user: { mode: 'POD' as const, path: ns('userns', true)!, ...userns } } : {}),
        },
        network: null,
        networkConfig: null,
        ports: [],
        cgroup: null,
        filesDir: path.join(deps.paths.sandboxesDir, id),
        stoppedAt: null,
        notReadyReason: null,
        nodeId: deps.core.nodeId,
      };
      const save = async (next: SandboxRecord) => {
        await deps.core.sandboxes.put(next);
        record = next;
      };
      const step = (what: string) => {
        if (ctx.signal.aborted) {
          throw new CancelledError(
            `RunPodSandbox for ${name} was cancelled before ${what}; nothing was kept`,
            {
              cause: ctx.signal.reason,
            },
          );
        }
      };
      // Kept in memory for the undos; persisted by the next save.
      const remember = (next: SandboxRecord) => {
        record = next;
      };
      try {
        // Read only, and first: an unusable network fails the request before anything exists.
        const conflist = podNetwork ? await deps.network.loadConfig() : null;

        // The cgroup path is decided (and checked) before anything exists.
        const cgroupPath = podCgroupPath(podConfig.linux?.cgroup_parent ?? '', id);
        await save({
          ...record,
          cgroup: { path: cgroupPath, leaf: `${cgroupPath}/sandbox-${id.slice(0, 12)}`, created: [] },
        });

        step('creating the sandbox directory');
        rollback.push('remove the sandbox files', () => removeFiles(deps, record));
        await mkdir(record.filesDir, { recursive: true, mode: 0o755 });

        step('creating the pod cgroup');
        rollback.push('remove the pod cgroup', () => removeCgroups(deps, record));
        // Only the pod cgroup itself is ours to remove later; parents it needed (/pods,
        // kubelet's /kubepods/burstable) are shared with other pods.
        const { path: podCgroup, leaf } = record.cgroup!;
        const created = await deps.core.cgroups.create(leaf);
        const ownPod = created.includes(podCgroup) ? [podCgroup] : [];
        const withCgroups = { ...record, cgroup: { ...record.cgroup!, created: [...ownPod, leaf] } };
        // Recovery always removes the leaf and the default /pods/<id>: only a pod cgroup made
        // under a cgroup_parent needs recording before the next side effect.
        if (ownPod.length > 0 && podCgroup !== defaultPodCgroup(id)) await save(withCgroups);
        else remember(withCgroups);

        step('creating the pod namespaces');
        const pins: { kind: PinnableNamespace; path: string }[] = [];
        if (record.namespaces.network.path) pins.push({ kind: 'net', path: record.namespaces.network.path });
        if (record.namespaces.ipc.path) pins.push({ kind: 'ipc', path: record.namespaces.ipc.path });
        if (record.namespaces.uts.path) pins.push({ kind: 'uts', path: record.namespaces.uts.path });
        const nsPaths: NamespacePaths = {};
        if (record.namespaces.network.path) nsPaths.net = record.namespaces.network.path;
        if (record.namespaces.ipc.path) nsPaths.ipc = record.namespaces.ipc.path;
        if (record.namespaces.uts.path) nsPaths.uts = record.namespaces.uts.path;
        if (record.namespaces.user) nsPaths.user = record.namespaces.user.path;
        const netSysctls: SysctlWrite[] = sysctls.filter((s) => sysctlNamespace(s.key) === 'net');
        rollback.push('unpin the pod namespaces', async () => {
          await unpinNetwork(deps, record);
          await unpinOthers(deps, record);
        });
        if (modes.pid === 'POD') rollback.push('stop the pod infra process', () => stopInfra(deps, record));
        const infra = await deps.os.createPodNamespaces({
          pins,
          settings: {
            loopbackUp: podNetwork,
            hostname: podNetwork ? hostname : null,
            sysctls: sysctls.filter((s) => sysctlNamespace(s.key) !== 'net'),
          },
          infra: modes.pid === 'POD' ? { cgroupLeaf: record.cgroup!.leaf } : null,
          userNamespace: record.namespaces.user ?? null,
        });
        const started = infra
          ? { ...record, namespaces: { ...record.namespaces, pid: { ...record.namespaces.pid, infra } } }
          : record;
        // Recorded before ADD: from here on cleanup must run DEL with this configuration.
        if (conflist !== null) await save({ ...started, networkConfig: conflist });
        else if (infra) await save(started);
        failpoint('sandbox.namespaces-made');

        const cniPorts: CniPortMapping[] = hostPorts.map((p) => ({
          hostPort: p.hostPort,
          containerPort: p.containerPort,
          protocol: p.protocol,
          hostIP: p.hostIp === '0.0.0.0' ? '' : p.hostIp,
        }));
        // The files that do not need the pod IP are written while CNI runs.
        const writeFiles = async () => {
          const nodeResolv = async () => readFile(deps.paths.nodeResolvConf, 'utf8').catch(() => '');
          await writeFile(path.join(record.filesDir, 'resolv.conf'), resolvConf ?? (await nodeResolv()), {
            mode: 0o644,
          });
          await writeFileAtomic(path.join(record.filesDir, 'hostname'), `${hostname}\n`, 0o644);
        };
        const addNetwork = async () => {
          if (conflist === null) return;
          rollback.push('tear down the pod network (CNI DEL)', () => detachNetwork(deps, record));
          const network = await deps.network.setUp({
            conflist,
            sandboxId: id,
            netnsPath: record.namespaces.network.path!,
            podName: meta.name,
            podNamespace: meta.namespace,
            podUid: meta.uid,
            portMappings: cniPorts,
            signal: ctx.signal,
          });
          remember({ ...record, network });
        };
        step(podNetwork ? 'setting up the pod network' : 'writing resolv.conf and hostname');
        // Both settle before anything else happens, so an undo never races a write.
        const settled = await Promise.allSettled([addNetwork(), writeFiles()]);
        for (const outcome of settled) if (outcome.status === 'rejected') throw outcome.reason;
        failpoint('sandbox.network-added');

        if (hostPorts.length > 0) {
          if (!deps.ports) {
            ctx.logger.warn(
              { sandbox: id },
              'no rootlesskit API: host ports are reachable inside the node only',
            );
          } else {
            // Saved before the first port: a port published but not recorded is found by it.
            if (record.network) await save(record);
            rollback.push('unpublish the host ports', () => unpublishPorts(deps, record));
            // A host-network pod listens in the node netns itself: rootlesskit forwards to the
            // node's loopback, as a host port on a normal node reaches a hostNetwork process.
            const childIP = record.network?.ip ?? '127.0.0.1';
            for (const p of hostPorts) {
              step(`publishing host port ${p.hostPort}`);
              const published = await deps.ports.add({
                protocol: p.protocol,
                parentIP: p.hostIp,
                parentPort: p.hostPort,
                childIP,
                childPort: p.containerPort,
              });
              await save({ ...record, ports: [...record.ports, { ...p, id: published.id }] });
            }
          }
        }

        if (netSysctls.length > 0) {
          step('writing the net.* sysctls');
          await deps.os.configureNamespaces(nsPaths, {
            loopbackUp: false,
            hostname: null,
            sysctls: netSysctls,
          });
        }

        // NRI (issue 17): plugins see the pod while its record is still `creating` (not listed,
        // not ready); one may veto it. The sync gate is held until the record says ready.
        step('consulting the NRI plugins');
        rollback.push('tell the NRI plugins the pod is gone', () => deps.core.nri.undoRunPodSandbox(record));
        await deps.core.nri.withSyncBlocked(async () => {
          await deps.core.nri.runPodSandbox(record);

          step('writing hosts and the log directory');
          const hosts = podNetwork
            ? hostsFileFor(record.network?.ip ?? '', hostname)
            : await readFile(deps.paths.nodeHosts, 'utf8').catch(() => hostsFileFor('', hostname));
          await writeFile(path.join(record.filesDir, 'hosts'), hosts, { mode: 0o644 });
          if (userns) await ownPodFiles(record.filesDir, userns);
          // Last: nothing removes it, so a failed request must not have made it.
          if (podConfig.log_directory !== '')
            await mkdir(podConfig.log_directory, { recursive: true, mode: 0o755 });

          step('marking the sandbox ready');
          await save({ ...record, state: 'ready' });
        });
        rollback.commit();
        ctx.logger.info({ sandbox: id, name, ip: record.network?.ip ?? '' }, 'pod sandbox ready');
        // containerd sends both: the sandbox exists, and it runs.
        deps.core.publishSandbox('CONTAINER_CREATED_EVENT', id);
        deps.core.publishSandbox('CONTAINER_STARTED_EVENT', id);
        return { pod_sandbox_id: id };
      } catch (err) {
        const failures = await rollback.unwind();
        if (failures.length === 0) {
          await deps.core.sandboxes.delete(id).catch((deleteError) => {
            ctx.logger.error(
              { err: deleteError, sandbox: id },
              'cannot delete the record of a rolled-back sandbox',
            );
          });
        } else {
          const reason = `RunPodSandbox failed (${describeError(err)}) and its cleanup did not finish: ${describeUndoFailures(failures)}`;
          ctx.logger.error({ sandbox: id, failures: failures.map((f) => f.description) }, reason);
          await deps.core.sandboxes
            .put({ ...record, state: 'notready', notReadyReason: reason })
            .catch(() => undefined);
        }
        deps.core.sandboxNames.releaseByOwner(id);
        if (err instanceof CriError) throw err;
        throw new InternalError(`RunPodSandbox for ${name} failed: ${describeError(err)}`, { cause: err });
      }
    });
  };
}
