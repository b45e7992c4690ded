import { FailedPreconditionError } from '../../src/errors.js';
import type { PortManager, PortSpec, PublishedPort } from '../../src/os/port-manager.js';

/** rootlesskit's port API in memory: a host port can be published once; `taken` simulates other users. */
export class FakePortManager implements PortManager {
  readonly published = new Map<number, PublishedPort>();
  readonly taken = new Set<number>();
  readonly calls: string[] = [];
  #nextId = 1;

  /** `journal` (shared with other fakes) gets "ports.add"/"ports.remove" for every call, in order. */
  constructor(private readonly journal: string[] = []) {}

  async add(spec: PortSpec): Promise<PublishedPort> {
    this.calls.push(`add ${spec.parentPort}`);
    this.journal.push('ports.add');
    const inUse = [...this.published.values()].some(
      (p) => p.parentPort === spec.parentPort && p.protocol === spec.protocol,
    );
    if (inUse || this.taken.has(spec.parentPort)) {
      throw new FailedPreconditionError(
        `host port ${spec.parentIP}:${spec.parentPort}/${spec.protocol} is already in use: bind: address already in use`,
      );
    }
    const port = { ...spec, id: this.#nextId++ };
    this.published.set(port.id, port);
    return port;
  }

  async remove(id: number): Promise<void> {
    this.calls.push(`remove ${id}`);
    this.journal.push('ports.remove');
    this.published.delete(id);
  }

  async list(): Promise<PublishedPort[]> {
    return [...this.published.values()];
  }
}
