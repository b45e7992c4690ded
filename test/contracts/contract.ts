/**
 * A contract is a list of named cases that any implementation of one OS interface must pass.
 * Cases use node:assert (not vitest), so the same list runs under vitest against the fake
 * (test/unit/contracts-fake.test.ts) and inside a real rootless node against the real
 * implementation (test/fixtures/contract-driver.ts, driven by
 * test/integration/contracts-real.test.ts). That keeps the fakes the unit tests trust faithful.
 */
import assert from 'node:assert/strict';

export interface ContractCase {
  name: string;
  run(): Promise<void>;
}

/** The kind of the error `promise` rejects with ('resolved' when it does not). */
export async function kindOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return (err as { kind?: string }).kind ?? `not a CriError: ${String(err)}`;
  }
  return 'resolved';
}

export async function assertKind(promise: Promise<unknown>, kind: string, what: string): Promise<void> {
  assert.equal(await kindOf(promise), kind, what);
}

/** Runs every case and reports each outcome (the in-node driver prints this). */
export async function runContract(cases: ContractCase[]): Promise<{ name: string; error: string | null }[]> {
  const results: { name: string; error: string | null }[] = [];
  for (const c of cases) {
    try {
      await c.run();
      results.push({ name: c.name, error: null });
    } catch (err) {
      results.push({ name: c.name, error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    }
  }
  return results;
}
