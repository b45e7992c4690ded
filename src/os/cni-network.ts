/**
 * Pod networking through real CNI plugins, run by the daemon inside the node (where the
 * bridge, veths and iptables rules live). A small CNI executor, following the CNI spec:
 *
 * - ADD runs the conflist's plugins in order; each gets its plugin config with the list's
 *   `name` and `cniVersion`, `prevResult` = the previous plugin's result, and
 *   `runtimeConfig.portMappings` when it declares the portMappings capability (portmap: the
 *   host port then also works from inside the node, e.g. critest GETting 127.0.0.1:12000).
 * - portmap is skipped for a pod without port mappings, where it does nothing (idleWithout).
 * - DEL runs them in reverse with the stored ADD result as prevResult; each plugin's DEL is
 *   idempotent by spec, so DEL after a half-done ADD or twice is fine. All plugins are tried;
 *   the first failure is reported after the rest ran.
 * - host-local's `ipam.dataDir` is set to network.ipam_data_dir from the daemon config, so IP
 *   leases live under the run dir rather than /var/lib/cni.
 * - env: CNI_COMMAND, CNI_CONTAINERID (sandbox id), CNI_NETNS (the pinned file), CNI_IFNAME=eth0,
 *   CNI_PATH (the bin dirs), CNI_ARGS with the K8S_POD_* keys kubelet-era plugins read, and a
 *   PATH with /usr/sbin for iptables. Nothing else of the daemon's environment leaks in.
 * - `loopback` is not needed in the conflist: the sandbox brings `lo` up itself.
 * - The parsed conflist is kept while its file is the directory's first and its inode, size,
 *   mtime and ctime are unchanged; any change is read and validated again. The plugin
 *   executables are looked up on every load, so a removed plugin is noticed at once.
 * - Each new version of the config is handed to `egress` (pod-egress.ts) before it is used:
 *   the node masquerades the pod subnets once, instead of the bridge plugin per pod.
 */
import { stat } from 'node:fs/promises';
import { FailedPreconditionError, InternalError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  type CniConflist,
  findCniPlugin,
  listCniConfigFiles,
  loadCniConflist,
  parseCniConfig,
} from './cni-config.js';
import type { PodEgress } from './pod-egress.js';
import { exitStatus, run } from './process-runner.js';
import { SAFE_PATH } from './programs.js';

export interface SandboxNetwork {
  ip: string;
  additionalIps: string[];
  gateway: string;
  /** The final CNI result of ADD (prevResult for DEL). */
  result: Record<string, unknown>;
}

export interface CniPortMapping {
  hostPort: number;
  containerPort: number;
  protocol: 'tcp' | 'udp';
  hostIP: string;
}

export interface NetworkSetUp {
  /** The network configuration from loadConfig(), recorded before ADD so DEL uses the same. */
  conflist: Record<string, unknown>;
  sandboxId: string;
  netnsPath: string;
  podName: string;
  podNamespace: string;
  podUid: string;
  portMappings: CniPortMapping[];
  /** The RunPodSandbox call's: aborting kills the running plugin (the caller then tears down). */
  signal?: AbortSignal;
}

export interface NetworkTearDown {
  conflist: Record<string, unknown>;
  sandboxId: string;
  netnsPath: string;
  /** What ADD returned; null when ADD never finished. */
  network: SandboxNetwork | null;
  portMappings: CniPortMapping[];
}

/** The pod network, as the sandbox lifecycle sees it (STYLE.md: NetworkDriver). */
export interface NetworkDriver {
  /** The network configuration to use now; FailedPrecondition when it is unusable. */
  loadConfig(): Promise<Record<string, unknown>>;
  setUp(request: NetworkSetUp): Promise<SandboxNetwork>;
  tearDown(request: NetworkTearDown): Promise<void>;
}

export interface CniNetworkOptions {
  confDir: string;
  binDirs: string[];
  ipamDataDir: string;
  logger: Logger;
  timeoutMs?: number;
  /** The node-wide egress of the config's pod subnets; none: the conflist's plugins do it all. */
  egress?: PodEgress;
}

const IFNAME = 'eth0';

export class CniNetwork implements NetworkDriver {
  private readonly timeoutMs: number;
  private cached: { file: string; stamp: string; conflist: CniConflist } | undefined;
  /** setUp gets back the object loadConfig returned: no need to parse it again. */
  private readonly parsedByRaw = new WeakMap<Record<string, unknown>, CniConflist>();

