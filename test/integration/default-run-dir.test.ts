/**
 * The default run dir is under /run/user/<uid>, which the node's --copy-up=/run turns into a
 * symlink into /run/.ro<N>/ inside the node. Pod namespace pins made there must be found,
 * unmounted and removed like anywhere else, and found again after a daemon restart.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestDaemon } from '../harness/daemon.js';

const pod = (name: string) => ({
  config: { metadata: { name, namespace: 'default', uid: `${name}-uid`, attempt: 0 }, linux: {} },
});

describe('pods with the run dir in $XDG_RUNTIME_DIR', () => {
  let daemon: TestDaemon;
  beforeAll(async () => {
    daemon = await TestDaemon.start({ runDirInXdgRuntimeDir: true });
  });
  afterAll(async () => {
    await daemon?.stop();
  });

  const nsfsMounts = async () =>
    (await daemon.enter(['sh', '-c', 'grep -c " nsfs " /proc/self/mountinfo || true'])).stdout.trim();

  it('keeps a READY pod across a daemon restart, then stops and removes it without leftovers', async () => {
    expect(daemon.runDir.startsWith('/run/user/')).toBe(true);
    const { pod_sandbox_id } = await daemon.client.runtime('RunPodSandbox', pod('xdg'));
    // net, ipc and uts pins
    expect(await nsfsMounts()).toBe('3');
    await daemon.kill9();
    await daemon.serve();
    const status = await daemon.client.runtime('PodSandboxStatus', { pod_sandbox_id });
    expect(status.status?.state).toBe('SANDBOX_READY');
    await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id });
    // Stop releases the network namespace; ipc and uts go with Remove.
    expect(await nsfsMounts()).toBe('2');
    await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id });
    expect(await nsfsMounts()).toBe('0');
    const list = await daemon.client.runtime('ListPodSandbox', {});
    expect(list.items).toEqual([]);
  });
});
