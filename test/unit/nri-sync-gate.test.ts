/**
 * The gate between lifecycle changes (shared) and plugin synchronization (exclusive).
 */
import { describe, expect, it } from 'vitest';
import { SyncGate } from '../../src/nri/sync-gate.js';

async function turns(n = 3): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe('SyncGate', () => {
  it('lets lifecycle changes share it and makes a synchronization wait for all of them', async () => {
    const gate = new SyncGate();
    const a = await gate.acquireShared();
    const b = await gate.acquireShared();
    let synchronizing = false;
    const sync = gate.acquireExclusive().then((block) => {
      synchronizing = true;
      return block;
    });
    await turns();
    expect(synchronizing).toBe(false);
    a.release();
    await turns();
    expect(synchronizing).toBe(false);
    b.release();
    (await sync).release();
    expect(synchronizing).toBe(true);
    expect(gate.state).toEqual({ shared: 0, exclusive: false, waiting: 0 });
  });

  it('queues new lifecycle changes behind a waiting synchronization, so it cannot starve', async () => {
    const gate = new SyncGate();
    const first = await gate.acquireShared();
    const order: string[] = [];
    const sync = gate.acquireExclusive().then((block) => {
      order.push('sync');
      return block;
    });
    const later = gate.acquireShared().then((block) => {
      order.push('later change');
      return block;
    });
    await turns();
    expect(order).toEqual([]);
    first.release();
    (await sync).release();
    (await later).release();
    expect(order).toEqual(['sync', 'later change']);
  });

  it('releases once however often release is called', async () => {
    const gate = new SyncGate();
    const a = await gate.acquireShared();
    const b = await gate.acquireShared();
    a.release();
    a.release();
    expect(gate.state.shared).toBe(1);
    b.release();
    expect(gate.state.shared).toBe(0);
  });
});
