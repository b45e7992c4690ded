/**
 * The daemon runs on the pinned Node.js whatever `node` is on PATH: the installed launcher
 * (<app>/bin/rootless-cri) uses the app's own Node.js, and the CLI started directly on an older
 * Node.js (the host's, where it has one) refuses with a message saying what to run instead.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { APP_DIR, TEST_USER } from '../harness/daemon.js';

const RUN_AS_USER = path.join(APP_DIR, 'deploy/run-as-user.sh');
const LAUNCHER = path.join(APP_DIR, 'bin/rootless-cri');
/** Debian's or NodeSource's node, older than the pinned one on the build machines. */
const HOST_NODE = '/usr/bin/node';
const hostNodeMajor = existsSync(HOST_NODE)
  ? Number(execFileSync(HOST_NODE, ['-p', 'process.versions.node.split(".")[0]'], { encoding: 'utf8' }))
  : Number.NaN;

describe('the Node.js rootless-cri runs on', () => {
  it('the launcher runs the app on its own Node.js with only the host directories on PATH', async () => {
    const r = await execa(
      'bash',
      [RUN_AS_USER, TEST_USER, '--', 'env', 'PATH=/usr/bin:/bin', LAUNCHER, 'doctor', '--json'],
      { reject: false, timeout: 60_000 },
    );
    expect(r.stderr).not.toMatch(/needs Node\.js/);
    expect(JSON.parse(String(r.stdout))).toHaveProperty('checks');
    const node = await execa('readlink', ['-f', path.join(APP_DIR, 'node/bin/node')]);
    const version = await execa(String(node.stdout), ['--version']);
    expect(Number(String(version.stdout).slice(1).split('.')[0])).toBeGreaterThanOrEqual(24);
  });

  // Only where the host's own Node.js is older than 24 (Debian 12's 18/20): on a host whose
  // Node.js is already 24 or newer there is no older Node.js to start the CLI with.
  it.skipIf(!(hostNodeMajor < 24))(
    'the CLI started on an older Node.js refuses, naming the launcher',
    async () => {
      const r = await execa(HOST_NODE, [path.join(APP_DIR, 'dist/src/cli.js'), 'serve'], {
        reject: false,
        timeout: 30_000,
      });
      expect(r.exitCode).toBe(1);
      expect(String(r.stderr)).toMatch(/needs Node\.js >= 24, this is v\d+.*bin\/rootless-cri/);
    },
  );
});
