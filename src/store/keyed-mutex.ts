/**
 * One-at-a-time per key: RunPodSandbox, StopPodSandbox and RemovePodSandbox of one sandbox
 * never interleave, while different sandboxes proceed in parallel.
 */
export class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>();

  async run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const current = new Promise<void>((resolve) => {
      release = resolve;
    });
    const tail = previous.then(() => current);
    this.#tails.set(key, tail);
    await previous;
    try {
      return await task();
    } finally {
      release();
      // Drop the entry when nobody queued behind us, so the map does not grow per object.
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }

  /** Keys with a running or queued task (for tests and leak checks). */
  get size(): number {
    return this.#tails.size;
  }
}
