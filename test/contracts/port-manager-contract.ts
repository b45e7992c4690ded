/**
 * The PortManager contract: a published port is listed with its id until removed; the same
 * host port twice is FailedPrecondition; removing an unknown id is fine (a retried stop).
 */
import assert from 'node:assert/strict';
import type { PortManager } from '../../src/os/port-manager.js';
import { assertKind, type ContractCase } from './contract.js';

export interface PortManagerSubject {
  ports: PortManager;
  /** A host port on 127.0.0.1 nobody uses. */
  freePort(): Promise<number>;
}

export function portManagerContract(s: PortManagerSubject): ContractCase[] {
  return [
    {
      name: 'add lists the port with its id; remove takes it away; remove again is fine',
      async run() {
        const port = await s.freePort();
        const spec = {
          protocol: 'tcp' as const,
          parentIP: '127.0.0.1',
          parentPort: port,
          childIP: '127.0.0.1',
          childPort: port,
        };
        const published = await s.ports.add(spec);
        try {
          assert.ok(published.id > 0);
          const listed = (await s.ports.list()).find((p) => p.id === published.id);
          assert.deepEqual(listed && { ...listed, id: 0 }, { ...spec, id: 0 });
          await assertKind(s.ports.add(spec), 'FailedPrecondition', 'the same host port twice');
        } finally {
          await s.ports.remove(published.id);
        }
        assert.equal(
          (await s.ports.list()).some((p) => p.id === published.id),
          false,
        );
        await s.ports.remove(published.id);
      },
    },
  ];
}
