/**
 * Version, Status, RuntimeConfig and UpdateRuntimeConfig: what kubelet asks the runtime
 * about itself. The facts come from narrow interfaces the composition root (src/daemon.ts)
 * builds, so these handlers are tested with fakes.
 */
import { isIP } from 'node:net';
import type { RuntimeHandlers } from '../api/handlers.js';
import { describeError, InvalidArgumentError } from '../errors.js';
import { packageVersion } from '../version.js';

export const RUNTIME_NAME = 'rootless-cri';
/** The version of the kubelet↔runtime API handshake; every CRI runtime answers "0.1.0". */
export const KUBELET_API_VERSION = '0.1.0';
export const RUNTIME_API_VERSION = 'v1';

export interface HealthCondition {
  ready: boolean;
  /** CamelCase reason, only meaningful when not ready (e.g. "NetworkPluginNotReady"). */
  reason?: string;
  /** What is wrong and what to do, only meaningful when not ready. */
  message?: string;
}

export interface RuntimeHealth {
  check(): Promise<{ runtime: HealthCondition; network: HealthCondition }>;
}

/** Where UpdateRuntimeConfig keeps the pod CIDR kubelet hands out (comma-separated when dual-stack). */
export interface PodCidrSetting {
  get(): string;
  set(cidr: string): void | Promise<void>;
}

export interface RuntimeInfoDependencies {
  health: RuntimeHealth;
  /** Values for `crictl info`; each one is sent as a JSON string. */
  statusInfo: () => Promise<Record<string, unknown>>;
  podCidr: PodCidrSetting;
  /** Defaults to the version in package.json. */
  runtimeVersion?: string;
  /** What the default handler can do on this node (probed at start); default: neither. */
  handlerFeatures?: { recursiveReadOnlyMounts: boolean; userNamespaces: boolean };
}

export type RuntimeInfoHandlers = Pick<
  RuntimeHandlers,
  'Version' | 'Status' | 'RuntimeConfig' | 'UpdateRuntimeConfig'
>;

/**
 * Checks a pod CIDR list as kubelet sends it ("10.88.0.0/16" or, dual-stack,
 * "10.88.0.0/16,fd00:10:88::/64") and returns it without stray spaces.
 */
export function parsePodCidrs(value: string): string {
  const cidrs = value
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part !== '');
  for (const cidr of cidrs) {
    const slash = cidr.indexOf('/');
    const address = slash < 0 ? cidr : cidr.slice(0, slash);
    const prefix = slash < 0 ? '' : cidr.slice(slash + 1);
    const family = isIP(address);
    const maxPrefix = family === 4 ? 32 : 128;
    if (family === 0 || !/^\d{1,3}$/.test(prefix) || Number(prefix) > maxPrefix) {
      throw new InvalidArgumentError(
        `pod CIDR "${cidr}" is not an IPv4 or IPv6 CIDR like 10.88.0.0/16 or fd00::/64; ` +
          "check the node's spec.podCIDRs",
      );
    }
  }
  return cidrs.join(',');
}

function condition(type: string, health: HealthCondition, defaultReason: string) {
  if (health.ready) return { type, status: true, reason: '', message: '' };
  return {
    type,
    status: false,
    reason: health.reason || defaultReason,
    message: health.message || `${type} is false`,
  };
}

/** JSON text for one `info` value; never throws (crictl info parses every value that looks like an object). */
function toJsonText(value: unknown): string {
  try {
    return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) ?? 'null';
  } catch (err) {
    return JSON.stringify({ error: `this value cannot be shown as JSON: ${describeError(err)}` });
  }
}

export function createRuntimeInfoHandlers(deps: RuntimeInfoDependencies): RuntimeInfoHandlers {
  return {
    Version: async () => ({
      version: KUBELET_API_VERSION,
      runtime_name: RUNTIME_NAME,
      runtime_version: deps.runtimeVersion ?? packageVersion(),
      runtime_api_version: RUNTIME_API_VERSION,
    }),

    Status: async (request, ctx) => {
      let health: { runtime: HealthCondition; network: HealthCondition };
      try {
        health = await deps.health.check();
      } catch (err) {
        // Status must still answer: kubelet reads "not ready" as a reason to wait, an error as a broken runtime.
        ctx.logger.warn({ err }, 'the health check failed');
        const failed = { ready: false, reason: 'HealthCheckFailed', message: describeError(err) };
        health = { runtime: failed, network: failed };
      }
      const info: Record<string, string> = {};
      if (request.verbose) {
        let values: Record<string, unknown>;
        try {
          values = { podCIDR: deps.podCidr.get(), ...(await deps.statusInfo()) };
        } catch (err) {
          ctx.logger.warn({ err }, 'collecting status info failed');
          values = { error: `collecting status info failed: ${describeError(err)}` };
        }
        for (const [key, value] of Object.entries(values)) info[key] = toJsonText(value);
      }
      return {
        status: {
          conditions: [
            condition('RuntimeReady', health.runtime, 'RuntimeNotReady'),
            condition('NetworkReady', health.network, 'NetworkNotReady'),
          ],
        },
        // One handler, the default (""), with what was probed at start (os/runtime-features.ts).
        runtime_handlers: [
          {
            name: '',
            features: {
              recursive_read_only_mounts: deps.handlerFeatures?.recursiveReadOnlyMounts ?? false,
              user_namespaces: deps.handlerFeatures?.userNamespaces ?? false,
            },
          },
        ],
        // SupplementalGroupsPolicy Merge and Strict are applied by the container spec builder.
        features: { supplemental_groups_policy: true, user_namespaces_host_network: false },
        info,
      };
    },

    RuntimeConfig: async () => ({ linux: { cgroup_driver: 'CGROUPFS' } }),

    UpdateRuntimeConfig: async (request, ctx) => {
      const requested = request.runtime_config?.network_config?.pod_cidr ?? '';
      // An empty CIDR means "nothing to change", as the CRI comment on NetworkConfig says.
      if (requested.trim() === '') return {};
      const cidrs = parsePodCidrs(requested);
      if (cidrs !== deps.podCidr.get()) {
        await deps.podCidr.set(cidrs);
        ctx.logger.info({ podCIDR: cidrs }, 'pod CIDR updated');
      }
      return {};
    },
  };
}
