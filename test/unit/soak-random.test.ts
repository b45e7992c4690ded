/** The soak's seeded generator is the exact LCG (a double product lost its low bits). */
import { describe, expect, it } from 'vitest';
import { nextSeed } from '../../bench/seeded-random.js';

const exact = (x: number): number => Number((BigInt(x) * 1103515245n + 12345n) % 2n ** 31n);

describe('soak nextSeed', () => {
  it('follows (1103515245·x + 12345) mod 2^31 exactly, from small and large seeds', () => {
    for (const start of [0, 1, 31, 37, 2 ** 30 + 7, 2 ** 31 - 1]) {
      let a = start;
      let b = start;
      for (let i = 0; i < 20_000; i++) {
        a = nextSeed(a);
        b = exact(b);
        expect(a).toBe(b);
      }
    }
  });
});
