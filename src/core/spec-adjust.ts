/**
 * The adjust stage of container creation: between building the OCI spec (the container
 * layer's ordered SpecOpt steps) and creating the container, each adjuster in turn may change
 * the spec: an NRI adapter (plugins adjusting env, mounts, annotations, resources, devices),
 * a CDI device injector, OCI hooks. The builder never knows about them; the composition root
 * decides which run, in order.
 *
 * An adjuster that fails fails CreateContainer (its error kind is kept), and the creation
 * rolls back as for any other step. An adjuster that must know how the creation ended (NRI:
 * tell plugins, release the sync gate) returns `settle`, which CreateContainer calls once:
 * with true after the record says `created`, with false from its rollback. settle never throws.
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

export interface SpecAdjustment {
  spec: OciSpec;
  warnings: string[];
  /** Told how the creation ended: true once the container is created, false when rolled back. */
  settle?(created: boolean): Promise<void>;
}

export interface SpecAdjuster {
  /** Names the adjuster in warnings and errors. */
  readonly name: string;
  adjust(spec: OciSpec, context: SpecAdjustContext): Promise<SpecAdjustment>;
}

/**
 * Runs the adjusters in order; each gets the spec the previous one returned. When one fails,
 * the ones before it are settled (false) before the error goes on.
 */
export async function adjustSpec(
  adjusters: readonly SpecAdjuster[],
  spec: OciSpec,
  context: SpecAdjustContext,
): Promise<{ spec: OciSpec; warnings: string[]; settle(created: boolean): Promise<void> }> {
  let current = spec;
  const warnings: string[] = [];
  const settles: ((created: boolean) => Promise<void>)[] = [];
  const settle = async (created: boolean) => {
    // Undone in reverse, like a rollback; told in order once created.
    for (const s of created ? settles : [...settles].reverse()) await s(created);
  };
  try {
    for (const adjuster of adjusters) {
      context.signal?.throwIfAborted();
      const result = await adjuster.adjust(current, context);
      if (result.settle) settles.push(result.settle.bind(result));
      current = result.spec;
      warnings.push(...result.warnings.map((w) => `${adjuster.name}: ${w}`));
    }
  } catch (err) {
    await settle(false);
    throw err;
  }
  return { spec: current, warnings, settle };
}
