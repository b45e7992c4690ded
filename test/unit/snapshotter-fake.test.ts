import { describe, expect, it } from 'vitest';
import { InternalError } from '../../src/errors.js';
import { FakeSnapshotter } from '../fakes/fake-snapshotter.js';
import { snapshotterContract } from './snapshotter-contract.js';

describe('FakeSnapshotter keeps the Snapshotter contract', () => {
  let layers = 0;
  snapshotterContract({
    snapshotter: () => new FakeSnapshotter(),
    makeLayer: async () => `/fake-layers/${++layers}`,
  });
});

describe('FakeSnapshotter as a test double', () => {
  it('records calls and fails the chosen method once', async () => {
    const fake = new FakeSnapshotter('overlay');
    fake.failNext('prepare', new InternalError('disk full'));
    await expect(fake.prepare('c1', ['/l'])).rejects.toThrow('disk full');
    await expect(fake.prepare('c1', ['/l'], { readOnly: true })).resolves.toEqual({
      rootfs: '/fake-snapshotter/snapshots/c1/merged',
    });
    expect(fake.calls.map((c) => c.method)).toEqual(['prepare', 'prepare']);
    expect(fake.snapshots.get('c1')).toMatchObject({ lowerDirs: ['/l'], readOnly: true, mounted: true });
  });
});
