/**
 * Container exits as events. conmon writes `<exitDir>/<container id>` with the exit code
 * when the container's process ends (atomically: written aside, then renamed into place).
 * This watcher is the one source of exits: inotify on the directory (fs.watch) reports the
 * file as it appears; a scan at start and at a low rate afterwards catches anything the
 * kernel's event queue dropped (inotify overflow is not visible through fs.watch) or that
 * happened while the watch was being re-established after an error. No polling loop is on
 * the exit path: an exit is seen within the event's delivery, not a tick.
 *
 * Every exit is delivered once per file: listeners get (id, info); waiters on an id resolve.
 * `forget(id)` (container removed, exit file deleted) lets a new container with the same id
 * be reported again.
 */
import { type FSWatcher, watch } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';

export interface ExitInfo {
  exitCode: number;
  /** When conmon wrote the exit file. */
  exitedAt: Date;
  oomKilled: boolean;
}

export type ExitListener = (id: string, info: ExitInfo) => void;

export interface ExitWatcherOptions {
  exitDir: string;
  /** Reads the exit of one container; null while there is none (or the file is still empty). */
  read(id: string): Promise<ExitInfo | null>;
  /** The safety rescan's period (ms); 0 = only at start and after watch errors. Default 30 s. */
  rescanMs?: number;
  onError?(err: unknown): void;
}

interface Waiter {
  resolve(info: ExitInfo | null): void;
}

const ID = /^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$/;

export class ExitWatcher {
  private watcher: FSWatcher | null = null;
  private rescanTimer: NodeJS.Timeout | null = null;
  private readonly listeners = new Set<ExitListener>();
  private readonly waiters = new Map<string, Set<Waiter>>();
  private readonly delivered = new Map<string, ExitInfo>();
  private readonly checking = new Map<string, Promise<void>>();
  /** Ids asked about again while their check was under way. */
  private readonly recheck = new Set<string>();
  private closed = false;
  private started: Promise<void> | null = null;

  constructor(private readonly options: ExitWatcherOptions) {}

  /** Starts watching (idempotent) and scans what is already there. */
  start(): Promise<void> {
    this.started ??= (async () => {
      await mkdir(this.options.exitDir, { recursive: true, mode: 0o700 });
      this.openWatch();
      await this.scan();
      const period = this.options.rescanMs ?? 30_000;
      if (period > 0) {
        this.rescanTimer = setInterval(() => void this.scan(), period);
        this.rescanTimer.unref();
      }
    })();
    return this.started;
  }

  onExit(listener: ExitListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The exit of `id` once seen, or null at the timeout / abort. */
  async wait(id: string, timeoutMs: number, signal?: AbortSignal): Promise<ExitInfo | null> {
    const known = this.delivered.get(id);
    if (known) return known;
    return new Promise<ExitInfo | null>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const set = this.waiters.get(id) ?? new Set<Waiter>();
      this.waiters.set(id, set);
      const finish = (info: ExitInfo | null) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        set.delete(waiter);
        if (set.size === 0 && this.waiters.get(id) === set) this.waiters.delete(id);
        resolve(info);
      };
      const waiter: Waiter = { resolve: finish };
      const onAbort = () => finish(null);
      set.add(waiter);
      timer = setTimeout(() => finish(null), Math.max(0, timeoutMs));
      signal?.addEventListener('abort', onAbort, { once: true });
      // The file may have appeared before this waiter was registered.
      void this.check(id);
    });
  }

  /** The container is gone (its exit file removed): a later exit with this id is new. */
  forget(id: string): void {
    this.delivered.delete(id);
  }

  /**
   * Looks at one id now (e.g. when a caller has reason to believe it exited). A check asked for
   * while one is under way is not dropped: that read may have started before conmon renamed the
   * file into place (a waiter's first look racing the file's event), so it reads once more.
   * Dropping it left the exit to the next rescan, 30 s later.
   */
  check(id: string): Promise<void> {
    if (!ID.test(id) || this.delivered.has(id)) return Promise.resolve();
    const running = this.checking.get(id);
    if (running) {
      this.recheck.add(id);
      return running;
    }
    const p = (async () => {
      try {
        do {
          this.recheck.delete(id);
          const info = await this.options.read(id);
          if (info && !this.delivered.has(id)) this.deliver(id, info);
        } while (this.recheck.has(id) && !this.delivered.has(id));
      } catch (err) {
        this.options.onError?.(err);
      } finally {
        this.checking.delete(id);
        this.recheck.delete(id);
      }
    })();
    this.checking.set(id, p);
    return p;
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.rescanTimer) clearInterval(this.rescanTimer);
    for (const [, set] of this.waiters) for (const w of [...set]) w.resolve(null);
    this.waiters.clear();
  }

  private deliver(id: string, info: ExitInfo): void {
    this.delivered.set(id, info);
    for (const waiter of [...(this.waiters.get(id) ?? [])]) waiter.resolve(info);
    for (const listener of this.listeners) {
      try {
        listener(id, info);
      } catch (err) {
        this.options.onError?.(err);
      }
    }
  }

  private openWatch(): void {
    if (this.closed) return;
    try {
      this.watcher = watch(this.options.exitDir, { persistent: false }, (_event, filename) => {
        if (filename) void this.check(filename.toString());
        else void this.scan(); // the kernel did not say which file: look at all of them
      });
      this.watcher.on('error', (err) => {
        this.options.onError?.(err);
        this.watcher?.close();
        this.watcher = null;
        // Re-establish the watch, then scan for what happened meanwhile.
        setTimeout(() => {
          this.openWatch();
          void this.scan();
        }, 100).unref();
      });
    } catch (err) {
      this.options.onError?.(err);
    }
  }

  private async scan(): Promise<void> {
    if (this.closed) return;
    const names = await readdir(this.options.exitDir).catch(() => [] as string[]);
    await Promise.all(names.map((name) => this.check(name)));
  }
}
