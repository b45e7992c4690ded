import { describe, expect, it } from 'vitest';
import { FAILPOINTS, parseFailpoints } from '../../src/failpoint.js';

describe('failpoints', () => {
  it('none armed without the variable, or with an empty one', () => {
    expect(parseFailpoints(undefined).size).toBe(0);
    expect(parseFailpoints(' , ').size).toBe(0);
  });

  it('arms the names listed, spaces ignored', () => {
    const armed = parseFailpoints(' pull.blob-verified, exec.started ');
    expect([...armed].sort()).toEqual(['exec.started', 'pull.blob-verified']);
    expect(FAILPOINTS).toContain('exec.started');
  });

  it('refuses an unknown name, naming it and the known ones', () => {
    expect(() => parseFailpoints('pull.blob-verified,container.typo')).toThrow(
      /unknown failpoint "container\.typo".*pull\.blob-verified/,
    );
  });
});
