/**
 * The daemon's unix socket file: checks before binding (a directory of ours that others cannot
 * write, no live daemon on the path, stale files removed) and removal of only our own socket.
 */
import { chmod, lstat, mkdir, stat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, resolve } from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';

/** sockaddr_un.sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;
/**
 * Checks that `requestedPath` can be served: short enough, in a directory of ours that others
 * cannot write, and not served by a live daemon (a stale socket file is removed). The
 * supervisor calls this before it starts anything, so a bad path harms nothing. Returns the
 * absolute path.
 */
export async function preflightSocket(requestedPath: string, logger: Logger): Promise<string> {
  const socketPath = resolve(requestedPath);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
    throw new InvalidArgumentError(
      `socket path ${socketPath} is ${Buffer.byteLength(socketPath)} bytes; unix sockets allow at most ` +
        `${MAX_SOCKET_PATH_BYTES}; choose a shorter path`,
    );
  }
  await prepareSocketDirectory(dirname(socketPath), logger);
  await clearStaleSocket(socketPath, logger);
  return socketPath;
}

async function prepareSocketDirectory(dir: string, logger: Logger): Promise<void> {
  const uid = process.getuid?.() ?? 0;
  const existing = await stat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new FailedPreconditionError(`cannot inspect the socket directory ${dir}: ${err.message}`, {
      cause: err,
    });
  });
  if (existing === undefined) {
    await mkdir(dir, { recursive: true, mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      throw new FailedPreconditionError(
        `cannot create the socket directory ${dir}: ${err.message}; create it (mode 0700, owned by uid ${uid}) ` +
          'or choose a socket path in a directory you own',
        { cause: err },
      );
    });
    // mkdir's mode passes through the umask; make the result exact.
    await chmod(dir, 0o700);
    logger.debug({ dir }, 'created the socket directory');
  }
  const info = await stat(dir);
  if (!info.isDirectory()) {
    throw new FailedPreconditionError(
      `socket directory ${dir} is not a directory; choose another socket path`,
    );
  }
  if (info.uid !== uid) {
    throw new FailedPreconditionError(
      `socket directory ${dir} is owned by uid ${info.uid}, not by uid ${uid} that runs rootless-cri; ` +
        'choose a socket path in a directory you own (the default is $XDG_RUNTIME_DIR/rootless-cri)',
    );
  }
  if ((info.mode & 0o022) !== 0) {
    const mode = (info.mode & 0o7777).toString(8).padStart(4, '0');
    throw new FailedPreconditionError(
      `socket directory ${dir} has mode ${mode}, writable by other users who could replace the socket; ` +
        `run chmod 700 ${dir}`,
    );
  }
}

/** live: something accepted a connection; stale: nothing listens on the file. */
function probeSocket(path: string, timeoutMs = 1_000): Promise<'live' | 'stale'> {
  return new Promise((resolveProbe, rejectProbe) => {
    const socket = connect(path);
    const done = (result: 'live' | 'stale' | Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (result instanceof Error) rejectProbe(result);
      else resolveProbe(result);
    };
    // A listener too busy to accept within the timeout is still a listener.
    const timer = setTimeout(() => done('live'), timeoutMs);
    socket.once('connect', () => done('live'));
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') done('stale');
      else
        done(
          new FailedPreconditionError(`cannot check whether ${path} is in use: ${err.message}`, {
            cause: err,
          }),
        );
    });
  });
}

async function clearStaleSocket(socketPath: string, logger: Logger): Promise<void> {
  const info = await lstat(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new FailedPreconditionError(`cannot inspect ${socketPath}: ${err.message}`, { cause: err });
  });
  if (info === undefined) return;
  if (!info.isSocket()) {
    throw new FailedPreconditionError(
      `${socketPath} exists and is not a socket; remove it or choose another socket path`,
    );
  }
  if ((await probeSocket(socketPath)) === 'live') {
    throw new FailedPreconditionError(
      `another rootless-cri daemon is already serving ${socketPath}; stop it (rootless-cri stop) ` +
        'or choose another socket path',
    );
  }
  logger.info({ socket: socketPath }, 'removing a stale socket file left by an earlier daemon');
  await unlink(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}

/** Removes the socket file only if it is still the one we bound (not a successor's). */
export async function removeOwnSocket(
  path: string,
  inode: number | undefined,
  logger: Logger,
): Promise<void> {
  try {
    const info = await lstat(path);
    if (inode !== undefined && info.ino !== inode) return;
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      logger.warn({ err, socket: path }, 'could not remove the socket file');
    }
  }
}
