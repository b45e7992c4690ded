import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readlink, rm, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync, zstdDecompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  blobPath,
  busyboxBaseLayer,
  HOST_BUSYBOX,
  ImageBuilder,
  layerTarEntries,
  readBlob,
  type TarEntry,
  tarChunks,
  writeTar,
} from '../fixtures/image-builder.js';
import {
  type BuiltCatalogue,
  buildCatalogue,
  type CatalogueContext,
  deterministicContent,
  LAYERED_IMAGE_EXPECTED,
  largeImageSpec,
  TEST_IMAGES,
  ZSTD_INDEX_HTML,
} from '../fixtures/test-images.js';
import { OCI_LAYER_ZSTD_MEDIA_TYPE, ZSTD_CHUNKED_ANNOTATIONS } from '../fixtures/zstd-chunked.js';

const execFileAsync = promisify(execFile);

const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

interface Listed {
  mode: string;
  owner: string;
  /** Size, or `major,minor` for devices. */
  size: string;
  name: string;
  link?: string;
  hardlink?: string;
}

/** `tar -tv --numeric-owner` lines → mode string, uid/gid and name (and link targets). */
async function listTar(file: string): Promise<Listed[]> {
  const { stdout } = await execFileAsync('tar', ['--numeric-owner', '-tvf', file], {
    maxBuffer: 64 * 1024 * 1024,
  });
  return stdout
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => {
      const match = /^(\S+) (\d+\/\d+)\s+([\d,]+) \S+ \S+ (.*)$/.exec(line);
      if (!match) throw new Error(`unexpected tar -tv line: ${line}`);
      const rest = match[4]!;
      const [name, target] = rest.split(/ -> | link to /);
      return {
        mode: match[1]!,
        owner: match[2]!,
        size: match[3]!,
        name: name!,
        ...(rest.includes(' -> ') ? { link: target } : {}),
        ...(rest.includes(' link to ') ? { hardlink: target } : {}),
      };
    });
}

let workDir: string;

beforeAll(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'rcri-image-builder-test-'));
});

afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

