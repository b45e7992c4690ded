/** The pod sandbox layer's public surface for the composition root. */

export {
  createPodSandboxService,
  type PodSandboxService,
  type PodSandboxServiceOptions,
} from './pod-sandbox-service.js';