  constructor(private readonly options: CniNetworkOptions) {
    this.timeoutMs = options.timeoutMs ?? 60_000;
  }

  async loadConfig(): Promise<Record<string, unknown>> {
    const conflist = await this.loadConflist();
    await this.resolvePlugins(conflist);
    this.parsedByRaw.set(conflist.raw, conflist);
    return conflist.raw;
  }

  async setUp(request: NetworkSetUp): Promise<SandboxNetwork> {
    const conflist =
      this.parsedByRaw.get(request.conflist) ??
      parseCniConfig(JSON.stringify(request.conflist), 'the recorded CNI config');
    const plugins = await this.resolvePlugins(conflist);
    let prevResult: Record<string, unknown> | undefined;
    for (const { config, binary } of plugins) {
      if (idleWithout(config, request.portMappings)) continue;
      const stdin = this.pluginInput(conflist, config, prevResult, request.portMappings);
      prevResult = await this.invoke('ADD', binary, stdin, request);
      if (prevResult.cniVersion === undefined) prevResult.cniVersion = conflist.cniVersion;
    }
    const result = prevResult ?? {};
    return { ...addressesOf(result, conflist.name), result };
  }

  async tearDown(request: NetworkTearDown): Promise<void> {
    const conflist =
      this.parsedByRaw.get(request.conflist) ??
      parseCniConfig(JSON.stringify(request.conflist), 'the recorded CNI config');
    const plugins = await this.resolvePlugins(conflist);
    let firstError: unknown;
    for (const { config, binary } of [...plugins].reverse()) {
      if (idleWithout(config, request.portMappings)) continue;
      const stdin = this.pluginInput(conflist, config, request.network?.result, request.portMappings);
      try {
        await this.invoke('DEL', binary, stdin, {
          sandboxId: request.sandboxId,
          netnsPath: request.netnsPath,
        });
      } catch (err) {
        this.options.logger.warn({ err, plugin: config.type, sandbox: request.sandboxId }, 'CNI DEL failed');
        firstError ??= err;
      }
    }
    if (firstError !== undefined) throw firstError;
  }

