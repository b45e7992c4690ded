/**
 * Errors with a kind. Every layer below the CRI edge throws one of these; the edge
 * adapter (src/cri/edge.ts) maps the kind to a gRPC status in one table.
 * Messages say what was wrong and what to do about it.
 */

export const ERROR_KINDS = [
  'NotFound',
  'AlreadyExists',
  'InvalidArgument',
  'FailedPrecondition',
  'ResourceExhausted',
  'Unavailable',
  'Unimplemented',
  'DeadlineExceeded',
  'Cancelled',
  'Internal',
] as const;

export type ErrorKind = (typeof ERROR_KINDS)[number];

export class CriError extends Error {
  readonly kind: ErrorKind;

  constructor(kind: ErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
    this.name = `${kind}Error`;
  }
}

export class NotFoundError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NotFound', message, options);
  }
}

export class AlreadyExistsError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('AlreadyExists', message, options);
  }
}

export class InvalidArgumentError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('InvalidArgument', message, options);
  }
}

export class FailedPreconditionError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FailedPrecondition', message, options);
  }
}

export class ResourceExhaustedError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ResourceExhausted', message, options);
  }
}

export class UnavailableError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('Unavailable', message, options);
  }
}

export class UnimplementedError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('Unimplemented', message, options);
  }
}

export class DeadlineExceededError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DeadlineExceeded', message, options);
  }
}

export class CancelledError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('Cancelled', message, options);
  }
}

export class InternalError extends CriError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('Internal', message, options);
  }
}

/** The kind of any thrown value: CriErrors keep theirs, everything else is Internal. */
export function errorKind(err: unknown): ErrorKind {
  return err instanceof CriError ? err.kind : 'Internal';
}

/** A one-line description of any thrown value, including the chain of causes. */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; current !== undefined && current !== null && depth < 5; depth++) {
    if (current instanceof Error) {
      parts.push(current.message);
      current = current.cause;
    } else {
      parts.push(String(current));
      break;
    }
  }
  return parts.filter((p, i) => i === 0 || !parts[0]!.includes(p)).join(': ');
}
