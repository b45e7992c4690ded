/**
 * Single-use tokens for streaming URLs: Exec/Attach/PortForward store the request under
 * a random token; the first HTTP request for it takes it. Tokens expire after a TTL and
 * at most `maxOutstanding` may wait at once (as the reference streaming server: 1 min,
 * 1000), so a client that asks for URLs and never uses them cannot grow memory.
 */
import { randomBytes } from 'node:crypto';
import { ResourceExhaustedError } from '../errors.js';

export interface TokenStoreOptions {
  ttlMs?: number;
  maxOutstanding?: number;
  /** Milliseconds clock; tests pass a fake one. */
  now?: () => number;
}

export class TokenStore<T> {
  private readonly entries = new Map<string, { value: T; expiresAt: number }>();
  private readonly ttlMs: number;
  private readonly maxOutstanding: number;
  private readonly now: () => number;

  constructor(options: TokenStoreOptions = {}) {
    this.ttlMs = options.ttlMs ?? 60_000;
    this.maxOutstanding = options.maxOutstanding ?? 1000;
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    this.sweep();
    return this.entries.size;
  }

  /** Stores `value` and returns its token (12 random bytes, base64url: 16 characters). */
  issue(value: T): string {
    this.sweep();
    if (this.entries.size >= this.maxOutstanding) {
      throw new ResourceExhaustedError(
        `too many streaming requests waiting to be used (${this.maxOutstanding}); use or let expire the URLs already issued, then retry`,
      );
    }
    let token: string;
    do token = randomBytes(12).toString('base64url');
    while (this.entries.has(token));
    this.entries.set(token, { value, expiresAt: this.now() + this.ttlMs });
    return token;
  }

  /** Takes the value for `token` once; undefined if unknown, used or expired. */
  take(token: string): T | undefined {
    const entry = this.entries.get(token);
    if (!entry) return undefined;
    this.entries.delete(token);
    return entry.expiresAt > this.now() ? entry.value : undefined;
  }

  private sweep(): void {
    const now = this.now();
    // Map iteration is insertion order, and expiry is insertion time + a constant TTL.
    for (const [token, entry] of this.entries) {
      if (entry.expiresAt > now) break;
      this.entries.delete(token);
    }
  }
}
