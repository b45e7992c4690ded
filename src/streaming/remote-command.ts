/**
 * Exec and attach sessions (the `*.channel.k8s.io` remote command protocols), independent
 * of the transport. A transport (SPDY streams, WebSocket channels) hands `runSession` the
 * client's channels; the session connects them to the process and runs the reference
 * finish sequence: once the process has exited and its output is drained, the status goes
 * on the error channel and every output channel is closed; the transport then waits for
 * the client to hang up, so nothing in flight is cut off.
 *
 * Versions: channel.k8s.io (v1) … v3 (adds resize) … v4 (JSON status with the exit code)
 * … v5 (WebSocket only: adds a CLOSE signal for stdin).
 */
import type { Readable, Writable } from 'node:stream';
import type { StdioOptions, StreamSession } from '../core/stream-targets.js';
import { type ErrorKind, errorKind } from '../errors.js';
import type { Logger } from '../log.js';
import type { SpdyConnection, SpdyStream } from './spdy-connection.js';

export const REMOTE_COMMAND_V1 = 'channel.k8s.io';
export const REMOTE_COMMAND_V2 = 'v2.channel.k8s.io';
export const REMOTE_COMMAND_V3 = 'v3.channel.k8s.io';
export const REMOTE_COMMAND_V4 = 'v4.channel.k8s.io';
export const REMOTE_COMMAND_V5 = 'v5.channel.k8s.io';

/** What the SPDY server accepts, best first (the reference server's list: v5 is WebSocket only). */
export const SPDY_REMOTE_COMMAND_PROTOCOLS = [
  REMOTE_COMMAND_V4,
  REMOTE_COMMAND_V3,
  REMOTE_COMMAND_V2,
  REMOTE_COMMAND_V1,
];

/** After exit, output that stays silent this long is taken as held open by a background child. */
const OUTPUT_IDLE_AFTER_EXIT_MS = 2_000;
/** After exit, output is cut at this point whatever happens. */
const OUTPUT_CAP_AFTER_EXIT_MS = 10 * 60_000;

export interface SessionChannels {
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
  /** The client's resize messages: concatenated JSON objects {"Width":n,"Height":n}. */
  resize?: Readable;
  /** Writes the final error-channel payload (may be empty) and closes the error channel. */
  writeError(payload: Buffer): void;
}

export type SessionOutcome =
  | { kind: 'exited'; exitCode: number }
  | { kind: 'failed'; message: string; errorKind: ErrorKind }
  | { kind: 'aborted' };

/** True when the protocol reports the exit status as v4 JSON (v4 and v5). */
export function usesJsonStatus(protocol: string): boolean {
  return (
    protocol === REMOTE_COMMAND_V4 ||
    protocol === REMOTE_COMMAND_V5 ||
    protocol.startsWith('v4.') ||
    protocol.startsWith('v5.')
  );
}

/** True when the protocol has a resize channel (v3 and later). */
export function hasResizeChannel(protocol: string): boolean {
  return protocol !== REMOTE_COMMAND_V1 && protocol !== REMOTE_COMMAND_V2;
}

/** The error-channel payload for an outcome, as the client's decoder for `protocol` expects it. */
export function statusPayload(protocol: string, outcome: SessionOutcome, command: string[] = []): Buffer {
  const json = usesJsonStatus(protocol);
  if (outcome.kind === 'exited' && outcome.exitCode === 0) {
    return json ? Buffer.from(JSON.stringify({ metadata: {}, status: 'Success' })) : Buffer.alloc(0);
  }
  if (outcome.kind === 'exited') {
    const what =
      command.length > 0
        ? `error executing command ${JSON.stringify(command)}, exit code ${outcome.exitCode}`
        : `exit code ${outcome.exitCode}`;
    const message = `command terminated with non-zero exit code: ${what}`;
    if (!json) return Buffer.from(message);
    return Buffer.from(
      JSON.stringify({
        metadata: {},
        status: 'Failure',
        message,
        reason: 'NonZeroExitCode',
        details: { causes: [{ reason: 'ExitCode', message: String(outcome.exitCode) }] },
      }),
    );
  }
  const message = outcome.kind === 'failed' ? outcome.message : 'session aborted';
  if (!json) return Buffer.from(message);
  return Buffer.from(
    JSON.stringify({
      metadata: {},
      status: 'Failure',
      message,
      reason: 'InternalError',
      code: 500,
      details: { causes: [{ message }] },
    }),
  );
}

