import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { TestDaemon } from './daemon.js';

/**
 * What a pod can leave in the node once it is removed: IP leases, namespace pins, host ports
 * (TCP ones forwarded by the daemon, in its table <run_dir>/host-ports.json; UDP ones, or all
 * with `host_ports = "port-driver"`, published through rootlesskit), iptables rules of the CNI plugins (portmap DNAT rules, and bridge masquerade chains with a
 * conflist of ipMasq true: each names its pod's container id in a comment). (Processes, mounts,
 * cgroups and files are the harness's leak check at stop.)
 */
export async function nodeLeftovers(daemon: TestDaemon): Promise<string[]> {
  const left: string[] = [];
  const leases = path.join(daemon.runDir, 'cni', 'networks');
  for (const net of await readdir(leases).catch(() => [] as string[])) {
    for (const f of await readdir(path.join(leases, net)).catch(() => [] as string[])) {
      if (/^\d+\.\d+\.\d+\.\d+$/.test(f)) left.push(`lease ${net}/${f}`);
    }
  }
  for (const kind of ['netns', 'ipcns', 'utsns']) {
    for (const f of await readdir(path.join(daemon.runDir, kind)).catch(() => [] as string[]))
      left.push(`pin ${kind}/${f}`);
  }
  const ports = await daemon.asUser([
    'rootlessctl',
    '--socket',
    path.join(daemon.runDir, 'node', 'api.sock'),
    'list-ports',
  ]);
  for (const line of ports.stdout
    .split('\n')
    .slice(1)
    .filter((l) => l.trim() !== '')) {
    // The daemon's own listeners (streaming, metrics) are published on 127.0.0.1 too; pods' ports are others.
    if (!/127\.0\.0\.1:\d+\s+127\.0\.0\.1:\d+/.test(line) || /10\.88\./.test(line))
      left.push(`port ${line.trim()}`);
  }
  const forwarded = await readFile(path.join(daemon.runDir, 'host-ports.json'), 'utf8').then(
    (text) =>
      (JSON.parse(text) as { ports?: { spec: { parentIP: string; parentPort: number } }[] }).ports ?? [],
    () => [],
  );
  for (const { spec } of forwarded) left.push(`port forwarded ${spec.parentIP}:${spec.parentPort}`);
  const rules = await daemon.enter(['iptables-save']);
  for (const line of rules.stdout.split('\n')) {
    // CNI names every per-pod rule after the pod: `-m comment --comment "name: ... id: <id>"`
    // (bridge with ipMasq), `"dnat name: ... id: <id>"` (portmap); their per-pod chains are
    // CNI-<hash> and CNI-DN-<hash>. The node-wide egress rule (src/os/pod-egress.ts) names no pod.
    if (
      /^-A .*--comment "?(?:dnat )?name: .*id: (?:\\?")?[0-9a-f]{64}/.test(line) ||
      /^:CNI-(?:DN-)?[0-9a-f]{17,24} /.test(line)
    )
      left.push(`iptables ${line.slice(0, 160)}`);
  }
  return left;
}
