import { InvalidArgumentError } from '../errors.js';
import { type Digest, parseDigest } from './digest.js';

/**
 * Image references, normalised the way docker and containerd do it:
 *
 *   reference := name [ ":" tag ] [ "@" digest ]
 *   name      := [ domain "/" ] path-component { "/" path-component }
 *   domain    := host [ ":" port ]          (a first component is a domain when it contains
 *                                            "." or ":", is "localhost", or has uppercase)
 *   path-component := [a-z0-9]+ { ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ }
 *   tag       := [\w][\w.-]{0,127}
 *   digest    := sha256:[a-f0-9]{64}
 *
 * `busybox` becomes `docker.io/library/busybox:latest`; `latest` is added only when the
 * reference has neither a tag nor a digest.
 */

export const DEFAULT_DOMAIN = 'docker.io';
export const DEFAULT_TAG = 'latest';

const MAX_NAME_LENGTH = 255;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const IPV6_HOST = /^\[[a-fA-F0-9:.]+\]$/;
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const HEX64 = /^[a-f0-9]{64}$/;

export interface ImageReferenceParts {
  /** Registry host, with port if any: `docker.io`, `127.0.0.1:5000`. */
  domain: string;
  /** Repository path inside the registry: `library/busybox`. */
  path: string;
  tag?: string;
  digest?: Digest;
}

export class ImageReference implements ImageReferenceParts {
  readonly domain: string;
  readonly path: string;
  readonly tag: string | undefined;
  readonly digest: Digest | undefined;

  constructor(parts: ImageReferenceParts) {
    this.domain = parts.domain;
    this.path = parts.path;
    this.tag = parts.tag;
    this.digest = parts.digest;
  }

  /** `docker.io/library/busybox`: the repository, without tag or digest. */
  get name(): string {
    return `${this.domain}/${this.path}`;
  }

  /** The digest when there is one (it wins over a tag), else the tag. */
  get tagOrDigest(): string {
    return this.digest ?? this.tag ?? DEFAULT_TAG;
  }

  /** Fully qualified: `docker.io/library/busybox:latest`, `host:5000/a/b:t@sha256:…`. */
  toString(): string {
    return this.name + suffix(this);
  }

  /** The short form docker prints: `busybox:latest`, `foo/bar:1`, `127.0.0.1:5000/x:1`. */
  familiar(): string {
    let name = this.name;
    if (this.domain === DEFAULT_DOMAIN) {
      name = this.path;
      const rest = name.slice('library/'.length);
      if (name.startsWith('library/') && !rest.includes('/')) name = rest;
    }
    return name + suffix(this);
  }

  /** `name:tag` (no digest), or undefined when the reference has no tag. */
  repoTag(): string | undefined {
    return this.tag === undefined ? undefined : `${this.name}:${this.tag}`;
  }

  /** `name@digest` for a given manifest digest: what CRI calls a repo digest. */
  repoDigest(digest: Digest): string {
    return `${this.name}@${digest}`;
  }

  toJSON(): ImageReferenceParts {
    const parts: ImageReferenceParts = { domain: this.domain, path: this.path };
    if (this.tag !== undefined) parts.tag = this.tag;
    if (this.digest !== undefined) parts.digest = this.digest;
    return parts;
  }
}

function suffix(ref: ImageReferenceParts): string {
  return (ref.tag === undefined ? '' : `:${ref.tag}`) + (ref.digest === undefined ? '' : `@${ref.digest}`);
}

/** Parses and normalises an image reference; throws InvalidArgument naming the problem. */
export function parseImageReference(input: string): ImageReference {
  const fail = (why: string, cause?: unknown): never => {
    const shown = JSON.stringify(input.length > 300 ? `${input.slice(0, 300)}…` : input);
    throw new InvalidArgumentError(`invalid image reference ${shown}: ${why}`, { cause });
  };
  if (typeof input !== 'string' || input === '') return fail('reference is empty');
  if (input.length > 1024) fail('reference is longer than 1024 characters');
  if (/\s/.test(input)) fail('reference contains whitespace');

  let rest = input;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    const digestText = rest.slice(at + 1);
    rest = rest.slice(0, at);
    try {
      digest = parseDigest(digestText, 'digest');
    } catch (err) {
      fail(err instanceof Error ? err.message : 'invalid digest', err);
    }
  }

  let tag: string | undefined;
  const lastColon = rest.lastIndexOf(':');
  if (lastColon > rest.lastIndexOf('/')) {
    tag = rest.slice(lastColon + 1);
    rest = rest.slice(0, lastColon);
    if (!TAG.test(tag)) {
      fail(
        `invalid tag ${JSON.stringify(tag)}: a tag is 1-128 characters of letters, digits, "_", "." and "-", not starting with "." or "-"`,
      );
    }
  }
  if (rest === '') fail('repository name is empty');
  if (rest.length > MAX_NAME_LENGTH) fail(`repository name is longer than ${MAX_NAME_LENGTH} characters`);

  let domain = DEFAULT_DOMAIN;
  let path = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (/[.:]/.test(first) || first === 'localhost' || first.toLowerCase() !== first) {
      domain = first;
      path = rest.slice(slash + 1);
    }
  }
  validateDomain(domain, fail);
  if (domain === 'index.docker.io') domain = DEFAULT_DOMAIN;

  if (path === '') fail('repository path is empty');
  if (path.toLowerCase() !== path) fail('repository name must be lowercase');
  if (domain === DEFAULT_DOMAIN && !path.includes('/')) {
    if (HEX64.test(path)) {
      fail(
        'a 64-digit hexadecimal string is an image ID, not a repository name; use sha256:<id> with ImageStatus',
      );
    }
    path = `library/${path}`;
  }
  for (const component of path.split('/')) {
    if (component === '') fail('repository path has an empty component (doubled or trailing "/")');
    if (!PATH_COMPONENT.test(component)) {
      fail(
        `invalid repository path component ${JSON.stringify(component)}: use lowercase letters and digits, separated by ".", "_", "__" or "-"`,
      );
    }
  }
  if (`${domain}/${path}`.length > MAX_NAME_LENGTH) {
    fail(`repository name is longer than ${MAX_NAME_LENGTH} characters`);
  }

  if (tag === undefined && digest === undefined) tag = DEFAULT_TAG;
  return new ImageReference({ domain, path, tag, digest });
}

function validateDomain(domain: string, fail: (why: string) => never): void {
  let host = domain;
  let port: string | undefined;
  if (domain.startsWith('[')) {
    const close = domain.indexOf(']');
    host = close < 0 ? domain : domain.slice(0, close + 1);
    const after = close < 0 ? '' : domain.slice(close + 1);
    if (after !== '') {
      if (!after.startsWith(':')) fail(`invalid registry host ${JSON.stringify(domain)}`);
      port = after.slice(1);
    }
    if (!IPV6_HOST.test(host)) fail(`invalid registry host ${JSON.stringify(domain)}`);
  } else {
    const colon = domain.indexOf(':');
    if (colon >= 0) {
      host = domain.slice(0, colon);
      port = domain.slice(colon + 1);
    }
    if (host === '' || !host.split('.').every((c) => DOMAIN_COMPONENT.test(c))) {
      fail(`invalid registry host ${JSON.stringify(host)}`);
    }
  }
  if (port !== undefined && (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535)) {
    fail(`invalid registry port ${JSON.stringify(port)}: use a number from 1 to 65535`);
  }
}
