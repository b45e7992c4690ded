/**
 * A progress floor for registry bodies: at least `minBytes` must arrive in every window of
 * `windowMs` during which we are waiting for the registry. An idle timeout alone lets a
 * registry that trickles one byte every 20 s hold a download (and its slot) forever
 * (issue 12 item 2). Time the consumer spends not reading (it paused the body because its
 * own buffer is full, e.g. a slow unpack) does not count: `pause()` stops the clock and
 * `resume()` starts a fresh window.
 */
export interface ProgressFloor {
  windowMs: number;
  /** 0 turns the floor off. */
  minBytes: number;
}

export class ProgressWatch {
  private bytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly floor: ProgressFloor | undefined,
    /** Called once, with the bytes of the window that fell short. */
    private readonly onStall: (bytes: number) => void,
  ) {}

  add(bytes: number): void {
    this.bytes += bytes;
  }

  resume(): void {
    if (this.stopped || this.timer !== undefined || !this.floor || this.floor.minBytes <= 0) return;
    this.bytes = 0;
    this.timer = setInterval(() => {
      if (this.bytes < this.floor!.minBytes) {
        const got = this.bytes;
        this.stop();
        this.onStall(got);
        return;
      }
      this.bytes = 0;
    }, this.floor.windowMs);
    this.timer.unref();
  }

  pause(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  stop(): void {
    this.stopped = true;
    this.pause();
  }
}

export function describeFloor(floor: ProgressFloor): string {
  return `${floor.minBytes} bytes per ${floor.windowMs / 1000} s`;
}
