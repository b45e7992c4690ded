/**
 * The execve limits of exec-limits.ts: the kernel's arithmetic, checked against the kernel
 * itself (a program started exactly at the limit runs, one byte more is E2BIG), and the
 * InvalidArgument errors CreateContainer answers with.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  checkExecLimits,
  execArgumentLimit,
  execArgumentSize,
  KERNEL_ARG_MAX_FLOOR,
  MAX_ARG_STRLEN,
  parseStackLimit,
} from '../../src/container/exec-limits.js';
import { InvalidArgumentError } from '../../src/errors.js';

const MiB = 1024 * 1024;

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max stack size            8388608              unlimited            bytes
Max core file size        0                    unlimited            bytes
`;

describe('the kernel limit', () => {
  it('is a quarter of the stack limit, at most 6 MiB, at least 32 pages', () => {
    expect(execArgumentLimit(8 * MiB)).toBe(2 * MiB);
    expect(execArgumentLimit(64 * MiB)).toBe(6 * MiB);
    expect(execArgumentLimit(null)).toBe(6 * MiB);
    expect(execArgumentLimit(100 * 1024)).toBe(KERNEL_ARG_MAX_FLOOR);
  });

  it('reads the soft stack limit of /proc/<pid>/limits', () => {
    expect(parseStackLimit(LIMITS)).toBe(8 * MiB);
    expect(parseStackLimit(LIMITS.replace('8388608  ', 'unlimited'))).toBeNull();
    expect(parseStackLimit('nothing here')).toBeUndefined();
  });

  it('counts strings with their NULs and one pointer per string', () => {
    // "/bin/true\0" + "true\0" + "A=b\0" + two pointers.
    expect(execArgumentSize('/bin/true', ['true'], ['A=b']).bytes).toBe(10 + 5 + 4 + 16);
    // argc 0 still counts one pointer (the kernel makes room for argv[0]).
    expect(execArgumentSize('/x', [], []).bytes).toBe(3 + 8);
    expect(execArgumentSize('/x', ['x'], ['K=ü']).bytes).toBe(3 + 2 + 5 + 16);
  });
});

/** An environment that, with `args`, needs exactly `target` bytes for execve('/bin/true', args). */
function envOfSize(target: number, args: string[], varBytes = 4000): string[] {
  const env: string[] = [];
  const base = execArgumentSize('/bin/true', args, []).bytes;
  let left = target - base;
  let i = 0;
  while (left > 0) {
    const name = `V${i++}=`;
    // Each variable costs its bytes + NUL + a pointer.
    const body = Math.min(varBytes, left - name.length - 1 - 8);
    if (body < 0) throw new Error('cannot reach the size exactly');
    env.push(name + 'x'.repeat(body));
    left -= name.length + body + 1 + 8;
  }
  return env;
}

describe('against the kernel', () => {
  const stack = parseStackLimit(readFileSync('/proc/self/limits', 'utf8'));
  const limit = execArgumentLimit(stack === undefined ? 8 * MiB : stack);

  function run(env: string[]): { ok: boolean; code: string | undefined } {
    const asObject = Object.fromEntries(
      env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]),
    );
    const r = spawnSync('/bin/true', [], { env: asObject, argv0: 'true' });
    return {
      ok: r.error === undefined && r.status === 0,
      code: (r.error as NodeJS.ErrnoException | undefined)?.code,
    };
  }

  it('runs a program exactly at the limit and refuses one byte more, as computed', () => {
    const atLimit = envOfSize(limit, ['true']);
    expect(execArgumentSize('/bin/true', ['true'], atLimit).bytes).toBe(limit);
    expect(run(atLimit)).toEqual({ ok: true, code: undefined });
    const over = [...atLimit];
    over[0] += 'x';
    expect(execArgumentSize('/bin/true', ['true'], over).bytes).toBe(limit + 1);
    expect(run(over)).toEqual({ ok: false, code: 'E2BIG' });
  });

  it('refuses one variable over MAX_ARG_STRLEN even far below the limit', () => {
    const longest = `L=${'x'.repeat(MAX_ARG_STRLEN - 3)}`; // with its NUL: exactly MAX_ARG_STRLEN
    expect(run([longest]).ok).toBe(true);
    expect(run([`${longest}x`])).toEqual({ ok: false, code: 'E2BIG' });
  });
});

describe('checkExecLimits', () => {
  const process = (env: string[], extra: object = {}) => ({ args: ['/bin/true'], env, ...extra });

  it('accepts what execve accepts (HOME counted as crun sets it when missing)', () => {
    const env = envOfSize(2 * MiB - 'HOME=/'.length - 1 - 8, ['/bin/true']);
    expect(() => checkExecLimits(process(env), 8 * MiB)).not.toThrow();
    // With HOME given, nothing is added for it.
    expect(() =>
      checkExecLimits(process([...envOfSize(2 * MiB - 16, ['/bin/true']), 'HOME=/']), 8 * MiB),
    ).not.toThrow();
  });

  it('refuses what execve refuses, naming the sizes and the limit', () => {
    const env = envOfSize(2 * MiB - 'HOME=/'.length - 1 - 8 + 1, ['/bin/true']);
    let error: unknown;
    try {
      checkExecLimits(process(env), 8 * MiB);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(String(error)).toMatch(
      /2\.00 MiB.*kernel refuses.*over 2\.00 MiB \(E2BIG: a quarter of the stack limit of 8\.00 MiB\)/,
    );
  });

  it('150,000 variables of an image are refused at once', () => {
    const env = Array.from({ length: 150_000 }, (_, i) => `VAR_${i}=v${i}`);
    const started = performance.now();
    expect(() => checkExecLimits(process(env), 8 * MiB)).toThrow(/150000 variables.*E2BIG/);
    // One pass over the strings: far below a second even on a busy machine.
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it('refuses a single variable over MAX_ARG_STRLEN, naming it', () => {
    expect(() => checkExecLimits(process([`BLOB=${'x'.repeat(MAX_ARG_STRLEN)}`]), 8 * MiB)).toThrow(
      /environment variable BLOB .*over 131071 bytes \(MAX_ARG_STRLEN/,
    );
    expect(() => checkExecLimits({ args: ['sh', 'x'.repeat(MAX_ARG_STRLEN)], env: [] }, 8 * MiB)).toThrow(
      /argument 1/,
    );
  });

  it("takes the spec's RLIMIT_STACK over the daemon's, and an unlimited stack as 6 MiB", () => {
    const env = envOfSize(3 * MiB, ['/bin/true']);
    expect(() => checkExecLimits(process(env), 8 * MiB)).toThrow(InvalidArgumentError);
    expect(() =>
      checkExecLimits(
        process(env, { rlimits: [{ type: 'RLIMIT_STACK', soft: 16 * MiB, hard: 16 * MiB }] }),
        8 * MiB,
      ),
    ).not.toThrow();
    expect(() => checkExecLimits(process(env), null)).not.toThrow();
    expect(() => checkExecLimits(process(envOfSize(7 * MiB, ['/bin/true'])), null)).toThrow(/at most 6 MiB/);
    // Not known: the usual 8 MiB.
    expect(() => checkExecLimits(process(env), undefined)).toThrow(InvalidArgumentError);
  });
});
