/**
 * The OS-interface contracts of test/contracts/ against the real implementations, inside a
 * rootless node: the driver (test/fixtures/contract-driver.ts) runs every case there and
 * reports each one; here each case is a test. The same cases run against the fakes in
 * test/unit/contracts-fake.test.ts, so a fake that drifts from the real thing fails one side.
 */
import { chown, mkdtemp, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { networkDriverContract } from '../contracts/network-driver-contract.js';
import { ociRuntimeContract } from '../contracts/oci-runtime-contract.js';
import { portManagerContract } from '../contracts/port-manager-contract.js';
import { sandboxOsContract } from '../contracts/sandbox-os-contract.js';
import { freePort } from '../fixtures/registry.js';
import { TestDaemon } from '../harness/daemon.js';
import { busyboxRootfs, compileDriver, driverCgroup, runDriver } from '../harness/node-driver.js';

type Outcomes = Record<
  'ociRuntime' | 'sandboxOs' | 'networkDriver' | 'portManager',
  { name: string; error: string | null }[]
>;

let daemon: TestDaemon;
let outcomes: Outcomes;

beforeAll(async () => {
  daemon = await TestDaemon.start();
  const work = await mkdtemp(path.join(daemon.tmp, 'contract-'));
  const driverJs = await compileDriver('contract-driver', 'contract-it');
  await busyboxRootfs(daemon, work, ['sh', 'sleep', 'echo', 'true']);
  const cgroup = await driverCgroup(daemon, 'contract-driver');
  const jobFile = path.join(work, 'job.json');
  await writeFile(
    jobFile,
    JSON.stringify({
      workDir: path.join(work, 'state'),
      rootfs: path.join(work, 'rootfs'),
      cgroupParent: '/contract',
      apiSocket: path.join(daemon.runDir, 'node', 'api.sock'),
      freePorts: [await freePort(), await freePort()],
    }),
  );
  await chown(jobFile, daemon.user.uid, daemon.user.gid);
  const run = await runDriver(daemon, { cgroup, workdir: work, driverJs, jobFile, timeoutMs: 170_000 });
  const value = run.value as Outcomes & { fatal?: string };
  if (value.fatal) throw new Error(`contract driver failed: ${value.fatal}\n${run.stderr}`);
  outcomes = value;
}, 240_000);

afterAll(async () => {
  await daemon?.stop();
});

// The case names, known before the driver runs (a contract's cases are named up front).
const never = null as never;
const suites: [keyof Outcomes, string, string[]][] = [
  [
    'ociRuntime',
    'OciRuntime contract: CrunConmonRuntime (conmon + crun)',
    ociRuntimeContract(never).map((c) => c.name),
  ],
  ['sandboxOs', 'SandboxOs contract: NodeSandboxOs', sandboxOsContract(never).map((c) => c.name)],
  [
    'networkDriver',
    'NetworkDriver contract: CniNetwork (bridge + host-local)',
    networkDriverContract(never).map((c) => c.name),
  ],
  [
    'portManager',
    "PortManager contract: rootlesskit's port API",
    portManagerContract(never).map((c) => c.name),
  ],
];

for (const [key, title, names] of suites) {
  describe(title, () => {
    for (const name of names) {
      it(name, () => {
        const outcome = outcomes[key].find((o) => o.name === name);
        expect(outcome, 'the driver ran this case').toBeDefined();
        expect(outcome!.error).toBeNull();
      });
    }
  });
}
