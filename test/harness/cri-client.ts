/**
 * A typed, promise-based CRI client for tests and benchmarks: `await cri.runtime('Version', {})`.
 */
import * as grpc from '@grpc/grpc-js';
import type * as protoLoader from '@grpc/proto-loader';
import {
  type ImageRpcName,
  type ImageServiceClient,
  type ImageServiceDefinition,
  loadCriDefinitions,
  type RuntimeRpcName,
  type RuntimeServiceClient,
  type RuntimeServiceDefinition,
} from '../../src/api/proto.js';

type Parts<D> =
  D extends protoLoader.MethodDefinition<infer Req, infer _Res, infer _ReqOut, infer ResOut>
    ? { request: Req; response: ResOut }
    : never;

export type RuntimeCallRequest<M extends RuntimeRpcName> = Parts<RuntimeServiceDefinition[M]>['request'];
export type RuntimeCallResponse<M extends RuntimeRpcName> = Parts<RuntimeServiceDefinition[M]>['response'];
export type ImageCallRequest<M extends ImageRpcName> = Parts<ImageServiceDefinition[M]>['request'];
export type ImageCallResponse<M extends ImageRpcName> = Parts<ImageServiceDefinition[M]>['response'];

export interface CallOptions {
  /** Deadline in milliseconds from now. */
  timeoutMs?: number;
}

type UnaryFn = (
  req: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: unknown) => void,
) => grpc.ClientUnaryCall;

export class CriClient {
  readonly runtimeClient: RuntimeServiceClient;
  readonly imageClient: ImageServiceClient;

  constructor(readonly socketPath: string) {
    const { grpcObject } = loadCriDefinitions();
    const address = `unix://${socketPath}`;
    const options = { 'grpc.max_receive_message_length': 16 * 1024 * 1024 };
    this.runtimeClient = new grpcObject.runtime.v1.RuntimeService(
      address,
      grpc.credentials.createInsecure(),
      options,
    );
    this.imageClient = new grpcObject.runtime.v1.ImageService(
      address,
      grpc.credentials.createInsecure(),
      options,
    );
  }

  runtime<M extends RuntimeRpcName>(
    method: M,
    request: RuntimeCallRequest<M>,
    options: CallOptions = {},
  ): Promise<RuntimeCallResponse<M>> {
    return unary(this.runtimeClient, method, request, options) as Promise<RuntimeCallResponse<M>>;
  }

  image<M extends ImageRpcName>(
    method: M,
    request: ImageCallRequest<M>,
    options: CallOptions = {},
  ): Promise<ImageCallResponse<M>> {
    return unary(this.imageClient, method, request, options) as Promise<ImageCallResponse<M>>;
  }

  close(): void {
    this.runtimeClient.close();
    this.imageClient.close();
  }
}

function unary(
  client: grpc.Client,
  method: string,
  request: unknown,
  options: CallOptions,
): Promise<unknown> {
  const fn = (client as unknown as Record<string, UnaryFn>)[method];
  if (typeof fn !== 'function') return Promise.reject(new Error(`no such RPC: ${method}`));
  const callOptions: grpc.CallOptions = {
    deadline: Date.now() + (options.timeoutMs ?? 30_000),
  };
  return new Promise((resolve, reject) => {
    fn.call(client, request, new grpc.Metadata(), callOptions, (err, res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

/** The gRPC status code of a failed call, for assertions. */
export function grpcCode(err: unknown): grpc.status | undefined {
  return (err as grpc.ServiceError | undefined)?.code;
}
