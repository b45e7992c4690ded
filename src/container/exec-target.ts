/**
 * Exec for the streaming server (`crictl exec -i/-t`, `kubectl exec`): a process started in
 * a running container through the OCI runtime's streaming exec (os/crun-exec.ts: pipes, or a
 * pty through the console relay). The container is checked when the URL is issued and again
 * when the client connects: it may have stopped in between.
 */
import type { ExecTarget, StdioOptions, StreamSession } from '../core/stream-targets.js';
import type { OciRuntime } from '../os/oci-runtime.js';
import { requireRunning, type StreamableContainers } from './exec-sync.js';

export class ContainerExecTarget implements ExecTarget {
  constructor(
    private readonly containers: StreamableContainers,
    private readonly runtime: Pick<OciRuntime, 'execStream'>,
  ) {}

  async validate(containerId: string): Promise<void> {
    await requireRunning(this.containers, containerId, 'Exec');
  }

  async exec(containerId: string, cmd: string[], options: StdioOptions): Promise<StreamSession> {
    const container = await requireRunning(this.containers, containerId, 'Exec');
    return this.runtime.execStream(container.id, cmd, options);
  }
}
