/**
 * Attaching to a container's main process through its conmon (`crictl attach`, `kubectl
 * attach`). conmon listens on a SOCK_SEQPACKET attach socket (which Node cannot open; the
 * native attach-relay helper does) and copies the container's output to every attacher
 * as well as to the log file; what an attacher sends goes to the container's stdin.
 * Resizes go through conmon's control FIFO as "1 <rows> <columns>\n".
 *
 * stdin_once: conmon closes the container's stdin when an attacher shuts down its stdin
 * (or disconnects), unless it runs with --leave-stdin-open (containers without stdin_once).
 * Several attachers may be connected at once; each gets all output from its arrival on.
 *
 * conmon writes to attachers with blocking writes, so a slow client would stall the
 * container's output and its log. The relay's output is therefore always read at once and
 * buffered here up to a cap; past it, that client loses output rather than the container
 * stalling.
 */
import type { ChildProcess } from 'node:child_process';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { Readable, type Writable } from 'node:stream';
import { FailedPreconditionError, UnavailableError } from '../errors.js';
import type { Logger } from '../log.js';
import { decodeHelperReport } from './native-helpers.js';
import { start } from './process-runner.js';
import type { StdioOptions, StreamSession } from './stream-session.js';

/** conmon's control FIFO message type for a terminal resize. */
const CTL_RESIZE = 1;
/** Output buffered per attacher before that attacher starts losing output. */
export const DEFAULT_BACKLOG_BYTES = 8 * 1024 * 1024;

export interface ConmonAttachRequest {
  id: string;
  relayPath: string;
  attachSocketPath: string;
  ctlFifoPath: string | undefined;
  /** The container runs with a terminal. */
  tty: boolean;
  /** The container has stdin open (its config's stdin). */
  containerStdin: boolean;
  stdio: StdioOptions;
  logger: Logger;
  backlogBytes?: number;
  writeFifo?: (fifo: string, text: string) => Promise<boolean>;
}

export async function attachToConmon(request: ConmonAttachRequest): Promise<StreamSession> {
  const log = request.logger.child({ container: request.id, attach: true });
  const options = request.stdio;
  const writeFifo = request.writeFifo ?? writeFifoNonBlocking;
  // Without stdin in the container's config there is nothing to write to.
  const withStdin = options.stdin && request.containerStdin;
  const { child } = start(
    request.relayPath,
    [request.attachSocketPath, ...(withStdin ? [] : ['--no-stdin'])],
    {
      stdio: [withStdin ? 'pipe' : 'ignore', 'pipe', 'pipe', 'pipe'],
    },
  );
  await connected(child, request.relayPath, request.id);

  const backlog = request.backlogBytes ?? DEFAULT_BACKLOG_BYTES;
  const onDrop = (bytes: number) => log.warn({ bytes }, 'attach client too slow; output dropped for it');
  // With a tty, conmon has one output stream (stdout); the relay's stderr data fd stays silent.
  const stdout = options.stdout ? child.stdout : null;
  const stderr = !request.tty && options.stderr ? (child.stdio[3] as Readable) : null;
  const ended = new Promise<number>((resolve) => {
    child.once('exit', (code) => {
      if (code !== 0) log.debug({ code }, 'attach relay ended');
      // Attach reports success when the stream ends (the reference server does not
      // forward the container's exit code: that is ContainerStatus's job).
      resolve(0);
    });
  });
  for (const unused of [stdout ? null : child.stdout, stderr ? null : (child.stdio[3] as Readable)]) {
    unused?.resume();
  }
  child.stdin?.on('error', () => {});
  const ctlFifo = request.ctlFifoPath;
  let done = false;
  void ended.then(() => {
    done = true;
  });
  return {
    stdin: (child.stdin as Writable | null) ?? undefined,
    stdout: stdout ? unblocked(stdout, backlog, onDrop) : undefined,
    stderr: stderr ? unblocked(stderr, backlog, onDrop) : undefined,
    resize: (width, height) => {
      if (!request.tty || !ctlFifo || width <= 0 || height <= 0) return;
      void writeFifo(ctlFifo, `${CTL_RESIZE} ${height} ${width}\n`).catch((error) =>
        log.debug({ err: error }, 'resize not delivered'),
      );
    },
    wait: () => ended,
    kill: () => {
      // Detach only: the container keeps running.
      if (!done) child.kill('SIGKILL');
    },
  };
}

/** Resolves once the relay reported {"ok":true}; rejects with what it said otherwise. */
function connected(child: ChildProcess, relay: string, id: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = '';
    let settled = false;
    const settle = (error?: Error) => {
      if (settled) return;
      settled = true;
      if (error) {
        child.kill('SIGKILL');
        reject(error);
      } else resolve();
    };
    child.once('error', (error) =>
      settle(
        new FailedPreconditionError(`Attach: cannot run ${relay}: ${error.message}; run \`npm run build\``, {
          cause: error,
        }),
      ),
    );
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      if (settled) return;
      text += chunk;
      const newline = text.indexOf('\n');
      if (newline < 0) {
        if (text.length > 4096)
          settle(new UnavailableError(`Attach: attach-relay said: ${text.slice(0, 200)}`));
        return;
      }
      const report = decodeHelperReport(text.slice(0, newline));
      if (!report) {
        settle(new UnavailableError(`Attach: attach-relay said: ${text.slice(0, newline)}`));
        return;
      }
      if (report.ok) settle();
      else
        settle(
          report.kind === 'connect'
            ? new FailedPreconditionError(
                `Attach: cannot reach the monitor of container ${id} (${report.error}); the container may have exited`,
              )
            : new UnavailableError(`Attach: attach-relay failed: ${String(report.error ?? 'unknown error')}`),
        );
    });
    child.once('close', (code) => {
      settle(
        new UnavailableError(`Attach: attach-relay exited with ${code} before connecting: ${text.trim()}`),
      );
    });
  });
}

/**
 * A Readable that always drains `source` at once and buffers up to `capBytes`; chunks
 * beyond that are dropped (and reported), so a slow consumer never blocks the producer.
 */
export function unblocked(source: Readable, capBytes: number, onDrop: (bytes: number) => void): Readable {
  let dropped = 0;
  const out = new Readable({
    read() {
      if (dropped > 0) {
        onDrop(dropped);
        dropped = 0;
      }
    },
    destroy(error, callback) {
      source.destroy();
      callback(error);
    },
  });
  source.on('data', (chunk: Buffer) => {
    if (out.destroyed) return;
    if (out.readableLength + chunk.length > capBytes) dropped += chunk.length;
    else out.push(chunk);
  });
  source.once('end', () => out.push(null));
  source.once('error', (error) => out.destroy(error));
  return out;
}

/** Writes to a FIFO without blocking; false when nobody reads it (its owner is gone). */
export async function writeFifoNonBlocking(fifo: string, text: string): Promise<boolean> {
  let handle: import('node:fs/promises').FileHandle;
  try {
    // O_NONBLOCK: opening a FIFO nobody reads would otherwise block a libuv thread forever.
    handle = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENXIO' || code === 'ENOENT') return false;
    throw error;
  }
  try {
    await handle.write(text);
    return true;
  } finally {
    await handle.close();
  }
}
