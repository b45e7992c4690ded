/**
 * pull: PullImage (download + verify + unpack) of a generated multi-layer image of
 * ≥ 100 MB uncompressed (the catalogue's `large` image: busybox base + 4 × 32 MiB layers),
 * from Debian's docker-registry on 127.0.0.1, through the real daemon in its rootless node
 * (reached through the test bridge into the node's netns). Two ratios from the same run,
 * rounds alternating so machine noise hits all alike:
 *   - vs `skopeo copy docker://… oci:DIR` + `umoci unpack --rootless` of the same image;
 *   - vs single-core `gzip -dc` of the same layer blobs to /dev/null (the decompression floor);
 * and the same image with zstd layers (`large-zstd`) vs single-core `zstd -dc` of its blobs, and
 * vs `zstd -dc | tar -x` of them (decompression is so cheap that writing the files is the floor).
 * MB/s are uncompressed layer bytes (the tar streams) per second. The CPU each pull costs,
 * by process and daemon thread (pull-cpu.ts), is printed beside `gzip -dc`'s: on a shared
 * machine it moves far less than the wall ratios. Needs root (the daemon runs as the test
 * user; the bridge uses nsenter).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { exposeInNode } from '../test/fixtures/hostile-registry.js';
import { blobPath } from '../test/fixtures/image-builder.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { buildCatalogue, pushCatalogue } from '../test/fixtures/test-images.js';
import { TestDaemon } from '../test/harness/daemon.js';
import { childrenCpu, type PullCpu, PullCpuMeter } from './pull-cpu.js';

const execFileAsync = promisify(execFile);
const ROUNDS = Number(process.env.BENCH_PULL_ROUNDS ?? 3);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function timed(task: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await task();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

export async function benchPull(): Promise<void> {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  for (const tool of ['skopeo', 'umoci', 'zstd', 'gzip']) {
    await execFileAsync('sh', ['-c', `command -v ${tool}`]).catch(() => {
      throw new Error(`the pull bench compares with ${tool}: apt-get install skopeo umoci zstd`);
    });
  }
  const [large, largeZstd] = (await buildCatalogue({ cacheDir, names: ['large', 'large-zstd'] })).images;
  const image = large!.image;
  const zstdImage = largeZstd!.image;
  const reference = (host: string, entry = large!.entry) => `${host}/${entry.repository}:${entry.tags[0]}`;
  const uncompressed = image.layers.reduce((n, l) => n + l.uncompressedSize, 0);
  const compressed = image.layers.reduce((n, l) => n + l.size, 0);
  const zstdCompressed = zstdImage.layers.reduce((n, l) => n + l.size, 0);
  const mb = uncompressed / 1e6;

  const registry = await startRegistry();
  const work = await mkdtemp(path.join(os.tmpdir(), 'rcri-bench-pull-'));
  let daemon: TestDaemon | undefined;
  let bridge: Awaited<ReturnType<typeof exposeInNode>> | undefined;
  const seconds = {
    ours: [] as number[],
    skopeoUmoci: [] as number[],
    gzip: [] as number[],
    oursZstd: [] as number[],
    zstd: [] as number[],
    zstdTar: [] as number[],
  };
  const cpu: PullCpu[] = [];
  const gzipCpu: number[] = [];
  try {
    await pushCatalogue(registry.url, [large!, largeZstd!]);
    daemon = await TestDaemon.start();
    bridge = await exposeInNode(await daemon.nodePid(), registry.port);
    const meter = PullCpuMeter.find(daemon.configFile, registry.pid);
    const ref = reference(registry.host);
    const blobs = image.layers.map((l) => blobPath(image.layoutDir, l.digest));
    const zstdRef = reference(registry.host, largeZstd!.entry);
    const zstdBlobs = zstdImage.layers.map((l) => blobPath(zstdImage.layoutDir, l.digest));
    for (let round = 0; round < ROUNDS; round++) {
      cpu.push(
        await meter.measure(async () => {
          seconds.ours.push(
            await timed(() =>
              daemon!.client.image('PullImage', { image: { image: ref } }, { timeoutMs: 600_000 }),
            ),
          );
        }),
      );
      // Removal garbage-collects blobs and layers, so every round pulls from scratch.
      await daemon.client.image('RemoveImage', { image: { image: ref } });

      const oci = path.join(work, `oci-${round}`);
      const bundle = path.join(work, `bundle-${round}`);
      seconds.skopeoUmoci.push(
        await timed(async () => {
          await execFileAsync('skopeo', [
            'copy',
            '--quiet',
            '--src-tls-verify=false',
            `docker://${ref}`,
            `oci:${oci}:bench`,
          ]);
          await execFileAsync('umoci', ['unpack', '--rootless', '--image', `${oci}:bench`, bundle]);
        }),
      );
      await rm(oci, { recursive: true, force: true });
      await rm(bundle, { recursive: true, force: true });

      gzipCpu.push(
        await childrenCpu(async () => {
          seconds.gzip.push(
            await timed(() => execFileAsync('sh', ['-c', 'gzip -dc "$@" > /dev/null', 'gzip', ...blobs])),
          );
        }),
      );

      seconds.oursZstd.push(
        await timed(() =>
          daemon!.client.image('PullImage', { image: { image: zstdRef } }, { timeoutMs: 600_000 }),
        ),
      );
      await daemon.client.image('RemoveImage', { image: { image: zstdRef } });
      // zstd decompresses on one thread (-T only affects compression).
      seconds.zstd.push(
        await timed(() => execFileAsync('sh', ['-c', 'zstd -qdc "$@" > /dev/null', 'zstd', ...zstdBlobs])),
      );
      const untarred = path.join(work, `untar-${round}`);
      seconds.zstdTar.push(
        await timed(() =>
          execFileAsync('sh', [
            '-c',
            'dir=$1; shift; mkdir "$dir" && for b in "$@"; do zstd -qdc "$b" | tar -x -C "$dir"; done',
            'untar',
            untarred,
            ...zstdBlobs,
          ]),
        ),
      );
      await rm(untarred, { recursive: true, force: true });
    }
  } finally {
    await bridge?.close();
    await daemon?.stop();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
  const ours = median(seconds.ours);
  const su = median(seconds.skopeoUmoci);
  const gz = median(seconds.gzip);
  const oursZstd = median(seconds.oursZstd);
  const zs = median(seconds.zstd);
  const zt = median(seconds.zstdTar);
  const rate = (s: number) => `${(mb / s).toFixed(0)} MB/s`;
  console.log(
    `pull: ${image.layers.length}-layer image, ${mb.toFixed(0)} MB uncompressed (${(compressed / 1e6).toFixed(0)} MB gzip), ${ROUNDS} rounds, medians`,
  );
  console.log(
    `  rootless-cri PullImage (daemon, download+verify+unpack)  ${ours.toFixed(2)} s  ${rate(ours)}`,
  );
  console.log(`  skopeo copy + umoci unpack --rootless                   ${su.toFixed(2)} s  ${rate(su)}`);
  console.log(`  gzip -dc of the layer blobs (one core, no writes)       ${gz.toFixed(2)} s  ${rate(gz)}`);
  console.log(`  ratio vs skopeo+umoci: ${(su / ours).toFixed(2)}x faster  (aim: >= 1.0x)`);
  console.log(`  ratio vs gzip -dc floor: ${(gz / ours).toFixed(2)}x  (aim: >= 0.7x)`);
  const cpuOf = (k: keyof PullCpu) => median(cpu.map((c) => c[k]));
  const gzCpu = median(gzipCpu);
  console.log(
    `  CPU per pull, medians: daemon main thread ${cpuOf('daemonMain')} ms, V8 GC workers ${cpuOf('daemonGc')}, ` +
      `libuv pool ${cpuOf('daemonThreadPool')}, other threads ${cpuOf('daemonOther')}; unpack helpers ${cpuOf('helpers')}, ` +
      `supervisor (registry dialer) ${cpuOf('supervisor')}, registry ${cpuOf('registry')}; total ${cpuOf('total')} ms`,
  );
  console.log(
    `  CPU ratio vs gzip -dc (${gzCpu} ms of CPU): ${(gzCpu / cpuOf('total')).toFixed(2)}x ` +
      '(load-independent; the wall ratio on 2 idle cores is at most about twice it)',
  );
  console.log(
    `same image with zstd layers (${(zstdCompressed / 1e6).toFixed(0)} MB zstd), ${ROUNDS} rounds, medians`,
  );
  console.log(
    `  rootless-cri PullImage (daemon, download+verify+unpack)  ${oursZstd.toFixed(2)} s  ${rate(oursZstd)}`,
  );
  console.log(`  zstd -dc of the layer blobs (one core, no writes)       ${zs.toFixed(2)} s  ${rate(zs)}`);
  console.log(`  zstd -dc | tar -x of the layer blobs (writes the files)  ${zt.toFixed(2)} s  ${rate(zt)}`);
  console.log(`  ratio vs zstd -dc floor: ${(zs / oursZstd).toFixed(2)}x`);
  console.log(`  ratio vs zstd -dc | tar -x: ${(zt / oursZstd).toFixed(2)}x`);
}
