/**
 * Waits for a condition, never for time: `probe` is asked every 100 ms until `ok` accepts its
 * answer (a probe that throws counts as an answer, the error) or `timeoutMs` passes.
 */
export async function until<T>(
  what: string,
  probe: () => Promise<T>,
  ok: (v: T) => boolean,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch((err: unknown) => err as T);
    if (ok(value)) return value;
    if (Date.now() > deadline) {
      const shown = value instanceof Error ? value.message : JSON.stringify(value);
      throw new Error(`${what}: still ${shown} after ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
