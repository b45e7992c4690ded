import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { parseImageReference } from '../../src/image/reference.js';

const D = `sha256:${'a'.repeat(64)}`;

// input → [domain, path, tag, digest, toString(), familiar()]
const good: [string, string, string, string | undefined, string | undefined, string, string][] = [
  [
    'busybox',
    'docker.io',
    'library/busybox',
    'latest',
    undefined,
    'docker.io/library/busybox:latest',
    'busybox:latest',
  ],
  [
    'busybox:1.36',
    'docker.io',
    'library/busybox',
    '1.36',
    undefined,
    'docker.io/library/busybox:1.36',
    'busybox:1.36',
  ],
  [
    'library/busybox',
    'docker.io',
    'library/busybox',
    'latest',
    undefined,
    'docker.io/library/busybox:latest',
    'busybox:latest',
  ],
  [
    'docker.io/busybox',
    'docker.io',
    'library/busybox',
    'latest',
    undefined,
    'docker.io/library/busybox:latest',
    'busybox:latest',
  ],
  [
    'index.docker.io/busybox',
    'docker.io',
    'library/busybox',
    'latest',
    undefined,
    'docker.io/library/busybox:latest',
    'busybox:latest',
  ],
  [
    'docker.io/library/busybox:1',
    'docker.io',
    'library/busybox',
    '1',
    undefined,
    'docker.io/library/busybox:1',
    'busybox:1',
  ],
  ['foo/bar', 'docker.io', 'foo/bar', 'latest', undefined, 'docker.io/foo/bar:latest', 'foo/bar:latest'],
  [
    'foo/bar/baz:v2',
    'docker.io',
    'foo/bar/baz',
    'v2',
    undefined,
    'docker.io/foo/bar/baz:v2',
    'foo/bar/baz:v2',
  ],
  [
    'docker.io/library/a/b',
    'docker.io',
    'library/a/b',
    'latest',
    undefined,
    'docker.io/library/a/b:latest',
    'library/a/b:latest',
  ],
  ['localhost/foo', 'localhost', 'foo', 'latest', undefined, 'localhost/foo:latest', 'localhost/foo:latest'],
  [
    'localhost:5000/foo:1',
    'localhost:5000',
    'foo',
    '1',
    undefined,
    'localhost:5000/foo:1',
    'localhost:5000/foo:1',
  ],
  [
    '127.0.0.1:5000/e2e-test-images/busybox:1.29-2',
    '127.0.0.1:5000',
    'e2e-test-images/busybox',
    '1.29-2',
    undefined,
    '127.0.0.1:5000/e2e-test-images/busybox:1.29-2',
    '127.0.0.1:5000/e2e-test-images/busybox:1.29-2',
  ],
  [
    'registry.k8s.io/pause:3.9',
    'registry.k8s.io',
    'pause',
    '3.9',
    undefined,
    'registry.k8s.io/pause:3.9',
    'registry.k8s.io/pause:3.9',
  ],
  [
    'gcr.io/k8s-staging-cri-tools/test-image-digest',
    'gcr.io',
    'k8s-staging-cri-tools/test-image-digest',
    'latest',
    undefined,
    'gcr.io/k8s-staging-cri-tools/test-image-digest:latest',
    'gcr.io/k8s-staging-cri-tools/test-image-digest:latest',
  ],
  [
    `busybox@${D}`,
    'docker.io',
    'library/busybox',
    undefined,
    D,
    `docker.io/library/busybox@${D}`,
    `busybox@${D}`,
  ],
  [
    `busybox:1.36@${D}`,
    'docker.io',
    'library/busybox',
    '1.36',
    D,
    `docker.io/library/busybox:1.36@${D}`,
    `busybox:1.36@${D}`,
  ],
  [
    `127.0.0.1:5000/a/b@${D}`,
    '127.0.0.1:5000',
    'a/b',
    undefined,
    D,
    `127.0.0.1:5000/a/b@${D}`,
    `127.0.0.1:5000/a/b@${D}`,
  ],
  [
    'Example.COM/foo',
    'Example.COM',
    'foo',
    'latest',
    undefined,
    'Example.COM/foo:latest',
    'Example.COM/foo:latest',
  ],
  [
    'Uppercasehost/foo',
    'Uppercasehost',
    'foo',
    'latest',
    undefined,
    'Uppercasehost/foo:latest',
    'Uppercasehost/foo:latest',
  ],
  [
    'a.b-c.d:65535/x_y/z__w/q-r--s:T_1.a-b',
    'a.b-c.d:65535',
    'x_y/z__w/q-r--s',
    'T_1.a-b',
    undefined,
    'a.b-c.d:65535/x_y/z__w/q-r--s:T_1.a-b',
    'a.b-c.d:65535/x_y/z__w/q-r--s:T_1.a-b',
  ],
  ['[::1]:5000/foo:1', '[::1]:5000', 'foo', '1', undefined, '[::1]:5000/foo:1', '[::1]:5000/foo:1'],
  ['foo:_tag', 'docker.io', 'library/foo', '_tag', undefined, 'docker.io/library/foo:_tag', 'foo:_tag'],
  [
    `foo:${'t'.repeat(128)}`,
    'docker.io',
    'library/foo',
    't'.repeat(128),
    undefined,
    `docker.io/library/foo:${'t'.repeat(128)}`,
    `foo:${'t'.repeat(128)}`,
  ],
  ['a', 'docker.io', 'library/a', 'latest', undefined, 'docker.io/library/a:latest', 'a:latest'],
];

