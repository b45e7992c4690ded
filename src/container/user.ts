/**
 * Which uid, gid and supplementary groups a container process runs with: the CRI security
 * context (run_as_user / run_as_username / run_as_group / supplemental_groups) over the
 * image's USER, names resolved against the image's own /etc/passwd and /etc/group.
 *
 * Parsing is strict where a mistake means running as someone else: ids are decimal uint32
 * only (CVE-2024-40635: USER 4294967296 wrapped to root), an unknown name is an error, never
 * "root". The files themselves are hostile input: malformed lines are skipped, and the caller
 * reads them in-root and size-capped (src/container/in-root.ts).
 */
import type { ResolvedUser } from '../core/container-store.js';
import { InvalidArgumentError } from '../errors.js';

export type { ResolvedUser };

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

const MAX_ID = 4294967295;
/** Linux NGROUPS_MAX. */
const MAX_GROUPS = 65536;

/** A uid/gid: decimal digits only, 0..2^32-1. */
export function parseId(text: string, what: string): number {
  if (!/^[0-9]{1,10}$/.test(text) || Number(text) > MAX_ID) {
    throw new InvalidArgumentError(
      `${what} "${text}" is not a valid id: use a decimal number from 0 to ${MAX_ID}`,
    );
  }
  return Number(text);
}

function fieldId(text: string | undefined): number | null {
  if (text === undefined || !/^[0-9]{1,10}$/.test(text) || Number(text) > MAX_ID) return null;
  return Number(text);
}

/** /etc/passwd lines `name:x:uid:gid:gecos:home:shell`; malformed lines are skipped. */
export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const f = line.split(':');
    if (f.length < 4 || f[0] === '') continue;
    const uid = fieldId(f[2]);
    const gid = fieldId(f[3]);
    if (uid === null || gid === null) continue;
    out.push({ name: f[0]!, uid, gid, home: f[5] ?? '' });
  }
  return out;
}

/** /etc/group lines `name:x:gid:member,member`; malformed lines are skipped. */
export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const f = line.split(':');
    if (f.length < 3 || f[0] === '') continue;
    const gid = fieldId(f[2]);
    if (gid === null) continue;
    out.push({ name: f[0]!, gid, members: (f[3] ?? '').split(',').filter(Boolean) });
  }
  return out;
}

/**
 * The user string (`user[:group]`) from the security context, containerd's way: a username
 * beats a uid; a group without either is an error. Empty = not set (the image's USER applies).
 */
export function requestedUserString(sc: {
  run_as_user: { value: string } | null;
  run_as_username: string;
  run_as_group: { value: string } | null;
}): string {
  let user = '';
  if (sc.run_as_user) user = String(parseId(sc.run_as_user.value, 'run_as_user'));
  if (sc.run_as_username !== '') user = sc.run_as_username;
  const group = sc.run_as_group ? String(parseId(sc.run_as_group.value, 'run_as_group')) : '';
  if (user === '') {
    if (group !== '') {
      throw new InvalidArgumentError(
        `run_as_group ${group} is set without run_as_user or run_as_username: set a user too`,
      );
    }
    return '';
  }
  return group === '' ? user : `${user}:${group}`;
}

/**
 * Resolves `user[:group]` (empty = root). `passwd`/`group` are the image's parsed files, null
 * when the image has none (then only numeric ids work).
 */
export function resolveUser(
  userString: string,
  supplementalGroups: string[],
  passwd: PasswdEntry[] | null,
  group: GroupEntry[] | null,
  policy: 'Merge' | 'Strict' = 'Merge',
): ResolvedUser {
  const colon = userString.indexOf(':');
  const userPart = colon < 0 ? userString : userString.slice(0, colon);
  const groupPart = colon < 0 ? null : userString.slice(colon + 1);
  if (userPart === '' && userString !== '') {
    throw new InvalidArgumentError(`user "${userString}" names no user: use "user" or "user:group"`);
  }

  let uid: number;
  let gid: number;
  let username: string | null;
  if (userPart === '' || /^[0-9]+$/.test(userPart)) {
    uid = userPart === '' ? 0 : parseId(userPart, 'user');
    const entry = passwd?.find((e) => e.uid === uid);
    gid = entry?.gid ?? 0;
    username = entry?.name ?? null;
  } else if (userPart.startsWith('-')) {
    throw new InvalidArgumentError(`user "${userPart}" is negative: uids are 0 to ${MAX_ID}`);
  } else {
    const entry = passwd?.find((e) => e.name === userPart);
    if (!entry) {
      throw new InvalidArgumentError(
        `user "${userPart}" is not in the image's /etc/passwd${passwd ? '' : ' (the image has none)'}: use a numeric uid or a user the image defines`,
      );
    }
    uid = entry.uid;
    gid = entry.gid;
    username = entry.name;
  }

  if (groupPart !== null) {
    if (groupPart === '') throw new InvalidArgumentError(`user "${userString}" has an empty group`);
    if (/^[0-9]+$/.test(groupPart)) {
      gid = parseId(groupPart, 'group');
    } else if (groupPart.startsWith('-')) {
      throw new InvalidArgumentError(`group "${groupPart}" is negative: gids are 0 to ${MAX_ID}`);
    } else {
      const entry = group?.find((g) => g.name === groupPart);
      if (!entry) {
        throw new InvalidArgumentError(
          `group "${groupPart}" is not in the image's /etc/group${group ? '' : ' (the image has none)'}: use a numeric gid or a group the image defines`,
        );
      }
      gid = entry.gid;
    }
  }

  // CVE-2023-25173: the primary gid is always among the supplementary groups.
  const gids = new Set<number>([gid]);
  // Strict: only the primary and the requested groups, not those the image's /etc/group adds.
  if (policy === 'Merge' && username !== null && group) {
    for (const g of group) if (g.members.includes(username)) gids.add(g.gid);
  }
  for (const s of supplementalGroups) gids.add(parseId(s, 'supplemental group'));
  if (gids.size > MAX_GROUPS) {
    throw new InvalidArgumentError(
      `the user would have ${gids.size} groups, more than Linux allows (${MAX_GROUPS})`,
    );
  }
  return { uid, gid, additionalGids: [...gids], username };
}
