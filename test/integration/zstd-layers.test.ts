/**
 * zstd layers through the real daemon: the catalogue's `zstd` image (busybox base as a
 * zstd:chunked layer, document root as a plain zstd layer, both `tar+zstd`) is pushed to a local
 * registry, pulled by the daemon in its rootless node (download, digest and diff_id checks,
 * unpack), and run: busybox httpd from the zstd:chunked layer serves the page from the zstd
 * layer on a host port.
 */
import { chown, mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exposeInNode, type NodeBridge } from '../fixtures/hostile-registry.js';
import { freePort, getManifest, type RunningRegistry, startRegistry } from '../fixtures/registry.js';
import {
  buildCatalogue,
  type CatalogueImage,
  pushCatalogue,
  ZSTD_INDEX_HTML,
} from '../fixtures/test-images.js';
import { OCI_LAYER_ZSTD_MEDIA_TYPE, ZSTD_CHUNKED_ANNOTATIONS } from '../fixtures/zstd-chunked.js';
import { sleep, TestDaemon } from '../harness/daemon.js';

let daemon: TestDaemon;
let registry: RunningRegistry;
let bridge: NodeBridge | undefined;
let zstd: CatalogueImage;
let reference = '';
let files = 0;

async function crictl(args: string[]): Promise<string> {
  const r = await daemon.crictl(args);
  if (r.exitCode !== 0) {
    throw new Error(
      `crictl ${args.join(' ')} failed (${r.exitCode}): ${r.stderr}\n${await daemon.logTail(30)}`,
    );
  }
  return r.stdout.trim();
}

async function asJsonFile(value: unknown): Promise<string> {
  const file = path.join(daemon.tmp, `zstd-${files++}.json`);
  await writeFile(file, JSON.stringify(value));
  await chown(file, daemon.user.uid, daemon.user.gid);
  return file;
}

beforeAll(async () => {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  const built = await buildCatalogue({ cacheDir, names: ['zstd'] });
  zstd = built.images[0]!;
  registry = await startRegistry();
  await pushCatalogue(registry.url, built.images);
  reference = `${registry.host}/${zstd.entry.repository}:${zstd.entry.tags[0]}`;
  daemon = await TestDaemon.start();
  bridge = await exposeInNode(await daemon.nodePid(), registry.port);
}, 300_000);

afterAll(async () => {
  await bridge?.close();
  await daemon?.stop();
  await registry?.stop();
});

describe('zstd layers', () => {
  it('the registry serves the image with tar+zstd layers, the base one annotated as zstd:chunked', async () => {
    const fetched = await getManifest(registry.url, zstd.entry.repository, zstd.entry.tags[0]!);
    const manifest = JSON.parse(fetched.body.toString()) as {
      layers: { mediaType: string; annotations?: Record<string, string> }[];
    };
    expect(manifest.layers.map((l) => l.mediaType)).toEqual([
      OCI_LAYER_ZSTD_MEDIA_TYPE,
      OCI_LAYER_ZSTD_MEDIA_TYPE,
    ]);
    expect(Object.keys(manifest.layers[0]!.annotations ?? {})).toContain(
      ZSTD_CHUNKED_ANNOTATIONS.manifestChecksum,
    );
  });

  it('pulls, verifies and unpacks them, and a container from them serves HTTP on a host port', async () => {
    const pulled = await daemon.client.image(
      'PullImage',
      { image: { image: reference } },
      { timeoutMs: 120_000 },
    );
    const status = await daemon.client.image('ImageStatus', { image: { image: reference } });
    expect(status.image?.id).toBe(zstd.image.config.digest);
    expect(pulled.image_ref).toBe(status.image?.id);

    const hostPort = await freePort();
    const logDirectory = path.join(daemon.tmp, 'zstd-logs');
    await mkdir(logDirectory);
    await chown(logDirectory, daemon.user.uid, daemon.user.gid);
    const podConfig = {
      metadata: { name: 'zstd', namespace: 'zstd', uid: 'uid-zstd', attempt: 0 },
      hostname: 'zstd',
      log_directory: logDirectory,
      port_mappings: [{ container_port: 8080, host_port: hostPort, host_ip: '127.0.0.1' }],
      linux: {},
    };
    const podFile = await asJsonFile(podConfig);
    const pod = await crictl(['runp', podFile]);
    try {
      const ctrFile = await asJsonFile({
        metadata: { name: 'web' },
        image: { image: reference },
        log_path: 'web.log',
      });
      const ctr = await crictl(['create', pod, ctrFile, podFile]);
      await crictl(['start', ctr]);
      let body: string | undefined;
      const deadline = Date.now() + 20_000;
      while (body === undefined && Date.now() < deadline) {
        body = await fetch(`http://127.0.0.1:${hostPort}/`, { signal: AbortSignal.timeout(2000) })
          .then((r) => (r.ok ? r.text() : undefined))
          .catch(() => undefined);
        if (body === undefined) await sleep(100);
      }
      expect(body).toBe(ZSTD_INDEX_HTML);
      // The busybox applets of the zstd:chunked layer are hardlinks; ls ran from it.
      const listing = await crictl(['exec', ctr, 'ls', '/www']);
      expect(listing).toBe('index.html');
    } finally {
      await crictl(['stopp', pod]);
      await crictl(['rmp', pod]);
    }
    await daemon.client.image('RemoveImage', { image: { image: reference } });
  });
});
