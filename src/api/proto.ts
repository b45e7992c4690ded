/**
 * Loads the CRI v1 API for grpc-js, once per process: proto/cri-api/api.proto, the upstream
 * file of the k8s.io/cri-api version pinned in proto/cri-api.json, put there by the build
 * (proto/fetch-cri-api.sh).
 *
 * Conventions of the API that the handlers rely on: timestamps are int64 nanoseconds since
 * the Unix epoch, request "timeout" fields are seconds, and proto3 scalars have no presence
 * ("" / 0 / false mean "not set").
 *
 * The TypeScript types come from src/api/generated/, produced by `npm run gen:types`. The
 * generator and this loader must agree on how messages look in JavaScript, so the options
 * below mirror the gen:types flags in package.json (--keepCase --longs=String --enums=String
 * --defaults --oneofs): field names stay snake_case, int64/uint64 are decimal strings, enums
 * are their value names, unset fields read as their defaults.
 */

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { InternalError } from '../errors.js';
import { packageRoot } from '../version.js';
import type { ProtoGrpcType } from './generated/api.js';
import type {
  ImageServiceClient,
  ImageServiceDefinition,
  ImageServiceHandlers,
} from './generated/runtime/v1/ImageService.js';
import type {
  RuntimeServiceClient,
  RuntimeServiceDefinition,
  RuntimeServiceHandlers,
} from './generated/runtime/v1/RuntimeService.js';

export const PROTO_LOADER_OPTIONS: Readonly<protoLoader.Options> = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

/** Path of the proto file inside the package, e.g. /opt/rootless-cri/proto/cri-api/api.proto. */
const PROTO_RELATIVE_PATH = join('proto', 'cri-api', 'api.proto');

export interface CriDefinitions {
  /** Absolute path of the proto file that was loaded. */
  protoPath: string;
  /** Service definitions to pass to grpc.Server#addService. */
  runtimeService: RuntimeServiceDefinition;
  imageService: ImageServiceDefinition;
  /** The raw proto-loader output, for tools (reflection, tests) that need it. */
  packageDefinition: protoLoader.PackageDefinition;
  /**
   * The loaded package; build clients with
   * `new grpcObject.runtime.v1.RuntimeService(address, grpc.credentials.createInsecure())`.
   */
  grpcObject: ProtoGrpcType;
}

let cached: CriDefinitions | undefined;

/**
 * proto/cri-api/api.proto inside the package. The module runs from src/cri/ under vitest and from
 * dist/src/cri/ when compiled, so the package root is found by walking up (src/version.ts).
 */
export function findProtoPath(startDir?: string): string {
  const candidate = join(packageRoot(startDir), PROTO_RELATIVE_PATH);
  if (!existsSync(candidate)) {
    throw new InternalError(
      `${candidate} is missing; run \`npm run build\` (it fetches the pinned CRI API, proto/cri-api.json) or reinstall rootless-cri`,
    );
  }
  return candidate;
}

/** Loads (once) and returns the CRI service definitions and the grpc package object. */
export function loadCriDefinitions(): CriDefinitions {
  if (cached) return cached;
  const protoPath = findProtoPath();
  let packageDefinition: protoLoader.PackageDefinition;
  try {
    packageDefinition = protoLoader.loadSync(protoPath, { ...PROTO_LOADER_OPTIONS });
  } catch (error) {
    throw new InternalError(`cannot parse the CRI API definition ${protoPath}; the file is damaged`, {
      cause: error,
    });
  }
  // The generated ProtoGrpcType describes exactly this package; grpc-js can only type the
  // result as a generic GrpcObject.
  const grpcObject = grpc.loadPackageDefinition(packageDefinition) as unknown as ProtoGrpcType;
  cached = {
    protoPath,
    runtimeService: grpcObject.runtime.v1.RuntimeService.service,
    imageService: grpcObject.runtime.v1.ImageService.service,
    packageDefinition,
    grpcObject,
  };
  return cached;
}

// ---------------------------------------------------------------------------------------
// Types for handlers and clients.
//
// Handlers receive the decoded request (the generated `__Output` type: every field present,
// defaults filled in) and answer with the permissive input type (fields optional).

/** Keys of T without the string/number index signature grpc-js adds to service types. */
type KnownKeys<T> = keyof {
  [K in keyof T as string extends K ? never : number extends K ? never : K]: T[K];
};

type MethodParts<D> =
  D extends protoLoader.MethodDefinition<
    infer Request,
    infer Response,
    infer RequestOutput,
    infer ResponseOutput
  >
    ? { request: Request; response: Response; requestOutput: RequestOutput; responseOutput: ResponseOutput }
    : never;

