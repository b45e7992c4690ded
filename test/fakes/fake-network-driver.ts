import type {
  NetworkDriver,
  NetworkSetUp,
  NetworkTearDown,
  SandboxNetwork,
} from '../../src/os/cni-network.js';

/**
 * A pod network that hands out 10.88.0.x addresses and keeps the leases in memory, like
 * host-local would. Records every call; can fail the next call of a method.
 */
export class FakeNetworkDriver implements NetworkDriver {
  readonly calls: { method: 'loadConfig' | 'setUp' | 'tearDown'; sandboxId?: string }[] = [];
  /** sandbox id → leased IP. */
  readonly leases = new Map<string, string>();
  conflist: Record<string, unknown> = { cniVersion: '1.0.0', name: 'fake', plugins: [{ type: 'bridge' }] };
  #next = 2;
  #failures = new Map<string, Error>();

  /** `journal` (shared with other fakes) gets "network.<method>" for every call, in order. */
  constructor(private readonly journal: string[] = []) {}

  failNext(method: 'loadConfig' | 'setUp' | 'tearDown', error: Error): void {
    this.#failures.set(method, error);
  }

  private check(method: 'loadConfig' | 'setUp' | 'tearDown'): void {
    this.journal.push(`network.${method}`);
    const failure = this.#failures.get(method);
    if (failure) {
      this.#failures.delete(method);
      throw failure;
    }
  }

  async loadConfig(): Promise<Record<string, unknown>> {
    this.calls.push({ method: 'loadConfig' });
    this.check('loadConfig');
    return this.conflist;
  }

  async setUp(request: NetworkSetUp): Promise<SandboxNetwork> {
    this.calls.push({ method: 'setUp', sandboxId: request.sandboxId });
    // The lease is taken before the failure point, as a plugin failing after IPAM would.
    const ip = `10.88.0.${this.#next++}`;
    this.leases.set(request.sandboxId, ip);
    this.check('setUp');
    return { ip, additionalIps: [], gateway: '10.88.0.1', result: { ips: [{ address: `${ip}/16` }] } };
  }

  async tearDown(request: NetworkTearDown): Promise<void> {
    this.calls.push({ method: 'tearDown', sandboxId: request.sandboxId });
    this.check('tearDown');
    this.leases.delete(request.sandboxId);
  }
}
