import { InvalidArgumentError, NotFoundError } from '../errors.js';
import { type Digest, parseDigest } from './digest.js';
import {
  baseMediaType,
  CONFIG_MEDIA_TYPES,
  INDEX_MEDIA_TYPES,
  MANIFEST_MEDIA_TYPES,
  MEDIA_TYPE,
  SCHEMA1_MEDIA_TYPES,
} from './media-types.js';

/**
 * Parsing and validation of the manifest documents a registry serves: OCI image index and
 * manifest, Docker manifest list and schema 2 manifest. Every field the puller relies on is
 * checked here, so the rest of the image code can trust the typed result:
 * - digests are canonical sha256 (they become paths and URLs),
 * - sizes are non-negative safe integers,
 * - a document's kind is decided once, and a document whose fields or declared mediaType
 *   contradict the Content-Type or the descriptor that pointed at it is refused, so one
 *   digest can never be read both as an index and as a manifest (CVE-2021-41190),
 * - descriptor `urls` are dropped: the puller never fetches from them.
 */

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  kind: 'index';
  mediaType: string;
  manifests: Descriptor[];
}

export interface ImageManifest {
  kind: 'manifest';
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}

export type ManifestDocument = ImageIndex | ImageManifest;

export interface ParseManifestOptions {
  /** The Content-Type the registry sent, if any. */
  contentType?: string | undefined;
  /** The mediaType of the descriptor (or request) that led to this document, if known. */
  expectedMediaType?: string | undefined;
  /** Names the document in error messages: `manifest sha256:… of 127.0.0.1:5000/foo`. */
  source?: string;
}

const MAX_DESCRIPTORS = 10_000;

/** Content-Types that say nothing about the manifest kind. */
const GENERIC_CONTENT_TYPES = new Set(['application/json', 'application/octet-stream', 'text/plain']);

export function parseManifestDocument(
  bytes: Uint8Array,
  options: ParseManifestOptions = {},
): ManifestDocument {
  const source = options.source ?? 'manifest';
  const fail = (why: string, cause?: unknown): never => {
    throw new InvalidArgumentError(`${source}: ${why}`, { cause });
  };
  const contentType = baseMediaType(options.contentType);
  const expected = options.expectedMediaType;

  if (
    (contentType !== undefined && SCHEMA1_MEDIA_TYPES.has(contentType)) ||
    (expected !== undefined && SCHEMA1_MEDIA_TYPES.has(expected))
  ) {
    fail(schema1Message());
  }

  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    fail('not valid JSON', err);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) fail('not a JSON object');
  const record = doc as Record<string, unknown>;

  if (
    record.schemaVersion === 1 ||
    (typeof record.mediaType === 'string' && SCHEMA1_MEDIA_TYPES.has(record.mediaType))
  ) {
    fail(schema1Message());
  }
  if (record.schemaVersion !== 2)
    fail(`unsupported schemaVersion ${JSON.stringify(record.schemaVersion)} (want 2)`);

  const hasManifests = 'manifests' in record;
  const hasLayers = 'layers' in record;
  const hasConfig = 'config' in record;
  if (hasManifests && (hasLayers || hasConfig)) {
    fail(
      'mediaType confusion: the document has both "manifests" (index) and "layers"/"config" (manifest) fields',
    );
  }

  let declared: string | undefined;
  if (record.mediaType !== undefined) {
    if (typeof record.mediaType !== 'string') fail('"mediaType" is not a string');
    declared = record.mediaType as string;
  }
  const specificContentType =
    contentType !== undefined && !GENERIC_CONTENT_TYPES.has(contentType) ? contentType : undefined;
  for (const [what, value] of [
    ['Content-Type', specificContentType],
    ['the referring descriptor', expected],
  ] as const) {
    if (value !== undefined && declared !== undefined && value !== declared) {
      fail(`mediaType confusion: the document says "${declared}" but ${what} says "${value}"`);
    }
  }
  if (specificContentType !== undefined && expected !== undefined && specificContentType !== expected) {
    fail(
      `mediaType confusion: Content-Type "${specificContentType}" but the referring descriptor says "${expected}"`,
    );
  }

  const mediaType =
    declared ??
    specificContentType ??
    expected ??
    (hasManifests ? MEDIA_TYPE.ociIndex : MEDIA_TYPE.ociManifest);
  if (INDEX_MEDIA_TYPES.has(mediaType)) {
    if (!hasManifests) {
      fail(
        `${hasLayers || hasConfig ? 'mediaType confusion: ' : ''}a ${mediaType} document must have "manifests"`,
      );
    }
    if (!Array.isArray(record.manifests)) fail('"manifests" is not an array');
    const list = record.manifests as unknown[];
    if (list.length > MAX_DESCRIPTORS) fail(`more than ${MAX_DESCRIPTORS} manifests`);
    return {
      kind: 'index',
      mediaType,
      manifests: list.map((d, i) => parseDescriptor(d, `manifests[${i}]`, fail)),
    };
  }
  if (MANIFEST_MEDIA_TYPES.has(mediaType)) {
    if (hasManifests) fail(`mediaType confusion: a ${mediaType} document must not have "manifests"`);
    if (!hasConfig) fail('manifest has no "config"');
    if (!Array.isArray(record.layers)) fail('"layers" is missing or not an array');
    const layers = record.layers as unknown[];
    if (layers.length > MAX_DESCRIPTORS) fail(`more than ${MAX_DESCRIPTORS} layers`);
    return {
      kind: 'manifest',
      mediaType,
      config: parseDescriptor(record.config, 'config', fail),
      layers: layers.map((d, i) => parseDescriptor(d, `layers[${i}]`, fail)),
    };
  }
  return fail(`unsupported manifest mediaType "${mediaType}"`);
}

