import { NotFoundError } from '../../src/errors.js';
import type { DirectoryUsage } from '../../src/image/image-fs-info.js';
import {
  type PrepareOptions,
  type Snapshotter,
  type SnapshotterName,
  validateLowerDirs,
  validateSnapshotId,
} from '../../src/image/snapshotter.js';

/**
 * An in-memory Snapshotter for unit tests of the layers above (image service, container
 * create/remove, recovery, GC). It keeps the same contract as the real ones (checked by
 * test/unit/snapshotter-contract.ts): ids validated, prepare idempotent, unmount/remove
 * no-ops when absent. It records every call and can inject one failure.
 */

export interface FakeSnapshot {
  lowerDirs: string[];
  readOnly: boolean;
  mounted: boolean;
  /** What `usage` reports; tests set it. */
  usage: DirectoryUsage;
}

export type SnapshotterMethod = 'prepare' | 'unmount' | 'remove' | 'usage' | 'list' | 'isMounted';

export interface FakeSnapshotterCall {
  method: SnapshotterMethod;
  id?: string;
  lowerDirs?: string[];
  options?: PrepareOptions;
}

export class FakeSnapshotter implements Snapshotter {
  readonly snapshots = new Map<string, FakeSnapshot>();
  readonly calls: FakeSnapshotterCall[] = [];
  #failure: { method: SnapshotterMethod; error: Error } | undefined;

  constructor(
    readonly name: SnapshotterName = 'fuse-overlayfs',
    /** Where rootfs paths appear to be; nothing is created there. */
    readonly root = '/fake-snapshotter',
  ) {}

  /** The next call of `method` rejects with `error` (once). */
  failNext(method: SnapshotterMethod, error: Error): void {
    this.#failure = { method, error };
  }

  rootfsOf(id: string): string {
    return `${this.root}/snapshots/${id}/merged`;
  }

  async prepare(
    id: string,
    lowerDirs: readonly string[],
    options: PrepareOptions = {},
  ): Promise<{ rootfs: string }> {
    this.#record({ method: 'prepare', id, lowerDirs: [...lowerDirs], options });
    validateSnapshotId(id);
    validateLowerDirs(lowerDirs);
    const existing = this.snapshots.get(id);
    if (existing?.mounted) return { rootfs: this.rootfsOf(id) };
    this.snapshots.set(id, {
      lowerDirs: [...lowerDirs],
      readOnly: options.readOnly === true,
      mounted: true,
      usage: existing?.usage ?? { bytes: 4096n, inodes: 1n },
    });
    return { rootfs: this.rootfsOf(id) };
  }

  async unmount(id: string): Promise<void> {
    this.#record({ method: 'unmount', id });
    validateSnapshotId(id);
    const snapshot = this.snapshots.get(id);
    if (snapshot !== undefined) snapshot.mounted = false;
  }

  async remove(id: string): Promise<void> {
    this.#record({ method: 'remove', id });
    validateSnapshotId(id);
    this.snapshots.delete(id);
  }

  async usage(id: string): Promise<DirectoryUsage> {
    this.#record({ method: 'usage', id });
    validateSnapshotId(id);
    const snapshot = this.snapshots.get(id);
    if (snapshot === undefined) {
      throw new NotFoundError(`snapshot ${id} does not exist in the ${this.name} snapshotter`);
    }
    return snapshot.usage;
  }

  async list(): Promise<string[]> {
    this.#record({ method: 'list' });
    return [...this.snapshots.keys()].sort();
  }

  async isMounted(id: string): Promise<boolean> {
    this.#record({ method: 'isMounted', id });
    validateSnapshotId(id);
    return this.snapshots.get(id)?.mounted === true;
  }

  #record(call: FakeSnapshotterCall): void {
    this.calls.push(call);
    if (this.#failure?.method === call.method) {
      const { error } = this.#failure;
      this.#failure = undefined;
      throw error;
    }
  }
}
