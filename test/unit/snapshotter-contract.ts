/**
 * The lifecycle contract every Snapshotter keeps, whatever mounts it: run against the fake
 * (test/unit/snapshotter-fake.test.ts) and against both real snapshotters inside a user
 * namespace (test/integration/snapshotter-behaviour.test.ts). Filesystem semantics
 * (whiteouts, opaque dirs, copy-up) are only checked for real, in the integration suite.
 */
import { expect, it } from 'vitest';
import type { Snapshotter } from '../../src/image/snapshotter.js';

export interface ContractSubject {
  snapshotter: () => Snapshotter;
  /** A fresh, existing layer directory (absolute path). */
  makeLayer: () => Promise<string>;
}

async function kindOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return (err as { kind?: string }).kind ?? `not a CriError: ${String(err)}`;
  }
  return 'resolved';
}

export function snapshotterContract(subject: ContractSubject): void {
  it('prepare mounts, is idempotent for a mounted id, and list/isMounted report it', async () => {
    const s = subject.snapshotter();
    const layer = await subject.makeLayer();
    const first = await s.prepare('contract-a', [layer]);
    const second = await s.prepare('contract-a', [layer]);
    expect(second.rootfs).toBe(first.rootfs);
    expect(first.rootfs).toMatch(/\/snapshots\/contract-a\/merged$/);
    expect(await s.isMounted('contract-a')).toBe(true);
    expect(await s.list()).toContain('contract-a');
    await s.remove('contract-a');
  });

  it('unmount keeps the snapshot listed; remove deletes it; both are no-ops the second time', async () => {
    const s = subject.snapshotter();
    const layer = await subject.makeLayer();
    await s.prepare('contract-b', [layer]);
    await s.unmount('contract-b');
    expect(await s.isMounted('contract-b')).toBe(false);
    expect(await s.list()).toContain('contract-b');
    await s.unmount('contract-b');
    await s.remove('contract-b');
    expect(await s.list()).not.toContain('contract-b');
    expect(await s.isMounted('contract-b')).toBe(false);
    await s.remove('contract-b');
    await s.unmount('never-existed');
  });

  it('refuses ids that could be paths, with InvalidArgument', async () => {
    const s = subject.snapshotter();
    const layer = await subject.makeLayer();
    for (const id of ['../escape', 'a/b', '', '.', '..', 'x'.repeat(129), 'has space', 'a,b', 'a:b']) {
      expect(await kindOf(s.prepare(id, [layer])), `prepare(${JSON.stringify(id)})`).toBe('InvalidArgument');
      expect(await kindOf(s.remove(id)), `remove(${JSON.stringify(id)})`).toBe('InvalidArgument');
    }
    expect(await kindOf(s.prepare('ok-id', ['relative/layer']))).toBe('InvalidArgument');
    expect(await s.list()).not.toContain('ok-id');
  });

  it('usage of an unknown snapshot is NotFound; of a prepared one, a byte and inode count', async () => {
    const s = subject.snapshotter();
    expect(await kindOf(s.usage('contract-none'))).toBe('NotFound');
    const layer = await subject.makeLayer();
    await s.prepare('contract-c', [layer]);
    const usage = await s.usage('contract-c');
    expect(typeof usage.bytes).toBe('bigint');
    expect(usage.inodes).toBeGreaterThanOrEqual(1n);
    await s.remove('contract-c');
  });
}
