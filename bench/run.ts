/**
 * `npm run bench`: figures as ratios against a floor measured in the same run.
 * Suites: rpc (below), pods, pull, streaming, containers, lifecycle, critest, exits, many-pods, peer (bench/<suite>.ts;
 * all but rpc need root: they run a real daemon as the test user).
 *
 * rpc: Version round trip over a unix socket, sequential, through the real rootless-cri server
 * (edge adapter, request ids, logging, metrics) vs a bare grpc-js server answering the same
 * RPC. Each server runs in its own process; rounds alternate (bare, cri, bare, cri, ...) so
 * machine noise hits both alike.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CriClient } from '../test/harness/cri-client.js';
import { benchContainers } from './containers.js';
import { benchExits } from './exits.js';
import { benchLifecycle } from './lifecycle.js';
import { benchManyPods } from './many-pods.js';
import { benchPeer } from './peer.js';
import { benchPods } from './pods.js';
import { benchPull } from './pull.js';
import { percentile } from './stats.js';
import { benchStreaming } from './streaming.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CALLS = Number(process.env.BENCH_RPC_CALLS ?? 10_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const WARMUP = 1_000;

async function startServer(mode: 'cri' | 'bare', socket: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [path.join(here, 'grpc-server.js'), mode, socket], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`${mode} server exited with ${code}`)));
  });
  return child;
}

async function measure(socket: string, calls: number): Promise<number[]> {
  const client = new CriClient(socket);
  try {
    for (let i = 0; i < WARMUP; i++) await client.runtime('Version', {});
    const samples: number[] = new Array(calls);
    for (let i = 0; i < calls; i++) {
      const t0 = process.hrtime.bigint();
      await client.runtime('Version', {});
      samples[i] = Number(process.hrtime.bigint() - t0) / 1000; // µs
    }
    return samples;
  } finally {
    client.close();
  }
}

async function benchRpc(): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'rcri-bench-'));
  const all: Record<'cri' | 'bare', number[]> = { cri: [], bare: [] };
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of ['bare', 'cri'] as const) {
        const socket = path.join(dir, `${mode}-${round}.sock`);
        const server = await startServer(mode, socket);
        try {
          all[mode].push(...(await measure(socket, Math.ceil(CALLS / ROUNDS))));
        } finally {
          server.kill('SIGTERM');
          await new Promise((r) => server.once('exit', r));
        }
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const stats = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return { n: s.length, p50: percentile(s, 50), p99: percentile(s, 99) };
  };
  const cri = stats(all.cri);
  const bare = stats(all.bare);
  const fmt = (x: number) => `${x.toFixed(0)} µs`;
  console.log('rpc: Version round trip over a unix socket (sequential)');
  console.log(`  rootless-cri  n=${cri.n}  p50 ${fmt(cri.p50)}  p99 ${fmt(cri.p99)}`);
  console.log(`  bare grpc-js  n=${bare.n}  p50 ${fmt(bare.p50)}  p99 ${fmt(bare.p99)}`);
  console.log(
    `  ratio rootless-cri / bare: p50 ${(cri.p50 / bare.p50).toFixed(2)}x  p99 ${(cri.p99 / bare.p99).toFixed(2)}x  (aim: <= 1.3x)`,
  );
}

// npm run bench [rpc|pods ...]: all by default; pods needs root (a real daemon as the test user).
const only = process.argv.slice(2);
const want = (name: string) => only.length === 0 || only.includes(name);
if (want('rpc')) await benchRpc();
if (want('pods')) await benchPods();
if (want('pull')) await benchPull();
if (want('containers')) await benchContainers();
if (want('lifecycle')) await benchLifecycle();
if (want('streaming')) await benchStreaming();
// Loaded only when asked for: critest-runner finds critest at import time (through
// deploy/install.sh, which a built dist/ does not have unless ROOTLESS_CRI_CRITEST names it).
if (want('critest')) await (await import('./critest.js')).benchCritest();
if (want('exits')) await benchExits();
if (want('many-pods')) await benchManyPods();
if (want('peer')) await benchPeer();