describe('tar writer', () => {
  // 990 bytes: " path=<name>\n" is then 997 bytes and the PAX record length crosses to 4 digits.
  const boundaryName = `${'d'.repeat(200)}/${'e'.repeat(200)}/${'f'.repeat(200)}/${'g'.repeat(200)}/${'h'.repeat(186)}`;
  const longName = `deep/${'x'.repeat(120)}/file.txt`;
  const entries: TarEntry[] = [
    { path: 'etc', type: 'dir', mode: 0o755, uid: 0, gid: 0 },
    { path: 'etc/owned', type: 'file', mode: 0o640, uid: 1000, gid: 1001, content: Buffer.from('owned\n') },
    { path: 'bin/tool', type: 'file', mode: 0o4755, uid: 0, gid: 0, content: Buffer.from('#!/bin/sh\n') },
    { path: 'bin/[', type: 'hardlink', mode: 0o644, uid: 0, gid: 0, linkTarget: 'bin/tool' },
    { path: 'bin', type: 'dir', mode: 0o755, uid: 0, gid: 0 },
    { path: 'tmp', type: 'dir', mode: 0o1777, uid: 0, gid: 0 },
    { path: 'etc/link', type: 'symlink', mode: 0o777, uid: 0, gid: 0, linkTarget: `../${'y'.repeat(150)}` },
    { path: 'deep', type: 'dir', mode: 0o755, uid: 0, gid: 0 },
    { path: `deep/${'x'.repeat(120)}`, type: 'dir', mode: 0o755, uid: 0, gid: 0 },
    { path: longName, type: 'file', mode: 0o600, uid: 3000000, gid: 33, content: Buffer.from('long\n') },
    { path: boundaryName, type: 'file', mode: 0o644, uid: 0, gid: 0, content: Buffer.from('boundary\n') },
    { path: 'etc/ünïcode', type: 'file', mode: 0o644, uid: 0, gid: 0, content: Buffer.alloc(513, 7) },
    { path: 'dev/null', type: 'chardev', mode: 0o666, uid: 0, gid: 0, devMajor: 1, devMinor: 3 },
    { path: 'dev/fifo', type: 'fifo', mode: 0o600, uid: 0, gid: 0 },
    { path: 'dev', type: 'dir', mode: 0o755, uid: 0, gid: 0 },
  ];

  it('writes an archive GNU tar lists with the given modes, owners, links and long names', async () => {
    const file = path.join(workDir, 'entries.tar');
    await writeFile(file, writeTar(entries));
    const listed = await listTar(file);
    const byName = new Map(listed.map((l) => [l.name, l]));
    expect(byName.get('etc/owned')).toMatchObject({ mode: '-rw-r-----', owner: '1000/1001' });
    expect(byName.get('bin/tool')).toMatchObject({ mode: '-rwsr-xr-x', owner: '0/0' });
    expect(byName.get('bin/[')).toMatchObject({ mode: 'hrw-r--r--', hardlink: 'bin/tool' });
    expect(byName.get('tmp/')).toMatchObject({ mode: 'drwxrwxrwt' });
    expect(byName.get('etc/link')).toMatchObject({ mode: 'lrwxrwxrwx', link: `../${'y'.repeat(150)}` });
    expect(byName.get(longName)).toMatchObject({ mode: '-rw-------', owner: '3000000/33' });
    expect(byName.get(boundaryName)).toBeDefined();
    expect(byName.get('etc/ünïcode')).toBeDefined();
    expect(byName.get('dev/fifo')?.mode).toBe('prw-------');
    expect(byName.get('dev/null')).toMatchObject({ mode: 'crw-rw-rw-', size: '1,3' });
    // A hardlink comes after its target even though "bin/[" sorts first.
    const names = listed.map((l) => l.name);
    expect(names.indexOf('bin/[')).toBeGreaterThan(names.indexOf('bin/tool'));
    expect(names.indexOf('bin/')).toBeLessThan(names.indexOf('bin/tool'));
  });

  it('extracts to the same content, and the hardlink shares the inode', async () => {
    const file = path.join(workDir, 'extract.tar');
    const out = await mkdtemp(path.join(workDir, 'extract-'));
    await writeFile(file, writeTar(entries));
    await execFileAsync('tar', ['-xf', file, '-C', out, '--exclude=dev/*']);
    expect(await readFile(path.join(out, longName), 'utf8')).toBe('long\n');
    expect(await readFile(path.join(out, boundaryName), 'utf8')).toBe('boundary\n');
    expect(await readFile(path.join(out, 'etc/ünïcode'))).toEqual(Buffer.alloc(513, 7));
    expect(await readlink(path.join(out, 'etc/link'))).toBe(`../${'y'.repeat(150)}`);
    const [tool, link] = await Promise.all([stat(path.join(out, 'bin/tool')), stat(path.join(out, 'bin/['))]);
    expect(link.ino).toBe(tool.ino);
  });

  it('is deterministic and 512-byte aligned', () => {
    const first = writeTar(entries);
    const second = writeTar([...entries].reverse());
    expect(first.equals(second)).toBe(true);
    expect(first.length % 512).toBe(0);
  });
});

