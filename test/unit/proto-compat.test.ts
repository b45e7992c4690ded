/**
 * proto/api.proto must be the same API as upstream k8s.io/cri-api, or kubelet and crictl
 * would send fields we silently drop (or call RPCs we do not register). The upstream file is
 * fetched with Go; if that fails the test fails rather than passing vacuously.
 */

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import type protobuf from 'protobufjs';
import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { findProtoPath, loadCriDefinitions } from '../../src/api/proto.js';
import { InternalError } from '../../src/errors.js';
import { compareSchemas, loadSchemaFile, parseSchemaText, summarizeSchema } from './proto-compare.js';

const UPSTREAM_VERSION = 'v0.36.3';
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const oursPath = join(repoRoot, 'proto', 'api.proto');
const fetchScript = join(repoRoot, 'test', 'setup', 'fetch-cri-api.sh');

let upstreamPath: string;
let upstream: protobuf.Root;
let ours: protobuf.Root;
let oursText: string;
let fetchFailure: Error | undefined;

beforeAll(async () => {
  oursText = readFileSync(oursPath, 'utf8');
  ours = loadSchemaFile(oursPath);
  const result = await execa(fetchScript, [UPSTREAM_VERSION], { reject: false, timeout: 110_000 });
  if (result.exitCode !== 0 || result.stdout.trim() === '') {
    fetchFailure = new Error(
      `test/setup/fetch-cri-api.sh could not provide upstream k8s.io/cri-api ${UPSTREAM_VERSION} ` +
        `(exit ${result.exitCode}): ${result.stderr}`,
    );
    return;
  }
  upstreamPath = result.stdout.trim();
  upstream = loadSchemaFile(upstreamPath);
}, 120_000);

// Every test needs the upstream file; without it each one fails with the reason, so a
// missing Go toolchain or proxy can never look like a pass or a skip.
beforeEach(() => {
  if (fetchFailure) throw fetchFailure;
});

/** Replaces exactly one occurrence, so a mutation cannot silently miss or hit twice. */
function replaceOnce(text: string, from: string, to: string): string {
  const first = text.indexOf(from);
  if (first < 0) throw new Error(`mutation target not found: ${from}`);
  if (text.indexOf(from, first + from.length) >= 0) throw new Error(`mutation target not unique: ${from}`);
  return text.slice(0, first) + to + text.slice(first + from.length);
}

function rpcNames(root: protobuf.Root, service: string): string[] {
  const summary = summarizeSchema(root);
  return [...summary.elements.values()]
    .filter((element) => element.kind === 'rpc' && element.name.startsWith(`runtime.v1.${service}.`))
    .map((element) => element.name.slice(`runtime.v1.${service}.`.length));
}

describe('proto/api.proto against upstream k8s.io/cri-api', () => {
  it('fetched the upstream file of the pinned version', () => {
    expect(upstreamPath).toContain(`k8s.io/cri-api@${UPSTREAM_VERSION}`);
    expect(upstreamPath.endsWith('pkg/apis/runtime/v1/api.proto')).toBe(true);
  });

  it('has no differences in services, RPCs, messages, fields, oneofs or enums', () => {
    const differences = compareSchemas(upstream, ours);
    // Printed as a list so a failure says exactly what to fix.
    expect(differences.join('\n')).toBe('');
  });

  it('compares a non-trivial schema (guards against comparing two empty summaries)', () => {
    const upstreamCounts = summarizeSchema(upstream).counts;
    const ourCounts = summarizeSchema(ours).counts;
    expect(ourCounts).toEqual(upstreamCounts);
    expect(upstreamCounts.service).toBe(2);
    expect(upstreamCounts.rpc).toBeGreaterThan(40);
    expect(upstreamCounts.message).toBeGreaterThan(150);
    expect(upstreamCounts.field).toBeGreaterThan(400);
    expect(upstreamCounts.enum).toBeGreaterThan(8);
  });

  it('declares proto3 and package runtime.v1 like upstream', () => {
    const upstreamText = readFileSync(upstreamPath, 'utf8');
    const syntax = /^\s*syntax\s*=\s*"(proto[23])"\s*;/m;
    const pkg = /^\s*package\s+([\w.]+)\s*;/m;
    expect(oursText.match(syntax)?.[1]).toBe(upstreamText.match(syntax)?.[1]);
    expect(oursText.match(pkg)?.[1]).toBe('runtime.v1');
    expect(upstreamText.match(pkg)?.[1]).toBe('runtime.v1');
  });

  it('has exactly the two CRI services, each with all upstream RPCs', () => {
    const services = [...summarizeSchema(ours).elements.values()]
      .filter((element) => element.kind === 'service')
      .map((element) => element.name)
      .sort();
    expect(services).toEqual(['runtime.v1.ImageService', 'runtime.v1.RuntimeService']);
    // Sizes of the pinned upstream version, so a fetch of the wrong file shows up here.
    expect(rpcNames(upstream, 'RuntimeService')).toHaveLength(35);
    expect(rpcNames(upstream, 'ImageService')).toHaveLength(6);
    for (const service of ['RuntimeService', 'ImageService']) {
      const theirs = rpcNames(upstream, service);
      expect(theirs.length).toBeGreaterThan(0);
      expect(rpcNames(ours, service).sort()).toEqual(theirs.sort());
    }
  });

  it('carries no upstream comment text', () => {
    // Our file is written in our own words; any long comment line found verbatim upstream
    // means text was copied.
    const upstreamText = readFileSync(upstreamPath, 'utf8');
    const ourComments = oursText
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line.startsWith('//'))
      .map((line) => line.replace(/^\/\/\s*/, ''))
      .filter((line) => line.length > 20);
    expect(ourComments.length).toBeGreaterThan(0);
    expect(ourComments.filter((line) => upstreamText.includes(line))).toEqual([]);
  });
});

