import { describe, expect, it } from 'vitest';
import { criState, parseSandboxRecord, recoveredState, sandboxName } from '../../src/core/sandbox-record.js';
import { addressesOf } from '../../src/os/cni-network.js';

describe('sandbox states', () => {
  it('maps internal states to CRI states in one place', () => {
    expect(criState('creating')).toBe('SANDBOX_NOTREADY');
    expect(criState('ready')).toBe('SANDBOX_READY');
    expect(criState('notready')).toBe('SANDBOX_NOTREADY');
  });

  it.each([
    ['creating', true, true, false, 'notready', /being created/],
    ['creating', false, false, false, 'notready', /being created/],
    ['ready', true, true, false, 'ready', null],
    ['ready', false, true, false, 'notready', /network namespace is gone/],
    ['ready', true, false, false, 'notready', /infra process/],
    ['notready', true, true, false, 'notready', null],
    ['notready', false, false, false, 'notready', null],
    ['ready', false, false, true, 'notready', /node this pod ran in is gone/],
    ['creating', false, false, true, 'notready', /node this pod ran in is gone/],
    ['notready', false, false, true, 'notready', null],
  ] as const)(
    'recovers %s (netns pinned %s, infra alive %s, node gone %s) as %s',
    (state, networkPinned, infraAlive, nodeGone, next, reason) => {
      const r = recoveredState({ state }, { networkPinned, infraAlive, nodeGone });
      expect(r.state).toBe(next);
      if (reason === null) expect(r.reason).toBeNull();
      else expect(r.reason).toMatch(reason);
    },
  );

  it('reserves on name, namespace, uid and attempt', () => {
    expect(sandboxName({ name: 'n', namespace: 'ns', uid: 'u', attempt: 2 })).toBe('n_ns_u_2');
  });

  it('refuses records without the fields recovery needs', () => {
    expect(() => parseSandboxRecord(null)).toThrow(/not an object/);
    expect(() => parseSandboxRecord({ id: '../x' })).toThrow(/id/);
    expect(() => parseSandboxRecord({ id: 'a'.repeat(64), state: 'weird' })).toThrow(/state/);
  });
});

describe('CNI result addresses', () => {
  it('takes the IPv4 address first, the rest as additional IPs', () => {
    const result = {
      ips: [
        { address: 'fd00::5/64', gateway: 'fd00::1' },
        { address: '10.88.0.5/16', gateway: '10.88.0.1' },
      ],
    };
    expect(addressesOf(result, 'net')).toEqual({
      ip: '10.88.0.5',
      additionalIps: ['fd00::5'],
      gateway: '10.88.0.1',
    });
    expect(() => addressesOf({ ips: [] }, 'net')).toThrow(/no IP address/);
  });
});
