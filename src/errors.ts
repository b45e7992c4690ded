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

/** System errors that say what kind of failure they are, wherever they surface. */
const ERRNO_KINDS: Readonly<Record<string, ErrorKind>> = {
  ENOSPC: 'ResourceExhausted',
  EDQUOT: 'ResourceExhausted',
  EMFILE: 'ResourceExhausted',
  ENFILE: 'ResourceExhausted',
  ENAMETOOLONG: 'InvalidArgument',
};

/** The first system error (errno code) in a chain of causes, if any. */
export function systemErrorIn(err: unknown): NodeJS.ErrnoException | undefined {
  let current: unknown = err;
  for (let depth = 0; current instanceof Error && depth < 8; depth++) {
    const code = (current as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return current as NodeJS.ErrnoException;
    current = current.cause;
  }
  return undefined;
}

/**
 * The kind of any thrown value: CriErrors keep theirs, except that an Internal one caused by a
 * full disk (ENOSPC, EDQUOT), exhausted descriptors or a name too long takes that cause's kind;
 * a plain system error is classified by its code; everything else is Internal.
 */
export function errorKind(err: unknown): ErrorKind {
  if (err instanceof CriError && err.kind !== 'Internal') return err.kind;
  const code = systemErrorIn(err)?.code;
  return (code && ERRNO_KINDS[code]) || 'Internal';
}

/** A message for a system error the caller can act on (the path, and what to do). */
export function describeSystemError(err: NodeJS.ErrnoException): string | undefined {
  const where = err.path ? ` (${err.path})` : '';
  switch (err.code) {
    case 'ENOSPC':
      return `no space left on the filesystem${where}; free space there (remove unused images or containers, rotate logs) and retry`;
    case 'EDQUOT':
      return `the disk quota is exhausted${where}; free space or raise the quota and retry`;
    case 'EMFILE':
    case 'ENFILE':
      return `too many open files in the daemon${where}; raise its file descriptor limit (LimitNOFILE) or retry later`;
    case 'ENAMETOOLONG':
      return `a file name is too long${where}`;
    default:
      return undefined;
  }
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