  private async loadConflist(): Promise<CniConflist> {
    const confDir = this.options.confDir;
    // The first file by name, as loadCniConflist picks it; errors are left to loadCniConflist.
    const first = (await listCniConfigFiles(confDir).catch(() => []))[0];
    const stamp = first === undefined ? undefined : await fileStamp(first);
    if (
      first !== undefined &&
      stamp !== undefined &&
      this.cached?.file === first &&
      this.cached.stamp === stamp
    ) {
      return this.cached.conflist;
    }
    try {
      const conflist = await loadCniConflist(confDir);
      await this.options.egress?.ensure(conflist);
      // Stamped before reading: a change during the read shows as a new stamp next time.
      if (stamp !== undefined && conflist.file === first) this.cached = { file: first, stamp, conflist };
      else this.cached = undefined;
      return conflist;
    } catch (err) {
      this.cached = undefined;
      throw new FailedPreconditionError(`the pod network is not ready: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  private async resolvePlugins(
    conflist: CniConflist,
  ): Promise<{ config: CniConflist['plugins'][number]; binary: string }[]> {
    const resolved = [];
    for (const config of conflist.plugins) {
      const binary = await findCniPlugin(config.type, this.options.binDirs);
      if (!binary) {
        throw new FailedPreconditionError(
          `the pod network is not ready: CNI plugin "${config.type}" named by ${conflist.file} is not an executable in ${this.options.binDirs.join(', ')}; install containernetworking-plugins or set network.cni_bin_dirs`,
        );
      }
      resolved.push({ config, binary });
    }
    return resolved;
  }

  private pluginInput(
    conflist: CniConflist,
    plugin: CniConflist['plugins'][number],
    prevResult: Record<string, unknown> | undefined,
    portMappings: CniPortMapping[],
  ): string {
    const input: Record<string, unknown> = {
      ...plugin,
      name: conflist.name,
      cniVersion: conflist.cniVersion,
    };
    const ipam = plugin.ipam as Record<string, unknown> | undefined;
    if (ipam && typeof ipam === 'object' && ipam.type === 'host-local') {
      input.ipam = { ...ipam, dataDir: this.options.ipamDataDir };
    }
    const capabilities = plugin.capabilities as Record<string, unknown> | undefined;
    if (capabilities?.portMappings === true) input.runtimeConfig = { portMappings };
    if (prevResult !== undefined) input.prevResult = prevResult;
    return JSON.stringify(input);
  }

  private async invoke(
    command: 'ADD' | 'DEL',
    binary: string,
    stdin: string,
    request: {
      sandboxId: string;
      netnsPath: string;
      podName?: string;
      podNamespace?: string;
      podUid?: string;
      signal?: AbortSignal;
    },
  ): Promise<Record<string, unknown>> {
    const cniArgs = [
      'IgnoreUnknown=1',
      ...(
        [
          ['K8S_POD_NAMESPACE', request.podNamespace],
          ['K8S_POD_NAME', request.podName],
          ['K8S_POD_INFRA_CONTAINER_ID', request.sandboxId],
          ['K8S_POD_UID', request.podUid],
        ] as const
      )
        // CNI_ARGS is "K=V;K=V": a value with ";" or "=" would forge another key, so it is left out.
        .filter(([, value]) => value !== undefined && value !== '' && !/[;=\s]/.test(value))
        .map(([key, value]) => `${key}=${value}`),
    ].join(';');
    const r = await run(binary, [], {
      input: stdin,
      timeoutMs: this.timeoutMs,
      ...(request.signal ? { signal: request.signal } : {}),
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: request.sandboxId,
        CNI_NETNS: request.netnsPath,
        CNI_IFNAME: IFNAME,
        CNI_PATH: this.options.binDirs.join(':'),
        CNI_ARGS: cniArgs,
        PATH: SAFE_PATH,
      },
    });
    const stdout = r.stdout.toString('utf8');
    if (r.exitCode !== 0) {
      const why = cniErrorText(stdout, r.stderr.toString('utf8'), exitStatus(r));
      throw new InternalError(
        `CNI plugin ${binary} ${command} failed for sandbox ${request.sandboxId}: ${why}`,
      );
    }
    if (command === 'DEL' || stdout.trim() === '') return {};
    try {
      return JSON.parse(stdout) as Record<string, unknown>;
    } catch (err) {
      throw new InternalError(
        `CNI plugin ${binary} ADD printed a result that is not JSON: ${stdout.slice(0, 200)}`,
        {
          cause: err,
        },
      );
    }
  }
}

/**
 * The portmap plugin given no port mappings passes prevResult through on ADD and returns at
 * once on DEL (its cmdAdd/cmdDel start with that check): for a pod without host ports running it
 * only costs a process (~6 ms each way, measured), so it is not run. DEL gets the same mappings
 * ADD got (from the record), so a pod that had some is always cleaned by it.
 */
function idleWithout(plugin: CniConflist['plugins'][number], portMappings: CniPortMapping[]): boolean {
  return plugin.type === 'portmap' && portMappings.length === 0;
}

/** Identifies one version of a file: any rewrite, rename over it or touch changes it. */
async function fileStamp(file: string): Promise<string | undefined> {
  try {
    const s = await stat(file, { bigint: true });
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
  } catch {
    return undefined;
  }
}

function cniErrorText(stdout: string, stderr: string, exitCode: number): string {
  try {
    const parsed = JSON.parse(stdout) as { code?: number; msg?: string; details?: string };
    if (parsed.msg)
      return `${parsed.msg}${parsed.details ? ` (${parsed.details})` : ''} [CNI error ${parsed.code}]`;
  } catch {
    // not a CNI error object
  }
  return (stderr.trim() || stdout.trim() || `exit code ${exitCode}`).slice(0, 1000);
}

/** The pod's addresses from a CNI result (spec 0.3.0 and later: `ips`). */
export function addressesOf(
  result: Record<string, unknown>,
  source: string,
): { ip: string; additionalIps: string[]; gateway: string } {
  const ips = Array.isArray(result.ips) ? (result.ips as { address?: unknown; gateway?: unknown }[]) : [];
  const addresses = ips
    .map((entry) => ({
      ip: typeof entry.address === 'string' ? entry.address.split('/')[0]! : '',
      gateway: typeof entry.gateway === 'string' ? entry.gateway : '',
    }))
    .filter((a) => a.ip !== '');
  // IPv4 first, as kubelet expects the primary address of a single-stack v4 cluster.
  addresses.sort((a, b) => Number(a.ip.includes(':')) - Number(b.ip.includes(':')));
  const primary = addresses[0];
  if (!primary) throw new InternalError(`the CNI network ${source} gave the pod no IP address`);
  return { ip: primary.ip, additionalIps: addresses.slice(1).map((a) => a.ip), gateway: primary.gateway };
}
