/**
 * The soak's seeded generator (bench/soak.ts), apart from the soak so that a test can import it
 * without starting one.
 */

/**
 * The next state of the LCG x' = (1103515245·x + 12345) mod 2^31. The product is taken in
 * 32-bit integer arithmetic (Math.imul keeps its low 32 bits exactly, and mod 2^31 needs only
 * those): as a double it reaches 2^61 and lost its low bits, and some seeds fell into short
 * cycles (seed 37 drew 14 faults in 17,292 operations instead of about one in 12).
 */
export function nextSeed(x: number): number {
  return (Math.imul(x, 1103515245) + 12345) & 0x7fffffff;
}
