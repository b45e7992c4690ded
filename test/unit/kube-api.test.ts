/**
 * The overlay agent's Kubernetes client against a local HTTPS server that asks for a client
 * certificate: list, a watch whose events arrive split across chunks, a merge patch, errors with
 * the API server's status and message, and files read again for every request.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeApi, KubeApiError, type WatchEvent } from '../../src/rootless/kube-api.js';

let dir: string;
let server: https.Server;
let api: KubeApi;
const seen: { method: string; url: string; contentType?: string; body: string; clientCN?: string }[] = [];

function openssl(args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'kube-api-test-'));
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      'ca.key',
    ].concat(['-out', 'ca.crt', '-subj', '/CN=test-ca', '-days', '1']),
  );
  for (const [name, subject, ext] of [
    ['server', '/CN=server', 'subjectAltName=IP:127.0.0.1'],
    ['client', '/O=system:nodes/CN=system:node:n1', 'extendedKeyUsage=clientAuth'],
  ] as const) {
    openssl(
      [
        'req',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        `${name}.key`,
      ].concat(['-out', `${name}.csr`, '-subj', subject]),
    );
    writeFileSync(path.join(dir, `${name}.ext`), `${ext}\n`);
    openssl(
      ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial'].concat([
        '-days',
        '1',
        '-extfile',
        `${name}.ext`,
        '-out',
        `${name}.crt`,
      ]),
    );
  }
  // kubelet's kubelet-client-current.pem holds the certificate and the key in one file.
  writeFileSync(
    path.join(dir, 'client.pem'),
    readFileSync(path.join(dir, 'client.crt'), 'utf8') + readFileSync(path.join(dir, 'client.key'), 'utf8'),
  );
  const read = (f: string) => readFileSync(path.join(dir, f));
  server = https.createServer(
    {
      key: read('server.key'),
      cert: read('server.crt'),
      ca: read('ca.crt'),
      requestCert: true,
      rejectUnauthorized: true,
    },
    (req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => {
        body += c.toString();
      });
      req.on('end', () => {
        const peer = (req.socket as import('node:tls').TLSSocket).getPeerCertificate();
        seen.push({
          method: req.method ?? '',
          url: req.url ?? '',
          ...(req.headers['content-type'] ? { contentType: req.headers['content-type'] } : {}),
          body,
          ...(peer?.subject?.CN ? { clientCN: String(peer.subject.CN) } : {}),
        });
        const url = new URL(req.url ?? '/', 'https://x');
        if (url.pathname === '/api/v1/nodes' && url.searchParams.get('watch') === '1') {
          res.writeHead(200, { 'Content-Type': 'application/json' });
          const events = [
            { type: 'ADDED', object: { metadata: { name: 'n2', resourceVersion: '11' } } },
            { type: 'BOOKMARK', object: { metadata: { name: '', resourceVersion: '12' } } },
            { type: 'ERROR', object: { metadata: { name: '' }, code: 410, message: 'too old' } },
          ]
            .map((e) => `${JSON.stringify(e)}\n`)
            .join('');
          // Split mid-event: the client must join lines across chunks.
          res.write(events.slice(0, 17));
          setTimeout(() => res.end(events.slice(17)), 20);
        } else if (url.pathname === '/api/v1/nodes') {
          res.writeHead(200, { 'Content-Type': 'application/json' });
          res.end(
            JSON.stringify({ metadata: { resourceVersion: '10' }, items: [{ metadata: { name: 'n1' } }] }),
          );
        } else if (url.pathname === '/api/v1/nodes/n1' && req.method === 'PATCH') {
          res.writeHead(200, { 'Content-Type': 'application/json' });
          res.end(
            JSON.stringify({ metadata: { name: 'n1', annotations: JSON.parse(body).metadata.annotations } }),
          );
        } else {
          res.writeHead(403, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify({ kind: 'Status', message: 'nodes "n9" is forbidden: not your node' }));
        }
      });
    },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  api = new KubeApi({
    server: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    caFile: path.join(dir, 'ca.crt'),
    certFile: path.join(dir, 'client.pem'),
    keyFile: path.join(dir, 'client.pem'),
  });
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
});

describe('KubeApi', () => {
  it('lists nodes with the client certificate from a combined PEM', async () => {
    const list = await api.listNodes();
    expect(list.metadata.resourceVersion).toBe('10');
    expect(list.items.map((n) => n.metadata.name)).toEqual(['n1']);
    expect(seen.at(-1)?.clientCN).toBe('system:node:n1');
  });

  it('streams watch events split across chunks, with bookmarks and a 410 error event', async () => {
    const events: WatchEvent[] = [];
    await api.watchNodes('10', (e) => events.push(e), new AbortController().signal);
    expect(events.map((e) => `${e.type}:${e.object.metadata.resourceVersion ?? e.object.code}`)).toEqual([
      'ADDED:11',
      'BOOKMARK:12',
      'ERROR:410',
    ]);
    const query = new URL(seen.at(-1)!.url, 'https://x').searchParams;
    expect(query.get('resourceVersion')).toBe('10');
    expect(query.get('allowWatchBookmarks')).toBe('true');
  });

  it('merge-patches annotations', async () => {
    const node = await api.patchNodeAnnotations('n1', { 'overlay.rootless-cri.io/address': '10.87.0.1' });
    expect(node.metadata.annotations).toEqual({ 'overlay.rootless-cri.io/address': '10.87.0.1' });
    expect(seen.at(-1)).toMatchObject({ method: 'PATCH', contentType: 'application/merge-patch+json' });
  });

  it("reports the API server's status and message, and a missing certificate by its path", async () => {
    const err = await api.patchNodeAnnotations('n9', {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KubeApiError);
    expect((err as KubeApiError).status).toBe(403);
    expect((err as Error).message).toContain('nodes "n9" is forbidden: not your node');
    const noCert = new KubeApi({
      server: 'https://127.0.0.1:1',
      caFile: path.join(dir, 'ca.crt'),
      certFile: path.join(dir, 'missing.pem'),
      keyFile: path.join(dir, 'missing.pem'),
    });
    await expect(noCert.listNodes()).rejects.toThrow(/cannot read the client certificate .*missing\.pem/);
  });
});
