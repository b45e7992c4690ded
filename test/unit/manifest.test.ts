import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import { isDigest, parseDigest, sha256Digest } from '../../src/image/digest.js';
import { type ImageIndex, parseManifestDocument, selectPlatformManifest } from '../../src/image/manifest.js';
import { MEDIA_TYPE } from '../../src/image/media-types.js';

const d = (c: string) => `sha256:${c.repeat(64)}`;
const bytes = (doc: unknown) => Buffer.from(JSON.stringify(doc));

function manifestDoc(mediaType: string | undefined, extra: object = {}) {
  return {
    schemaVersion: 2,
    ...(mediaType === undefined ? {} : { mediaType }),
    config: { mediaType: MEDIA_TYPE.ociConfig, digest: d('c'), size: 10 },
    layers: [{ mediaType: MEDIA_TYPE.ociLayerGzip, digest: d('1'), size: 20, urls: ['http://10.0.0.1/x'] }],
    ...extra,
  };
}

function indexDoc(mediaType: string | undefined, manifests: object[]) {
  return { schemaVersion: 2, ...(mediaType === undefined ? {} : { mediaType }), manifests };
}

function entry(digestChar: string, platform?: object, mediaType: string = MEDIA_TYPE.ociManifest) {
  return { mediaType, digest: d(digestChar), size: 100, ...(platform === undefined ? {} : { platform }) };
}

function expectInvalid(fn: () => unknown, text: string) {
  let error: unknown;
  try {
    fn();
  } catch (err) {
    error = err;
  }
  expect(error).toBeInstanceOf(InvalidArgumentError);
  expect((error as Error).message).toContain(text);
}

describe('digest validation', () => {
  it.each([
    ['sha256:../../x', 'expected sha256:'],
    [`sha256:${'A'.repeat(64)}`, '64 lowercase hex'],
    [`sha256:${'a'.repeat(63)}`, '64 lowercase hex'],
    [`sha256:${'a'.repeat(65)}`, '64 lowercase hex'],
    [`sha512:${'a'.repeat(128)}`, 'unsupported digest algorithm "sha512"'],
    [`${'a'.repeat(64)}`, 'missing "algorithm:" prefix'],
    [`sha256:${'a'.repeat(63)}/`, '64 lowercase hex'],
    [`sha256:${'a'.repeat(64)}\n`, '64 lowercase hex'],
  ])('rejects %j', (value, why) => {
    expect(isDigest(value)).toBe(false);
    expectInvalid(() => parseDigest(value, 'layer digest'), why);
  });

  it('accepts the canonical form and computes it', () => {
    const digest = sha256Digest('hello');
    expect(digest).toBe('sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824');
    expect(parseDigest(digest)).toBe(digest);
  });

  it('rejects non-strings', () => {
    expectInvalid(() => parseDigest(42, 'x'), 'invalid x number');
  });
});

