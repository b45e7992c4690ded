import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { HelperTimeAccount, waitingOnHelper, withHelperTimeAccount } from '../../src/os/helper-time.js';
import { run } from '../../src/os/process-runner.js';
import { RunServer } from '../../src/os/run-server.js';

describe('helper time accounting', () => {
  it('counts overlapping helper intervals once', () => {
    const account = new HelperTimeAccount();
    account.add(0, 10);
    account.add(5, 12);
    account.add(20, 25);
    account.add(21, 22);
    expect(account.helperMs).toBe(17);
  });

  it('accounts the runs and waits of the call they ran under, and nothing outside one', async () => {
    let waited = 0;
    const { result, account } = withHelperTimeAccount(async () => {
      const runs = await Promise.all([run('sleep', ['0.05']), run('sleep', ['0.05'])]);
      const t0 = performance.now();
      await waitingOnHelper(new Promise((r) => setTimeout(r, 30)));
      waited = performance.now() - t0;
      return runs;
    });
    const [a, b] = await result;
    expect(account.helperRuns).toBe(2);
    // Two sleeps side by side count once (their union: at least the longer, less than both
    // summed however slow the machine is), plus the wait after them.
    expect(account.helperMs).toBeGreaterThanOrEqual(Math.max(a!.durationMs, b!.durationMs) + 29);
    expect(account.helperMs).toBeLessThan(a!.durationMs + b!.durationMs + waited);
    await run('true', []); // outside any account: no error, nothing recorded
    expect(account.helperRuns).toBe(2);
  });

  it('accounts runs the run server started to the call they ran under, not to another', async () => {
    const server = new RunServer(silentLogger());
    try {
      await server.run('true', []); // the server's own start, outside any account
      const a = withHelperTimeAccount(() => server.run('sleep', ['0.05']));
      const b = withHelperTimeAccount(() => server.run('true', []));
      await Promise.all([a.result, b.result]);
      expect(a.account.helperRuns).toBe(1);
      expect(a.account.helperMs).toBeGreaterThanOrEqual(45);
      expect(b.account.helperRuns).toBe(1);
      expect(b.account.helperMs).toBeLessThan(a.account.helperMs);
    } finally {
      await server.close();
    }
  });
});
