/**
 * Name reservation, as containerd's registrar does it: a name maps to exactly one owner id
 * while it is reserved. Reserving a name for a different owner fails with AlreadyExists
 * naming both, so two concurrent identical requests cannot both create an object. Reserving
 * again for the same owner is a no-op (recovery re-registers names that way).
 *
 * In memory only: the records on disk are the truth, and recovery rebuilds the reservations
 * from them before the daemon answers any request.
 */
import { AlreadyExistsError } from '../errors.js';

export class NameRegistrar {
  readonly #owners = new Map<string, string>();
  readonly #names = new Map<string, string>();

  constructor(
    /** What a name denotes, for error messages ("pod sandbox", "container"). */
    private readonly what: string,
  ) {}

  reserve(name: string, owner: string): void {
    const current = this.#owners.get(name);
    if (current === owner) return;
    if (current !== undefined) {
      throw new AlreadyExistsError(
        `${this.what} name "${name}" is reserved for ${current}; remove ${current} first or use another name or attempt`,
      );
    }
    const previous = this.#names.get(owner);
    if (previous !== undefined && previous !== name) this.#owners.delete(previous);
    this.#owners.set(name, owner);
    this.#names.set(owner, name);
  }

  /** The owner holding `name`, if any. */
  owner(name: string): string | undefined {
    return this.#owners.get(name);
  }

  releaseByName(name: string): void {
    const owner = this.#owners.get(name);
    if (owner === undefined) return;
    this.#owners.delete(name);
    this.#names.delete(owner);
  }

  releaseByOwner(owner: string): void {
    const name = this.#names.get(owner);
    if (name === undefined) return;
    this.#names.delete(owner);
    this.#owners.delete(name);
  }

  get size(): number {
    return this.#owners.size;
  }
}