describe('the schema comparer', () => {
  it('reports a changed field number', () => {
    const changed = parseSchemaText(
      replaceOnce(oursText, 'string runtime_api_version = 4;', 'string runtime_api_version = 14;'),
    );
    expect(compareSchemas(upstream, changed)).toEqual([
      'field runtime.v1.VersionResponse.runtime_api_version: number is 14 in ours, 4 upstream',
    ]);
  });

  it('reports a removed RPC, and an added one as extra', () => {
    const removed = parseSchemaText(
      replaceOnce(oursText, '  rpc RemoveImage(RemoveImageRequest) returns (RemoveImageResponse) {}\n', ''),
    );
    expect(compareSchemas(upstream, removed)).toEqual([
      'missing in ours: rpc runtime.v1.ImageService.RemoveImage (request runtime.v1.RemoveImageRequest, ' +
        'response runtime.v1.RemoveImageResponse, request stream false, response stream false)',
    ]);
    const added = parseSchemaText(
      replaceOnce(
        oursText,
        'service ImageService {\n',
        'service ImageService {\n  rpc TagImage(RemoveImageRequest) returns (RemoveImageResponse) {}\n',
      ),
    );
    expect(compareSchemas(upstream, added)).toEqual([
      'extra in ours: rpc runtime.v1.ImageService.TagImage (request runtime.v1.RemoveImageRequest, ' +
        'response runtime.v1.RemoveImageResponse, request stream false, response stream false)',
    ]);
  });

  it('reports flipped streaming flags in both directions', () => {
    const unstreamed = parseSchemaText(
      replaceOnce(oursText, 'returns (stream StreamImagesResponse)', 'returns (StreamImagesResponse)'),
    );
    expect(compareSchemas(upstream, unstreamed)).toEqual([
      'rpc runtime.v1.ImageService.StreamImages: response stream is false in ours, true upstream',
    ]);
    const clientStreaming = parseSchemaText(
      replaceOnce(oursText, 'rpc PullImage(PullImageRequest)', 'rpc PullImage(stream PullImageRequest)'),
    );
    expect(compareSchemas(upstream, clientStreaming)).toEqual([
      'rpc runtime.v1.ImageService.PullImage: request stream is true in ours, false upstream',
    ]);
  });

  it('reports changed RPC request and response types', () => {
    const changed = parseSchemaText(
      replaceOnce(
        oursText,
        'rpc Version(VersionRequest) returns (VersionResponse)',
        'rpc Version(StatusRequest) returns (StatusResponse)',
      ),
    );
    expect(compareSchemas(upstream, changed)).toEqual([
      'rpc runtime.v1.RuntimeService.Version: request is runtime.v1.StatusRequest in ours, runtime.v1.VersionRequest upstream',
      'rpc runtime.v1.RuntimeService.Version: response is runtime.v1.StatusResponse in ours, runtime.v1.VersionResponse upstream',
    ]);
  });

  it('reports label, type, map key and proto3 optional changes', () => {
    let text = replaceOnce(oursText, 'repeated string servers = 1;', 'string servers = 1;');
    text = replaceOnce(text, 'string runtime_name = 2;', 'bytes runtime_name = 2;');
    text = replaceOnce(text, 'map<string, string> sysctls = 3;', 'map<int32, string> sysctls = 3;');
    text = replaceOnce(text, 'string runtime_version = 3;', 'optional string runtime_version = 3;');
    expect(compareSchemas(upstream, parseSchemaText(text))).toEqual([
      'field runtime.v1.DNSConfig.servers: label is singular in ours, repeated upstream',
      'field runtime.v1.LinuxPodSandboxConfig.sysctls: map key type is int32 in ours, string upstream',
      'field runtime.v1.VersionResponse.runtime_name: type is bytes in ours, string upstream',
      'field runtime.v1.VersionResponse.runtime_version: label is optional in ours, singular upstream',
    ]);
  });

  it('reports fields moved into a oneof', () => {
    const text = replaceOnce(
      oursText,
      '  string runtime_name = 2;\n  string runtime_version = 3;\n',
      '  oneof runtime {\n    string runtime_name = 2;\n    string runtime_version = 3;\n  }\n',
    );
    expect(compareSchemas(upstream, parseSchemaText(text))).toEqual([
      'extra in ours: oneof runtime.v1.VersionResponse.runtime (members runtime_name,runtime_version)',
      'field runtime.v1.VersionResponse.runtime_name: oneof is runtime in ours, - upstream',
      'field runtime.v1.VersionResponse.runtime_version: oneof is runtime in ours, - upstream',
    ]);
  });

  it('reports enum value renumbering, removal and addition, and nested enums', () => {
    let text = replaceOnce(oursText, '  CONTAINER_EXITED = 2;\n', '  CONTAINER_EXITED = 5;\n');
    text = replaceOnce(text, '  SCTP = 2;\n', '');
    text = replaceOnce(text, '  Localhost = 2;\n', '  Localhost = 2;\n  Custom = 3;\n');
    expect(compareSchemas(upstream, parseSchemaText(text))).toEqual([
      'enum value runtime.v1.ContainerState.CONTAINER_EXITED: number is 5 in ours, 2 upstream',
      'extra in ours: enum value runtime.v1.SecurityProfile.ProfileType.Custom (number 3)',
      'missing in ours: enum value runtime.v1.Protocol.SCTP (number 2)',
    ]);
  });

  it('reports a missing message once, not once per field, and a renamed field as missing + extra', () => {
    let text = replaceOnce(oursText, 'message VersionRequest {\n  string version = 1;\n}\n', '');
    text = replaceOnce(text, 'rpc Version(VersionRequest)', 'rpc Version(StatusRequest)');
    text = replaceOnce(text, 'string runtime_api_version = 4;', 'string api_version = 4;');
    expect(compareSchemas(upstream, parseSchemaText(text))).toEqual([
      'extra in ours: field runtime.v1.VersionResponse.api_version (number 4, type string, label singular)',
      'missing in ours: field runtime.v1.VersionResponse.runtime_api_version (number 4, type string, label singular)',
      'missing in ours: message runtime.v1.VersionRequest (no attributes)',
      'rpc runtime.v1.RuntimeService.Version: request is runtime.v1.StatusRequest in ours, runtime.v1.VersionRequest upstream',
    ]);
  });

  it('reports dropped field options that change meaning (deprecated, debug_redact)', () => {
    const text = replaceOnce(oursText, 'string password = 2 [debug_redact = true];', 'string password = 2;');
    expect(compareSchemas(upstream, parseSchemaText(text))).toEqual([
      'field runtime.v1.AuthConfig.password: options is - in ours, debug_redact=true upstream',
    ]);
  });
});

