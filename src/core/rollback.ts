/**
 * Rollback as a stack (STYLE.md habit 8, CRI-O's ResourceCleaner): each step of a multi-step
 * operation pushes its undo with a description; on failure the undos run in reverse order,
 * each with its own fresh deadline (never the cancelled request's signal, or a cancelled
 * RunPodSandbox could not clean up after itself). Every undo runs even when an earlier one
 * fails; the failures are returned so the caller can leave a visible NOTREADY object instead
 * of pretending everything was released.
 */
import { describeError } from '../errors.js';

export interface UndoFailure {
  description: string;
  error: unknown;
}

export class RollbackStack {
  readonly #steps: { description: string; undo: () => Promise<void> }[] = [];

  constructor(private readonly undoTimeoutMs = 60_000) {}

  push(description: string, undo: () => Promise<void>): void {
    this.#steps.push({ description, undo });
  }

  /** Descriptions of the pending undos, oldest first. */
  get descriptions(): string[] {
    return this.#steps.map((s) => s.description);
  }

  /** Forget the undos: the operation succeeded. */
  commit(): void {
    this.#steps.length = 0;
  }

  /** Runs every undo, newest first; returns the ones that failed (empty = clean). */
  async unwind(): Promise<UndoFailure[]> {
    const failures: UndoFailure[] = [];
    while (this.#steps.length > 0) {
      const step = this.#steps.pop()!;
      try {
        await withTimeout(step.undo(), this.undoTimeoutMs, step.description);
      } catch (error) {
        failures.push({ description: step.description, error });
      }
    }
    return failures;
  }
}

export function describeUndoFailures(failures: UndoFailure[]): string {
  return failures.map((f) => `${f.description}: ${describeError(f.error)}`).join('; ');
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000}s`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
