/**
 * CPU time of a process or thread from /proc/<pid>/stat (Linux; clock ticks of 10 ms, USER_HZ
 * 100), shared by the benches that report a daemon's CPU next to their wall-clock figures.
 */
import { readFileSync } from 'node:fs';

const TICK_MS = 10;

export interface CpuTimes {
  /** utime + stime, ms. */
  own: number;
  /** cutime + cstime (reaped children), ms. */
  children: number;
}

function readTimes(statPath: string): CpuTimes {
  const raw = readFileSync(statPath, 'utf8');
  // The fields after the command name, which may itself hold spaces and parentheses.
  const fields = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
  const ms = (i: number) => Number(fields[i]) * TICK_MS;
  return { own: ms(11) + ms(12), children: ms(13) + ms(14) };
}

/** The times in a stat file (/proc/<pid>/stat, /proc/<pid>/task/<tid>/stat); zeros when it is gone. */
export function statTimes(statPath: string): CpuTimes {
  try {
    return readTimes(statPath);
  } catch {
    return { own: 0, children: 0 };
  }
}

/** utime + stime of a live process, ms; throws when it is gone (a bench's daemon must not be). */
export function processCpuMs(pid: number): number {
  return readTimes(`/proc/${pid}/stat`).own;
}
