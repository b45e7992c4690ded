/**
 * CRI Linux resources → OCI resources, for CreateContainer and UpdateContainerResources alike.
 * Limits of controllers that are not delegated to the node are dropped with a warning, never a
 * failure; hugetlb limits are always dropped. Malformed values are InvalidArgument.
 */
import type { LinuxContainerResources__Output } from '../api/proto.js';
import { InvalidArgumentError } from '../errors.js';
import type { OciResources } from '../os/oci-spec.js';
import type { HostFacts } from './host-facts.js';

function int64(value: string | undefined, what: string): number {
  if (value === undefined || value === '') return 0;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new InvalidArgumentError(`${what} "${value}" is not a non-negative integer`);
  }
  return n;
}

/** The OCI resources this node can apply, and a warning for each one it cannot. */
export function criToOciResources(
  r: LinuxContainerResources__Output,
  facts: HostFacts,
  haveCgroup: boolean,
): { resources: OciResources; warnings: string[] } {
  const warnings: string[] = [];
  const delegated = (c: string) => haveCgroup && facts.controllers.includes(c);
  const drop = (what: string, controller: string) =>
    warnings.push(
      haveCgroup
        ? `${what} dropped: the ${controller} cgroup controller is not delegated to rootless-cri on this node (see rootless-cri doctor)`
        : `${what} dropped: the container has no cgroup on this node (see rootless-cri doctor)`,
    );
  const resources: OciResources = {};
  const shares = int64(r.cpu_shares, 'cpu_shares');
  const quota = Number(r.cpu_quota || '0');
  if (!Number.isSafeInteger(quota))
    throw new InvalidArgumentError(`cpu_quota "${r.cpu_quota}" is not an integer`);
  const period = int64(r.cpu_period, 'cpu_period');
  if (shares > 0 || quota !== 0 || period > 0) {
    if (delegated('cpu')) {
      resources.cpu = {};
      if (shares > 0) resources.cpu.shares = shares;
      if (quota !== 0) resources.cpu.quota = quota;
      if (period > 0) resources.cpu.period = period;
    } else drop('cpu shares/quota/period', 'cpu');
  }
  if (r.cpuset_cpus !== '' || r.cpuset_mems !== '') {
    if (!/^[0-9,-]*$/.test(r.cpuset_cpus) || !/^[0-9,-]*$/.test(r.cpuset_mems)) {
      throw new InvalidArgumentError('cpuset_cpus/cpuset_mems must be lists like "0-3,5"');
    }
    if (delegated('cpuset')) {
      resources.cpu = { ...resources.cpu };
      if (r.cpuset_cpus !== '') resources.cpu.cpus = r.cpuset_cpus;
      if (r.cpuset_mems !== '') resources.cpu.mems = r.cpuset_mems;
    } else drop('cpuset', 'cpuset');
  }
  const memory = int64(r.memory_limit_in_bytes, 'memory_limit_in_bytes');
  const swap = int64(r.memory_swap_limit_in_bytes, 'memory_swap_limit_in_bytes');
  if (memory > 0 || swap > 0) {
    if (delegated('memory')) {
      resources.memory = {};
      if (memory > 0) resources.memory.limit = memory;
      if (swap > 0) resources.memory.swap = swap;
    } else drop('memory limit', 'memory');
  }
  if (r.hugepage_limits.some((h) => int64(h.limit, 'hugepage limit') > 0)) {
    warnings.push('hugepage limits dropped: rootless-cri does not apply hugetlb limits');
  }
  const unified: Record<string, string> = {};
  for (const [key, value] of Object.entries(r.unified)) {
    if (!/^[a-z0-9_]+\.[A-Za-z0-9_.]+$/.test(key) || key.includes('..')) {
      throw new InvalidArgumentError(`unified cgroup key "${key}" is not a cgroup v2 file name`);
    }
    if (/[\0\n]/.test(value))
      throw new InvalidArgumentError(`unified cgroup value for ${key} contains NUL or newline`);
    const controller = key.slice(0, key.indexOf('.'));
    if (controller === 'cgroup' ? haveCgroup : delegated(controller)) unified[key] = value;
    else drop(`unified ${key}`, controller);
  }
  if (Object.keys(unified).length > 0) resources.unified = unified;
  return { resources, warnings };
}
