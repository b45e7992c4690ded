/**
 * What the daemon learns about its node at start (NodeFacts: shown by verbose Status and
 * logged), and RuntimeReady / NetworkReady from real checks, re-evaluated on every Status call:
 * the programs found at start still there, the daemon inside its user namespace, the CNI
 * configuration usable.
 */
import { access } from 'node:fs/promises';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { enableSubtreeControllers } from '../os/cgroup-delegation.js';
import type { CgroupManager } from '../os/cgroup-manager.js';
import { checkCniReady } from '../os/cni-config.js';
import { findProgram, type Programs } from '../os/programs.js';
import type { HealthCondition, RuntimeHealth } from './runtime-info.js';

/** What the daemon learned about its host at start. */
export interface NodeFacts {
  inUserNamespace: boolean;
  rootlesskitStateDir: string | null;
  cgroupV2: boolean;
  cgroupControllers: string[];
  missingControllers: string[];
  warnings: string[];
}

const CGROUP_ROOT = '/sys/fs/cgroup';
/** slirp4netns's device in the node's network namespace. */
const UPLINK_DEVICE = '/sys/class/net/tap0';

function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

/** Whether the node's uplink device is there (slirp4netns holds it; it goes when slirp4netns dies). */
export function uplinkPresent(): Promise<boolean> {
  return exists(UPLINK_DEVICE);
}

export async function probeNodeFacts(
  cgroups: Pick<CgroupManager, 'available' | 'controllers'>,
  inUserNamespace: boolean,
  logger: Logger,
): Promise<NodeFacts> {
  const warnings: string[] = [];
  if (!inUserNamespace) {
    warnings.push('the daemon is not in a user namespace; run it with `rootless-cri serve` from the host');
  }
  const controllers = [...cgroups.controllers];
  if (!cgroups.available) {
    warnings.push(`${CGROUP_ROOT} is not a cgroup v2 hierarchy inside the node: pods run without cgroups`);
  }
  const missing = ['cpu', 'memory', 'pids', 'io'].filter((c) => !controllers.includes(c));
  if (cgroups.available && missing.length > 0) {
    warnings.push(
      `cgroup v2 controllers not delegated: ${missing.join(', ')}; their limits are dropped (rootless-cri doctor explains how to delegate them)`,
    );
  }
  for (const w of warnings) logger.warn(w);
  return {
    inUserNamespace,
    rootlesskitStateDir: process.env.ROOTLESSKIT_STATE_DIR ?? null,
    cgroupV2: cgroups.available,
    cgroupControllers: controllers,
    missingControllers: missing,
    warnings,
  };
}

/**
 * Lets the node's pods use every controller the node's cgroup has: our own processes live in
 * leaves (daemon/, rootlesskit/), so the root may delegate. Returns the ones that failed.
 */
export async function delegateControllersToPods(): Promise<string[]> {
  const { failed } = await enableSubtreeControllers(CGROUP_ROOT);
  return failed;
}

export class NodeHealth implements RuntimeHealth {
  constructor(
    private readonly config: Pick<Config, 'network'>,
    private readonly facts: NodeFacts,
    private readonly programs: Programs,
  ) {}

  async check(): Promise<{ runtime: HealthCondition; network: HealthCondition }> {
    const missing: string[] = [];
    for (const role of ['crun', 'conmon'] as const) {
      // Found at start; still there? (a package upgrade or removal under a running daemon)
      if (findProgram(this.programs.path(role), []) === null) missing.push(this.programs.path(role));
    }
    let runtime: HealthCondition = { ready: true };
    if (missing.length > 0) {
      runtime = {
        ready: false,
        reason: 'RuntimeBinaryMissing',
        message: `${missing.join(', ')} not found; install them (sudo apt-get install crun conmon) or set runtime.crun / runtime.conmon`,
      };
    } else if (!this.facts.inUserNamespace) {
      runtime = {
        ready: false,
        reason: 'NotInUserNamespace',
        message: 'the daemon is not inside the rootless node; start it with `rootless-cri serve`',
      };
    }
    const cni = await checkCniReady(this.config.network.cniConfDir, this.config.network.cniBinDirs);
    let network: HealthCondition = cni.ready
      ? { ready: true }
      : { ready: false, reason: cni.reason, message: cni.message };
    if (!cni.ready && cni.reason === 'NoCniConfig' && this.config.network.cniConfTemplate) {
      network = {
        ready: false,
        reason: 'NoPodCidr',
        message: `waiting for the node's pod CIDR: kubelet hands it over (UpdateRuntimeConfig) once the controller-manager assigned one, and the daemon then writes ${this.config.network.cniConfTemplate} into ${this.config.network.cniConfDir}`,
      };
    }
    // In a rootlesskit node the uplink is slirp4netns's tap0: gone when slirp4netns died.
    if (network.ready && this.facts.rootlesskitStateDir && !(await uplinkPresent())) {
      network = {
        ready: false,
        reason: 'UplinkDown',
        message:
          "the node's uplink (slirp4netns, tap0) is gone: pods have no egress; the supervisor starts a new one within seconds (rootless-cri serve logs it)",
      };
    }
    return { runtime, network };
  }
}
