import { describe, expect, it } from 'vitest';
import { describeUndoFailures, RollbackStack } from '../../src/core/rollback.js';

describe('RollbackStack', () => {
  it('undoes newest first, runs every undo even after a failure, and reports the failures', async () => {
    const stack = new RollbackStack(1_000);
    const done: string[] = [];
    stack.push('first', async () => {
      done.push('first');
    });
    stack.push('second', async () => {
      throw new Error('cannot undo second');
    });
    stack.push('third', async () => {
      done.push('third');
    });
    expect(stack.descriptions).toEqual(['first', 'second', 'third']);
    const failures = await stack.unwind();
    expect(done).toEqual(['third', 'first']);
    expect(failures.map((f) => f.description)).toEqual(['second']);
    expect(describeUndoFailures(failures)).toBe('second: cannot undo second');
    expect(await stack.unwind()).toEqual([]);
  });

  it('gives each undo its own timeout, so one hanging undo does not stop the rest', async () => {
    const stack = new RollbackStack(50);
    const done: string[] = [];
    stack.push('after', async () => {
      done.push('after');
    });
    stack.push('hangs', () => new Promise<void>(() => undefined));
    const failures = await stack.unwind();
    expect(failures.map((f) => String(f.error))).toEqual([
      expect.stringMatching(/hangs did not finish within 0.05s/),
    ]);
    expect(done).toEqual(['after']);
  });

  it('forgets the undos on commit', async () => {
    const stack = new RollbackStack();
    let ran = false;
    stack.push('x', async () => {
      ran = true;
    });
    stack.commit();
    expect(await stack.unwind()).toEqual([]);
    expect(ran).toBe(false);
  });
});