export function schema1Message(): string {
  return 'schema1 manifests are not supported (deprecated Docker format); rebuild or re-push the image with a current tool so the registry serves an OCI or Docker schema 2 manifest';
}

function parseDescriptor(value: unknown, where: string, fail: (why: string) => never): Descriptor {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(`${where} is not an object`);
  const d = value as Record<string, unknown>;
  if (typeof d.mediaType !== 'string' || d.mediaType === '') fail(`${where}.mediaType is missing`);
  let digest: Digest;
  try {
    digest = parseDigest(d.digest, `${where}.digest`);
  } catch (err) {
    return fail(err instanceof Error ? err.message : String(err));
  }
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) {
    fail(`${where}.size must be a non-negative integer`);
  }
  const descriptor: Descriptor = { mediaType: d.mediaType as string, digest, size: d.size as number };
  if (d.platform !== undefined) {
    const p = d.platform as Record<string, unknown>;
    if (
      typeof p !== 'object' ||
      p === null ||
      typeof p.os !== 'string' ||
      typeof p.architecture !== 'string'
    ) {
      fail(`${where}.platform must have string "os" and "architecture"`);
    }
    descriptor.platform = { os: p.os as string, architecture: p.architecture as string };
    if (typeof p.variant === 'string' && p.variant !== '') descriptor.platform.variant = p.variant;
  }
  if (typeof d.annotations === 'object' && d.annotations !== null && !Array.isArray(d.annotations)) {
    const annotations: Record<string, string> = {};
    for (const [k, v] of Object.entries(d.annotations)) if (typeof v === 'string') annotations[k] = v;
    descriptor.annotations = annotations;
  }
  return descriptor;
}

/** Throws unless the manifest's config is an image config (not e.g. a Helm chart or other artifact). */
export function assertImageManifest(manifest: ImageManifest, source: string): void {
  if (!CONFIG_MEDIA_TYPES.has(manifest.config.mediaType)) {
    throw new InvalidArgumentError(
      `${source}: config mediaType "${manifest.config.mediaType}" is not a container image config; this artifact cannot be run`,
    );
  }
}

const ARCH_ALIASES: Record<string, string> = {
  x86_64: 'amd64',
  x86: '386',
  i386: '386',
  aarch64: 'arm64',
  armhf: 'arm',
  armel: 'arm',
};
const DEFAULT_VARIANTS: Record<string, string> = { arm64: 'v8', arm: 'v7', amd64: 'v1' };

export function normalizePlatform(p: Platform): Platform {
  const os = p.os.toLowerCase();
  const architecture = ARCH_ALIASES[p.architecture.toLowerCase()] ?? p.architecture.toLowerCase();
  const out: Platform = { os, architecture };
  if (p.variant !== undefined && p.variant !== '') out.variant = p.variant.toLowerCase();
  return out;
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant === undefined ? '' : `/${p.variant}`}`;
}

/** The platform this daemon runs containers for (Node's arch names mapped to OCI's). */
export function hostPlatform(): Platform {
  const arch: Record<string, string> = {
    x64: 'amd64',
    arm64: 'arm64',
    arm: 'arm',
    ia32: '386',
    ppc64: 'ppc64le',
    s390x: 's390x',
    riscv64: 'riscv64',
  };
  return { os: 'linux', architecture: arch[process.arch] ?? process.arch };
}

/**
 * Picks the manifest for `want` from an index. An entry with the same variant wins over an
 * entry without one, which wins over an entry with the architecture's default variant
 * (`arm64/v8`, `amd64/v1`); entries of other variants never match. Ties keep index order.
 */
export function selectPlatformManifest(
  index: ImageIndex,
  want: Platform,
  source = 'image index',
): Descriptor {
  const target = normalizePlatform(want);
  const defaultVariant = DEFAULT_VARIANTS[target.architecture];
  let best: { descriptor: Descriptor; score: number } | undefined;
  for (const descriptor of index.manifests) {
    if (!MANIFEST_MEDIA_TYPES.has(descriptor.mediaType) && !INDEX_MEDIA_TYPES.has(descriptor.mediaType))
      continue;
    if (descriptor.platform === undefined) continue;
    const p = normalizePlatform(descriptor.platform);
    if (p.os !== target.os || p.architecture !== target.architecture) continue;
    let score: number;
    if (p.variant === target.variant) score = 3;
    else if (p.variant === undefined) score = 2;
    else if (target.variant === undefined && p.variant === defaultVariant) score = 1;
    else continue;
    if (best === undefined || score > best.score) best = { descriptor, score };
  }
  if (best === undefined) {
    const available = index.manifests
      .filter((d) => d.platform !== undefined && d.platform.os !== 'unknown')
      .map((d) => formatPlatform(d.platform!));
    throw new NotFoundError(
      `${source} has no manifest for platform ${formatPlatform(target)} (available: ${available.length === 0 ? 'none' : [...new Set(available)].join(', ')})`,
    );
  }
  return best.descriptor;
}
