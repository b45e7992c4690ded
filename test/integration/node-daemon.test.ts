/**
 * The foundation, for real: rootlesskit + catatonit node, daemon joined into it as the
 * unprivileged test user, answered from the host and from inside the node by real crictl.
 */
import { chown, mkdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestDaemon } from '../harness/daemon.js';

describe('rootless node and CRI server', () => {
  let daemon: TestDaemon;

  beforeAll(async () => {
    daemon = await TestDaemon.start();
  });

  afterAll(async () => {
    await daemon?.stop();
  });

  it('answers crictl version from the host', async () => {
    const r = await daemon.crictl(['version']);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^Version:\s+0\.1\.0$/m);
    expect(r.stdout).toMatch(/^RuntimeName:\s+rootless-cri$/m);
    expect(r.stdout).toMatch(/^RuntimeApiVersion:\s+v1$/m);
  });

  it('answers crictl info with both conditions and JSON info', async () => {
    const r = await daemon.crictl(['info', '-o', 'json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout) as {
      status: { conditions: { type: string; status: boolean; reason?: string }[] };
      node?: { inUserNamespace: boolean; cgroupV2: boolean };
    };
    const types = info.status.conditions.map((c) => c.type).sort();
    expect(types).toEqual(['NetworkReady', 'RuntimeReady']);
    const runtime = info.status.conditions.find((c) => c.type === 'RuntimeReady');
    expect(runtime?.status).toBe(true);
    expect(info.node?.inUserNamespace).toBe(true);
    expect(info.node?.cgroupV2).toBe(true);
  });

  it('answers the same through `rootless-cri enter -- crictl`', async () => {
    const r = await daemon.crictlInNode(['version']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^RuntimeName:\s+rootless-cri$/m);
  });

  it('runs `enter` commands as uid 0 inside the node namespaces', async () => {
    const r = await daemon.enter(['sh', '-c', 'id -u; readlink /proc/self/ns/user; cat /proc/self/uid_map']);
    expect(r.exitCode, r.stderr).toBe(0);
    const [uid, userns, uidMap] = r.stdout.split('\n');
    expect(uid).toBe('0');
    expect(userns).toBe(await readlink(`/proc/${await daemon.nodePid()}/ns/user`));
    expect(userns).not.toBe(await readlink('/proc/self/ns/user'));
    // uid 0 is the test user, 1.. its subuid range(s), in /etc/subuid order.
    expect(uidMap).toMatch(new RegExp(`^\\s*0\\s+${daemon.user.uid}\\s+1$`));
    const ranges = (await readFile('/etc/subuid', 'utf8'))
      .split('\n')
      .map((l) => l.split(':'))
      .filter((f) => f[0] === daemon.user.name || f[0] === String(daemon.user.uid));
    expect(ranges.length).toBeGreaterThan(0);
    expect(r.stdout).toMatch(new RegExp(`^\\s*1\\s+${ranges[0]![1]}\\s+${ranges[0]![2]}$`, 'm'));
  });

  it('gives crun a pure cgroup v2 view inside the node', async () => {
    const r = await daemon.enter(['sh', '-c', 'stat -f -c %T /sys/fs/cgroup; cat /proc/self/cgroup']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe('cgroup2fs');
  });

  it('puts the daemon in the node cgroup, not in an inner node', async () => {
    const pid = await daemon.daemonPid();
    const { readFile } = await import('node:fs/promises');
    const cgroup = await readFile(`/proc/${pid}/cgroup`, 'utf8');
    expect(cgroup).toMatch(new RegExp(`^0::/.*/${daemon.cgroupSubtree}/daemon$`, 'm'));
  });

  it('publishes /metrics on the host 127.0.0.1 at the port it uses inside the node', async () => {
    const r = await daemon.crictl(['info', '-o', 'json']);
    const info = JSON.parse(r.stdout) as { listeners: { metrics: string } };
    const url = info.listeners.metrics;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const res = await fetch(url);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toMatch(/rootless_cri_grpc_requests_total\{[^}]*method="Version"[^}]*\} [1-9]/);
    expect(text).toMatch(/process_resident_memory_bytes/);
    const inside = await daemon.enter(['sh', '-c', `wget -q -O - ${url} | grep -c process_cpu`]);
    expect(inside.exitCode, inside.stderr).toBe(0);
  });

  it('refuses a second serve while one runs, and the first keeps serving', async () => {
    const r = await daemon.cli(['serve']);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/already running/);
    const v = await daemon.client.runtime('Version', {});
    expect(v.runtime_name).toBe('rootless-cri');
  });

  it('rejects a config with an unknown key, naming it', async () => {
    const bad = path.join(daemon.tmp, 'bad.toml');
    await writeFile(bad, 'log_level = "info"\n[network]\npod_cidrs = "10.0.0.0/8"\n');
    await chown(bad, daemon.user.uid, daemon.user.gid);
    const r = await daemon.rawCli(['--config', bad, 'serve']);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/network\.pod_cidrs/);
  });

  it('rejects a socket in a directory owned by someone else', async () => {
    const foreign = path.join(daemon.tmp, 'foreign');
    await mkdir(foreign, { mode: 0o755 });
    const r = await daemon.cli([
      '--run-dir',
      path.join(daemon.tmp, 'run2'),
      '--socket',
      path.join(foreign, 's.sock'),
      'serve',
    ]);
    await rm(foreign, { recursive: true, force: true });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/owned by|owner/);
  });

  it('survives kill -9: serve again rejoins the same node (same user namespace)', async () => {
    const nodePid = await daemon.nodePid();
    const userns = await readlink(`/proc/${nodePid}/ns/user`);
    const before = await daemon.daemonPid();
    await daemon.kill9();
    // The node is untouched by the daemon's death.
    expect(await readlink(`/proc/${nodePid}/ns/user`)).toBe(userns);
    await daemon.serve();
    expect(await daemon.daemonPid()).not.toBe(before);
    expect(await daemon.nodePid()).toBe(nodePid);
    const inside = await daemon.enter(['readlink', '/proc/self/ns/user']);
    expect(inside.stdout.trim()).toBe(userns);
    const v = await daemon.client.runtime('Version', {});
    expect(v.version).toBe('0.1.0');
  });
});
