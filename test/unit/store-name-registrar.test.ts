import { describe, expect, it } from 'vitest';
import { KeyedMutex } from '../../src/store/keyed-mutex.js';
import { NameRegistrar } from '../../src/store/name-registrar.js';

describe('NameRegistrar', () => {
  it('gives a name to one owner; another owner gets AlreadyExists naming both', () => {
    const names = new NameRegistrar('pod sandbox');
    names.reserve('web_default_u_0', 'id1');
    names.reserve('web_default_u_0', 'id1');
    let error: unknown;
    try {
      names.reserve('web_default_u_0', 'id2');
    } catch (err) {
      error = err;
    }
    expect(error).toMatchObject({ kind: 'AlreadyExists' });
    expect(String(error)).toMatch(/"web_default_u_0" is reserved for id1/);
    expect(names.owner('web_default_u_0')).toBe('id1');
  });

  it('releases by name or owner, after which the name is free', () => {
    const names = new NameRegistrar('pod sandbox');
    names.reserve('a', 'id1');
    names.reserve('b', 'id2');
    names.releaseByOwner('id1');
    names.reserve('a', 'id3');
    names.releaseByName('b');
    names.reserve('b', 'id4');
    names.releaseByOwner('nobody');
    expect(names.owner('a')).toBe('id3');
    expect(names.owner('b')).toBe('id4');
    expect(names.size).toBe(2);
  });
});

describe('KeyedMutex', () => {
  it('runs tasks of one key one at a time, of different keys in parallel, and forgets idle keys', async () => {
    const mutex = new KeyedMutex();
    const log: string[] = [];
    const task = (name: string, ms: number) => async () => {
      log.push(`start ${name}`);
      await new Promise((r) => setTimeout(r, ms));
      log.push(`end ${name}`);
      return name;
    };
    const results = await Promise.all([
      mutex.run('k', task('a', 30)),
      mutex.run('k', task('b', 1)),
      mutex.run('other', task('c', 1)),
    ]);
    expect(results).toEqual(['a', 'b', 'c']);
    expect(log.indexOf('end a')).toBeLessThan(log.indexOf('start b'));
    expect(log.indexOf('end c')).toBeLessThan(log.indexOf('end a'));
    expect(mutex.size).toBe(0);
  });

  it('releases the key when a task throws', async () => {
    const mutex = new KeyedMutex();
    await expect(mutex.run('k', async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(mutex.run('k', async () => 'next')).resolves.toBe('next');
  });
});
