/**
 * The programs rootless-cri drives, found once at start (as rootlesskit's DetectFeatures
 * does) and by absolute path from then on: conmon execv()s its runtime without a PATH
 * search, the daemon's PATH inside the node may lack /usr/sbin (iptables, ip), and a binary
 * that vanished is better reported once, by name, by `doctor` and verbose Status, than as a
 * spawn ENOENT deep in a pod start.
 *
 * A configured value with a slash is a path and is used as it is; a bare name is looked up
 * in PATH, then in the standard system directories.
 */
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import path from 'node:path';
import { ProgramNotFoundError } from './process-runner.js';

/** What the daemon (in the node) and the supervisor (on the host) run. */
export type ProgramRole =
  | 'crun'
  | 'conmon'
  | 'unshare'
  | 'nsenter'
  | 'umount'
  | 'mount'
  | 'catatonit'
  | 'fuse-overlayfs'
  | 'fusermount3'
  | 'rootlesskit'
  | 'slirp4netns';

/** The directories searched after PATH: where Debian puts system programs. */
export const SYSTEM_DIRS: readonly string[] = [
  '/usr/local/sbin',
  '/usr/local/bin',
  '/usr/sbin',
  '/usr/bin',
  '/sbin',
  '/bin',
];

/** A PATH for helpers the daemon starts: the system directories only, nothing user-writable. */
export const SAFE_PATH = SYSTEM_DIRS.join(':');

function isExecutableFile(candidate: string): boolean {
  try {
    if (!statSync(candidate).isFile()) return false;
    accessSync(candidate, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * An executable's absolute path: `name` itself when it has a slash, else the first match in
 * `dirs` (then the system directories); null when there is none.
 */
export function findProgram(
  name: string,
  dirs: readonly string[] = (process.env.PATH ?? '').split(':'),
): string | null {
  if (name.includes('/')) return isExecutableFile(name) ? name : null;
  const searched = new Set<string>();
  for (const dir of [...dirs, ...SYSTEM_DIRS]) {
    if (!dir.startsWith('/') || searched.has(dir)) continue;
    searched.add(dir);
    const candidate = path.join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  return null;
}

/** Like findProgram, but only in `dirs` (no system directories added): what doctor reports. */
export function findProgramIn(name: string, dirs: readonly string[]): string | null {
  if (name.includes('/')) return isExecutableFile(name) ? name : null;
  for (const dir of dirs) {
    if (!dir.startsWith('/')) continue;
    const candidate = path.join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  return null;
}

export interface ProgramEntry {
  role: ProgramRole;
  /** What the configuration asked for (a name or a path). */
  configured: string;
  /** The absolute path found, or null. */
  path: string | null;
}

/** The programs found at start, by role. */
export class Programs {
  private readonly entries: Map<ProgramRole, ProgramEntry>;

  private constructor(entries: ProgramEntry[]) {
    this.entries = new Map(entries.map((e) => [e.role, e]));
  }

  /** Looks every configured program up once; roles not named use their own name. */
  static find(configured: Partial<Record<ProgramRole, string>> = {}, dirs?: readonly string[]): Programs {
    const roles: ProgramRole[] = [
      'crun',
      'conmon',
      'unshare',
      'nsenter',
      'umount',
      'mount',
      'catatonit',
      'fuse-overlayfs',
      'fusermount3',
      'rootlesskit',
      'slirp4netns',
    ];
    return new Programs(
      roles.map((role) => {
        const name = configured[role] ?? role;
        return { role, configured: name, path: findProgram(name, dirs) };
      }),
    );
  }

  /** Fixed paths (tests). */
  static of(paths: Partial<Record<ProgramRole, string>>): Programs {
    return new Programs(
      Object.entries(paths).map(([role, p]) => ({ role: role as ProgramRole, configured: p, path: p })),
    );
  }

  /**
   * The absolute path to run. A program that was not found gives its configured name, so
   * the runner's ProgramNotFoundError names what to install.
   */
  path(role: ProgramRole): string {
    const entry = this.entries.get(role);
    return entry?.path ?? entry?.configured ?? role;
  }

  /** Throws ProgramNotFoundError when the program was not found at start. */
  require(role: ProgramRole): string {
    const entry = this.entries.get(role);
    if (!entry?.path) throw new ProgramNotFoundError(entry?.configured ?? role, 'ENOENT');
    return entry.path;
  }

  has(role: ProgramRole): boolean {
    return Boolean(this.entries.get(role)?.path);
  }

  /** Every role, for doctor and verbose Status. */
  report(): ProgramEntry[] {
    return [...this.entries.values()].map((e) => ({ ...e }));
  }
}
