/**
 * The streaming targets without a node: exec through the runtime's crun exec with a stand-in
 * for `crun exec` (real child processes, real pipes), the state checks of the exec target, the
 * attach target's non-blocking output buffer, and port-forward's choice between the pod's
 * netns and the node's loopback.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContainerAttachTarget } from '../../src/container/attach-target.js';
import { ContainerExecTarget } from '../../src/container/exec-target.js';
import type { SandboxRecord } from '../../src/core/sandbox-record.js';
import type { StreamSession } from '../../src/core/stream-targets.js';
import { CriError } from '../../src/errors.js';
import { unblocked } from '../../src/os/conmon-attach.js';
import { execProcess, mergeOutputs } from '../../src/os/crun-exec.js';
import { CrunConmonRuntime } from '../../src/os/oci-runtime.js';
import type { OciProcess } from '../../src/os/oci-spec.js';
import { dialNodeLoopback, SandboxPortForwardTarget } from '../../src/podsandbox/port-forward-target.js';
import { FakeContainers } from '../fakes/fake-streamable-containers.js';

const FAKE_CRUN = path.resolve(import.meta.dirname, '../fixtures/fake-crun-exec.mjs');
const logger = pino({ level: 'silent' });

async function kindOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return error instanceof CriError ? error.kind : `not a CriError: ${String(error)}`;
  }
  return 'resolved';
}

function collect(stream: Readable | undefined): Promise<Buffer> {
  return new Promise((resolve) => {
    if (!stream) return resolve(Buffer.alloc(0));
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('close', () => resolve(Buffer.concat(chunks)));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
  });
}

function pgrep(pattern: string): string[] {
  try {
    return execFileSync('pgrep', ['-f', pattern], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

describe('exec target', () => {
  let dir: string;
  let bundle: string;
  const containers = new FakeContainers();
  let target: ContainerExecTarget;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'exec-target-'));
    bundle = path.join(dir, 'ctr');
    await mkdir(bundle);
    await writeFile(
      path.join(bundle, 'config.json'),
      JSON.stringify({ process: { terminal: false, args: ['sh'], env: ['GREETING=hi'], cwd: '/' } }),
    );
    containers.add('ctr', { bundleDir: bundle });
    containers.add('stopped', { state: 'CONTAINER_EXITED', bundleDir: bundle });
    target = new ContainerExecTarget(
      containers,
      new CrunConmonRuntime({
        conmonPath: '/nonexistent/conmon',
        crunPath: FAKE_CRUN,
        crunRoot: path.join(dir, 'crun'),
        stateDir: dir,
        exitDir: path.join(dir, 'exits'),
        socketDir: path.join(dir, 's'),
        logger,
      }),
    );
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('pipes stdin through the process byte-exact, separates stdout and stderr, reports the exit code', async () => {
    const session = await target.exec('ctr', ['sh', '-c', 'cat; echo "$GREETING" >&2; exit 6'], {
      tty: false,
      stdin: true,
      stdout: true,
      stderr: true,
    });
    const input = Buffer.alloc(3 * 1024 * 1024 + 17);
    for (let i = 0; i < input.length; i++) input[i] = (i * 31 + (i >> 9)) & 0xff;
    const out = collect(session.stdout);
    const err = collect(session.stderr);
    session.stdin!.end(input);
    expect(await session.wait()).toBe(6);
    expect((await out).equals(input)).toBe(true);
    expect((await err).toString()).toBe('hi\n');
    // The process file and pid file are gone once it exited.
    expect(await readdir(bundle)).toEqual(['config.json']);
  });

  it('gives the process /dev/null for stdin when the client sends none', async () => {
    const session = await target.exec('ctr', ['sh', '-c', 'cat; echo end'], {
      tty: false,
      stdin: false,
      stdout: true,
      stderr: false,
    });
    expect(session.stdin).toBeUndefined();
    const out = collect(session.stdout);
    expect(await session.wait()).toBe(0);
    expect((await out).toString()).toBe('end\n');
  });

  it('kill() ends the process in the container, not only crun', async () => {
    const marker = `5432.${Math.floor(Math.random() * 1e6)}`;
    const session: StreamSession = await target.exec('ctr', ['sleep', marker], {
      tty: false,
      stdin: false,
      stdout: true,
      stderr: true,
    });
    // Let it start (crun writes the pid file right after starting it).
    await new Promise((r) => setTimeout(r, 300));
    expect(pgrep(`sleep ${marker}`).length).toBe(1);
    session.kill();
    const code = await session.wait();
    expect(code).not.toBe(0);
    expect(pgrep(`sleep ${marker}`)).toEqual([]);
  });

  it('kill() right after start still finds the process', async () => {
    const marker = `6543.${Math.floor(Math.random() * 1e6)}`;
    const session = await target.exec('ctr', ['sleep', marker], {
      tty: false,
      stdin: false,
      stdout: true,
      stderr: false,
    });
    session.kill();
    await session.wait();
    await new Promise((r) => setTimeout(r, 200));
    expect(pgrep(`sleep ${marker}`)).toEqual([]);
  });

  it('refuses missing and stopped containers at validate and at exec', async () => {
    expect(await kindOf(target.validate('nope'))).toBe('NotFound');
    expect(await kindOf(target.validate('stopped'))).toBe('FailedPrecondition');
    expect(
      await kindOf(
        target.exec('stopped', ['true'], { tty: false, stdin: false, stdout: true, stderr: false }),
      ),
    ).toBe('FailedPrecondition');
    expect(await kindOf(target.validate('ctr'))).toBe('resolved');
  });

  it('builds the exec process from the container’s, with TERM only for a terminal', () => {
    const base = { terminal: false, args: ['init'], env: ['A=1'], cwd: '/w' } as unknown as OciProcess;
    expect(execProcess(base, ['ls', '-l'], false)).toMatchObject({
      args: ['ls', '-l'],
      terminal: false,
      env: ['A=1'],
      cwd: '/w',
    });
    expect(execProcess(base, ['sh'], true)).toMatchObject({ terminal: true, env: ['A=1', 'TERM=xterm'] });
    const withTerm = { ...base, env: ['TERM=vt100'] } as OciProcess;
    expect(execProcess(withTerm, ['sh'], true).env).toEqual(['TERM=vt100']);
    expect(base.env).toEqual(['A=1']);
  });
});

describe('tty exec output', () => {
  it('merges the terminal and the runtime’s messages and ends when both have', async () => {
    const terminal = new PassThrough();
    const runtime = new PassThrough();
    const merged = mergeOutputs(terminal, runtime);
    const data = collect(merged);
    terminal.write('a');
    runtime.write('crun: executable file not found');
    terminal.end();
    await new Promise((r) => setImmediate(r));
    expect(merged.readableEnded).toBe(false);
    runtime.end();
    expect((await data).toString()).toBe('acrun: executable file not found');
  });
});

describe('attach target', () => {
  it('refuses missing and stopped containers, and a monitor socket nobody listens on', async () => {
    const containers = new FakeContainers();
    containers.add('stopped', { state: 'CONTAINER_EXITED' });
    containers.add('gone-socket', { stdin: true });
    const runtime = new CrunConmonRuntime({
      conmonPath: '/nonexistent/conmon',
      crunPath: '/nonexistent/crun',
      crunRoot: '/nonexistent/crun-root',
      stateDir: '/nonexistent/state',
      exitDir: '/nonexistent/exits',
      socketDir: '/nonexistent/dir',
      logger,
      attachRelayPath: path.resolve(import.meta.dirname, '../../native/build/attach-relay'),
    });
    const target = new ContainerAttachTarget(containers, runtime);
    const io = { tty: false, stdin: true, stdout: true, stderr: true };
    expect(await kindOf(target.validate('missing'))).toBe('NotFound');
    expect(await kindOf(target.attach('stopped', io))).toBe('FailedPrecondition');
    const error = await target.attach('gone-socket', io).catch((e: unknown) => e);
    expect((error as CriError).kind).toBe('FailedPrecondition');
    expect((error as Error).message).toMatch(/cannot reach the monitor.*may have exited/);
  });
});

describe('attach output buffer', () => {
  it('drains its source at once and drops what exceeds the cap while nobody reads', async () => {
    const source = new PassThrough();
    const drops: number[] = [];
    const out = unblocked(source, 10, (n) => drops.push(n));
    source.write(Buffer.from('12345'));
    source.write(Buffer.from('6789'));
    source.write(Buffer.from('abcdef')); // 9 + 6 > 10: dropped
    await new Promise((r) => setImmediate(r));
    // The source was never paused (a paused source would stall conmon and the log).
    expect(source.isPaused()).toBe(false);
    expect(source.readableLength).toBe(0);
    source.end(Buffer.from('X'));
    const data = await collect(out);
    expect(data.toString()).toBe('123456789X');
    expect(drops).toEqual([6]);
  });

  it('destroying the buffer destroys the source', () => {
    const source = new PassThrough();
    const out = unblocked(source, 100, () => {});
    out.destroy();
    expect(source.destroyed).toBe(true);
  });
});

function sandbox(id: string, extra: Partial<SandboxRecord> = {}, netns: string | null = `/run/netns/${id}`) {
  return {
    id,
    state: 'ready',
    namespaces: { network: { mode: netns === null ? 'NODE' : 'POD', path: netns } },
    ...extra,
  } as unknown as SandboxRecord;
}

describe('port-forward target', () => {
  const records = [
    sandbox('pod-a1'),
    sandbox('host-b2', {}, null),
    sandbox('gone-c3', { state: 'notready' }),
  ];
  const reader = {
    get: (id: string) => records.find((r) => r.id === id),
    list: () => records,
  };

  it('dials inside the pod netns, or the node loopback for host-network pods', async () => {
    const calls: string[] = [];
    const target = new SandboxPortForwardTarget({
      sandboxes: reader,
      dialInNetns: async (file, port) => {
        calls.push(`netns ${file} ${port}`);
        return new PassThrough();
      },
      dialNodeLoopback: async (port) => {
        calls.push(`node ${port}`);
        return new PassThrough();
      },
    });
    await target.dial('pod-a1', 8080);
    await target.dial('host', 12003); // unique prefix
    expect(calls).toEqual(['netns /run/netns/pod-a1 8080', 'node 12003']);
  });

  it('refuses unknown, ambiguous and not-ready pods', async () => {
    const target = new SandboxPortForwardTarget({ sandboxes: reader });
    expect(await kindOf(target.validate('nope'))).toBe('NotFound');
    expect(await kindOf(target.validate('gone-c3'))).toBe('FailedPrecondition');
    expect(await kindOf(target.validate(''))).toBe('InvalidArgument');
    expect(await kindOf(target.dial('nope', 80))).toBe('NotFound');
    expect(await kindOf(target.validate('pod-a1'))).toBe('resolved');
    const ambiguous = new SandboxPortForwardTarget({
      sandboxes: { get: () => undefined, list: () => [sandbox('dup-1'), sandbox('dup-2')] },
    });
    expect(await kindOf(ambiguous.validate('dup'))).toBe('InvalidArgument');
  });

  it('connects to the node loopback and reports a port nobody listens on', async () => {
    const server = net.createServer((socket) => socket.end('pong'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as net.AddressInfo).port;
    const socket = await dialNodeLoopback(port);
    expect((await collect(socket as unknown as Readable)).toString()).toBe('pong');
    // Half-open: our side stays open after the server's FIN until we end it.
    socket.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    const err = await dialNodeLoopback(port).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CriError);
    expect((err as CriError).kind).toBe('Unavailable');
    expect((err as Error).message).toMatch(new RegExp(`is anything listening on port ${port}`));
  });
});