/**
 * Splits a byte stream of concatenated JSON objects (what Go's json.Encoder writes, one
 * per line) into objects. Bounded: a client that never closes an object gets dropped.
 */
export class JsonObjectSplitter {
  private text = '';
  private depth = 0;
  private inString = false;
  private escaped = false;
  private start = -1;

  constructor(private readonly maxBuffered = 4096) {}

  push(chunk: string): unknown[] {
    const out: unknown[] = [];
    const base = this.text.length;
    this.text += chunk;
    for (let i = base; i < this.text.length; i++) {
      const c = this.text[i];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === '"') this.inString = false;
        continue;
      }
      if (c === '"') this.inString = true;
      else if (c === '{') {
        if (this.depth === 0) this.start = i;
        this.depth++;
      } else if (c === '}' && this.depth > 0) {
        this.depth--;
        if (this.depth === 0) {
          try {
            out.push(JSON.parse(this.text.slice(this.start, i + 1)));
          } catch {
            // A malformed message is skipped, like the reference server does.
          }
          this.text = this.text.slice(i + 1);
          i = -1;
          this.start = -1;
        }
      }
    }
    if (this.depth === 0 && !this.inString) this.text = '';
    if (this.text.length > this.maxBuffered) throw new RangeError('resize message too long');
    return out;
  }
}

export function parseTerminalSize(value: unknown): { width: number; height: number } | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { Width: width, Height: height } = value as { Width?: unknown; Height?: unknown };
  const valid = (n: unknown): n is number =>
    typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffff;
  if (!valid(width) || !valid(height)) return undefined;
  return { width, height };
}

function finished(stream: Readable): Promise<void> {
  if (stream.readableEnded || stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    stream.once('end', resolve);
    stream.once('close', resolve);
    stream.once('error', () => resolve());
  });
}

/** Resolves when every output ended, or went idle (not back-pressured) for `idleMs`, or after `capMs`. */
function waitForOutputs(outputs: Readable[], idleMs: number, capMs: number): Promise<void> {
  return new Promise((resolve) => {
    let idleTimer: NodeJS.Timeout | undefined;
    const onData = (): void => armIdle();
    const done = (): void => {
      clearTimeout(idleTimer);
      clearTimeout(capTimer);
      for (const output of outputs) output.off('data', onData);
      resolve();
    };
    const armIdle = (): void => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        if (outputs.some((o) => o.isPaused() && !o.readableEnded && !o.destroyed)) armIdle();
        else done();
      }, idleMs);
    };
    const capTimer = setTimeout(done, capMs);
    for (const output of outputs) output.on('data', onData);
    armIdle();
    Promise.all(outputs.map(finished)).then(done);
  });
}

/** Copies process output to a client channel without ending it (the finish sequence does that). */
function forward(source: Readable, sink: Writable | undefined): void {
  source.on('error', () => {});
  if (!sink) {
    source.resume();
    return;
  }
  // One drain listener for the whole copy (not one per pause, which piled up 'close' listeners).
  const resume = (): void => {
    source.resume();
  };
  sink.on('drain', resume);
  sink.once('close', () => {
    sink.off('drain', resume);
    source.resume();
  });
  source.on('data', (chunk: Buffer) => {
    if (sink.destroyed || sink.writableEnded) return;
    if (!sink.write(chunk)) source.pause();
  });
}

export interface RunSessionOptions {
  protocol: string;
  options: StdioOptions;
  command?: string[];
  logger: Logger;
  /** Starts the process or attachment. */
  start: () => Promise<StreamSession>;
  /** Fires when the client went away before the session finished. */
  clientGone: AbortSignal;
}

