/**
 * An in-memory OciRuntime that behaves as the real one does (the OCI runtime contract suite,
 * test/unit/oci-runtime-contract.ts, runs against both): containers move created → running →
 * stopped; exits are delivered to onExit listeners and wake waitExit as they happen (never at
 * once); start of a container that is not created is FailedPrecondition, kill/start/update of
 * an unknown one NotFound; delete of an unknown one is fine. Every call is recorded, and one
 * call can be made to fail once (`failNext`). Signals other than SIGKILL are dropped unless the
 * test says the container handles them (`handles`), like a PID 1 without handlers.
 */
import { FailedPreconditionError, NotFoundError } from '../../src/errors.js';
import type {
  CreateOptions,
  ExecFailure,
  ExecResult,
  ExitInfo,
  ExitListener,
  OciRuntime,
  RuntimePaths,
  RuntimeState,
} from '../../src/os/oci-runtime.js';
import type { OciProcess, OciResources } from '../../src/os/oci-spec.js';
import type { StdioOptions, StreamSession } from '../../src/os/stream-session.js';

export type FakeRuntimeMethod = keyof OciRuntime;

interface FakeContainer {
  options: CreateOptions;
  status: RuntimeState['status'];
  pid: number;
  exit: ExitInfo | null;
  handles: Set<string>;
  resources: OciResources | null;
  monitorAlive: boolean;
}

export class FakeOciRuntime implements OciRuntime {
  readonly calls: { method: FakeRuntimeMethod; args: unknown[] }[] = [];
  readonly containers = new Map<string, FakeContainer>();
  readonly paths: RuntimePaths = {
    bundleDir: (id) => `/fake/bundles/${id}`,
    ctlFifo: (id) => `/fake/bundles/${id}/ctl`,
    attachSocket: (id) => `/fake/s/${id}/attach`,
    conmonPidFile: (id) => `/fake/bundles/${id}/conmon.pid`,
  };
  private nextPid = 1000;
  private failure: { method: FakeRuntimeMethod; error: Error } | null = null;
  private readonly listeners = new Set<ExitListener>();
  private readonly waiters = new Map<string, Set<(info: ExitInfo) => void>>();
  /** Results for exec by the command's first argument. */
  execResults = new Map<string, ExecResult>();
  /** Streaming sessions for execStream/attach (tests put them in). */
  sessions: StreamSession[] = [];
  /** Signals the init of a container drops (PID 1 without a handler): by container id. */
  readonly dropsSignals = new Map<string, Set<string>>();
  /** Containers whose process failed at execve after start (what execFailure reports), by id. */
  readonly execFailures = new Map<string, ExecFailure>();

  /** The next call of `method` throws `error` (once). */
  failNext(method: FakeRuntimeMethod, error: Error): void {
    this.failure = { method, error };
  }

  /** The container exits with `exitCode` on `signal` (as if it had a handler). */
  handles(id: string, signal: string, exitCode = 0): void {
    this.get(id).handles.add(`${signal}:${exitCode}`);
  }

  /** The container's process exits by itself: listeners and waiters hear of it. */
  exitNow(id: string, exitCode: number, oomKilled = false): void {
    const c = this.get(id);
    if (c.exit) return;
    c.status = 'stopped';
    c.pid = 0;
    c.exit = { exitCode, exitedAt: new Date(), oomKilled };
    const info = c.exit;
    for (const wake of this.waiters.get(id) ?? []) wake(info);
    this.waiters.delete(id);
    for (const listener of this.listeners) listener(id, info);
  }

  /** The container's monitor dies without recording an exit. */
  killMonitor(id: string): void {
    this.get(id).monitorAlive = false;
  }

  methods(): FakeRuntimeMethod[] {
    return this.calls.map((c) => c.method);
  }

  private record(method: FakeRuntimeMethod, args: unknown[]): void {
    this.calls.push({ method, args });
    if (this.failure?.method === method) {
      const { error } = this.failure;
      this.failure = null;
      throw error;
    }
  }

  private get(id: string): FakeContainer {
    const c = this.containers.get(id);
    if (!c) throw new NotFoundError(`container ${id} does not exist in the runtime`);
    return c;
  }

  async open(): Promise<void> {
    this.record('open', []);
  }

  close(): void {
    this.record('close', []);
    for (const [, set] of this.waiters) set.clear();
  }

  async create(options: CreateOptions): Promise<{ pid: number }> {
    this.record('create', [options]);
    options.signal?.throwIfAborted();
    const pid = this.nextPid++;
    this.containers.set(options.id, {
      options,
      status: 'created',
      pid,
      exit: null,
      handles: new Set(),
      resources: null,
      monitorAlive: true,
    });
    return { pid };
  }

