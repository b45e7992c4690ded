/**
 * The gate between lifecycle changes and plugin synchronization (NRI's "plugin sync block").
 *
 * A plugin that connects is sent the runtime's pods and containers (Synchronize) and only
 * then receives events. A container created around that moment must reach the plugin one
 * way or the other: it is in the snapshot, or the plugin is already registered when its
 * CreateContainer is sent. So a lifecycle change holds the gate *shared* from before its
 * NRI call until the runtime's state shows the change, and a synchronization holds it
 * *exclusively* from the snapshot until the plugin is registered. Waiting exclusive holders
 * go first (new shared holders queue behind them), so a stream of creations cannot starve a
 * plugin out; the wait is bounded by the plugin timeouts.
 */

export interface SyncBlock {
  /** Let synchronizations proceed again. Idempotent. */
  release(): void;
}

export class SyncGate {
  private shared = 0;
  private exclusive = false;
  private readonly queue: { exclusive: boolean; grant: () => void }[] = [];

  /** Hold the gate shared (many lifecycle changes at once). */
  acquireShared(): Promise<SyncBlock> {
    return this.acquire(false);
  }

  /** Hold the gate exclusively (one synchronization, no lifecycle change in flight). */
  acquireExclusive(): Promise<SyncBlock> {
    return this.acquire(true);
  }

  private acquire(exclusive: boolean): Promise<SyncBlock> {
    return new Promise((resolve) => {
      const grant = () => {
        if (exclusive) this.exclusive = true;
        else this.shared++;
        let released = false;
        resolve({
          release: () => {
            if (released) return;
            released = true;
            if (exclusive) this.exclusive = false;
            else this.shared--;
            this.dispatch();
          },
        });
      };
      this.queue.push({ exclusive, grant });
      this.dispatch();
    });
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      const next = this.queue[0]!;
      if (this.exclusive) return;
      if (next.exclusive) {
        if (this.shared > 0) return;
        this.queue.shift();
        next.grant();
        return;
      }
      this.queue.shift();
      next.grant();
    }
  }

  /** For tests and diagnostics. */
  get state(): { shared: number; exclusive: boolean; waiting: number } {
    return { shared: this.shared, exclusive: this.exclusive, waiting: this.queue.length };
  }
}
