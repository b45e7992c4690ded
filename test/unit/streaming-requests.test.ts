import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, ResourceExhaustedError } from '../../src/errors.js';
import { JsonObjectSplitter, parseTerminalSize, statusPayload } from '../../src/streaming/remote-command.js';
import {
  negotiate,
  offeredProtocols,
  validateAttachRequest,
  validateExecRequest,
  validatePortForwardRequest,
} from '../../src/streaming/server.js';
import { TokenStore } from '../../src/streaming/tokens.js';
import { decodeChannelMessage, encodeChannelMessage } from '../../src/streaming/websocket.js';

describe('TokenStore', () => {
  it('issues unguessable URL-safe tokens that work exactly once', () => {
    const store = new TokenStore<string>();
    const a = store.issue('a');
    const b = store.issue('b');
    expect(a).toMatch(/^[A-Za-z0-9_-]{16}$/);
    expect(a).not.toBe(b);
    expect(store.take(a)).toBe('a');
    expect(store.take(a)).toBeUndefined();
    expect(store.take('nonexistent-token')).toBeUndefined();
    expect(store.take(b)).toBe('b');
  });

  it('expires tokens after the TTL', () => {
    let now = 1_000;
    const store = new TokenStore<string>({ ttlMs: 60_000, now: () => now });
    const early = store.issue('early');
    const late = store.issue('late');
    now += 59_999;
    expect(store.take(early)).toBe('early');
    now += 1;
    expect(store.take(late)).toBeUndefined();
  });

  it('caps outstanding tokens, and expiry frees room', () => {
    let now = 0;
    const store = new TokenStore<number>({ maxOutstanding: 3, ttlMs: 1000, now: () => now });
    for (let i = 0; i < 3; i++) store.issue(i);
    expect(() => store.issue(4)).toThrow(ResourceExhaustedError);
    now = 1000;
    expect(store.size).toBe(0);
    expect(() => store.issue(5)).not.toThrow();
    // Using a token frees its slot too.
    const t = store.issue(6);
    store.issue(7);
    expect(() => store.issue(8)).toThrow(ResourceExhaustedError);
    store.take(t);
    expect(() => store.issue(9)).not.toThrow();
  });
});

describe('request validation (CRI rules)', () => {
  it('accepts a well-formed exec and copies its fields', () => {
    expect(validateExecRequest({ container_id: 'c', cmd: ['ls', '-l'], stdout: true, stderr: true })).toEqual(
      {
        containerId: 'c',
        cmd: ['ls', '-l'],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
      },
    );
  });

  const bad: [string, () => unknown, RegExp][] = [
    [
      'tty with stderr',
      () => validateExecRequest({ container_id: 'c', cmd: ['sh'], tty: true, stderr: true }),
      /tty and stderr/,
    ],
    [
      'no stream',
      () => validateExecRequest({ container_id: 'c', cmd: ['sh'] }),
      /one of stdin, stdout or stderr/,
    ],
    ['no container id', () => validateExecRequest({ cmd: ['sh'], stdout: true }), /container_id is required/],
    [
      'no command',
      () => validateExecRequest({ container_id: 'c', cmd: [], stdout: true }),
      /cmd is required/,
    ],
    ['attach without container', () => validateAttachRequest({ stdout: true }), /container_id is required/],
    [
      'attach tty with stderr',
      () => validateAttachRequest({ container_id: 'c', tty: true, stderr: true }),
      /tty and stderr/,
    ],
    [
      'port-forward without sandbox',
      () => validatePortForwardRequest({ port: [80] }),
      /pod_sandbox_id is required/,
    ],
    [
      'port-forward with port 0',
      () => validatePortForwardRequest({ pod_sandbox_id: 'p', port: [0] }),
      /port 0/,
    ],
    [
      'port-forward with port 70000',
      () => validatePortForwardRequest({ pod_sandbox_id: 'p', port: [70000] }),
      /port 70000/,
    ],
  ];
  for (const [name, call, message] of bad) {
    it(`rejects ${name} with InvalidArgument`, () => {
      expect(call).toThrow(InvalidArgumentError);
      expect(call).toThrow(message);
    });
  }
});

