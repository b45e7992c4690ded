/**
 * Layers through the real daemon (security reference §5a rows 45 and 51), served by the
 * hostile registry:
 *  - row 45: a layer of 250 nested 40-character directories fails the pull with a short
 *    INVALID_ARGUMENT, leaves no temp directory, and neither ImageFsInfo nor a restart is
 *    affected; a leftover deeper than PATH_MAX (as an older version could leave) is removed
 *    at recovery, and one the daemon cannot remove is quarantined and shown in verbose
 *    Status while the daemon becomes ready;
 *  - row 51: an upper layer writing lib/… over a merged-/usr base (lib -> usr/lib) lands in
 *    /usr/lib, as containerd and CRI-O do, with whiteouts and opaque dirs through the
 *    symlinks, as a container running on the fuse-overlayfs snapshotter sees it.
 */
import { execFileSync } from 'node:child_process';
import { chown, lstat, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { status as grpcStatus } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeDeepTree } from '../fixtures/deep-tree.js';
import * as evil from '../fixtures/evil-tars.js';
import { exposeInNode, HostileRegistry, type NodeBridge } from '../fixtures/hostile-registry.js';
import { HOST_BUSYBOX } from '../fixtures/image-builder.js';
import { TestDaemon } from '../harness/daemon.js';

let daemon: TestDaemon;
let hostile: HostileRegistry;
let bridge: NodeBridge;
let layersDir: string;

async function pull(reference: string): Promise<{ code: number; message: string }> {
  try {
    await daemon.client.image('PullImage', { image: { image: reference } }, { timeoutMs: 60_000 });
    return { code: grpcStatus.OK, message: '' };
  } catch (err) {
    const e = err as { code: number; details?: string; message: string };
    return { code: e.code, message: e.details ?? e.message };
  }
}

async function imageFsInfoOk(): Promise<void> {
  const info = await daemon.client.image('ImageFsInfo', {});
  expect(Number(info.image_filesystems?.[0]?.used_bytes?.value)).toBeGreaterThan(0);
}

/** One key of verbose Status (each is a JSON text). */
async function verboseStatus(key: string): Promise<unknown> {
  const r = await daemon.client.runtime('Status', { verbose: true });
  return JSON.parse(r.info![key]!) as unknown;
}

beforeAll(async () => {
  hostile = await HostileRegistry.start();
  daemon = await TestDaemon.start();
  bridge = await exposeInNode(await daemon.nodePid(), hostile.port);
  layersDir = path.join(daemon.rootDir, 'image', 'layers');
}, 120_000);

afterAll(async () => {
  await bridge?.close();
  await daemon?.stop();
  await hostile?.close();
});

describe('a directory chain beyond PATH_MAX (row 45)', () => {
  it('fails the pull with a short INVALID_ARGUMENT and leaves nothing that breaks the store', async () => {
    const ref = hostile.serveTars('deep-dirs', [evil.deepDirectories(250, 40)]);
    const outcome = await pull(ref.reference);
    expect(grpcStatus[outcome.code], outcome.message).toBe('INVALID_ARGUMENT');
    expect(outcome.message).toMatch(/over the limit of \d+ bytes/);
    expect(outcome.message.length).toBeLessThan(600);
    expect((await readdir(layersDir)).filter((n) => n.startsWith('.'))).toEqual([]);
    await imageFsInfoOk();
  });

  it('removes a leftover deeper than PATH_MAX at recovery and quarantines one it cannot remove', async () => {
    // What an older version left: a temp unpack far deeper than PATH_MAX, owned by the daemon.
    const deep = path.join(layersDir, '.tmp-old-deep');
    await mkdir(deep);
    makeDeepTree(deep, 150);
    execFileSync('chown', ['-R', `${daemon.user.uid}:${daemon.user.gid}`, deep]);
    // And one it cannot remove: a directory of the host's root (unmapped in the node) inside.
    const stuck = path.join(layersDir, '.tmp-old-stuck');
    await mkdir(path.join(stuck, 'root-owned'), { recursive: true });
    await writeFile(path.join(stuck, 'root-owned', 'f'), 'x');
    await chown(stuck, daemon.user.uid, daemon.user.gid);
    await imageFsInfoOk();

    await daemon.kill9();
    await daemon.serve();
    expect((await daemon.client.runtime('Version', {})).runtime_name).toBe('rootless-cri');
    expect((await readdir(layersDir)).filter((n) => n.startsWith('.'))).toEqual([]);
    const quarantine = (await verboseStatus('quarantine')) as { images: { what: string; path: string }[] };
    expect(quarantine.images).toEqual([
      expect.objectContaining({ what: 'unfinished layer unpack of a previous run' }),
    ]);
    const moved = quarantine.images[0]!.path;
    expect(path.dirname(moved)).toBe(path.join(daemon.rootDir, 'image', 'quarantine'));
    expect(await readFile(path.join(moved, 'root-owned', 'f'), 'utf8')).toBe('x');
    expect(await daemon.logTail(200)).toMatch(/quarantined a damaged image-store object/);
    await imageFsInfoOk();
  });
});