export type RuntimeRpcName = KnownKeys<RuntimeServiceDefinition>;
export type ImageRpcName = KnownKeys<ImageServiceDefinition>;

/** The request a RuntimeService handler receives, e.g. RuntimeRequest<'CreateContainer'>. */
export type RuntimeRequest<M extends RuntimeRpcName> = MethodParts<
  RuntimeServiceDefinition[M]
>['requestOutput'];
/** The response a RuntimeService handler returns (or streams). */
export type RuntimeResponse<M extends RuntimeRpcName> = MethodParts<RuntimeServiceDefinition[M]>['response'];
/** The request an ImageService handler receives, e.g. ImageRequest<'PullImage'>. */
export type ImageRequest<M extends ImageRpcName> = MethodParts<ImageServiceDefinition[M]>['requestOutput'];
/** The response an ImageService handler returns (or streams). */
export type ImageResponse<M extends ImageRpcName> = MethodParts<ImageServiceDefinition[M]>['response'];

// Messages and enums that handlers and stores pass around. The plain name is the permissive
// input shape; the `__Output` name is the decoded shape with defaults filled in.
export type { AuthConfig, AuthConfig__Output } from './generated/runtime/v1/AuthConfig.js';
export type { Container, Container__Output } from './generated/runtime/v1/Container.js';
export type { ContainerConfig, ContainerConfig__Output } from './generated/runtime/v1/ContainerConfig.js';
export type {
  ContainerEventResponse,
  ContainerEventResponse__Output,
} from './generated/runtime/v1/ContainerEventResponse.js';
export type {
  ContainerEventType,
  ContainerEventType__Output,
} from './generated/runtime/v1/ContainerEventType.js';
export type { ContainerFilter, ContainerFilter__Output } from './generated/runtime/v1/ContainerFilter.js';
export type {
  ContainerMetadata,
  ContainerMetadata__Output,
} from './generated/runtime/v1/ContainerMetadata.js';
export type { ContainerState, ContainerState__Output } from './generated/runtime/v1/ContainerState.js';
export type { ContainerStats, ContainerStats__Output } from './generated/runtime/v1/ContainerStats.js';
export type { ContainerStatus, ContainerStatus__Output } from './generated/runtime/v1/ContainerStatus.js';
export type { Image, Image__Output } from './generated/runtime/v1/Image.js';
export type { ImageSpec, ImageSpec__Output } from './generated/runtime/v1/ImageSpec.js';
export type { KeyValue, KeyValue__Output } from './generated/runtime/v1/KeyValue.js';
export type {
  LinuxContainerResources,
  LinuxContainerResources__Output,
} from './generated/runtime/v1/LinuxContainerResources.js';
export type { Mount, Mount__Output } from './generated/runtime/v1/Mount.js';
export type { MountPropagation, MountPropagation__Output } from './generated/runtime/v1/MountPropagation.js';
export type { NamespaceMode, NamespaceMode__Output } from './generated/runtime/v1/NamespaceMode.js';
export type { NamespaceOption, NamespaceOption__Output } from './generated/runtime/v1/NamespaceOption.js';
export type { PodSandbox, PodSandbox__Output } from './generated/runtime/v1/PodSandbox.js';
export type { PodSandboxConfig, PodSandboxConfig__Output } from './generated/runtime/v1/PodSandboxConfig.js';
export type { PodSandboxFilter, PodSandboxFilter__Output } from './generated/runtime/v1/PodSandboxFilter.js';
export type {
  PodSandboxMetadata,
  PodSandboxMetadata__Output,
} from './generated/runtime/v1/PodSandboxMetadata.js';
export type { PodSandboxState, PodSandboxState__Output } from './generated/runtime/v1/PodSandboxState.js';
export type { PodSandboxStatus, PodSandboxStatus__Output } from './generated/runtime/v1/PodSandboxStatus.js';
export type { PortMapping, PortMapping__Output } from './generated/runtime/v1/PortMapping.js';
export type { Protocol, Protocol__Output } from './generated/runtime/v1/Protocol.js';
export type { RuntimeCondition, RuntimeCondition__Output } from './generated/runtime/v1/RuntimeCondition.js';
export type { RuntimeStatus, RuntimeStatus__Output } from './generated/runtime/v1/RuntimeStatus.js';
export type { VersionRequest, VersionRequest__Output } from './generated/runtime/v1/VersionRequest.js';
export type { VersionResponse, VersionResponse__Output } from './generated/runtime/v1/VersionResponse.js';
export type {
  ImageServiceClient,
  ImageServiceDefinition,
  ImageServiceHandlers,
  ProtoGrpcType,
  RuntimeServiceClient,
  RuntimeServiceDefinition,
  RuntimeServiceHandlers,
};
