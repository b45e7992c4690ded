import pino, { type Logger } from 'pino';

export type { Logger } from 'pino';

export interface LogOptions {
  level?: string;
  /** Pretty, human-oriented output; default: when stderr is a TTY. */
  pretty?: boolean;
}

/**
 * The daemon's logger: JSON lines on stderr (what journald and log shippers want),
 * pretty-printed when a person is watching a terminal.
 */
export function createLogger(options: LogOptions = {}): Logger {
  const level = options.level ?? process.env.ROOTLESS_CRI_LOG_LEVEL ?? 'info';
  const pretty = options.pretty ?? process.stderr.isTTY === true;
  if (pretty) {
    return pino({
      level,
      transport: { target: 'pino-pretty', options: { destination: 2, colorize: true } },
    });
  }
  return pino({ level, base: { pid: process.pid } }, pino.destination({ dest: 2, sync: false }));
}

/** A logger that drops everything, for unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
