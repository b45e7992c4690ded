/**
 * The OS-interface contracts (test/contracts/) against the fakes the unit tests use; the same
 * cases run against the real implementations in test/integration/contracts-real.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { describe, it } from 'vitest';
import { networkDriverContract } from '../contracts/network-driver-contract.js';
import { ociRuntimeContract } from '../contracts/oci-runtime-contract.js';
import { portManagerContract } from '../contracts/port-manager-contract.js';
import { sandboxOsContract } from '../contracts/sandbox-os-contract.js';
import { FakeNetworkDriver } from '../fakes/fake-network-driver.js';
import { FakeOciRuntime } from '../fakes/fake-oci-runtime.js';
import { FakePortManager } from '../fakes/fake-port-manager.js';
import { FakeSandboxOs } from '../fakes/fake-sandbox-os.js';

const newId = () => randomBytes(8).toString('hex');

describe('OciRuntime contract: FakeOciRuntime', () => {
  const runtime = new FakeOciRuntime();
  for (const c of ociRuntimeContract({
    runtime,
    newId,
    createOptions: async (id) => ({
      id,
      spec: {} as never,
      logPath: '',
      stdin: false,
      stdinOnce: false,
    }),
    created: (id, kind) => {
      if (kind === 'graceful') runtime.handles(id, 'SIGTERM', 0);
      else runtime.dropsSignals.set(id, new Set(['SIGTERM']));
    },
    willExec: (args, result) => runtime.execResults.set(args[0]!, result),
  })) {
    it(c.name, () => c.run());
  }
});

describe('SandboxOs contract: FakeSandboxOs', () => {
  let n = 0;
  for (const c of sandboxOsContract({
    os: new FakeSandboxOs(),
    pinDir: async () => `/fake/pins/${n++}`,
    infraLeaf: async () => null,
  })) {
    it(c.name, () => c.run());
  }
});

describe('NetworkDriver contract: FakeNetworkDriver', () => {
  const network = new FakeNetworkDriver();
  let n = 0;
  for (const c of networkDriverContract({
    network,
    newId,
    podNetns: async () => ({ path: `/fake/netns/${n++}`, release: async () => undefined }),
    addressPattern: /^10\.88\.\d+\.\d+$/,
    leases: async () => [...network.leases.values()],
  })) {
    it(c.name, () => c.run());
  }
});

describe('PortManager contract: FakePortManager', () => {
  let port = 20000;
  for (const c of portManagerContract({ ports: new FakePortManager(), freePort: async () => port++ })) {
    it(c.name, () => c.run());
  }
});
