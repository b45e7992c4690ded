/**
 * The CRI API the daemon serves is the upstream k8s.io/cri-api file of the version pinned in
 * proto/cri-api.json, put at proto/cri-api/api.proto by the build (proto/fetch-cri-api.sh),
 * and the generated types and the loader read it with the same options.
 */

import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { findProtoPath, loadCriDefinitions } from '../../src/api/proto.js';
import { InternalError } from '../../src/errors.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const protoPath = join(repoRoot, 'proto', 'cri-api', 'api.proto');
const pin = JSON.parse(readFileSync(join(repoRoot, 'proto', 'cri-api.json'), 'utf8')) as {
  module: string;
  version: string;
  file: string;
  sha256: string;
};

describe('the pinned CRI API file', () => {
  it('is the file of the pinned k8s.io/cri-api version, byte for byte', () => {
    expect(pin.module).toBe('k8s.io/cri-api');
    expect(pin.version).toMatch(/^v\d+\.\d+\.\d+$/);
    expect(pin.sha256).toMatch(/^[0-9a-f]{64}$/);
    const bytes = readFileSync(protoPath);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(pin.sha256);
    expect(readFileSync(join(repoRoot, 'proto', 'cri-api', 'SOURCE'), 'utf8').trim()).toBe(
      `${pin.module} ${pin.version} ${pin.file}`,
    );
  });
});

describe('findProtoPath', () => {
  it('finds the proto from the source tree and from the compiled tree', () => {
    expect(findProtoPath(join(repoRoot, 'src', 'cri'))).toBe(protoPath);
    expect(findProtoPath(join(repoRoot, 'dist', 'src', 'cri'))).toBe(protoPath);
  });

  it('says what is wrong when the package root has no proto file', () => {
    const packageRoot = mkdtempSync(join(tmpdir(), 'proto-path-'));
    try {
      writeFileSync(join(packageRoot, 'package.json'), '{"name":"rootless-cri","version":"0.0.0"}');
      mkdirSync(join(packageRoot, 'dist', 'src', 'cri'), { recursive: true });
      expect(() => findProtoPath(join(packageRoot, 'dist', 'src', 'cri'))).toThrow(InternalError);
      expect(() => findProtoPath(join(packageRoot, 'dist', 'src', 'cri'))).toThrow(
        /proto\/cri-api\/api\.proto is missing; run `npm run build`/,
      );
    } finally {
      rmSync(packageRoot, { recursive: true, force: true });
    }
  });
});

describe('loadCriDefinitions', () => {
  it('serves every RPC of the file with its path and streaming flags', () => {
    const definitions = loadCriDefinitions();
    expect(definitions.protoPath).toBe(protoPath);
    expect(loadCriDefinitions()).toBe(definitions);
    // protobufjs reads the file on its own, so this does not trust proto-loader's reading.
    const root = protobuf.loadSync(protoPath, new protobuf.Root()).resolveAll();
    const services = { RuntimeService: definitions.runtimeService, ImageService: definitions.imageService };
    let rpcs = 0;
    for (const [name, served] of Object.entries(services)) {
      const service = root.lookupService(`runtime.v1.${name}`);
      const methods = Object.values(service.methods);
      expect(Object.keys(served).sort()).toEqual(methods.map((method) => method.name).sort());
      for (const method of methods) {
        const definition = (
          served as Record<string, { path: string; requestStream: boolean; responseStream: boolean }>
        )[method.name]!;
        expect(definition.path).toBe(`/runtime.v1.${name}/${method.name}`);
        expect(definition.requestStream).toBe(method.requestStream === true);
        expect(definition.responseStream).toBe(method.responseStream === true);
        rpcs += 1;
      }
    }
    // CRI v1 has had at least these many RPCs since v0.26; fewer means a wrong or cut file.
    expect(rpcs).toBeGreaterThan(40);
  });

  it('decodes with the options the generated types assume (snake_case, longs as strings, enum names)', () => {
    const { runtimeService } = loadCriDefinitions();
    const listContainers = runtimeService.ListContainers;
    const encoded = listContainers.responseSerialize({
      containers: [{ id: 'c1', state: 'CONTAINER_RUNNING', created_at: '1700000000000000001' }],
    });
    const decoded = listContainers.responseDeserialize(encoded);
    expect(decoded.containers[0]).toMatchObject({
      id: 'c1',
      state: 'CONTAINER_RUNNING',
      created_at: '1700000000000000001',
      pod_sandbox_id: '', // defaults: true
    });
  });
});
