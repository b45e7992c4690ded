/** The pod sandbox layer's public surface for the composition root and the container layer. */

export {
  createPodSandboxService,
  type PodSandboxService,
  type PodSandboxServiceOptions,
} from './pod-sandbox-service.js';
export type { PodContainers } from './sandbox-deps.js';
export type { SandboxRecord, SandboxState } from './sandbox-record.js';
export type { SandboxReader } from './sandbox-store.js';