describe('parseManifestDocument', () => {
  it.each([
    [MEDIA_TYPE.ociManifest, MEDIA_TYPE.ociManifest],
    [MEDIA_TYPE.dockerManifest, MEDIA_TYPE.dockerManifest],
  ])('parses a %s manifest and drops descriptor urls', (mediaType, contentType) => {
    const doc = parseManifestDocument(bytes(manifestDoc(mediaType)), { contentType });
    expect(doc.kind).toBe('manifest');
    if (doc.kind !== 'manifest') return;
    expect(doc.mediaType).toBe(mediaType);
    expect(doc.config).toEqual({ mediaType: MEDIA_TYPE.ociConfig, digest: d('c'), size: 10 });
    expect(doc.layers).toEqual([{ mediaType: MEDIA_TYPE.ociLayerGzip, digest: d('1'), size: 20 }]);
    expect(JSON.stringify(doc)).not.toContain('10.0.0.1');
  });

  it.each([MEDIA_TYPE.ociIndex, MEDIA_TYPE.dockerManifestList])('parses a %s', (mediaType) => {
    const doc = parseManifestDocument(
      bytes(indexDoc(mediaType, [entry('1', { os: 'linux', architecture: 'amd64' })])),
      { contentType: `${mediaType}; charset=utf-8` },
    );
    expect(doc).toEqual({
      kind: 'index',
      mediaType,
      manifests: [
        {
          mediaType: MEDIA_TYPE.ociManifest,
          digest: d('1'),
          size: 100,
          platform: { os: 'linux', architecture: 'amd64' },
        },
      ],
    });
  });

  it('takes the kind from Content-Type or the fields when the document has no mediaType', () => {
    expect(
      parseManifestDocument(bytes(manifestDoc(undefined)), { contentType: MEDIA_TYPE.dockerManifest })
        .mediaType,
    ).toBe(MEDIA_TYPE.dockerManifest);
    expect(
      parseManifestDocument(bytes(manifestDoc(undefined)), { contentType: 'application/json' }).mediaType,
    ).toBe(MEDIA_TYPE.ociManifest);
    expect(parseManifestDocument(bytes(indexDoc(undefined, []))).kind).toBe('index');
  });

  it.each([
    ['schemaVersion 1', { schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] }, undefined],
    ['schema1 content type', manifestDoc(undefined), MEDIA_TYPE.dockerSchema1SignedManifest],
    ['schema1 mediaType', { schemaVersion: 2, mediaType: MEDIA_TYPE.dockerSchema1Manifest }, undefined],
  ])('refuses schema1 (%s)', (_name, doc, contentType) => {
    expectInvalid(
      () => parseManifestDocument(bytes(doc), { contentType }),
      'schema1 manifests are not supported',
    );
  });

  it('refuses a document with both manifests and layers', () => {
    expectInvalid(
      () => parseManifestDocument(bytes(manifestDoc(MEDIA_TYPE.ociManifest, { manifests: [] }))),
      'mediaType confusion',
    );
    expectInvalid(
      () => parseManifestDocument(bytes({ ...indexDoc(MEDIA_TYPE.ociIndex, []), layers: [] })),
      'mediaType confusion',
    );
  });

  it('refuses a mediaType that contradicts the Content-Type or the referring descriptor', () => {
    expectInvalid(
      () =>
        parseManifestDocument(bytes(manifestDoc(MEDIA_TYPE.ociManifest)), {
          contentType: MEDIA_TYPE.ociIndex,
        }),
      'mediaType confusion',
    );
    expectInvalid(
      () =>
        parseManifestDocument(bytes(indexDoc(MEDIA_TYPE.ociIndex, [])), {
          expectedMediaType: MEDIA_TYPE.ociManifest,
        }),
      'mediaType confusion',
    );
    expectInvalid(
      () =>
        parseManifestDocument(bytes(manifestDoc(undefined)), {
          contentType: MEDIA_TYPE.ociManifest,
          expectedMediaType: MEDIA_TYPE.dockerManifest,
        }),
      'mediaType confusion',
    );
    // A manifest kind chosen by Content-Type must still have manifest fields.
    expectInvalid(
      () => parseManifestDocument(bytes(indexDoc(undefined, [])), { contentType: MEDIA_TYPE.ociManifest }),
      'must not have "manifests"',
    );
    expectInvalid(
      () => parseManifestDocument(bytes(manifestDoc(undefined)), { contentType: MEDIA_TYPE.ociIndex }),
      'mediaType confusion',
    );
  });

  it.each([
    ['not JSON', Buffer.from('{'), 'not valid JSON'],
    ['an array', bytes([]), 'not a JSON object'],
    [
      'schemaVersion 3',
      bytes({ ...manifestDoc(MEDIA_TYPE.ociManifest), schemaVersion: 3 }),
      'unsupported schemaVersion 3',
    ],
    [
      'unknown mediaType',
      bytes(manifestDoc('application/vnd.example+json')),
      'unsupported manifest mediaType',
    ],
    ['no config', bytes({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, layers: [] }), 'no "config"'],
    [
      'layers not an array',
      bytes(manifestDoc(MEDIA_TYPE.ociManifest, { layers: {} })),
      '"layers" is missing or not an array',
    ],
    [
      'traversal digest',
      bytes(
        manifestDoc(MEDIA_TYPE.ociManifest, {
          layers: [{ mediaType: 'x', digest: 'sha256:../../x', size: 1 }],
        }),
      ),
      'layers[0].digest',
    ],
    [
      'uppercase digest',
      bytes(
        manifestDoc(MEDIA_TYPE.ociManifest, {
          config: { mediaType: 'x', digest: `sha256:${'A'.repeat(64)}`, size: 1 },
        }),
      ),
      'config.digest',
    ],
    [
      'negative size',
      bytes(manifestDoc(MEDIA_TYPE.ociManifest, { layers: [{ mediaType: 'x', digest: d('1'), size: -1 }] })),
      'layers[0].size',
    ],
    [
      'fractional size',
      bytes(manifestDoc(MEDIA_TYPE.ociManifest, { layers: [{ mediaType: 'x', digest: d('1'), size: 1.5 }] })),
      'layers[0].size',
    ],
    [
      'huge size',
      bytes(
        manifestDoc(MEDIA_TYPE.ociManifest, { layers: [{ mediaType: 'x', digest: d('1'), size: 2 ** 60 }] }),
      ),
      'layers[0].size',
    ],
    [
      'bad platform',
      bytes(indexDoc(MEDIA_TYPE.ociIndex, [{ ...entry('1'), platform: { os: 1 } }])),
      'platform must have',
    ],
  ])('refuses %s', (_name, body, why) => {
    expectInvalid(() => parseManifestDocument(body, { source: 'manifest of test' }), why);
  });
});

