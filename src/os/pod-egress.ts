/**
 * Pods' egress through the node's uplink: one node-wide masquerade rule per pod subnet, instead
 * of the bridge plugin's per-pod NAT chains (`ipMasq: true`).
 *
 * Why: with `ipMasq` the bridge plugin makes a `CNI-<hash>` chain for every pod at ADD (a chain,
 * two rules in it, a jump from POSTROUTING: several iptables runs, ~30 ms of a pod's start on the
 * build machines) and takes it apart at DEL (~75 ms of StopPodSandbox). Every pod of a subnet
 * gets the same treatment, so one rule for the subnet does the same work once.
 *
 * What: `iptables -t nat -A POSTROUTING -s <subnet> -o <uplink> -j MASQUERADE` (with a comment),
 * for each IPv4 subnet that a `bridge` or `ptp` plugin of the CNI config hands out through
 * `host-local` while leaving `ipMasq` off. A plugin with `ipMasq: true` masquerades its pods
 * itself, as before, and gets no rule here. Only traffic leaving through the uplink (slirp4netns'
 * tap0, which only answers its own guest address) is rewritten: pod to pod, pod to the node and,
 * in a cluster, pod to a pod of another node through the overlay keep the pod's address (the
 * bridge's rule rewrote everything not in the subnet).
 *
 * When: the CNI executor (cni-network.ts) calls `ensure` whenever it reads a new version of the
 * config: at the daemon's start, after UpdateRuntimeConfig wrote a new pod CIDR, after an edit.
 * A rule is checked (`-C`) before it is appended, so a restarted daemon finds the rule its
 * predecessor made and adds none; a new node (new network namespace) starts empty and gets it
 * again. Rules are only added while the node lives: a subnet the config no longer names may
 * still have running pods (a changed pod CIDR keeps the pods it had), and a rule for a subnet
 * nobody uses matches nothing.
 */
import { readFile } from 'node:fs/promises';
import { FailedPreconditionError } from '../errors.js';
import type { Logger } from '../log.js';
import type { CniConflist } from './cni-config.js';
import { outputTail, type RunOptions, run } from './process-runner.js';
import { SAFE_PATH } from './programs.js';
import { defaultGateway } from './vxlan-overlay.js';

export const POD_EGRESS_COMMENT = 'rootless-cri: pod egress through the uplink';

/** Plugins whose `ipMasq` option this rule stands in for. */
const MASQUERADING_PLUGINS = new Set(['bridge', 'ptp']);
const IPV4_CIDR = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/;

function isIpv4Cidr(value: unknown): value is string {
  if (typeof value !== 'string') return false;
  const m = IPV4_CIDR.exec(value);
  if (!m) return false;
  return m.slice(1, 5).every((b) => Number(b) <= 255) && Number(m[5]) <= 32;
}

/**
 * The IPv4 subnets of `conflist` that the node masquerades: those a bridge or ptp plugin hands
 * out with host-local IPAM (`ranges`, or the older `subnet`) while its `ipMasq` is not true.
 * Pure, for the unit tests.
 */
export function podEgressSubnets(conflist: Pick<CniConflist, 'plugins'>): string[] {
  const subnets = new Set<string>();
  for (const plugin of conflist.plugins) {
    if (!MASQUERADING_PLUGINS.has(plugin.type) || plugin.ipMasq === true) continue;
    const ipam = plugin.ipam as { type?: unknown; ranges?: unknown; subnet?: unknown } | undefined;
    if (ipam?.type !== 'host-local') continue;
    const candidates: unknown[] = [ipam.subnet];
    if (Array.isArray(ipam.ranges)) {
      for (const set of ipam.ranges) {
        if (!Array.isArray(set)) continue;
        for (const range of set) candidates.push((range as { subnet?: unknown } | null)?.subnet);
      }
    }
    for (const c of candidates) if (isIpv4Cidr(c)) subnets.add(c);
  }
  return [...subnets];
}

/** The rule for one subnet, as iptables' arguments after `-t nat -A|-C`. Pure. */
export function podEgressRule(subnet: string, uplink: string): string[] {
  return [
    ...['POSTROUTING', '-s', subnet, '-o', uplink],
    ...['-m', 'comment', '--comment', POD_EGRESS_COMMENT, '-j', 'MASQUERADE'],
  ];
}

/** What the CNI executor needs of it (STYLE.md: an interface named by role). */
export interface PodEgress {
  /** Makes sure every pod subnet of `conflist` leaves the node masqueraded. Idempotent. */
  ensure(conflist: Pick<CniConflist, 'plugins' | 'file'>): Promise<void>;
}

export interface IptablesPodEgressOptions {
  /** The uplink device; default: the default route's device when `ensure` runs. */
  uplink?: string;
  logger: Logger;
}

const RUN: RunOptions = { env: { PATH: SAFE_PATH }, timeoutMs: 30_000 };

/** The real PodEgress: iptables in the daemon's (the node's) network namespace. */
export class IptablesPodEgress implements PodEgress {
  /** One promise per rule: concurrent callers wait for the same check-then-append. */
  private readonly ensured = new Map<string, Promise<void>>();

  constructor(private readonly options: IptablesPodEgressOptions) {}

  async ensure(conflist: Pick<CniConflist, 'plugins' | 'file'>): Promise<void> {
    const subnets = podEgressSubnets(conflist);
    if (subnets.length === 0) return;
    const uplink = this.options.uplink ?? (await this.defaultRouteDevice());
    if (uplink === undefined) {
      this.options.logger.warn(
        { subnets, file: conflist.file },
        'no uplink (default route) in this network namespace: pod subnets are not masqueraded',
      );
      return;
    }
    await Promise.all(subnets.map((subnet) => this.ensureRule(subnet, uplink)));
  }

  private ensureRule(subnet: string, uplink: string): Promise<void> {
    const key = `${subnet} ${uplink}`;
    let pending = this.ensured.get(key);
    if (pending === undefined) {
      pending = this.checkThenAppend(subnet, uplink);
      this.ensured.set(key, pending);
      // A failure is reported to this caller and tried again by the next one.
      pending.catch(() => this.ensured.delete(key));
    }
    return pending;
  }

  private async checkThenAppend(subnet: string, uplink: string): Promise<void> {
    const rule = podEgressRule(subnet, uplink);
    const present = await run('iptables', ['-w', '-t', 'nat', '-C', ...rule], RUN);
    if (present.exitCode === 0) return;
    const added = await run('iptables', ['-w', '-t', 'nat', '-A', ...rule], RUN);
    if (added.exitCode !== 0) {
      throw new FailedPreconditionError(
        `cannot add the node's masquerade rule for the pod subnet ${subnet} (iptables -t nat -A ${rule.join(' ')}): ${outputTail(added)}; pods would have no egress. Is iptables installed (apt-get install iptables)? Or set "ipMasq": true on the bridge plugin of the CNI config`,
      );
    }
    this.options.logger.info({ subnet, uplink }, 'pod subnet masqueraded through the uplink');
  }

  private async defaultRouteDevice(): Promise<string | undefined> {
    const table = await readFile('/proc/net/route', 'utf8').catch(() => '');
    return defaultGateway(table)?.device;
  }
}
