/**
 * NRI (Node Resource Interface, github.com/containerd/nri) for rootless-cri: plugins started
 * outside the runtime connect to a unix socket, register, and are consulted on every pod
 * and container lifecycle event; they can adjust containers being created and update
 * others. Off unless `[nri] enable = true`.
 *
 * The runtime uses NriAdapter (adapter.ts) and the plain views of runtime-view.ts;
 * applyAdjustment (adjust-spec.ts) is the pure spec-adjust step. Below them: the NRI API
 * schema (api.ts), the protobuf codec (protobuf.ts), ttrpc (ttrpc.ts) and the connection
 * multiplexer (mux.ts).
 *
 * Where the runtime calls the adapter (each under `blockPluginSync()`, held from before the
 * call until the stores show the change or it was rolled back):
 *   RunPodSandbox     after the sandbox is set up, while its record is still `creating` (not
 *                     listed, not READY, CreateContainer on it fails); runPodSandbox throws to
 *                     veto: roll back, and undoRunPodSandbox() if a later step fails.
 *   StopPodSandbox    after every container of the pod is stopped (EXITED), before the
 *                     network and namespaces go; PodSandboxStatus must answer meanwhile.
 *   RemovePodSandbox  removeContainer() for each container first, then removePodSandbox().
 *   CreateContainer   with the generated OCI spec, before conmon/crun create, record still
 *                     `creating`; use the returned spec, apply `updates`/`evictions` after;
 *                     undoCreateContainer() when a later step fails; postCreateContainer().
 *   StartContainer    before `crun start` (a plugin may veto), postStartContainer() after.
 *   UpdateContainerResources  updateContainer() gives the resources to apply; then
 *                     postUpdateContainer().
 *   StopContainer     on the first transition to EXITED, whoever caused it: CRI
 *                     StopContainer or the exit watcher seeing a container exit by itself.
 *   RemoveContainer   removeContainer().
 * NriStateProvider lists the pods and containers as they are now (records, no `creating`).
 */
export {
  NriAdapter,
  type NriAdapterOptions,
  type NriCreateContainerResult,
  type NriPluginInfo,
  type NriStopContainerResult,
  type NriUpdateContainerResult,
} from './adapter.js';
export { type ApplyAdjustmentOptions, type ApplyAdjustmentResult, applyAdjustment } from './adjust-spec.js';
export type { ContainerAdjustment } from './api.js';
export { NRI_API_VERSION } from './api.js';
export type { NriOciResources, NriOciSpec } from './oci-spec.js';
export type {
  NriContainer,
  NriContainerEviction,
  NriContainerState,
  NriContainerUpdate,
  NriPod,
  NriStateProvider,
} from './runtime-view.js';
export type { SyncBlock } from './sync-gate.js';