  async start(id: string): Promise<void> {
    this.record('start', [id]);
    const c = this.get(id);
    if (c.status !== 'created')
      throw new FailedPreconditionError(`cannot start container ${id}: it is ${c.status}`);
    c.status = 'running';
  }

  async state(id: string): Promise<RuntimeState | null> {
    this.record('state', [id]);
    const c = this.containers.get(id);
    return c ? { status: c.status, pid: c.pid } : null;
  }

  async initDropsSignal(id: string, signal: string): Promise<boolean> {
    this.record('initDropsSignal', [id, signal]);
    return this.dropsSignals.get(id)?.has(signal) ?? false;
  }

  async kill(id: string, signal: string, all = false): Promise<void> {
    this.record('kill', [id, signal, all]);
    const c = this.get(id);
    if (c.status !== 'running' && c.status !== 'created') return;
    if (signal === 'SIGKILL') return this.exitNow(id, 137);
    const handled = [...c.handles].find((h) => h.startsWith(`${signal}:`));
    if (handled) this.exitNow(id, Number(handled.split(':')[1]));
  }

  async delete(id: string, force: boolean): Promise<void> {
    this.record('delete', [id, force]);
    const c = this.containers.get(id);
    if (!c) return;
    if (c.status === 'running' && !force) {
      throw new FailedPreconditionError(`cannot delete container ${id}: it is running`);
    }
    this.containers.delete(id);
  }

  async exec(
    id: string,
    process: Partial<OciProcess> & { args: string[] },
    options: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<ExecResult> {
    this.record('exec', [id, process, options.timeoutMs]);
    this.get(id);
    return (
      this.execResults.get(process.args[0] ?? '') ?? {
        exitCode: 0,
        stdout: Buffer.alloc(0),
        stderr: Buffer.alloc(0),
      }
    );
  }

  async execStream(id: string, cmd: string[], stdio: StdioOptions): Promise<StreamSession> {
    this.record('execStream', [id, cmd, stdio]);
    this.get(id);
    const session = this.sessions.shift();
    if (!session) throw new FailedPreconditionError('fake runtime: no session prepared');
    return session;
  }

  async attach(
    id: string,
    container: { tty: boolean; stdin: boolean },
    stdio: StdioOptions,
  ): Promise<StreamSession> {
    this.record('attach', [id, container, stdio]);
    this.get(id);
    const session = this.sessions.shift();
    if (!session) throw new FailedPreconditionError('fake runtime: no session prepared');
    return session;
  }

  async control(id: string, message: 'reopen-log'): Promise<boolean> {
    this.record('control', [id, message]);
    return this.containers.get(id)?.monitorAlive ?? false;
  }

  async update(id: string, resources: OciResources): Promise<void> {
    this.record('update', [id, resources]);
    this.get(id).resources = resources;
  }

  async pids(id: string): Promise<number[]> {
    this.record('pids', [id]);
    const c = this.get(id);
    return c.status === 'running' ? [c.pid] : [];
  }

  async exitInfo(id: string): Promise<ExitInfo | null> {
    this.record('exitInfo', [id]);
    return this.containers.get(id)?.exit ?? null;
  }

  waitExit(id: string, timeoutMs: number, signal?: AbortSignal): Promise<ExitInfo | null> {
    this.record('waitExit', [id, timeoutMs]);
    const known = this.containers.get(id)?.exit;
    if (known) return Promise.resolve(known);
    return new Promise((resolve) => {
      const set = this.waiters.get(id) ?? new Set();
      this.waiters.set(id, set);
      const finish = (info: ExitInfo | null) => {
        clearTimeout(timer);
        set.delete(wake);
        resolve(info);
      };
      const wake = (info: ExitInfo) => finish(info);
      set.add(wake);
      const timer = setTimeout(() => finish(null), timeoutMs);
      signal?.addEventListener('abort', () => finish(null), { once: true });
    });
  }

  onExit(listener: ExitListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async monitorAlive(id: string): Promise<boolean | null> {
    this.record('monitorAlive', [id]);
    const c = this.containers.get(id);
    return c ? c.monitorAlive : null;
  }

  async cleanup(id: string): Promise<void> {
    this.record('cleanup', [id]);
  }

  async execFailure(id: string, logPath: string): Promise<ExecFailure | null> {
    this.record('execFailure', [id, logPath]);
    return this.execFailures.get(id) ?? null;
  }
}
