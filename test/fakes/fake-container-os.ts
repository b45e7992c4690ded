/**
 * Fakes for the container layer's narrow ports: the files it creates itself (log directories,
 * image VOLUME directories) and the image service. Every call is recorded; state is plain maps
 * the test sets.
 */
import type { ContainerOs } from '../../src/container/container-deps.js';
import type { ImageLookup } from '../../src/core/providers.js';
import { NotFoundError } from '../../src/errors.js';

export class FakeContainerOs implements ContainerOs {
  readonly calls: string[] = [];

  async prepareLogDirectory(logPath: string): Promise<void> {
    this.calls.push(`prepareLogDirectory ${logPath}`);
  }

  async checkLogReopen(logPath: string): Promise<void> {
    this.calls.push(`checkLogReopen ${logPath}`);
  }

  async makeVolumeDirs(rootfs: string, containerPaths: string[]): Promise<void> {
    this.calls.push(`makeVolumeDirs ${rootfs} ${containerPaths.join(',')}`);
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

  recovered = 0;

  async recover(): Promise<void> {
    this.recovered += 1;
  }

  async retainHolders(live: ReadonlySet<string>): Promise<void> {
    for (const set of this.holders.values()) for (const h of [...set]) if (!live.has(h)) set.delete(h);
  }

  holdersOf(id: string): string[] {
    return [...(this.holders.get(id) ?? [])];
  }
}
