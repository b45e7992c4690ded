/**
 * Slow registries through the real daemon (security reference §5a row 48, issue 12 item 2),
 * with windows shortened by config so the suite is quick:
 *  - a registry that trickles bytes holds at most its per-registry share of the download
 *    slots, an image from another registry pulls meanwhile, and the trickle fails
 *    UNAVAILABLE at the progress floor;
 *  - a registry above the floor but too slow for the image ends at the whole-pull deadline;
 *  - a client that gives up frees the slots (and the registry connections) at once.
 * Both registries are the hostile registry fixture on 127.0.0.1, bridged into the node.
 */

import { gzipSync } from 'node:zlib';
import { status as grpcStatus } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exposeInNode, HostileRegistry, type NodeBridge } from '../fixtures/hostile-registry.js';
import { TestDaemon } from '../harness/daemon.js';

const WINDOW_S = 2;
const FLOOR_BYTES = 4096;
const PULL_DEADLINE_S = 8;

let daemon: TestDaemon;
let slow: HostileRegistry;
let healthy: HostileRegistry;
const bridges: NodeBridge[] = [];

async function pull(
  reference: string,
  timeoutMs = 60_000,
): Promise<{ code: number; message: string; ms: number }> {
  const started = Date.now();
  try {
    await daemon.client.image('PullImage', { image: { image: reference } }, { timeoutMs });
    return { code: grpcStatus.OK, message: '', ms: Date.now() - started };
  } catch (err) {
    const e = err as { code: number; details?: string; message: string };
    return { code: e.code, message: e.details ?? e.message, ms: Date.now() - started };
  }
}

/** Waits for a condition the daemon reaches on its own (bounded). */
async function until(what: string, condition: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function healthyImage(registry: HostileRegistry, repo: string): string {
  const tar = Buffer.alloc(1024);
  return registry.serveRawLayer(repo, gzipSync(tar), tar).reference;
}

beforeAll(async () => {
  slow = await HostileRegistry.start();
  healthy = await HostileRegistry.start();
  daemon = await TestDaemon.start({
    extraConfig: [
      '[image]',
      'max_concurrent_downloads = 3',
      'max_concurrent_downloads_per_registry = 2',
      `download_progress_window_seconds = ${WINDOW_S}`,
      `download_min_bytes_per_window = ${FLOOR_BYTES}`,
      `pull_deadline_seconds = ${PULL_DEADLINE_S}`,
    ].join('\n'),
  });
  for (const registry of [slow, healthy])
    bridges.push(await exposeInNode(await daemon.nodePid(), registry.port));
}, 120_000);

afterAll(async () => {
  for (const bridge of bridges) await bridge.close();
  await daemon?.stop();
  await slow?.close();
  await healthy?.close();
});

describe('download slots and progress (row 48)', () => {
  it('lets a trickling registry hold only its share, pulls another registry meanwhile, then ends the trickle at the floor', async () => {
    // One byte every 200 ms: never idle, far under 4096 bytes per 2 s.
    const trickle = slow.serveSlowImage('trickle', {
      layers: 3,
      layerSize: 64 * 1024,
      bytes: 1,
      everyMs: 200,
    });
    const trickling = pull(trickle.reference);
    await until('two trickle downloads run', () => trickle.downloads.opened === 2);

    const other = await pull(healthyImage(healthy, 'healthy'));
    expect(grpcStatus[other.code], other.message).toBe('OK');
    expect(other.ms).toBeLessThan(WINDOW_S * 1000);
    // The third layer waited for its registry's share; the other registry never did.
    expect(trickle.downloads.opened).toBe(2);

    const outcome = await trickling;
    expect(grpcStatus[outcome.code], outcome.message).toBe('UNAVAILABLE');
    expect(outcome.message).toMatch(/under the progress floor of 4096 bytes per 2 s/);
    expect(outcome.ms).toBeGreaterThanOrEqual(WINDOW_S * 1000);
    expect(outcome.ms).toBeLessThan(PULL_DEADLINE_S * 1000);
    await until('its connections are closed', () => trickle.downloads.closed === trickle.downloads.opened);
  });

  it('ends a pull that makes progress too slowly to finish at the whole-pull deadline', async () => {
    // 8 KiB every 500 ms passes the floor; 4 MiB would take over four minutes.
    const crawl = slow.serveSlowImage('crawl', {
      layers: 1,
      layerSize: 4 * 1024 * 1024,
      bytes: 8192,
      everyMs: 500,
    });
    const outcome = await pull(crawl.reference);
    expect(grpcStatus[outcome.code], outcome.message).toBe('DEADLINE_EXCEEDED');
    expect(outcome.message).toMatch(/did not finish within 8 s \(image.pull_deadline_seconds\)/);
    expect(outcome.ms).toBeGreaterThanOrEqual(PULL_DEADLINE_S * 1000 - 100);
    expect(outcome.ms).toBeLessThan(PULL_DEADLINE_S * 1000 + 5000);
    await until('its connection is closed', () => crawl.downloads.closed === crawl.downloads.opened);
  });

  it('frees the slots and closes the connections as soon as the client gives up', async () => {
    const crawl = slow.serveSlowImage('given-up', {
      layers: 2,
      layerSize: 4 * 1024 * 1024,
      bytes: 8192,
      everyMs: 500,
    });
    const outcome = await pull(crawl.reference, 3000);
    expect(grpcStatus[outcome.code], outcome.message).toBe('DEADLINE_EXCEEDED');
    expect(crawl.downloads.opened).toBe(2);
    const gaveUp = Date.now();
    await until('both connections are closed', () => crawl.downloads.closed === 2, 2000);
    // Both of the registry's slots are free again: an image from it pulls at once.
    const next = await pull(healthyImage(slow, 'after-cancel'));
    expect(grpcStatus[next.code], next.message).toBe('OK');
    expect(Date.now() - gaveUp).toBeLessThan(WINDOW_S * 1000);
  });
});
