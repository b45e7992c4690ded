/**
 * Attach for the streaming server (`crictl attach`, `kubectl attach`): the client joins the
 * stdio of a running container's main process through its monitor (os/conmon-attach.ts).
 */
import type { AttachTarget, StdioOptions, StreamSession } from '../core/stream-targets.js';
import type { OciRuntime } from '../os/oci-runtime.js';
import { requireRunning, type StreamableContainers } from './exec-sync.js';

export class ContainerAttachTarget implements AttachTarget {
  constructor(
    private readonly containers: StreamableContainers,
    private readonly runtime: Pick<OciRuntime, 'attach'>,
  ) {}

  async validate(containerId: string): Promise<void> {
    await requireRunning(this.containers, containerId, 'Attach');
  }

  async attach(containerId: string, options: StdioOptions): Promise<StreamSession> {
    const container = await requireRunning(this.containers, containerId, 'Attach');
    return this.runtime.attach(container.id, { tty: container.tty, stdin: container.stdin }, options);
  }
}
