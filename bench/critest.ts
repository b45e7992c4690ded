/**
 * critest -benchmark (cri-tools v1.37.0) against a real daemon, run inside the node like the
 * conformance suite. A params file asks for the pod, container and image lifecycle benchmarks
 * (BENCH_CRITEST_N samples each); critest runs twice, one at a time and two in parallel, and
 * writes per-sample durations to its output dir. critest computes no percentiles, so we do:
 * p50/p90/p99 per operation per parallelism. Images come from the local registry the
 * conformance suite uses (every registry critest names is mirrored to it). Needs root.
 */
import { chown, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CRITEST } from '../test/conformance/critest-runner.js';
import { startRegistry } from '../test/fixtures/registry.js';
import { buildCatalogue, pushCatalogue } from '../test/fixtures/test-images.js';
import { mirrorConfig, TestDaemon } from '../test/harness/daemon.js';
import { percentile } from './stats.js';

const N = Number(process.env.BENCH_CRITEST_N ?? 20);
const PARALLELS = [1, 2];
// The longest gap critest allows between two results before it gives up, not a per-call limit.
const TIMEOUT_SECONDS = 120;

/** One file of critest's benchmark output (`<name>_benchmark_data.json`). */
interface BenchmarkData {
  operationsNames: string[];
  numParallel?: number;
  datapoints: { sampleIndex?: number; operationsDurationsNs: number[] }[];
}

export interface OperationStats {
  benchmark: string;
  operation: string;
  parallel: number;
  /** Milliseconds, ascending. */
  samples: number[];
}

/** Durations per operation from one critest output file; operations are matched by index. */
export function operationStats(benchmark: string, parallel: number, data: BenchmarkData): OperationStats[] {
  return data.operationsNames.map((operation, i) => ({
    benchmark,
    operation,
    parallel,
    samples: data.datapoints
      .map((d) => d.operationsDurationsNs[i])
      .filter((ns): ns is number => typeof ns === 'number')
      .map((ns) => ns / 1e6)
      .sort((a, b) => a - b),
  }));
}

function paramsFile(parallel: number): string {
  // critest reads YAML; JSON is YAML.
  return `${JSON.stringify(
    {
      containersNumber: N,
      containersNumberParallel: parallel,
      containerBenchmarkTimeoutSeconds: TIMEOUT_SECONDS,
      podsNumber: N,
      podsNumberParallel: parallel,
      podBenchmarkTimeoutSeconds: TIMEOUT_SECONDS,
      imagesNumber: N,
      imagesNumberParallel: parallel,
      imageBenchmarkTimeoutSeconds: TIMEOUT_SECONDS,
    },
    null,
    2,
  )}\n`;
}

async function runOnce(daemon: TestDaemon, parallel: number): Promise<OperationStats[]> {
  const dir = path.join(daemon.tmp, `critest-bench-p${parallel}`);
  const outDir = path.join(dir, 'out');
  const params = path.join(dir, 'params.yaml');
  await mkdir(outDir, { recursive: true });
  await writeFile(params, paramsFile(parallel));
  for (const p of [dir, outDir, params]) await chown(p, daemon.user.uid, daemon.user.gid);
  const r = await daemon.enter(
    [
      'sh',
      '-c',
      'cd /tmp && exec "$@"',
      'sh',
      CRITEST,
      `-runtime-endpoint=unix://${daemon.socket}`,
      `-image-endpoint=unix://${daemon.socket}`,
      '-benchmark',
      `-benchmarking-params-file=${params}`,
      `-benchmarking-output-dir=${outDir}`,
      `-report-dir=${dir}`,
      '-ginkgo.no-color',
    ],
    30 * 60_000,
  );
  if (r.exitCode !== 0) {
    throw new Error(
      `critest -benchmark (parallel ${parallel}) exited with ${r.exitCode}; its output ends:\n${`${r.stdout}\n${r.stderr}`.slice(-4000)}`,
    );
  }
  const stats: OperationStats[] = [];
  const files = (await readdir(outDir)).filter((f) => f.endsWith('_benchmark_data.json')).sort();
  if (files.length === 0) throw new Error(`critest wrote no benchmark data to ${outDir}`);
  for (const file of files) {
    const data = JSON.parse(await readFile(path.join(outDir, file), 'utf8')) as BenchmarkData;
    stats.push(...operationStats(file.replace(/_benchmark_data\.json$/, ''), parallel, data));
  }
  return stats;
}

export async function benchCritest(): Promise<void> {
  const cacheDir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'),
    'rootless-cri',
    'test-images',
  );
  // The container benchmark's image (e2e busybox) and the image benchmarks' busybox tags.
  const images = (await buildCatalogue({ cacheDir, names: ['busybox', 'benchmark-busybox'] })).images;
  const registry = await startRegistry();
  let daemon: TestDaemon | undefined;
  const all: OperationStats[] = [];
  try {
    await pushCatalogue(registry.host, images);
    daemon = await TestDaemon.start({ extraConfig: mirrorConfig(registry.url) });
    for (const parallel of PARALLELS) all.push(...(await runOnce(daemon, parallel)));
  } finally {
    await daemon?.stop();
    await registry.stop();
  }
  all.sort(
    (a, b) =>
      a.benchmark.localeCompare(b.benchmark) ||
      a.operation.localeCompare(b.operation) ||
      a.parallel - b.parallel,
  );
  const width = Math.max(...all.map((s) => `${s.benchmark}/${s.operation}`.length), 9);
  const num = (x: number) => x.toFixed(1).padStart(8);
  console.log(`critest -benchmark: ${N} samples per benchmark, parallel ${PARALLELS.join(' and ')} (ms)`);
  console.log(`  ${'operation'.padEnd(width)}  par   n       p50      p90      p99`);
  for (const s of all) {
    console.log(
      `  ${`${s.benchmark}/${s.operation}`.padEnd(width)}  ${String(s.parallel).padStart(3)}  ${String(s.samples.length).padStart(3)}  ${num(percentile(s.samples, 50))} ${num(percentile(s.samples, 90))} ${num(percentile(s.samples, 99))}`,
    );
  }
}
