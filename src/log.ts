import pino, { type Logger } from 'pino';

export type { Logger } from 'pino';

export interface LogOptions {
  level?: string;
}

/**
 * The daemon's logger: JSON lines on stderr, what journald, kubelet's log collection and log
 * shippers read; also on a terminal (a person pipes it through `npx pino-pretty`), so the
 * daemon carries no pretty-printer and starts no transport thread.
 */
export function createLogger(options: LogOptions = {}): Logger {
  const level = options.level ?? process.env.ROOTLESS_CRI_LOG_LEVEL ?? 'info';
  return pino({ level, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: false }));
}

/** A logger that drops everything, for unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
