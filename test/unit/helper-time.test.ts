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
    const { result, account } = withHelperTimeAccount(async () => {
      await Promise.all([run('sleep', ['0.05']), run('sleep', ['0.05'])]);
      await waitingOnHelper(new Promise((r) => setTimeout(r, 30)));
    });
    await result;
    expect(account.helperRuns).toBe(2);
    // Two 50 ms sleeps side by side count once, plus the 30 ms wait.
    expect(account.helperMs).toBeGreaterThanOrEqual(75);
    expect(account.helperMs).toBeLessThan(150);
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
