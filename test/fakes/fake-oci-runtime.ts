/**
 * An in-memory OciRuntime: containers move created → running → stopped as a real one would,
 * every call is recorded, and one call can be made to fail once (`failNext`). Signals other
 * than SIGKILL are ignored unless the test says the container handles them (`handles`), like a
 * PID 1 without handlers.
 */

import type {
  CreateOptions,
  ExecResult,
  ExitInfo,
  OciRuntime,
  RuntimeState,
} from '../../src/container/oci-runtime.js';
import type { OciProcess, OciResources } from '../../src/container/oci-spec.js';
import { NotFoundError } from '../../src/errors.js';

export type FakeRuntimeMethod = keyof OciRuntime;

interface FakeContainer {
  options: CreateOptions;
  status: RuntimeState['status'];
  pid: number;
  exit: ExitInfo | null;
  handles: Set<string>;
  resources: OciResources | null;
}

export class FakeOciRuntime implements OciRuntime {
  readonly calls: { method: FakeRuntimeMethod; args: unknown[] }[] = [];
  readonly containers = new Map<string, FakeContainer>();
  private nextPid = 1000;
  private failure: { method: FakeRuntimeMethod; error: Error } | null = null;
  /** Results for exec by the command's first argument. */
  execResults = new Map<string, ExecResult>();

  /** The next call of `method` throws `error` (once). */
  failNext(method: FakeRuntimeMethod, error: Error): void {
    this.failure = { method, error };
  }

  /** The container exits with `exitCode` on `signal` (as if it had a handler). */
  handles(id: string, signal: string, exitCode = 0): void {
    this.get(id).handles.add(`${signal}:${exitCode}`);
  }

  /** The container's process exits by itself. */
  exitNow(id: string, exitCode: number, oomKilled = false): void {
    const c = this.get(id);
    c.status = 'stopped';
    c.pid = 0;
    c.exit = { exitCode, exitedAt: new Date(), oomKilled };
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

  async create(options: CreateOptions): Promise<{ pid: number }> {
    this.record('create', [options]);
    const pid = this.nextPid++;
    this.containers.set(options.id, {
      options,
      status: 'created',
      pid,
      exit: null,
      handles: new Set(),
      resources: null,
    });
    return { pid };
  }

  async start(id: string): Promise<void> {
    this.record('start', [id]);
    const c = this.get(id);
    if (c.status !== 'created') throw new Error(`container ${id} is ${c.status}, not created`);
    c.status = 'running';
  }

  async state(id: string): Promise<RuntimeState | null> {
    this.record('state', [id]);
    const c = this.containers.get(id);
    return c ? { status: c.status, pid: c.pid } : null;
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
    if (c.status === 'running' && !force) throw new Error(`container ${id} is running`);
    this.containers.delete(id);
  }

  async exec(
    id: string,
    process: Partial<OciProcess> & { args: string[] },
    timeoutMs: number,
  ): Promise<ExecResult> {
    this.record('exec', [id, process, timeoutMs]);
    this.get(id);
    return (
      this.execResults.get(process.args[0] ?? '') ?? {
        exitCode: 0,
        stdout: Buffer.alloc(0),
        stderr: Buffer.alloc(0),
      }
    );
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

  async waitExit(id: string, timeoutMs: number): Promise<ExitInfo | null> {
    this.record('waitExit', [id, timeoutMs]);
    return this.containers.get(id)?.exit ?? null;
  }

  async cleanup(id: string): Promise<void> {
    this.record('cleanup', [id]);
  }
}
