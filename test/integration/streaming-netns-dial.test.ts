/**
 * netns-dial for real: a test network namespace (as root) with a listener on its
 * loopback, and a different listener on the host's loopback at the same port, so a dial
 * that did not enter the namespace would be caught.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, UnavailableError } from '../../src/errors.js';
import { dialInNetns } from '../../src/os/netns-dial.js';

const NATIVE_DIR = fileURLToPath(new URL('../../native', import.meta.url));
const NETNS = `rcri-dial-${process.pid}`;
const NETNS_FILE = `/run/netns/${NETNS}`;
const PORT = 23456;

// Inside the namespace: echo with a banner; on the client's EOF send "bye" and close.
const LISTENER = `
const net = require('net');
net.createServer({ allowHalfOpen: true }, (s) => {
  s.write('netns:');
  s.on('data', (d) => s.write(d));
  s.on('end', () => s.end('bye'));
}).listen(${PORT}, '127.0.0.1', () => process.stdout.write('ready\\n'));
`;

let listener: ChildProcess;
let hostDecoy: Server;

beforeAll(async () => {
  execFileSync('make', ['-C', NATIVE_DIR, '--quiet', 'build/netns-dial'], { stdio: 'inherit' });
  execFileSync('ip', ['netns', 'add', NETNS]);
  execFileSync('ip', ['netns', 'exec', NETNS, 'ip', 'link', 'set', 'lo', 'up']);
  listener = spawn('ip', ['netns', 'exec', NETNS, process.execPath, '-e', LISTENER], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    listener.stdout!.once('data', () => resolve());
    listener.once('exit', (code) => reject(new Error(`listener exited ${code}`)));
  });
  hostDecoy = createServer((s) => s.end('host:'));
  await new Promise<void>((r) => hostDecoy.listen(PORT, '127.0.0.1', r));
});

afterAll(() => {
  listener?.kill();
  hostDecoy?.close();
  try {
    execFileSync('ip', ['netns', 'delete', NETNS]);
  } catch {}
});

function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    stream.on('data', (c: Buffer) => {
      text += c.toString('latin1');
    });
    stream.on('end', () => resolve(text));
    stream.on('error', reject);
  });
}

describe('dialInNetns', () => {
  it('reaches the listener inside the namespace, not the host, with half-close both ways', async () => {
    const socket = await dialInNetns(NETNS_FILE, PORT);
    const all = readAll(socket);
    const payload = randomBytes(2 * 1024 * 1024).toString('latin1');
    socket.write(Buffer.from(payload, 'latin1'));
    // Our EOF reaches the listener (which answers "bye"), and its close reaches us.
    socket.end();
    expect(await all).toBe(`netns:${payload}bye`);
  });

  it('serves several connections at once', async () => {
    const results = await Promise.all(
      Array.from({ length: 5 }, async (_, i) => {
        const socket = await dialInNetns(NETNS_FILE, PORT);
        const all = readAll(socket);
        socket.end(`conn${i}`);
        return all;
      }),
    );
    expect(results).toEqual(Array.from({ length: 5 }, (_, i) => `netns:conn${i}bye`));
  });

  it('rejects with UnavailableError when nothing listens in the namespace', async () => {
    const error = await dialInNetns(NETNS_FILE, PORT + 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnavailableError);
    expect((error as Error).message).toMatch(/connect to localhost:23457.*refused/i);
  });

  it('rejects with FailedPreconditionError for a namespace file that does not exist', async () => {
    const error = await dialInNetns('/run/netns/does-not-exist', PORT).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect((error as Error).message).toMatch(/open network namespace file/);
  });

  it('reports a usage error for a bad port', () => {
    const helper = fileURLToPath(new URL('../../native/build/netns-dial', import.meta.url));
    let stderr = '';
    try {
      execFileSync(helper, [NETNS_FILE, '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (error) {
      stderr = String((error as { stderr: Buffer }).stderr);
      expect((error as { status: number }).status).toBe(2);
    }
    expect(JSON.parse(stderr)).toMatchObject({ ok: false, kind: 'usage' });
  });
});
