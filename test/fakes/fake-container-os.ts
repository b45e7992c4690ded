/**
 * Fakes for the container service's narrow ports: the OS files it touches (cgroups, log
 * directories, conmon's control FIFO, conmon liveness) and the image service. Every call is
 * recorded; state is plain maps the test sets.
 */
import path from 'node:path';
import type { ContainerOs, ImageLookup } from '../../src/container/container-deps.js';
import { NotFoundError } from '../../src/errors.js';

export class FakeContainerOs implements ContainerOs {
  readonly calls: string[] = [];
  /** cgroup (relative) → file → content. */
  readonly cgroupFiles = new Map<string, Map<string, string>>();
  readonly cgroups = new Set<string>();
  readonly existing = new Set<string>();
  readonly fifoWrites: { path: string; text: string }[] = [];
  /** FIFOs nobody reads (conmon gone). */
  readonly deadFifos = new Set<string>();
  /** What a write to a FIFO does (e.g. conmon reopening a log). */
  onFifoWrite: (p: string, text: string) => void = () => undefined;
  /** pid file → alive; absent = alive. */
  readonly monitors = new Map<string, boolean | null>();

  setCgroupFile(cgroup: string, file: string, content: string): void {
    let files = this.cgroupFiles.get(cgroup);
    if (!files) {
      files = new Map();
      this.cgroupFiles.set(cgroup, files);
    }
    files.set(file, content);
  }

  async ensureCgroup(relative: string): Promise<string> {
    this.calls.push(`ensureCgroup ${relative}`);
    this.cgroups.add(relative);
    return path.join('/sys/fs/cgroup', relative);
  }

  async removeCgroup(relative: string): Promise<void> {
    this.calls.push(`removeCgroup ${relative}`);
    this.cgroups.delete(relative);
  }

  async readCgroupFile(relative: string, file: string): Promise<string | null> {
    return this.cgroupFiles.get(relative)?.get(file) ?? null;
  }

  async prepareLogDirectory(logPath: string): Promise<void> {
    this.calls.push(`prepareLogDirectory ${logPath}`);
  }

  async exists(p: string): Promise<boolean> {
    return this.existing.has(p);
  }

  async writeFifo(p: string, text: string): Promise<boolean> {
    this.calls.push(`writeFifo ${p}`);
    if (this.deadFifos.has(p)) return false;
    this.fifoWrites.push({ path: p, text });
    this.onFifoWrite(p, text);
    return true;
  }

  async makeVolumeDirs(rootfs: string, containerPaths: string[]): Promise<void> {
    this.calls.push(`makeVolumeDirs ${rootfs} ${containerPaths.join(',')}`);
  }

  async monitorAlive(pidFile: string): Promise<boolean | null> {
    return this.monitors.has(pidFile) ? this.monitors.get(pidFile)! : true;
  }
}

export interface FakeImage {
  id: string;
  config: Record<string, unknown>;
  layerDirs: string[];
  repoTags: string[];
  repoDigests: string[];
}

export class FakeImages implements ImageLookup {
  readonly images: FakeImage[] = [];
  readonly holders = new Map<string, Set<string>>();
  readonly calls: string[] = [];

  add(image: FakeImage): void {
    this.images.push(image);
  }

  async resolveImage(name: string): Promise<FakeImage> {
    const found = this.images.find(
      (i) => i.id === name || i.repoTags.includes(name) || i.repoDigests.includes(name),
    );
    if (!found) throw new NotFoundError(`image ${name} not found`);
    return structuredClone(found);
  }

  async markInUse(id: string, holder: string): Promise<void> {
    this.calls.push(`markInUse ${id} ${holder}`);
    const set = this.holders.get(id) ?? new Set();
    set.add(holder);
    this.holders.set(id, set);
  }

  async release(id: string, holder: string): Promise<void> {
    this.calls.push(`release ${id} ${holder}`);
    this.holders.get(id)?.delete(holder);
  }

  async retainHolders(live: ReadonlySet<string>): Promise<void> {
    for (const set of this.holders.values()) for (const h of [...set]) if (!live.has(h)) set.delete(h);
  }

  holdersOf(id: string): string[] {
    return [...(this.holders.get(id) ?? [])];
  }
}
