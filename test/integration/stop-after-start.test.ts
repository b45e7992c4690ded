/**
 * StopContainer right after StartContainer, 200 times (issue 11, item 4). The container's
 * process is PID 1 of its pid namespace, and the kernel discards a signal PID 1 has no handler
 * for: a stop signal sent before the entrypoint installed its handler used to be lost, and the
 * stop waited out the whole grace period before SIGKILL (1 in 20 with busybox `top`; the
 * "removing stopped container" critest flake). No stop here may wait for the grace period.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exposeInNode, type NodeBridge } from '../fixtures/hostile-registry.js';
import { type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import { buildCatalogue, pushCatalogue } from '../fixtures/test-images.js';
import { mirrorConfig, TestDaemon } from '../harness/daemon.js';

const BUSYBOX = 'registry.k8s.io/e2e-test-images/busybox:1.29-2';
const ROUNDS = 200;
const GRACE_SECONDS = 30;

describe('StopContainer right after StartContainer', () => {
  let registry: RunningRegistry;
  let daemon: TestDaemon;
  let bridge: NodeBridge | undefined;

  beforeAll(async () => {
    const built = await buildCatalogue({
      cacheDir: path.join(process.env.XDG_CACHE_HOME ?? '/root/.cache', 'rootless-cri', 'test-images'),
      names: ['busybox'],
    });
    registry = await startRegistry();
    await pushCatalogue(registry.url, built.images);
    daemon = await TestDaemon.start({ extraConfig: mirrorConfig(registry.url) });
    bridge = await exposeInNode(await daemon.nodePid(), registry.port);
    await daemon.client.image('PullImage', { image: { image: BUSYBOX } }, { timeoutMs: 120_000 });
  }, 180_000);

  afterAll(async () => {
    await bridge?.close();
    await daemon?.stop();
    await registry?.stop();
  });

  it(`never waits out the grace period (${ROUNDS} rounds of busybox top)`, async () => {
    const config = {
      metadata: { name: 'stop-after-start', namespace: 'life', uid: 'uid-stop-after-start', attempt: 0 },
      log_directory: '',
      linux: {},
    };
    const pod = (await daemon.client.runtime('RunPodSandbox', { config } as never)).pod_sandbox_id!;
    const exitCodes = new Map<number, number>();
    const slow: string[] = [];
    let slowest = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const id = (
        await daemon.client.runtime('CreateContainer', {
          pod_sandbox_id: pod,
          sandbox_config: config,
          config: {
            metadata: { name: `top-${round}`, attempt: 0 },
            image: { image: BUSYBOX },
            command: ['top'],
            log_path: '',
          },
        } as never)
      ).container_id!;
      await daemon.client.runtime('StartContainer', { container_id: id });
      const started = performance.now();
      await daemon.client.runtime('StopContainer', { container_id: id, timeout: String(GRACE_SECONDS) });
      const ms = performance.now() - started;
      slowest = Math.max(slowest, ms);
      const status = (await daemon.client.runtime('ContainerStatus', { container_id: id })).status!;
      expect(status.state).toBe('CONTAINER_EXITED');
      exitCodes.set(status.exit_code!, (exitCodes.get(status.exit_code!) ?? 0) + 1);
      // Half the grace period is far above any real stop and far below a full-grace wait.
      if (ms > (GRACE_SECONDS * 1000) / 2)
        slow.push(`round ${round}: ${Math.round(ms)} ms, exit ${status.exit_code}`);
      await daemon.client.runtime('RemoveContainer', { container_id: id });
    }
    console.log(
      `stop right after start: ${ROUNDS} rounds, slowest ${Math.round(slowest)} ms, exit codes ${JSON.stringify(Object.fromEntries(exitCodes))}`,
    );
    expect(slow).toEqual([]);
    // Every exit is the stop signal's (143) or, when no handler was ever installed, SIGKILL's (137).
    expect([...exitCodes.keys()].every((code) => code === 143 || code === 137)).toBe(true);
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: pod });
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: pod });
  }, 600_000);
});
