import { createHash } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';

/**
 * Content digests. Only sha256 is accepted, and only in its canonical form (lowercase hex,
 * exactly 64 digits): a digest from a registry or a manifest is untrusted input and ends up
 * in file paths and URLs, so anything else ("sha256:../../x", uppercase, short) is refused
 * before it is used anywhere (CVE-2024-3727).
 */

export type Digest = `sha256:${string}`;

const DIGEST_PATTERN = /^sha256:[a-f0-9]{64}$/;

export function isDigest(value: unknown): value is Digest {
  return typeof value === 'string' && DIGEST_PATTERN.test(value);
}

/** Returns `value` as a Digest, or throws InvalidArgument saying where it came from. */
export function parseDigest(value: unknown, where = 'digest'): Digest {
  if (isDigest(value)) return value;
  const shown = typeof value === 'string' ? JSON.stringify(value.slice(0, 100)) : typeof value;
  let why = 'expected sha256: followed by 64 lowercase hex digits';
  if (typeof value === 'string') {
    const colon = value.indexOf(':');
    const algorithm = colon < 0 ? '' : value.slice(0, colon);
    if (colon < 0) why = 'missing "algorithm:" prefix; ' + why;
    else if (algorithm !== 'sha256')
      why = `unsupported digest algorithm "${algorithm.slice(0, 20)}"; only sha256 is supported`;
  }
  throw new InvalidArgumentError(`invalid ${where} ${shown}: ${why}`);
}

/** The 64 hex digits of a (validated) digest, for file names. */
export function digestHex(digest: Digest): string {
  return digest.slice('sha256:'.length);
}

export function sha256Digest(data: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}
