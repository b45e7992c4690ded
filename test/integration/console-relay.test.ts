/**
 * native/console-relay: receives the pseudo-terminal master an OCI runtime sends over a
 * console socket and relays it to pipes Node can use, with resize on fd 3. Driven here by a
 * stand-in runtime that sends a real pty the way crun does.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APP_DIR } from '../harness/daemon.js';

const RELAY = path.join(APP_DIR, 'native/build/console-relay');
const FAKE_RUNTIME = path.join(import.meta.dirname, '../fixtures/fake-console-runtime.py');

interface RelayRun {
  output: string;
  stderr: string;
  code: number | null;
}

function runRelay(dir: string, script: string, input: string[], resizes: string[] = []): Promise<RelayRun> {
  const socket = path.join(dir, `console-${Math.random().toString(16).slice(2)}.sock`);
  const child = spawn(RELAY, [socket, '--', 'python3', FAKE_RUNTIME, socket, script], {
    stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
  });
  let output = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const resize = child.stdio[3] as NodeJS.WritableStream;
  for (const r of resizes) resize.write(`${r}\n`);
  for (const line of input) child.stdin!.write(line);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      resolve({ output, stderr, code });
    }),
  );
}

describe('console-relay', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'console-relay-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('relays terminal output and input, applies a resize, and exits with the process status', async () => {
    const r = await runRelay(
      dir,
      'sleep 0.3; stty size; echo hello; read x; echo "got $x"; exit 7',
      ['abc\n'],
      ['100 40'],
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(7);
    // A terminal turns \n into \r\n and echoes input.
    expect(r.output).toContain('40 100\r\n');
    expect(r.output).toContain('hello\r\n');
    expect(r.output).toContain('got abc\r\n');
    // The helper removes its console socket once the runtime has connected.
    expect((await readdir(dir)).filter((f) => f.endsWith('.sock'))).toEqual([]);
  });

  it('ignores malformed resize lines', async () => {
    const r = await runRelay(dir, 'sleep 0.3; stty size', [], ['garbage', '0 0', '99999999 5', '80 24']);
    expect(r.code).toBe(0);
    expect(r.output).toContain('24 80');
  });

  it('reports a runtime that connects without sending a terminal', async () => {
    const r = await runRelay(dir, 'nofd', []);
    expect(r.code).toBe(125);
    expect(JSON.parse(r.stderr.trim())).toMatchObject({
      ok: false,
      error: expect.stringMatching(/no terminal/),
    });
  });

  it('passes through the status of a runtime that fails before making a terminal', async () => {
    const socket = path.join(dir, 'never.sock');
    const child = spawn(RELAY, [socket, '--', 'sh', '-c', 'echo "crun: no such container" >&2; exit 1']);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const code = await new Promise((resolve) => child.on('close', resolve));
    expect(code).toBe(1);
    expect(stderr).toContain('no such container');
    expect(existsSync(socket)).toBe(false);
  });
});
