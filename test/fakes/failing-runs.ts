/**
 * Every run() failing with one error while `body` runs: what a caller sees when the run server
 * ends under its program (os/run-server.ts answers Unavailable).
 */
import { delegateRuns } from '../../src/os/process-runner.js';

export async function withRunsFailing<T>(error: Error, body: () => Promise<T>): Promise<T> {
  const unused = () => {
    throw new Error('withRunsFailing: only run() is faked');
  };
  delegateRuns({
    available: () => true,
    run: () => Promise.reject(error),
    startDetached: unused,
    startReporting: unused,
  });
  try {
    return await body();
  } finally {
    delegateRuns(null);
  }
}
