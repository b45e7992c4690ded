/**
 * `rootless-cri doctor` on this host, for real: the test user prepared by deploy/setup-host.sh
 * passes every required check; a user without subuid/subgid ranges is told what to run.
 */
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { APP_DIR, TEST_USER } from '../harness/daemon.js';

const CLI = path.join(APP_DIR, 'dist/src/cli.js');
const RUN_AS_USER = path.join(APP_DIR, 'deploy/run-as-user.sh');

interface DoctorJson {
  ok: boolean;
  checks: { id: string; ok: boolean; required: boolean; detail: string; fix: string }[];
}

describe('rootless-cri doctor', () => {
  it('passes every required check for the prepared test user (exit 0, --json)', async () => {
    const r = await execa('bash', [RUN_AS_USER, TEST_USER, '--', process.execPath, CLI, 'doctor', '--json'], {
      reject: false,
    });
    const report = JSON.parse(String(r.stdout)) as DoctorJson;
    const failedRequired = report.checks.filter((c) => c.required && !c.ok);
    expect(failedRequired, JSON.stringify(failedRequired, null, 2)).toEqual([]);
    expect(report.ok).toBe(true);
    expect(r.exitCode).toBe(0);
    const ids = report.checks.map((c) => c.id);
    for (const id of ['subuid', 'subgid', 'dev-fuse', 'dev-net-tun', 'cgroup-v2']) {
      expect(
        ids.some((x) => x.includes(id)),
        `check ${id} in ${ids.join(',')}`,
      ).toBe(true);
    }
  });

  it('tells a user without subuid ranges how to get them (exit 1)', async () => {
    // nobody has no /etc/subuid entry on a Debian host.
    const r = await execa(
      'setpriv',
      [
        '--reuid=65534',
        '--regid=65534',
        '--clear-groups',
        process.execPath,
        CLI,
        '--run-dir',
        '/tmp/rcri-doctor-nobody',
        'doctor',
      ],
      { reject: false, env: { HOME: '/nonexistent', XDG_RUNTIME_DIR: '' } },
    );
    expect(r.exitCode).toBe(1);
    expect(String(r.stdout)).toMatch(/subuid/);
    expect(String(r.stdout)).toMatch(/usermod --add-subuids/);
  });
});