describe('protocol negotiation', () => {
  it('reads repeated and comma-joined X-Stream-Protocol-Version headers', () => {
    expect(offeredProtocols(['v5.channel.k8s.io, v4.channel.k8s.io', 'channel.k8s.io'])).toEqual([
      'v5.channel.k8s.io',
      'v4.channel.k8s.io',
      'channel.k8s.io',
    ]);
    expect(offeredProtocols(undefined)).toEqual([]);
  });

  it('picks our best protocol the client offers; none offered means legacy v1', () => {
    const ours = ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'];
    expect(negotiate(['v5.channel.k8s.io', 'v4.channel.k8s.io', 'v3.channel.k8s.io'], ours)).toBe(
      'v4.channel.k8s.io',
    );
    expect(negotiate(['v2.channel.k8s.io'], ours)).toBe('v2.channel.k8s.io');
    expect(negotiate(['portforward.k8s.io'], ours)).toBeUndefined();
    expect(negotiate([], ours)).toBe('');
  });
});

describe('remote command messages', () => {
  it('writes v4 status JSON with the exit code under reason ExitCode', () => {
    expect(
      JSON.parse(statusPayload('v4.channel.k8s.io', { kind: 'exited', exitCode: 0 }).toString()),
    ).toEqual({
      metadata: {},
      status: 'Success',
    });
    const failure = JSON.parse(
      statusPayload('v5.channel.k8s.io', { kind: 'exited', exitCode: 42 }, ['false']).toString(),
    );
    expect(failure).toMatchObject({
      status: 'Failure',
      reason: 'NonZeroExitCode',
      details: { causes: [{ reason: 'ExitCode', message: '42' }] },
    });
    expect(failure.message).toMatch(/non-zero exit code/);
    expect(
      JSON.parse(
        statusPayload('v4.channel.k8s.io', {
          kind: 'failed',
          message: 'no such container',
          errorKind: 'NotFound',
        }).toString(),
      ),
    ).toMatchObject({
      status: 'Failure',
      reason: 'InternalError',
      code: 500,
      message: 'no such container',
    });
  });

  it('writes plain text (and nothing on success) for v1-v3', () => {
    expect(statusPayload('v3.channel.k8s.io', { kind: 'exited', exitCode: 0 }).length).toBe(0);
    expect(statusPayload('channel.k8s.io', { kind: 'exited', exitCode: 2 }).toString()).toMatch(
      /^command terminated with non-zero exit code/,
    );
  });

  it('splits resize messages however they are chunked, and bounds garbage', () => {
    const splitter = new JsonObjectSplitter(64);
    const text = '{"Width":80,"Height":24}\n{"Width":100,"Height":40}\n';
    const got: unknown[] = [];
    for (const ch of text) got.push(...splitter.push(ch));
    expect(got.map(parseTerminalSize)).toEqual([
      { width: 80, height: 24 },
      { width: 100, height: 40 },
    ]);
    expect(parseTerminalSize({ Width: -1, Height: 2 })).toBeUndefined();
    expect(parseTerminalSize({ Width: '80', Height: 2 })).toBeUndefined();
    expect(() => new JsonObjectSplitter(64).push(`{"Width":${'9'.repeat(100)}`)).toThrow(RangeError);
  });

  it('frames WebSocket channel messages in binary and base64 forms', () => {
    expect(encodeChannelMessage('v5.channel.k8s.io', 1, Buffer.from('hi'))).toEqual(
      Buffer.from([1, 0x68, 0x69]),
    );
    expect(encodeChannelMessage('base64.channel.k8s.io', 2, Buffer.from('hi'))).toBe('2aGk=');
    expect(decodeChannelMessage('v4.base64.channel.k8s.io', Buffer.from('0aGk='), false)).toEqual({
      channel: 0,
      data: Buffer.from('hi'),
    });
    expect(decodeChannelMessage('v5.channel.k8s.io', Buffer.from([255, 0]), true)).toEqual({
      channel: 255,
      data: Buffer.from([0]),
    });
    expect(decodeChannelMessage('v5.channel.k8s.io', Buffer.from('0aGk='), false)).toBeUndefined();
    expect(decodeChannelMessage('v5.channel.k8s.io', Buffer.alloc(0), true)).toBeUndefined();
  });
});
