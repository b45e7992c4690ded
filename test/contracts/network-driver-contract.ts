/**
 * The NetworkDriver contract: a configuration to use, an address per pod network namespace
 * from the pod range, a lease released by tearDown (so addresses are reused), tearDown
 * idempotent and possible without an ADD result.
 */
import assert from 'node:assert/strict';
import type { NetworkDriver } from '../../src/os/cni-network.js';
import type { ContractCase } from './contract.js';

export interface NetworkDriverSubject {
  network: NetworkDriver;
  /** A pinned network namespace for a pod (and its release). */
  podNetns(): Promise<{ path: string; release(): Promise<void> }>;
  newId(): string;
  /** The pod range addresses come from, e.g. /^10\.88\./ */
  addressPattern: RegExp;
  /** Addresses in use (leases): a fake's map, or host-local's lease files. */
  leases(): Promise<string[]>;
}

export function networkDriverContract(s: NetworkDriverSubject): ContractCase[] {
  return [
    {
      name: 'setUp gives an address from the pod range; tearDown releases it; tearDown twice is fine',
      async run() {
        const conflist = await s.network.loadConfig();
        const netns = await s.podNetns();
        const sandboxId = s.newId();
        try {
          const before = await s.leases();
          const network = await s.network.setUp({
            conflist,
            sandboxId,
            netnsPath: netns.path,
            podName: 'contract',
            podNamespace: 'default',
            podUid: 'uid-1',
            portMappings: [],
          });
          assert.match(network.ip, s.addressPattern);
          assert.ok((await s.leases()).includes(network.ip), 'leased');
          const request = { conflist, sandboxId, netnsPath: netns.path, network, portMappings: [] };
          await s.network.tearDown(request);
          assert.ok(!(await s.leases()).includes(network.ip), 'released');
          assert.deepEqual((await s.leases()).sort(), before.sort());
          await s.network.tearDown(request);
          await s.network.tearDown({ ...request, network: null });
        } finally {
          await netns.release();
        }
      },
    },
    {
      name: 'two pods get two different addresses',
      async run() {
        const conflist = await s.network.loadConfig();
        const a = await s.podNetns();
        const b = await s.podNetns();
        const [idA, idB] = [s.newId(), s.newId()];
        const up = (id: string, netnsPath: string) =>
          s.network.setUp({
            conflist,
            sandboxId: id,
            netnsPath,
            podName: id.slice(0, 8),
            podNamespace: 'default',
            podUid: id,
            portMappings: [],
          });
        try {
          const na = await up(idA, a.path);
          const nb = await up(idB, b.path);
          assert.notEqual(na.ip, nb.ip);
          await s.network.tearDown({
            conflist,
            sandboxId: idA,
            netnsPath: a.path,
            network: na,
            portMappings: [],
          });
          await s.network.tearDown({
            conflist,
            sandboxId: idB,
            netnsPath: b.path,
            network: nb,
            portMappings: [],
          });
        } finally {
          await a.release();
          await b.release();
        }
      },
    },
  ];
}