describe('findProtoPath', () => {
  it('finds the proto from the source tree and from the compiled tree', () => {
    expect(findProtoPath(join(repoRoot, 'src', 'cri'))).toBe(oursPath);
    expect(findProtoPath(join(repoRoot, 'dist', 'src', 'cri'))).toBe(oursPath);
  });

  it('says what is wrong when the package root has no proto file', () => {
    const packageRoot = mkdtempSync(join(tmpdir(), 'proto-path-'));
    try {
      writeFileSync(join(packageRoot, 'package.json'), '{"name":"rootless-cri","version":"0.0.0"}');
      mkdirSync(join(packageRoot, 'dist', 'src', 'cri'), { recursive: true });
      expect(() => findProtoPath(join(packageRoot, 'dist', 'src', 'cri'))).toThrow(InternalError);
      expect(() => findProtoPath(join(packageRoot, 'dist', 'src', 'cri'))).toThrow(
        /proto\/api\.proto is missing/,
      );
    } finally {
      rmSync(packageRoot, { recursive: true, force: true });
    }
  });
});

describe('loadCriDefinitions', () => {
  it('serves every RPC of the proto with the right paths and streaming flags', () => {
    const definitions = loadCriDefinitions();
    expect(definitions.protoPath).toBe(oursPath);
    expect(loadCriDefinitions()).toBe(definitions);
    const summary = summarizeSchema(upstream);
    const services = { RuntimeService: definitions.runtimeService, ImageService: definitions.imageService };
    let checked = 0;
    for (const element of summary.elements.values()) {
      if (element.kind !== 'rpc') continue;
      const [, , service, method] = element.name.split('.');
      const definition = services[service as keyof typeof services] as Record<
        string,
        { path: string; requestStream: boolean; responseStream: boolean }
      >;
      const methodDefinition = definition[method!];
      expect(methodDefinition, element.name).toBeDefined();
      expect(methodDefinition!.path).toBe(`/runtime.v1.${service}/${method}`);
      expect(String(methodDefinition!.requestStream)).toBe(element.attributes['request stream']);
      expect(String(methodDefinition!.responseStream)).toBe(element.attributes['response stream']);
      checked += 1;
    }
    expect(checked).toBe(summary.counts.rpc);
    expect(
      Object.keys(definitions.runtimeService).length + Object.keys(definitions.imageService).length,
    ).toBe(summary.counts.rpc);
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