describe('selectPlatformManifest', () => {
  const index = (manifests: object[]): ImageIndex =>
    parseManifestDocument(bytes(indexDoc(MEDIA_TYPE.ociIndex, manifests))) as ImageIndex;

  it('picks linux/amd64 among others', () => {
    const chosen = selectPlatformManifest(
      index([
        entry('1', { os: 'linux', architecture: 'arm64', variant: 'v8' }),
        entry('2', { os: 'linux', architecture: 'amd64' }),
        entry('3', { os: 'windows', architecture: 'amd64' }),
      ]),
      { os: 'linux', architecture: 'amd64' },
    );
    expect(chosen.digest).toBe(d('2'));
  });

  it('prefers the exact variant, then no variant, and never another variant', () => {
    const idx = index([
      entry('1', { os: 'linux', architecture: 'arm', variant: 'v6' }),
      entry('2', { os: 'linux', architecture: 'arm' }),
      entry('3', { os: 'linux', architecture: 'arm', variant: 'v7' }),
    ]);
    expect(selectPlatformManifest(idx, { os: 'linux', architecture: 'arm', variant: 'v7' }).digest).toBe(
      d('3'),
    );
    expect(selectPlatformManifest(idx, { os: 'linux', architecture: 'arm', variant: 'v5' }).digest).toBe(
      d('2'),
    );
    const onlyV6 = index([entry('1', { os: 'linux', architecture: 'arm', variant: 'v6' })]);
    expect(() => selectPlatformManifest(onlyV6, { os: 'linux', architecture: 'arm', variant: 'v7' })).toThrow(
      NotFoundError,
    );
  });

  it("accepts the architecture's default variant when none is asked for", () => {
    const idx = index([entry('1', { os: 'linux', architecture: 'arm64', variant: 'v8' })]);
    expect(selectPlatformManifest(idx, { os: 'linux', architecture: 'aarch64' }).digest).toBe(d('1'));
  });

  it('skips attestations and entries without a platform, and says what is available', () => {
    const idx = index([
      entry('1'),
      entry('2', { os: 'unknown', architecture: 'unknown' }),
      entry('3', { os: 'linux', architecture: 'arm64' }),
      entry('4', { os: 'linux', architecture: 's390x' }),
    ]);
    expect(() => selectPlatformManifest(idx, { os: 'linux', architecture: 'amd64' }, 'image x')).toThrow(
      'image x has no manifest for platform linux/amd64 (available: linux/arm64, linux/s390x)',
    );
  });

  it('ignores entries whose mediaType is not a manifest', () => {
    const idx = index([
      entry('1', { os: 'linux', architecture: 'amd64' }, 'application/vnd.example.sbom'),
      entry('2', { os: 'linux', architecture: 'amd64' }, MEDIA_TYPE.dockerManifest),
    ]);
    expect(selectPlatformManifest(idx, { os: 'linux', architecture: 'amd64' }).digest).toBe(d('2'));
  });
});

describe('hostile documents', () => {
  // A small deterministic generator (no dependency): mutate valid documents at random and
  // check that parsing either succeeds or fails with InvalidArgument, never anything else.
  let seed = 12345;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const oddValues: unknown[] = [
    null,
    0,
    -1,
    1.5,
    '',
    'x',
    [],
    {},
    [null],
    { a: 1 },
    true,
    2 ** 64,
    '__proto__',
  ];
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;

  function mutate(value: unknown, depth = 0): unknown {
    if (random() < 0.15 || depth > 4) return pick(oddValues);
    if (Array.isArray(value)) return value.map((v) => mutate(v, depth + 1));
    if (typeof value === 'object' && value !== null) {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) {
        if (random() < 0.1) continue;
        out[k] = random() < 0.5 ? mutate(v, depth + 1) : v;
      }
      if (random() < 0.1)
        out[pick(['manifests', 'layers', 'config', 'mediaType', 'platform'])] = pick(oddValues);
      return out;
    }
    return value;
  }

  it('never throws anything but InvalidArgument for 3000 mutated documents', () => {
    const seeds = [
      manifestDoc(MEDIA_TYPE.ociManifest),
      manifestDoc(MEDIA_TYPE.dockerManifest),
      indexDoc(MEDIA_TYPE.ociIndex, [entry('1', { os: 'linux', architecture: 'amd64', variant: 'v1' })]),
      indexDoc(MEDIA_TYPE.dockerManifestList, [entry('2', { os: 'linux', architecture: 'arm64' })]),
    ];
    let parsed = 0;
    for (let i = 0; i < 3000; i++) {
      const doc = mutate(pick(seeds));
      const contentType = pick([undefined, MEDIA_TYPE.ociIndex, MEDIA_TYPE.ociManifest, 'application/json']);
      try {
        const result = parseManifestDocument(bytes(doc), { contentType });
        if (result.kind === 'index') selectPlatformManifest(result, { os: 'linux', architecture: 'amd64' });
        parsed++;
      } catch (err) {
        if (!(err instanceof InvalidArgumentError) && !(err instanceof NotFoundError)) throw err;
      }
    }
    // Some mutations leave a valid document; most do not.
    expect(parsed).toBeGreaterThan(0);
    expect(parsed).toBeLessThan(3000);
  });
});
