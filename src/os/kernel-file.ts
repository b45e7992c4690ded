/**
 * Reads the small files the kernel makes up on read (cgroupfs, procfs, nsfs): cpu.stat,
 * cgroup.procs, /proc/<pid>/status, /proc/<pid>/net/dev, the identity of a namespace file, and
 * the directories and links of those trees (a cgroup's children, /proc/<pid>/fd).
 *
 * The stats and metrics RPCs read a few of these per pod and container, kubelet polls them every
 * few seconds, and at 110 pods one call reads several hundred. Through fs.promises each read
 * was four round trips to the libuv pool (open, fstat, read, close), a FileHandle and, as these
 * files report size 0, a fresh 64 KiB buffer: the pool's hand-offs, not the kernel, were most of
 * ListPodSandboxStats' time on a 2-core node. These files never wait on a disk, so they are read
 * here in one synchronous call each (readFileSync's native path: open, read to the end, close),
 * and every YIELD_EVERY reads the caller yields to the event loop, so a call over hundreds of
 * files never holds other requests for more than a fraction of a millisecond.
 *
 * Only for kernel pseudo-files: files on a disk (records, the image store) stay asynchronous.
 * The one exception, the writable layers' walk (image-fs-info.ts says why), makes its own
 * synchronous calls and takes its turns here (syncCallTurn), so there is one budget.
 * Any error (the file or the process is gone, the controller is not delegated) is null, as every
 * caller treats these files as optional.
 */
import { type Dirent, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';

const YIELD_EVERY = 32;
let sinceYield = 0;

/**
 * Counts one synchronous filesystem call; every YIELD_EVERY calls (counted across all callers)
 * it yields to the event loop. Awaited before each call.
 */
export async function syncCallTurn(): Promise<void> {
  sinceYield += 1;
  if (sinceYield >= YIELD_EVERY) {
    sinceYield = 0;
    await yieldToEventLoop();
  }
}

/** The file's text, or null when it cannot be read. */
export async function readKernelFile(file: string): Promise<string | null> {
  await syncCallTurn();
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** "dev:ino" of a file (a namespace file tells namespaces apart by it), or null when absent. */
export async function kernelFileIdentity(file: string): Promise<string | null> {
  await syncCallTurn();
  try {
    const s = statSync(file, { throwIfNoEntry: false });
    return s ? `${s.dev}:${s.ino}` : null;
  } catch {
    return null;
  }
}

/** A directory's entries (a cgroup's children, /proc/<pid>/fd), or [] when it cannot be read. */
export async function readKernelDirectory(dir: string): Promise<Dirent[]> {
  await syncCallTurn();
  try {
    return readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
}

/** A symlink's target (/proc/<pid>/fd/<n>), or null when it cannot be read. */
export async function readKernelLink(link: string): Promise<string | null> {
  await syncCallTurn();
  try {
    return readlinkSync(link);
  } catch {
    return null;
  }
}
