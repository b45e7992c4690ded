import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReadinessGate } from '../../src/cri/edge.js';
import { type CriServer, createCriServer } from '../../src/cri/server.js';
import { GRPC_STATUS_BY_KIND, grpcStatusFor, grpcStatusName } from '../../src/cri/status-codes.js';
import * as errors from '../../src/errors.js';
import { CriError, ERROR_KINDS, type ErrorKind } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { CriClient, grpcCode } from '../harness/cri-client.js';

// The gRPC name of each kind is its UPPER_SNAKE_CASE spelling (NotFound → NOT_FOUND):
// derived here rather than copied from the table under test.
function expectedCodeName(kind: ErrorKind): string {
  return kind.replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase();
}

describe('error kind → gRPC status table', () => {
  it('has exactly one row per error kind, each the matching gRPC code', () => {
    expect(Object.keys(GRPC_STATUS_BY_KIND).sort()).toEqual([...ERROR_KINDS].sort());
    for (const kind of ERROR_KINDS) {
      expect(grpcStatusName(GRPC_STATUS_BY_KIND[kind])).toBe(expectedCodeName(kind));
    }
  });

  it('maps distinct kinds to distinct codes, none of them OK or UNKNOWN', () => {
    const codes = ERROR_KINDS.map((kind) => GRPC_STATUS_BY_KIND[kind]);
    expect(new Set(codes).size).toBe(ERROR_KINDS.length);
    expect(codes).not.toContain(status.OK);
    expect(codes).not.toContain(status.UNKNOWN);
  });

  it('every error class of src/errors.ts carries the kind the table expects', () => {
    for (const kind of ERROR_KINDS) {
      const ErrorClass = (errors as unknown as Record<string, new (m: string) => CriError>)[`${kind}Error`];
      expect(ErrorClass, `${kind}Error is exported`).toBeTypeOf('function');
      const err = new ErrorClass!('x');
      expect(err.kind).toBe(kind);
      expect(grpcStatusFor(err)).toBe(GRPC_STATUS_BY_KIND[kind]);
    }
  });

  it('maps anything that is not a CriError to INTERNAL', () => {
    expect(grpcStatusFor(new Error('boom'))).toBe(status.INTERNAL);
    expect(grpcStatusFor(new TypeError('bad'))).toBe(status.INTERNAL);
    expect(grpcStatusFor('a string')).toBe(status.INTERNAL);
    expect(grpcStatusFor(undefined)).toBe(status.INTERNAL);
  });
});

describe('error kinds through a real server', () => {
  let dir: string;
  let server: CriServer;
  let client: CriClient;
  let toThrow: unknown;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'status-codes-'));
    const readiness = new ReadinessGate();
    readiness.open();
    server = createCriServer({
      logger: silentLogger(),
      readiness,
      handlers: {
        Version: async () => {
          throw toThrow;
        },
        // An ImageService RPC too: both services go through the same adapter.
        ImageFsInfo: async () => {
          throw toThrow;
        },
      },
    });
    await server.listen(join(dir, 'run', 'cri.sock'));
    client = new CriClient(server.socketPath!);
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it.each(ERROR_KINDS.map((kind) => [kind]))(
    '%s reaches the client with its code and message',
    async (kind) => {
      toThrow = new CriError(kind, `the ${kind} message; do something about it`, {
        cause: new Error('inner'),
      });
      const runtimeErr = await client.runtime('Version', {}).catch((e: unknown) => e);
      expect(grpcCode(runtimeErr)).toBe(GRPC_STATUS_BY_KIND[kind]);
      expect((runtimeErr as { details: string }).details).toBe(`the ${kind} message; do something about it`);
      const imageErr = await client.image('ImageFsInfo', {}).catch((e: unknown) => e);
      expect(grpcCode(imageErr)).toBe(GRPC_STATUS_BY_KIND[kind]);
    },
  );

  it('a plain Error reaches the client as INTERNAL with its message', async () => {
    toThrow = new RangeError('index 7 out of range');
    const err = await client.runtime('Version', {}).catch((e: unknown) => e);
    expect(grpcCode(err)).toBe(status.INTERNAL);
    expect((err as { details: string }).details).toBe('index 7 out of range');
  });

  it('a full disk, a quota, exhausted descriptors and a long name get their own codes and a plain message', async () => {
    const enospc = Object.assign(
      new Error("ENOSPC: no space left on device, open '/data/rootless-cri/x.json'"),
      {
        code: 'ENOSPC',
        path: '/data/rootless-cri/x.json',
      },
    );
    toThrow = new errors.InternalError('cannot save the container record', { cause: enospc });
    const full = await client.runtime('Version', {}).catch((e: unknown) => e);
    expect(grpcCode(full)).toBe(status.RESOURCE_EXHAUSTED);
    expect((full as { details: string }).details).toMatch(
      /no space left on the filesystem \(\/data\/rootless-cri\/x\.json\)/,
    );
    toThrow = Object.assign(new Error('EDQUOT: disk quota exceeded'), { code: 'EDQUOT' });
    expect(grpcCode(await client.runtime('Version', {}).catch((e: unknown) => e))).toBe(
      status.RESOURCE_EXHAUSTED,
    );
    toThrow = Object.assign(new Error('ENAMETOOLONG: name too long'), { code: 'ENAMETOOLONG' });
    expect(grpcCode(await client.runtime('Version', {}).catch((e: unknown) => e))).toBe(
      status.INVALID_ARGUMENT,
    );
    // A kind chosen on purpose wins over its cause.
    toThrow = new errors.NotFoundError('gone', { cause: enospc });
    expect(grpcCode(await client.runtime('Version', {}).catch((e: unknown) => e))).toBe(status.NOT_FOUND);
  });

  it('a message longer than 2 KiB is cut, saying how much was left out', async () => {
    toThrow = new errors.InvalidArgumentError(`bad: ${'x'.repeat(11_000)}`);
    const err = await client.runtime('Version', {}).catch((e: unknown) => e);
    const details = (err as { details: string }).details;
    expect(details.length).toBeLessThanOrEqual(2048);
    expect(details).toMatch(/\.\.\. \(\d+ more characters\)$/);
  });
});