/**
 * Runs one session to its end and writes the status. Never rejects. The caller closes
 * the output channels and waits for the client afterwards.
 */
export async function runSession(channels: SessionChannels, run: RunSessionOptions): Promise<SessionOutcome> {
  const { logger, clientGone } = run;
  let session: StreamSession;
  try {
    session = await run.start();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    logger.info({ err: error }, 'streaming session could not start');
    const outcome: SessionOutcome = { kind: 'failed', message, errorKind: errorKind(error) };
    channels.writeError(statusPayload(run.protocol, outcome, run.command));
    channels.stdin?.resume();
    return outcome;
  }

  // stdin: client → process; the client's half-close closes the process's stdin.
  const clientStdin = channels.stdin;
  if (clientStdin) {
    const target = session.stdin;
    clientStdin.on('error', () => {});
    if (target) {
      target.on('error', (error) => logger.debug({ err: error }, 'process stdin closed early'));
      clientStdin.pipe(target);
    } else {
      clientStdin.resume();
    }
  } else if (session.stdin && !run.options.stdin) {
    session.stdin.end();
  }

  if (channels.resize && run.options.tty) {
    const splitter = new JsonObjectSplitter();
    channels.resize.on('error', () => {});
    channels.resize.on('data', (chunk: Buffer) => {
      try {
        for (const message of splitter.push(chunk.toString('utf8'))) {
          const size = parseTerminalSize(message);
          if (size) session.resize(size.width, size.height);
        }
      } catch (error) {
        logger.info({ err: error }, 'ignoring the rest of a malformed resize stream');
        channels.resize?.removeAllListeners('data');
        channels.resize?.resume();
      }
    });
  } else {
    channels.resize?.resume();
  }

  if (session.stdout) forward(session.stdout, channels.stdout);
  if (session.stderr) forward(session.stderr, channels.stderr ?? channels.stdout);

  let abortListener: (() => void) | undefined;
  const aborted = new Promise<'aborted'>((resolve) => {
    if (clientGone.aborted) resolve('aborted');
    abortListener = () => resolve('aborted');
    clientGone.addEventListener('abort', abortListener, { once: true });
  });
  const exited = session.wait().then(
    (code) => ({ code }),
    (error: unknown) => ({ error }),
  );
  const first = await Promise.race([exited, aborted]);
  if (abortListener) clientGone.removeEventListener('abort', abortListener);
  if (first === 'aborted') {
    logger.info('streaming client went away; ending the session');
    try {
      session.kill();
    } catch (error) {
      logger.warn({ err: error }, 'ending the session failed');
    }
    clientStdin?.unpipe();
    session.stdin?.destroy();
    session.stdout?.destroy();
    session.stderr?.destroy();
    return { kind: 'aborted' };
  }

  // Let the output drain, but not forever: a background child may hold the pipe open
  // without writing. Output that is still flowing (or waiting on a slow client) is never cut.
  const outputs = [session.stdout, session.stderr].filter((s): s is Readable => s !== undefined);
  await waitForOutputs(outputs, OUTPUT_IDLE_AFTER_EXIT_MS, OUTPUT_CAP_AFTER_EXIT_MS);
  for (const output of outputs) output.destroy();
  clientStdin?.unpipe();
  if (session.stdin && !session.stdin.destroyed) session.stdin.destroy();

  const outcome: SessionOutcome =
    'code' in first
      ? { kind: 'exited', exitCode: first.code }
      : {
          kind: 'failed',
          message: first.error instanceof Error ? first.error.message : String(first.error),
          errorKind: errorKind(first.error),
        };
  channels.writeError(statusPayload(run.protocol, outcome, run.command));
  return outcome;
}

/** How long the client has to open every stream it needs (the reference server's value). */
export const STREAM_CREATION_TIMEOUT_MS = 30_000;
/** How long after the finish sequence we wait for the client to hang up (the reference server's value). */
export const CLIENT_CLOSE_TIMEOUT_MS = 15 * 60_000;