/** The files of a dynamically linked busybox laid out on a merged /usr, with its applets. */
async function mergedUsrBusyboxEntries(): Promise<evil.TarEntry[]> {
  const libs = execFileSync('ldd', [HOST_BUSYBOX], { encoding: 'utf8' })
    .split('\n')
    .map((line) => /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line)?.[1])
    .filter((lib): lib is string => lib !== undefined);
  const entries: evil.TarEntry[] = [
    { name: 'usr/', type: 'dir' },
    { name: 'usr/bin/', type: 'dir' },
    { name: 'usr/lib/', type: 'dir' },
    { name: 'usr/lib64/', type: 'dir' },
    { name: 'usr/opt/', type: 'dir' },
    { name: 'usr/share/', type: 'dir' },
    { name: 'usr/bin/busybox', content: await readFile(HOST_BUSYBOX), mode: 0o755 },
    ...['sh', 'cat', 'ls', 'readlink', 'tail'].map(
      (applet): evil.TarEntry => ({
        name: `usr/bin/${applet}`,
        type: 'hardlink',
        linkname: 'usr/bin/busybox',
      }),
    ),
    { name: 'usr/lib/libc-stand-in.so', content: 'libc' },
    { name: 'usr/lib/old.so', content: 'whited out above' },
    { name: 'usr/opt/a', content: 'hidden by the opaque opt above' },
    { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
    { name: 'lib64', type: 'symlink', linkname: 'usr/lib64' },
    { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
    { name: 'opt', type: 'symlink', linkname: '/usr/opt' },
    { name: 'share', type: 'symlink', linkname: '../../../usr/share' },
    { name: 'etc/', type: 'dir' },
    { name: 'proc/', type: 'dir' },
    { name: 'sys/', type: 'dir' },
    { name: 'dev/', type: 'dir' },
    { name: 'tmp/', type: 'dir', mode: 0o1777 },
  ];
  for (const lib of libs) {
    // /lib/x86_64-linux-gnu/libc.so.6 -> usr/lib/x86_64-linux-gnu/libc.so.6, reached through lib -> usr/lib.
    const inUsr = `usr${lib}`;
    for (let dir = path.dirname(inUsr); dir !== 'usr' && !entries.some((e) => e.name === `${dir}/`); ) {
      entries.splice(6, 0, { name: `${dir}/`, type: 'dir' });
      dir = path.dirname(dir);
    }
    entries.push({ name: inUsr, content: await readFile(lib), mode: 0o755 });
  }
  return entries;
}

describe('an upper layer over a merged-/usr base (row 51)', () => {
  let podId = '';
  let containerId = '';

  afterAll(async () => {
    if (podId) {
      await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id: podId });
      await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id: podId });
    }
  });

  async function exec(cmd: string[]): Promise<string> {
    const r = await daemon.client.runtime('ExecSync', { container_id: containerId, cmd, timeout: 10 });
    expect(r.exit_code, `${cmd.join(' ')}: ${String(r.stderr)}`).toBe(0);
    return String(r.stdout).trim();
  }

  it('resolves lib/… through the lower lib -> usr/lib, with whiteouts and opaque dirs through symlinks', async () => {
    const base = evil.buildTar(await mergedUsrBusyboxEntries());
    const upper = evil.buildTar([
      { name: 'lib/libfoo.so', content: 'foo' },
      { name: 'lib/.wh.old.so' },
      { name: 'opt/.wh..wh..opq' },
      { name: 'opt/b', content: 'b' },
      { name: 'share/escape', content: 'in-root' },
      { name: 'bin/tool', content: '#!/bin/sh\necho tool\n', mode: 0o755 },
    ]);
    const ref = hostile.serveTars('merged-usr', [base, upper], {
      Cmd: ['tail', '-f', '/dev/null'],
      Env: ['PATH=/usr/bin:/bin'],
    });
    const outcome = await pull(ref.reference);
    expect(grpcStatus[outcome.code], outcome.message).toBe('OK');
    // The upper layer's own directory holds usr/… only: no lib, bin, opt or share shadowing the links.
    const s = await daemon.client.image('ImageStatus', { image: { image: ref.reference }, verbose: true });
    const chains = (JSON.parse(s.info!.info!) as { layers: { chainId: string }[] }).layers.map((l) =>
      l.chainId.slice('sha256:'.length),
    );
    const upperDir = path.join(layersDir, chains[1]!);
    expect((await readdir(upperDir)).sort()).toEqual(['usr']);
    expect((await lstat(path.join(upperDir, 'usr/lib/old.so'))).isCharacterDevice()).toBe(true);

    const pod = await daemon.client.runtime('RunPodSandbox', {
      config: {
        metadata: { name: 'merged-usr', namespace: 'layers', uid: 'merged-usr-uid', attempt: 0 },
        linux: {},
      },
    });
    podId = pod.pod_sandbox_id;
    const podConfig = {
      metadata: { name: 'merged-usr', namespace: 'layers', uid: 'merged-usr-uid', attempt: 0 },
      linux: {},
    };
    const created = await daemon.client.runtime('CreateContainer', {
      pod_sandbox_id: podId,
      config: { metadata: { name: 'c' }, image: { image: ref.reference }, linux: {} },
      sandbox_config: podConfig,
    });
    containerId = created.container_id;
    await daemon.client.runtime('StartContainer', { container_id: containerId });

    expect(await exec(['readlink', '/lib'])).toBe('usr/lib');
    expect(await exec(['cat', '/lib/libfoo.so'])).toBe('foo');
    expect(await exec(['cat', '/usr/lib/libfoo.so'])).toBe('foo');
    expect((await exec(['ls', '/usr/lib'])).split(/\s+/)).not.toContain('old.so');
    expect((await exec(['ls', '/usr/lib'])).split(/\s+/)).toContain('libc-stand-in.so');
    expect(await exec(['ls', '/opt/'])).toBe('b');
    expect(await exec(['cat', '/usr/share/escape'])).toBe('in-root');
    expect(await exec(['/bin/tool'])).toBe('tool');
  });
});
