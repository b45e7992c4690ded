/**
 * The SandboxOs contract: pinned namespaces outlive the process that made them and are found
 * by path; the infra process is recognised by pid and start time and stops for good; settings
 * are applied only inside new namespaces; unpinning is idempotent.
 */
import assert from 'node:assert/strict';
import type { SandboxOs } from '../../src/os/sandbox-os.js';
import { assertKind, type ContractCase } from './contract.js';

export interface SandboxOsSubject {
  os: SandboxOs;
  /** A fresh directory for pin files (absolute). */
  pinDir(): Promise<string>;
  /** A cgroup leaf (relative to the node's cgroup root) the infra may join, or null. */
  infraLeaf(): Promise<string | null>;
}

export function sandboxOsContract(s: SandboxOsSubject): ContractCase[] {
  return [
    {
      name: 'pins net/ipc/uts, starts the infra, and releases each for good',
      async run() {
        const dir = await s.pinDir();
        const pins = [
          { kind: 'net' as const, path: `${dir}/net` },
          { kind: 'ipc' as const, path: `${dir}/ipc` },
          { kind: 'uts' as const, path: `${dir}/uts` },
        ];
        const infra = await s.os.createPodNamespaces({
          pins,
          settings: { loopbackUp: true, hostname: 'contract-pod', sysctls: [] },
          infra: { cgroupLeaf: await s.infraLeaf() },
        });
        assert.ok(infra && infra.pid > 0, 'an infra process');
        for (const pin of pins) assert.equal(await s.os.isPinned(pin.path), true, `${pin.kind} pinned`);
        assert.equal(await s.os.infraAlive(infra), true);
        await s.os.stopInfra(infra);
        assert.equal(await s.os.infraAlive(infra), false, 'stopped for good');
        await s.os.stopInfra(infra);
        await s.os.unpinNamespaces(pins.map((p) => p.path));
        for (const pin of pins) assert.equal(await s.os.isPinned(pin.path), false, `${pin.kind} unpinned`);
        await s.os.unpinNamespaces(pins.map((p) => p.path));
      },
    },
    {
      name: "stopping an infra does not wait on its wrapper's pid once another process holds it",
      async run() {
        const start = (pins: { kind: 'net'; path: string }[]) =>
          s.os.createPodNamespaces({
            pins,
            settings: { loopbackUp: false, hostname: null, sysctls: [] },
            infra: { cgroupLeaf: null },
          });
        const dir = await s.pinDir();
        const first = await start([{ kind: 'net', path: `${dir}/net1` }]);
        const second = await start([{ kind: 'net', path: `${dir}/net2` }]);
        assert.ok(first && second, 'two infra processes');
        await s.os.stopInfra(first);
        // As after a new node reused the pids: the first infra's wrapper pid is now the second's.
        // Waiting on it would end in Internal ("did not exit within 10s of SIGKILL").
        await s.os.stopInfra({ ...first, wrapperPid: second.wrapperPid });
        assert.equal(await s.os.infraAlive(second), true, 'the other pod is untouched');
        await s.os.stopInfra(second);
        await s.os.unpinNamespaces([`${dir}/net1`, `${dir}/net2`]);
      },
    },
    {
      name: 'pins without an infra process; settings later with configureNamespaces',
      async run() {
        const dir = await s.pinDir();
        const net = `${dir}/net`;
        const infra = await s.os.createPodNamespaces({
          pins: [{ kind: 'net', path: net }],
          settings: { loopbackUp: true, hostname: null, sysctls: [] },
          infra: null,
        });
        assert.equal(infra, null);
        assert.equal(await s.os.isPinned(net), true);
        await s.os.configureNamespaces(
          { net },
          {
            loopbackUp: false,
            hostname: null,
            sysctls: [
              { key: 'net.ipv4.ping_group_range', path: '/proc/sys/net/ipv4/ping_group_range', value: '0 0' },
            ],
          },
        );
        await s.os.unpinNamespaces([net]);
      },
    },
    {
      name: 'refuses settings that would change the node itself, and reports a refused sysctl as InvalidArgument',
      async run() {
        await assertKind(
          s.os.createPodNamespaces({
            pins: [],
            settings: { loopbackUp: true, hostname: null, sysctls: [] },
            infra: null,
          }),
          'Internal',
          'settings without pins',
        );
        await assertKind(
          s.os.configureNamespaces({}, { loopbackUp: false, hostname: 'x', sysctls: [] }),
          'Internal',
          'configure without namespaces',
        );
        const dir = await s.pinDir();
        const net = `${dir}/net`;
        await s.os.createPodNamespaces({
          pins: [{ kind: 'net', path: net }],
          settings: { loopbackUp: false, hostname: null, sysctls: [] },
          infra: null,
        });
        try {
          await assertKind(
            s.os.configureNamespaces(
              { net },
              {
                loopbackUp: false,
                hostname: null,
                sysctls: [
                  {
                    key: 'net.ipv4.ping_group_range',
                    path: '/proc/sys/net/ipv4/ping_group_range',
                    value: 'bogus',
                  },
                ],
              },
            ),
            'InvalidArgument',
            'a value the kernel refuses',
          );
        } finally {
          await s.os.unpinNamespaces([net]);
        }
      },
    },
    {
      name: 'an infra record that names no live process is not alive',
      async run() {
        assert.equal(
          await s.os.infraAlive({
            pid: 2 ** 22 - 3,
            wrapperPid: 2 ** 22 - 4,
            startTime: '1',
            pidNamespaceInode: 1,
          }),
          false,
        );
        assert.equal(await s.os.isPinned(`${await s.pinDir()}/never`), false);
      },
    },
  ];
}