export interface SpdyRemoteCommandOptions extends Omit<RunSessionOptions, 'clientGone'> {
  streamCreationTimeoutMs?: number;
  clientCloseTimeoutMs?: number;
}

/**
 * Runs an exec/attach session over an upgraded SPDY connection: collects the client's
 * streams by `streamtype`, runs the session, then FINs the outputs and waits for the
 * client to close the connection. Resolves when the connection is gone.
 */
export async function serveRemoteCommandOverSpdy(
  connection: SpdyConnection,
  streams: SpdyStreamQueue,
  run: SpdyRemoteCommandOptions,
): Promise<SessionOutcome> {
  const { logger, options, protocol } = run;
  const expected = new Set<string>(['error']);
  if (options.stdin) expected.add('stdin');
  if (options.stdout) expected.add('stdout');
  if (options.stderr) expected.add('stderr');
  if (options.tty && hasResizeChannel(protocol)) expected.add('resize');

  const got = new Map<string, SpdyStream>();
  const queue = streams;
  const timeoutMs = run.streamCreationTimeoutMs ?? STREAM_CREATION_TIMEOUT_MS;
  const complete = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    const onGone = (): void => resolve(false);
    connection.once('closed', onGone);
    const take = (stream: SpdyStream): void => {
      const type = stream.header('streamtype') ?? '';
      if (!expected.has(type) || got.has(type)) {
        logger.info({ streamType: type }, 'unexpected stream in a remote command session; resetting it');
        stream.reset();
        return;
      }
      got.set(type, stream);
      if (got.size === expected.size) {
        clearTimeout(timer);
        connection.off('closed', onGone);
        resolve(true);
      }
    };
    queue.consume(take);
  });
  queue.consume((stream) => stream.reset());
  if (!complete) {
    logger.info(
      { expected: [...expected], got: [...got.keys()] },
      'client did not open the streams the session needs',
    );
    connection.close();
    await connection.closed$;
    return {
      kind: 'failed',
      message: 'timed out waiting for the client to create streams',
      errorKind: 'DeadlineExceeded',
    };
  }

  const errorStream = got.get('error')!;
  const gone = new AbortController();
  const onClosed = (): void => gone.abort();
  connection.once('closed', onClosed);
  const channels: SessionChannels = {
    stdin: got.get('stdin'),
    stdout: got.get('stdout'),
    stderr: got.get('stderr'),
    resize: got.get('resize'),
    writeError(payload) {
      if (payload.length > 0) errorStream.write(payload);
      errorStream.end();
    },
  };
  // The client half-closes its side of output streams at once; nothing of theirs is read.
  for (const type of ['stdout', 'stderr', 'error'] as const) got.get(type)?.resume();
  for (const stream of got.values()) stream.on('error', () => {});

  const outcome = await runSession(channels, { ...run, clientGone: gone.signal });
  connection.off('closed', onClosed);
  if (outcome.kind !== 'aborted') {
    // The reference finish: reset what the client sends, FIN what we send, then let the client hang up.
    got.get('stdin')?.reset();
    got.get('resize')?.reset();
    got.get('stdout')?.end();
    got.get('stderr')?.end();
    const cap = setTimeout(() => connection.close(), run.clientCloseTimeoutMs ?? CLIENT_CLOSE_TIMEOUT_MS);
    cap.unref();
    await connection.closed$;
    clearTimeout(cap);
  }
  return outcome;
}

/**
 * Streams accepted before anyone asked for them, handed to one consumer at a time, so a
 * stream that arrives while the session is being set up is not lost.
 */
export class SpdyStreamQueue {
  private readonly pending: SpdyStream[] = [];
  private consumer: ((stream: SpdyStream) => void) | undefined;

  push(stream: SpdyStream): void {
    if (this.consumer) this.consumer(stream);
    else this.pending.push(stream);
  }

  consume(consumer: (stream: SpdyStream) => void): void {
    this.consumer = consumer;
    while (this.pending.length > 0 && this.consumer === consumer) consumer(this.pending.shift()!);
  }
}