describe('layers', () => {
  it('turns whiteouts and opaque dirs into .wh. entries and adds missing parents', async () => {
    const entries = await layerTarEntries({
      items: [
        { kind: 'whiteout', path: '/data/gone.txt' },
        { kind: 'opaque', path: '/data/fresh' },
        { kind: 'file', path: '/data/fresh/new.txt', content: 'new' },
        { kind: 'whiteout', path: '/top-level' },
      ],
    });
    const file = path.join(workDir, 'whiteouts.tar');
    await writeFile(file, Buffer.concat([...tarChunks(entries)]));
    const names = (await listTar(file)).map((l) => l.name);
    expect(names).toEqual([
      '.wh.top-level',
      'data/',
      'data/.wh.gone.txt',
      'data/fresh/',
      'data/fresh/.wh..wh..opq',
      'data/fresh/new.txt',
    ]);
  });

  it('rejects paths that leave the image root', async () => {
    await expect(
      layerTarEntries({ items: [{ kind: 'file', path: '/../etc/x', content: '' }] }),
    ).rejects.toThrow(/must name something below/);
  });

  it('builds the busybox base with every applet hardlinked to /bin/busybox', async () => {
    const { stdout } = await execFileAsync(HOST_BUSYBOX, ['--list']);
    const applets = stdout.split('\n').filter((a) => a !== '' && a !== 'busybox');
    const file = path.join(workDir, 'base.tar');
    await writeFile(file, writeTar(await layerTarEntries(await busyboxBaseLayer())));
    const listed = new Map((await listTar(file)).map((l) => [l.name, l]));
    expect(listed.get('bin/busybox')).toMatchObject({ mode: '-rwxr-xr-x', owner: '0/0' });
    expect(listed.get('bin/busybox')?.hardlink).toBeUndefined();
    for (const applet of applets) expect(listed.get(`bin/${applet}`)?.hardlink).toBe('bin/busybox');
    // A dynamically linked busybox brings the libraries it loads.
    const { stdout: ldd } = await execFileAsync('ldd', [HOST_BUSYBOX]).catch(() => ({ stdout: '' }));
    for (const lib of ldd.matchAll(/(\/\S+)\s+\(0x/g))
      expect(listed.has(lib[1]!.slice(1)), lib[1]).toBe(true);
    // Stand-ins for applets Debian's build leaves out are scripts, not links.
    for (const name of ['pgrep', 'ipcs']) {
      if (!applets.includes(name)) expect(listed.get(`bin/${name}`)).toMatchObject({ mode: '-rwxr-xr-x' });
    }
    expect(listed.get('tmp/')?.mode).toBe('drwxrwxrwt');
    for (const dir of ['proc/', 'sys/', 'dev/', 'var/run/']) expect(listed.has(dir)).toBe(true);
    const out = await mkdtemp(path.join(workDir, 'base-'));
    await execFileAsync('tar', ['-xf', file, '-C', out, 'etc/passwd', 'etc/group']);
    const passwd = await readFile(path.join(out, 'etc/passwd'), 'utf8');
    expect(passwd).toMatch(/^nobody:x:65534:65534:/m);
    expect(passwd).toMatch(/^www-data:x:33:33:/m);
    expect(await readFile(path.join(out, 'etc/group'), 'utf8')).toMatch(/^root:x:0:/m);
  });
});

describe('catalogue', () => {
  let catalogue: BuiltCatalogue;
  let cacheDir: string;

  beforeAll(async () => {
    cacheDir = path.join(workDir, 'cache');
    catalogue = await buildCatalogue({ cacheDir });
  }, 120_000);

  const configOf = async (name: string) => {
    const found = catalogue.images.find((i) => i.entry.name === name);
    if (!found) throw new Error(`catalogue has no ${name}`);
    return JSON.parse((await readBlob(found.image, found.image.config.digest)).toString()) as {
      config: Record<string, unknown>;
      rootfs: { diff_ids: string[] };
      architecture: string;
      os: string;
    };
  };

  it('builds every default entry and none of the on-demand ones', () => {
    const built = catalogue.images.map((i) => i.entry.name).sort();
    const expected = TEST_IMAGES.filter((e) => !e.onDemand)
      .map((e) => e.name)
      .sort();
    expect(built).toEqual(expected);
    expect(built).not.toContain('large');
  });

  it('gives every entry its own config digest (the image id critest compares)', () => {
    const digests = catalogue.images.map((i) => i.image.config.digest);
    expect(new Set(digests).size).toBe(digests.length);
  });

  it('serves test-image-tags as one image under three tags, the same on every build', async () => {
    const tags = catalogue.images.find((i) => i.entry.name === 'test-image-tags')!;
    expect(tags.entry.tags).toEqual(['1', '2', '3']);
    const again = await buildCatalogue({
      cacheDir: path.join(workDir, 'cache-again'),
      names: ['test-image-tags'],
    });
    expect(again.images[0]!.image.config.digest).toBe(tags.image.config.digest);
    expect(again.images[0]!.image.manifest.digest).toBe(tags.image.manifest.digest);
  });

  it('names pause under both registries critest uses, one local repository', () => {
    const pause = catalogue.images.find((i) => i.entry.name === 'pause')!;
    expect(pause.entry.repository).toBe('pause');
    expect(pause.entry.originalReferences).toEqual(['registry.k8s.io/pause:3.9', 'k8s.gcr.io/pause:3.9']);
  });

  it('records diff_ids that match the uncompressed layers and digests that match the blobs', async () => {
    for (const { image } of catalogue.images) {
      const config = await readBlob(image, image.config.digest);
      expect(sha256(config)).toBe(image.config.digest);
      const parsed = JSON.parse(config.toString()) as { rootfs: { diff_ids: string[] } };
      expect(parsed.rootfs.diff_ids).toHaveLength(image.layers.length);
      const manifest = JSON.parse((await readBlob(image, image.manifest.digest)).toString()) as {
        config: { digest: string };
        layers: { digest: string; size: number; mediaType: string }[];
      };
      expect(manifest.config.digest).toBe(image.config.digest);
      for (const [index, layer] of image.layers.entries()) {
        const blob = await readBlob(image, layer.digest);
        expect(sha256(blob)).toBe(layer.digest);
        expect(manifest.layers[index]).toMatchObject({ digest: layer.digest, size: blob.length });
        const tar = layer.mediaType.endsWith('+zstd') ? zstdDecompressSync(blob) : gunzipSync(blob);
        expect(sha256(tar)).toBe(parsed.rootfs.diff_ids[index]);
      }
    }
  });

  it('builds the zstd image: a zstd:chunked base (skippable TOC and footer, annotated) and a zstd top layer', async () => {
    const { image } = catalogue.images.find((i) => i.entry.name === 'zstd')!;
    const manifest = JSON.parse((await readBlob(image, image.manifest.digest)).toString()) as {
      layers: { mediaType: string; annotations?: Record<string, string> }[];
    };
    expect(manifest.layers.map((l) => l.mediaType)).toEqual([
      OCI_LAYER_ZSTD_MEDIA_TYPE,
      OCI_LAYER_ZSTD_MEDIA_TYPE,
    ]);
    const [base, top] = image.layers;
    const chunked = await readBlob(image, base!.digest);
    // Last frame: skippable (magic 0x184D2A50, length 64) holding the footer that ends in the magic.
    const footerFrame = chunked.subarray(chunked.length - 72);
    expect(footerFrame.readUInt32LE(0)).toBe(0x184d2a50);
    expect(footerFrame.readUInt32LE(4)).toBe(64);
    expect(footerFrame.subarray(64).toString('latin1')).toBe('GNUlInUx');
    // The footer and the annotation point at the same zstd-compressed TOC, one frame per tar entry.
    const tocOffset = Number(footerFrame.readBigUInt64LE(8));
    const tocLength = Number(footerFrame.readBigUInt64LE(16));
    const annotations = manifest.layers[0]!.annotations!;
    expect(annotations[ZSTD_CHUNKED_ANNOTATIONS.manifestPosition]).toMatch(
      new RegExp(`^${tocOffset}:${tocLength}:\\d+:1$`),
    );
    const tocBlob = chunked.subarray(tocOffset, tocOffset + tocLength);
    expect(annotations[ZSTD_CHUNKED_ANNOTATIONS.manifestChecksum]).toBe(sha256(tocBlob));
    const toc = JSON.parse(zstdDecompressSync(tocBlob).toString()) as { entries: unknown[] };
    expect(toc.entries.length).toBeGreaterThan(100); // busybox and its applet links
    expect(manifest.layers[1]!.annotations).toBeUndefined();
    const topTar = zstdDecompressSync(await readBlob(image, top!.digest));
    expect(topTar.toString('latin1')).toContain(ZSTD_INDEX_HTML);
  });

  it('sets the configs critest checks', async () => {
    expect((await configOf('busybox')).config.Cmd).toEqual(['sh']);
    expect(await configOf('busybox')).toMatchObject({ architecture: 'amd64', os: 'linux' });
    const nginx = (await configOf('nginx')).config;
    expect(nginx.Entrypoint).toEqual(['/usr/sbin/nginx']);
    expect(nginx.Cmd).toEqual(['master process', '-g', 'daemon off;']);
    expect((await configOf('hostnet-nginx')).config.Env).toContain('PORT=12003');
    expect((await configOf('test-image-user-uid')).config.User).toBe('1002');
    expect((await configOf('test-image-user-username')).config.User).toBe('www-data');
    expect((await configOf('test-image-user-uid-group')).config.User).toBe('1003:1004');
    expect((await configOf('test-image-user-username-group')).config.User).toBe('www-data:1004');
    expect((await configOf('test-image-predefined-group')).config.User).toBe('1000');
    expect((await configOf('nonewprivs')).config.Entrypoint).toEqual(['/usr/local/bin/nnp']);
  });

  it('installs nonewprivs as a static setuid-root binary that prints its effective uid', async () => {
    const found = catalogue.images.find((i) => i.entry.name === 'nonewprivs')!;
    const top = found.image.layers.at(-1)!;
    const file = path.join(workDir, 'nnp.tar');
    await writeFile(file, gunzipSync(await readBlob(found.image, top.digest)));
    const listed = (await listTar(file)).find((l) => l.name === 'usr/local/bin/nnp');
    expect(listed).toMatchObject({ mode: '-rwsr-xr-x', owner: '0/0' });
    const out = await mkdtemp(path.join(workDir, 'nnp-'));
    await execFileAsync('tar', ['-xf', file, '-C', out]);
    const { stdout } = await execFileAsync(path.join(out, 'usr/local/bin/nnp'));
    expect(stdout).toBe(`Effective uid: ${process.geteuid!()}\n`);
    const { stdout: fileType } = await execFileAsync('sh', [
      '-c',
      `od -An -c -N4 ${path.join(out, 'usr/local/bin/nnp')}`,
    ]);
    expect(fileType).toMatch(/177\s+E\s+L\s+F/);
  });

  it('stacks the layers image as LAYERED_IMAGE_EXPECTED says (checked with tar applying layers in order)', async () => {
    const found = catalogue.images.find((i) => i.entry.name === 'layers')!;
    const listings = [];
    for (const layer of found.image.layers.slice(1)) {
      const file = path.join(workDir, `layer-${layer.digest.slice(7, 19)}.tar`);
      await writeFile(file, gunzipSync(await readBlob(found.image, layer.digest)));
      listings.push(await listTar(file));
    }
    const names = listings.map((l) => l.map((e) => e.name));
    expect(names[1]).toEqual(
      expect.arrayContaining([
        'data/.wh.removed.txt',
        'data/.wh.removed-dir',
        'data/opaque-dir/.wh..wh..opq',
      ]),
    );
    expect(names[2]).toContain('bin/.wh.vi');
    const owned = listings[0]!.find((e) => e.name === 'data/owned.txt');
    const expected = LAYERED_IMAGE_EXPECTED.owners['/data/owned.txt']!;
    expect(owned?.owner).toBe(`${expected.uid}/${expected.gid}`);
    expect(listings[0]!.find((e) => e.name === 'data/hardlink-to-keep')?.hardlink).toBe('data/keep.txt');
    expect(listings[0]!.find((e) => e.name === 'data/symlink-to-keep')?.link).toBe('keep.txt');
  });

  it('reuses the cache while the catalogue is unchanged and rebuilds an image whose blob went missing', async () => {
    const second = await buildCatalogue({ cacheDir });
    expect(second.rebuilt).toEqual([]);
    expect(second.images.map((i) => i.image.manifest.digest)).toEqual(
      catalogue.images.map((i) => i.image.manifest.digest),
    );
    const victim = second.images.find((i) => i.entry.name === 'httpd')!;
    await unlink(blobPath(victim.image.layoutDir, victim.image.config.digest));
    const third = await buildCatalogue({ cacheDir });
    expect(third.rebuilt).toEqual(['httpd']);
    expect(third.images.find((i) => i.entry.name === 'httpd')!.image.config.digest).toBe(
      victim.image.config.digest,
    );
  });
});

describe('generated large image', () => {
  it('produces deterministic content of exactly the declared size', () => {
    const one = deterministicContent('seed', 200_000);
    const a = Buffer.concat([...one.chunks()]);
    const b = Buffer.concat([...deterministicContent('seed', 200_000).chunks()]);
    const other = Buffer.concat([...deterministicContent('other', 200_000).chunks()]);
    expect(a.length).toBe(200_000);
    expect(a.equals(b)).toBe(true);
    expect(a.equals(other)).toBe(false);
  });

  it('streams generated layers with diff_ids matching their uncompressed content', async () => {
    const builder = new ImageBuilder(path.join(workDir, 'large-layout'));
    const context: CatalogueContext = {
      base: async () => ({ items: [{ kind: 'file', path: '/marker', content: 'base' }] }),
      nonewprivsBinary: async () => {
        throw new Error('not needed');
      },
    };
    const spec = await largeImageSpec(context, {
      layers: 2,
      bytesPerLayer: 3 * 1024 * 1024,
      fileSize: 1024 * 1024,
    });
    const image = await builder.build('large-small', spec);
    expect(image.layers).toHaveLength(3);
    for (const layer of image.layers.slice(1)) {
      const tar = gunzipSync(await readFile(blobPath(image.layoutDir, layer.digest)));
      expect(sha256(tar)).toBe(layer.diffId);
      expect(tar.length).toBe(layer.uncompressedSize);
      expect(layer.uncompressedSize).toBeGreaterThan(3 * 1024 * 1024);
      // About half of the data is random: it must not collapse under gzip.
      expect(layer.size).toBeGreaterThan(layer.uncompressedSize * 0.3);
    }
    const again = await new ImageBuilder(path.join(workDir, 'large-layout-2')).build('large-small', spec);
    expect(again.manifest.digest).toBe(image.manifest.digest);
  });
});
