import { describe, expect, it } from 'vitest';
import { pidOneDropsSignal, signalNumber } from '../../src/os/oci-runtime.js';

const status = (nspid: string, sigcgt: string) =>
  `Name:\tsleep\nNSpid:\t${nspid}\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t${sigcgt}\n`;

describe('signals a container init drops', () => {
  it('names and numbers map to signal numbers', () => {
    expect(signalNumber('SIGTERM')).toBe(15);
    expect(signalNumber('TERM')).toBe(15);
    expect(signalNumber('9')).toBe(9);
    expect(signalNumber('SIGNOPE')).toBeUndefined();
  });

  it('PID 1 of a pid namespace without a SIGTERM handler drops SIGTERM', () => {
    expect(pidOneDropsSignal(status('4242\t1', '0000000000000000'), 15)).toBe(true);
  });

  it('a handler for the signal (bit 15 of SigCgt) means it is delivered', () => {
    expect(pidOneDropsSignal(status('4242\t1', '0000000000004000'), 15)).toBe(false);
    // A handler for another signal only (SIGINT, bit 2) does not help SIGTERM.
    expect(pidOneDropsSignal(status('4242\t1', '0000000000000002'), 15)).toBe(true);
  });

  it('a process that is not its namespace init gets default actions', () => {
    expect(pidOneDropsSignal(status('4242\t7', '0000000000000000'), 15)).toBe(false);
    expect(pidOneDropsSignal(status('4242', '0000000000000000'), 15)).toBe(false);
  });

  it('never claims SIGKILL is dropped, and an unreadable status drops nothing', () => {
    expect(pidOneDropsSignal(status('4242\t1', '0000000000000000'), 9)).toBe(false);
    expect(pidOneDropsSignal('', 15)).toBe(false);
  });
});
