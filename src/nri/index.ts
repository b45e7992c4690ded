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
