import { status } from '@grpc/grpc-js';
import { type ErrorKind, errorKind } from '../errors.js';

/**
 * The one table from error kind to gRPC status code. `satisfies Record<ErrorKind, ...>`
 * makes a kind added to src/errors.ts without a row here a compile error, and the
 * unit test checks the rows are distinct and reach a real client unchanged.
 */
export const GRPC_STATUS_BY_KIND = {
  NotFound: status.NOT_FOUND,
  AlreadyExists: status.ALREADY_EXISTS,
  InvalidArgument: status.INVALID_ARGUMENT,
  FailedPrecondition: status.FAILED_PRECONDITION,
  ResourceExhausted: status.RESOURCE_EXHAUSTED,
  Unavailable: status.UNAVAILABLE,
  Unimplemented: status.UNIMPLEMENTED,
  DeadlineExceeded: status.DEADLINE_EXCEEDED,
  Cancelled: status.CANCELLED,
  Internal: status.INTERNAL,
} as const satisfies Record<ErrorKind, status>;

/** The gRPC status code for any thrown value, by its kind (src/errors.ts errorKind). */
export function grpcStatusFor(err: unknown): status {
  return GRPC_STATUS_BY_KIND[errorKind(err)];
}

/** `status.NOT_FOUND` → "NOT_FOUND": the label used in logs and metrics. */
export function grpcStatusName(code: status): string {
  return status[code] ?? `CODE_${code}`;
}
