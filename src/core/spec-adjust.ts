/**
 * The adjust stage of container creation: between building the OCI spec (the container
 * layer's ordered SpecOpt steps) and creating the container, each adjuster in turn may change
 * the spec: an NRI adapter (plugins adjusting env, mounts, annotations, resources, devices),
 * a CDI device injector, OCI hooks. The builder never knows about them; the composition root
 * decides which run, in order.
 *
 * An adjuster that fails fails CreateContainer (its error kind is kept), and the creation
 * rolls back as for any other step.
 */
import type { ContainerConfig__Output } from '../api/proto.js';
import type { OciSpec } from '../os/oci-spec.js';
import type { SandboxInfo } from './sandbox-info.js';

export interface SpecAdjustContext {
  containerId: string;
  config: ContainerConfig__Output;
  sandbox: SandboxInfo;
  signal?: AbortSignal;
}

export interface SpecAdjuster {
  /** Names the adjuster in warnings and errors. */
  readonly name: string;
  adjust(spec: OciSpec, context: SpecAdjustContext): Promise<{ spec: OciSpec; warnings: string[] }>;
}

/** Runs the adjusters in order; each gets the spec the previous one returned. */
export async function adjustSpec(
  adjusters: readonly SpecAdjuster[],
  spec: OciSpec,
  context: SpecAdjustContext,
): Promise<{ spec: OciSpec; warnings: string[] }> {
  let current = spec;
  const warnings: string[] = [];
  for (const adjuster of adjusters) {
    context.signal?.throwIfAborted();
    const result = await adjuster.adjust(current, context);
    current = result.spec;
    warnings.push(...result.warnings.map((w) => `${adjuster.name}: ${w}`));
  }
  return { spec: current, warnings };
}
