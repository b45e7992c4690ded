import { InternalError, InvalidArgumentError } from '../../src/errors.js';
import type {
  InfraProcess,
  NamespacePaths,
  NamespaceSettings,
  PodNamespacesRequest,
  SandboxOs,
} from '../../src/os/sandbox-os.js';

type Method = keyof SandboxOs;

/**
 * An in-memory node: pinned namespace files and infra processes (cgroups: FakeCgroupManager). Records
 * every call in order and can fail the next call of one method (or block it until released).
 */
export class FakeSandboxOs implements SandboxOs {
  readonly calls: { method: Method; args: unknown[] }[] = [];
  readonly pinned = new Set<string>();
  readonly infras = new Map<number, InfraProcess>();
  readonly configured: { ns: NamespacePaths; settings: NamespaceSettings }[] = [];
  #nextPid = 100;
  #failures = new Map<Method, Error>();
  #gates = new Map<Method, Promise<void>>();

  /** `journal` (shared with other fakes) gets "os.<method>" for every call, in order. */
  constructor(private readonly journal: string[] = []) {}

  failNext(method: Method, error: Error): void {
    this.#failures.set(method, error);
  }

  /** The next call of `method` waits until the returned function is called. */
  blockNext(method: Method): () => void {
    let release!: () => void;
    this.#gates.set(method, new Promise<void>((r) => (release = r)));
    return () => release();
  }

  /** What a test sees as "left behind". */
  leftovers(): string[] {
    return [...[...this.pinned].map((p) => `pin ${p}`), ...[...this.infras.keys()].map((p) => `infra ${p}`)];
  }

  /** Simulates the infra process dying behind the daemon's back. */
  killInfra(pid: number): void {
    this.infras.delete(pid);
  }

  private async enter(method: Method, args: unknown[]): Promise<void> {
    this.calls.push({ method, args });
    this.journal.push(`os.${method}`);
    const gate = this.#gates.get(method);
    if (gate) {
      this.#gates.delete(method);
      await gate;
    }
    const failure = this.#failures.get(method);
    if (failure) {
      this.#failures.delete(method);
      throw failure;
    }
  }

  /**
   * Pins (the pod's own user namespace first, when asked for), then applies the settings
   * (recorded in `configured`, with the user namespace they were applied in), then starts the infra.
   */
  async createPodNamespaces(request: PodNamespacesRequest): Promise<InfraProcess | null> {
    await this.enter('createPodNamespaces', [request]);
    const { pins, settings } = request;
    const hasSettings = settings.loopbackUp || settings.hostname !== null || settings.sysctls.length > 0;
    if (pins.length === 0 && hasSettings) {
      throw new InternalError('pod namespace settings without pod namespaces would change the node itself');
    }
    const userns = request.userNamespace ? [{ path: request.userNamespace.path }] : [];
    for (const p of [...userns, ...pins]) {
      if (this.pinned.has(p.path)) throw new Error(`${p.path} exists`);
      this.pinned.add(p.path);
    }
    // As on the node, the settings are applied inside the namespaces once they are pinned: a
    // refused value leaves the pins for the caller's rollback.
    checkSysctls(settings);
    if (hasSettings) {
      const ns: NamespacePaths = {};
      if (request.userNamespace) ns.user = request.userNamespace.path;
      for (const p of pins) ns[p.kind] = p.path;
      this.configured.push({ ns, settings });
    }
    if (request.infra === null) return null;
    const pid = this.#nextPid++;
    const infra = {
      pid,
      wrapperPid: pid + 1000,
      startTime: String(pid * 7),
      pidNamespaceInode: 4026530000 + pid,
    };
    this.infras.set(pid, infra);
    return infra;
  }

  async unpinNamespaces(paths: string[]): Promise<void> {
    await this.enter('unpinNamespaces', [paths]);
    for (const p of paths) this.pinned.delete(p);
  }

  async isPinned(path: string): Promise<boolean> {
    return this.pinned.has(path);
  }

  async infraAlive(infra: InfraProcess): Promise<boolean> {
    return this.infras.get(infra.pid)?.startTime === infra.startTime;
  }

  async stopInfra(infra: InfraProcess): Promise<void> {
    await this.enter('stopInfra', [infra]);
    this.infras.delete(infra.pid);
  }

  async configureNamespaces(ns: NamespacePaths, settings: NamespaceSettings): Promise<void> {
    await this.enter('configureNamespaces', [ns, settings]);
    if (!ns.net && !ns.ipc && !ns.uts) {
      throw new InternalError('pod namespace settings without pod namespaces would change the node itself');
    }
    checkSysctls(settings);
    this.configured.push({ ns, settings });
  }
}

/** The kernel's answer to a value it cannot parse, as the real node gives it. */
function checkSysctls(settings: NamespaceSettings): void {
  for (const s of settings.sysctls) {
    if (/bogus/.test(s.value)) {
      throw new InvalidArgumentError(
        `sysctl ${s.key}=${JSON.stringify(s.value)} was refused by the kernel inside the pod`,
      );
    }
  }
}