// input → words the error message must contain
const bad: [string, string][] = [
  ['', 'reference is empty'],
  ['Foo', 'repository name must be lowercase'],
  ['docker.io/Foo/bar', 'repository name must be lowercase'],
  ['127.0.0.1:5000/Foo', 'repository name must be lowercase'],
  ['busybox:', 'invalid tag ""'],
  ['busybox:-1', 'invalid tag "-1"'],
  ['busybox:.x', 'invalid tag ".x"'],
  [`busybox:${'t'.repeat(129)}`, 'invalid tag'],
  ['busybox:a/b', 'invalid registry port "a"'],
  ['busybox@sha256:abc', 'invalid digest'],
  [`busybox@sha256:${'A'.repeat(64)}`, 'invalid digest'],
  ['busybox@sha256:../../x', 'invalid digest'],
  [`busybox@sha512:${'a'.repeat(128)}`, 'unsupported digest algorithm "sha512"'],
  [`busybox@${'a'.repeat(64)}`, 'missing "algorithm:" prefix'],
  ['busybox@', 'invalid digest'],
  [':tag', 'repository name is empty'],
  ['foo//bar', 'empty component'],
  ['foo/', 'empty component'],
  ['127.0.0.1:5000/', 'repository path is empty'],
  ['-foo', 'invalid repository path component "-foo"'],
  ['foo-', 'invalid repository path component "foo-"'],
  ['foo..bar', 'invalid repository path component'],
  ['foo___bar', 'invalid repository path component'],
  ['foo bar', 'whitespace'],
  ['busybox\n', 'whitespace'],
  ['host:99999/foo', 'invalid registry port "99999"'],
  ['host:0/foo', 'invalid registry port "0"'],
  ['host:abc/foo', 'invalid registry port "abc"'],
  ['-host.com/foo', 'invalid registry host "-host.com"'],
  ['a..com/foo', 'invalid registry host'],
  [`${'a'.repeat(64)}`, 'image ID, not a repository name'],
  [`x.io/${'a'.repeat(260)}`, 'longer than 255'],
  ['foo/../bar', 'invalid repository path component ".."'],
  ['foo@bar@sha256:x', 'invalid digest'],
];

describe('parseImageReference', () => {
  it.each(good)('parses %j', (input, domain, path, tag, digest, full, familiar) => {
    const ref = parseImageReference(input);
    expect({ domain: ref.domain, path: ref.path, tag: ref.tag, digest: ref.digest }).toEqual({
      domain,
      path,
      tag,
      digest,
    });
    expect(ref.toString()).toBe(full);
    expect(ref.familiar()).toBe(familiar);
    // Normalisation is idempotent: the full form parses to itself.
    expect(parseImageReference(full).toString()).toBe(full);
  });

  it.each(bad)('rejects %j', (input, why) => {
    let error: unknown;
    try {
      parseImageReference(input);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as Error).message).toContain(`invalid image reference ${JSON.stringify(input)}`);
    expect((error as Error).message).toContain(why);
  });

  it('names the exact problem for an uppercase name', () => {
    expect(() => parseImageReference('Foo')).toThrow(
      'invalid image reference "Foo": repository name must be lowercase',
    );
  });

  it('gives name, repo tag, repo digest and tagOrDigest', () => {
    const ref = parseImageReference(`busybox:1@${D}`);
    expect(ref.name).toBe('docker.io/library/busybox');
    expect(ref.repoTag()).toBe('docker.io/library/busybox:1');
    expect(ref.repoDigest(D as `sha256:${string}`)).toBe(`docker.io/library/busybox@${D}`);
    expect(ref.tagOrDigest).toBe(D);
    expect(parseImageReference('busybox:1').tagOrDigest).toBe('1');
    expect(parseImageReference(`busybox@${D}`).repoTag()).toBeUndefined();
    expect(JSON.parse(JSON.stringify(ref))).toEqual({
      domain: 'docker.io',
      path: 'library/busybox',
      tag: '1',
      digest: D,
    });
  });
});
