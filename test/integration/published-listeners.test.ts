/**
 * The daemon's listeners on the host (issue 12 item 1): with node.publish_listeners =
 * "port-driver" (what a daemon without a supervisor channel falls back to), a published
 * port removed under the daemon is noticed by the watchdog and published again, reported in
 * verbose Status, the log and /metrics. The default handoff mode is exercised by
 * published-ports-flood.test.ts.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestDaemon } from '../harness/daemon.js';

const execFileAsync = promisify(execFile);
let daemon: TestDaemon;

interface Published {
  name: string;
  port: number;
  via: string;
  listening: boolean;
  republished: number;
  lastLoss?: { reason: string };
}

async function published(): Promise<Published[]> {
  const r = await daemon.client.runtime('Status', { verbose: true });
  return (JSON.parse(r.info!.listeners!) as { published: Published[] }).published;
}

async function metricsFromHost(port: number): Promise<string> {
  return (await execFileAsync('curl', ['-sf', '--max-time', '3', `http://127.0.0.1:${port}/metrics`])).stdout;
}

beforeAll(async () => {
  daemon = await TestDaemon.start({ extraConfig: '[node]\npublish_listeners = "port-driver"\n' });
}, 120_000);

afterAll(async () => {
  await daemon?.stop();
});

describe('the listener watchdog', () => {
  it('publishes a port the port driver lost again, and says so', async () => {
    const before = await published();
    expect(before.map((p) => [p.name, p.via, p.listening])).toEqual([
      ['metrics', 'port-driver', true],
      ['streaming', 'port-driver', true],
    ]);
    const metrics = before.find((p) => p.name === 'metrics')!;
    expect(await metricsFromHost(metrics.port)).toContain('rootless_cri_grpc_requests_total');

    // Someone takes the port away behind the daemon's back.
    const socket = path.join(daemon.runDir, 'node', 'api.sock');
    const list = await daemon.asUser(['rootlessctl', '--socket', socket, 'list-ports']);
    // ID PROTO PARENTIP PARENTPORT CHILDIP CHILDPORT
    const row = list.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .find((f) => f[3] === String(metrics.port))!;
    const id = row[0]!;
    const removed = await daemon.asUser(['rootlessctl', '--socket', socket, 'remove-ports', id]);
    expect(removed.exitCode, removed.stderr).toBe(0);
    await expect(metricsFromHost(metrics.port)).rejects.toThrow();

    // The watchdog checks every 5 s.
    const deadline = Date.now() + 15_000;
    let now = await published();
    while (now.find((p) => p.name === 'metrics')!.republished === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      now = await published();
    }
    expect(now.find((p) => p.name === 'metrics')).toMatchObject({
      listening: true,
      republished: 1,
      lastLoss: { reason: `rootlesskit no longer lists port ${id}` },
    });
    const text = await metricsFromHost(metrics.port);
    expect(text).toMatch(/rootless_cri_published_listener_republished_total\{listener="metrics"\} 1/);
    expect(await daemon.logTail(200)).toMatch(
      /a published listener was lost; published it again on the host/,
    );
  });
});
