/**
 * Containers as exec, attach and ExecSync see them (StreamableContainers): a map, found by full
 * id or unique-enough prefix, running unless a test says otherwise.
 */
import type { StreamableContainer, StreamableContainers } from '../../src/container/exec-sync.js';

export class FakeContainers implements StreamableContainers {
  readonly byId = new Map<string, StreamableContainer>();
  add(id: string, extra: Partial<StreamableContainer> = {}): StreamableContainer {
    const container: StreamableContainer = {
      id,
      podSandboxId: 'pod-1',
      state: 'CONTAINER_RUNNING',
      tty: false,
      stdin: false,
      stdinOnce: false,
      bundleDir: `/nonexistent/${id}`,
      ...extra,
    };
    this.byId.set(id, container);
    return container;
  }
  async containerView(id: string): Promise<StreamableContainer | undefined> {
    return this.byId.get(id) ?? [...this.byId.values()].find((c) => c.id.startsWith(id));
  }
}
