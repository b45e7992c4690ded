/**
 * The OCI spec builder, rule by rule, against real temp dirs (image rootfs with hostile
 * /etc/passwd and /etc/group, host mount paths, seccomp profiles). Catalog rows of
 * security-and-reliability.md §5a are named where a test covers one.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ContainerConfig__Output } from '../../src/api/proto.js';
import { DEFAULT_CAPABILITIES } from '../../src/container/capabilities.js';
import {
  buildOciSpec,
  containerLogPath,
  DEFAULT_MASKED_PATHS,
  DEFAULT_READONLY_PATHS,
  type ImageRuntimeConfig,
  type SpecInput,
} from '../../src/container/spec-builder.js';
import { NodeSpecFiles } from '../../src/container/spec-files.js';
import { CriError } from '../../src/errors.js';
import type { OciSpec } from '../../src/os/oci-spec.js';
import {
  containerConfig,
  hostFacts,
  mount,
  podConfig,
  resources,
  sandboxInfo,
  securityContext,
} from '../fakes/container-fixtures.js';

let dir: string;
let rootfs: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'spec-builder-test-'));
  rootfs = join(dir, 'rootfs');
  mkdirSync(join(rootfs, 'etc'), { recursive: true });
  mkdirSync(join(rootfs, 'bin'));
  writeFileSync(
    join(rootfs, 'etc/passwd'),
    [
      'root:x:0:0:root:/root:/bin/sh',
      'www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin',
      'nobody:x:65534:65534:nobody:/nonexistent:/bin/false',
      'broken-line',
      'huge:x:99999999999:1:overflow:/:/bin/sh',
      'app:x:1000:1000::/home/app:/bin/sh',
      '',
    ].join('\n'),
  );
  writeFileSync(
    join(rootfs, 'etc/group'),
    ['root:x:0:', 'www-data:x:33:', 'staff:x:50:app,www-data', 'app:x:1000:', 'extra:x:1004:app', ''].join(
      '\n',
    ),
  );
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function input(
  config: ContainerConfig__Output,
  image: ImageRuntimeConfig = { Cmd: ['sh'] },
  overrides: Partial<SpecInput> = {},
): SpecInput {
  return {
    containerId: 'c'.repeat(64),
    config,
    sandbox: sandboxInfo(),
    image: { config: { config: image }, rootfs, name: 'docker.io/library/busybox:latest' },
    hostFacts: hostFacts(),
    files: new NodeSpecFiles(),
    ...overrides,
  };
}

async function build(
  config: ContainerConfig__Output,
  image?: ImageRuntimeConfig,
  overrides?: Partial<SpecInput>,
) {
  return buildOciSpec(input(config, image, overrides));
}

async function spec(
  config: ContainerConfig__Output,
  image?: ImageRuntimeConfig,
  overrides?: Partial<SpecInput>,
) {
  return (await build(config, image, overrides)).spec;
}

async function rejects(
  config: ContainerConfig__Output,
  kind: string,
  message: RegExp,
  image?: ImageRuntimeConfig,
  overrides?: Partial<SpecInput>,
): Promise<void> {
  const err = await build(config, image, overrides).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, 'expected an error').toBeInstanceOf(CriError);
  expect((err as CriError).kind).toBe(kind);
  expect((err as CriError).message).toMatch(message);
}

function env(s: OciSpec): Record<string, string> {
  return Object.fromEntries(
    s.process.env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]),
  );
}

function kv(key: string, value: string | Buffer) {
  return { key, value: Buffer.isBuffer(value) ? value : Buffer.from(value) };
}

describe('command and args (containerd merge)', () => {
  const cases: [string, Partial<ContainerConfig__Output>, ImageRuntimeConfig, string[]][] = [
    ['image entrypoint + cmd', {}, { Entrypoint: ['/ep'], Cmd: ['a', 'b'] }, ['/ep', 'a', 'b']],
    ['args replace image cmd', { args: ['x'] }, { Entrypoint: ['/ep'], Cmd: ['a'] }, ['/ep', 'x']],
    ['command replaces entrypoint and cmd', { command: ['/c'] }, { Entrypoint: ['/ep'], Cmd: ['a'] }, ['/c']],
    ['command + args', { command: ['/c'], args: ['1'] }, { Entrypoint: ['/ep'], Cmd: ['a'] }, ['/c', '1']],
    ['cmd only', {}, { Cmd: ['sh', '-c', 'x'] }, ['sh', '-c', 'x']],
    ['entrypoint [""] is no entrypoint', {}, { Entrypoint: [''], Cmd: ['top'] }, ['top']],
  ];
  for (const [name, config, image, expected] of cases) {
    it(name, async () => {
      expect((await spec(containerConfig(config), image)).process.args).toEqual(expected);
    });
  }

  it('no command anywhere is InvalidArgument', async () => {
    await rejects(containerConfig(), 'InvalidArgument', /no command specified/, {});
  });
});

describe('environment', () => {
  it('merges default PATH, HOSTNAME, image env, then request env by key', async () => {
    const s = await spec(containerConfig({ envs: [kv('B', 'request'), kv('C', 'new')] }), {
      Cmd: ['sh'],
      Env: ['A=image', 'B=image', 'PATH=/image/bin', 'NOEQUALS'],
    });
    expect(env(s)).toEqual({ PATH: '/image/bin', HOSTNAME: 'pod-host', A: 'image', B: 'request', C: 'new' });
  });

  it('keeps the default PATH when the image has none', async () => {
    expect(env(await spec(containerConfig())).PATH).toBe(
      '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    );
  });

  it('allows a newline in an ordinary variable', async () => {
    expect(env(await spec(containerConfig({ envs: [kv('MULTI', 'a\nb')] }))).MULTI).toBe('a\nb');
  });

  // Catalog 22: real 0x0a / 0x0d bytes, not the two characters "\n".
  for (const [name, bytes] of [
    ['LF', Buffer.from([0x2f, 0x68, 0x0a, 0x78])],
    ['CR', Buffer.from([0x2f, 0x68, 0x0d, 0x78])],
  ] as const) {
    it(`rejects HOME with a real ${name} byte (catalog 22)`, async () => {
      await rejects(
        containerConfig({ envs: [kv('HOME', bytes)] }),
        'InvalidArgument',
        /HOME contains a newline/,
      );
    });
  }

  it('accepts HOME with a literal backslash-n (two characters)', async () => {
    expect(env(await spec(containerConfig({ envs: [kv('HOME', '/h\\nx')] }))).HOME).toBe('/h\\nx');
  });

  it('rejects HOME with a newline from the image env too', async () => {
    await rejects(containerConfig(), 'InvalidArgument', /HOME/, {
      Cmd: ['sh'],
      Env: ['HOME=/a\nroot::0:0::/:/bin/sh'],
    });
  });

  it('rejects NUL bytes in any value', async () => {
    await rejects(
      containerConfig({ envs: [kv('X', Buffer.from([0x61, 0x00, 0x62]))] }),
      'InvalidArgument',
      /X contains a NUL/,
    );
  });

  for (const key of ['', 'A=B', 'A\0B']) {
    it(`rejects the variable name ${JSON.stringify(key)}`, async () => {
      await rejects(
        containerConfig({ envs: [kv(key, 'v')] }),
        'InvalidArgument',
        /environment variable name/,
      );
    });
  }
});

describe('working directory', () => {
  it('uses the request, else the image, else /', async () => {
    expect(
      (await spec(containerConfig({ working_dir: '/srv' }), { Cmd: ['sh'], WorkingDir: '/img' })).process.cwd,
    ).toBe('/srv');
    expect((await spec(containerConfig(), { Cmd: ['sh'], WorkingDir: '/img' })).process.cwd).toBe('/img');
    expect((await spec(containerConfig())).process.cwd).toBe('/');
  });

  // Catalog 20 / CVE-2024-21626.
  for (const cwd of ['/proc/self/fd/7', '/proc', '/x/../proc/1/cwd']) {
    it(`rejects ${cwd} (catalog 20)`, async () => {
      await rejects(containerConfig({ working_dir: cwd }), 'InvalidArgument', /under \/proc/);
    });
  }

  it('rejects an image WORKDIR /proc/self/fd/7 (catalog 20)', async () => {
    await rejects(containerConfig(), 'InvalidArgument', /under \/proc/, {
      Cmd: ['sh'],
      WorkingDir: '/proc/self/fd/7',
    });
  });

  it('rejects a working dir that is a symlink into /proc inside the image', async () => {
    symlinkSync('/proc/self/cwd', join(rootfs, 'work'));
    await rejects(containerConfig({ working_dir: '/work' }), 'InvalidArgument', /under \/proc/);
  });

  it('does not treat /procfoo as /proc', async () => {
    expect((await spec(containerConfig({ working_dir: '/procfoo' }))).process.cwd).toBe('/procfoo');
  });

  it('rejects a relative working dir', async () => {
    await rejects(containerConfig({ working_dir: 'rel' }), 'InvalidArgument', /absolute/);
  });
});

describe('user and groups', () => {
  const user = async (
    sc: Parameters<typeof securityContext>[0],
    image: ImageRuntimeConfig = { Cmd: ['sh'] },
  ) => (await spec(containerConfig({}, sc), image)).process.user;

  it('defaults to root with its groups', async () => {
    expect(await user({})).toEqual({ uid: 0, gid: 0, additionalGids: [0] });
  });

  it('run_as_user finds the primary gid and groups in the image', async () => {
    expect(await user({ run_as_user: { value: '1000' } })).toEqual({
      uid: 1000,
      gid: 1000,
      additionalGids: [1000, 50, 1004],
    });
  });

  it('run_as_user unknown to the image runs with gid 0', async () => {
    expect(await user({ run_as_user: { value: '4321' } })).toEqual({
      uid: 4321,
      gid: 0,
      additionalGids: [0],
    });
  });

  it('run_as_username beats run_as_user', async () => {
    expect((await user({ run_as_user: { value: '1000' }, run_as_username: 'www-data' })).uid).toBe(33);
  });

  it('run_as_group overrides the primary gid', async () => {
    expect(await user({ run_as_user: { value: '1000' }, run_as_group: { value: '2000' } })).toEqual({
      uid: 1000,
      gid: 2000,
      additionalGids: [2000, 50, 1004],
    });
  });

  it('supplemental groups are added; Strict leaves out the image groups', async () => {
    expect(await user({ run_as_user: { value: '1000' }, supplemental_groups: ['1234', '5678'] })).toEqual({
      uid: 1000,
      gid: 1000,
      additionalGids: [1000, 50, 1004, 1234, 5678],
    });
    expect(
      await user({
        run_as_user: { value: '1000' },
        supplemental_groups: ['1234'],
        supplemental_groups_policy: 'Strict',
      }),
    ).toEqual({ uid: 1000, gid: 1000, additionalGids: [1000, 1234] });
  });

  const imageUsers: [string, { uid: number; gid: number }][] = [
    ['1002', { uid: 1002, gid: 0 }],
    ['www-data', { uid: 33, gid: 33 }],
    ['1003:1004', { uid: 1003, gid: 1004 }],
    ['www-data:1004', { uid: 33, gid: 1004 }],
    ['app:extra', { uid: 1000, gid: 1004 }],
  ];
  for (const [imageUser, expected] of imageUsers) {
    it(`image USER ${imageUser}`, async () => {
      expect(await user({}, { Cmd: ['sh'], User: imageUser })).toMatchObject(expected);
    });
  }

  it('the request beats the image USER', async () => {
    expect((await user({ run_as_user: { value: '7' } }, { Cmd: ['sh'], User: 'www-data' })).uid).toBe(7);
  });

  // Catalog 17.
  for (const bad of ['4294967296', '-1', '99999999999999999999', '1e3', ' 1']) {
    it(`rejects image USER ${JSON.stringify(bad)} (catalog 17)`, async () => {
      await rejects(containerConfig(), 'InvalidArgument', /user|id/, { Cmd: ['sh'], User: bad });
    });
  }

  it('rejects run_as_user -1 and 2^32 (catalog 17)', async () => {
    await rejects(
      containerConfig({}, { run_as_user: { value: '-1' } }),
      'InvalidArgument',
      /run_as_user "-1"/,
    );
    await rejects(
      containerConfig({}, { run_as_user: { value: '4294967296' } }),
      'InvalidArgument',
      /run_as_user/,
    );
  });

  it('rejects an unknown username and group (catalog 17)', async () => {
    await rejects(
      containerConfig({}, { run_as_username: 'ghost' }),
      'InvalidArgument',
      /"ghost" is not in the image/,
    );
    await rejects(containerConfig(), 'InvalidArgument', /group "ghosts"/, {
      Cmd: ['sh'],
      User: 'app:ghosts',
    });
  });

  it('rejects run_as_group without a user (catalog 27)', async () => {
    await rejects(
      containerConfig({}, { run_as_group: { value: '1000' } }),
      'InvalidArgument',
      /run_as_group 1000 is set without/,
    );
  });

  it('rejects a uid the node user namespace does not map', async () => {
    await rejects(containerConfig({}, { run_as_user: { value: '70000' } }), 'InvalidArgument', /not mapped/);
  });

  it('a username without /etc/passwd in the image is an error, a uid is fine', async () => {
    rmSync(join(rootfs, 'etc/passwd'));
    await rejects(containerConfig({}, { run_as_username: 'app' }), 'InvalidArgument', /has none/);
    expect(await user({ run_as_user: { value: '5' } })).toEqual({ uid: 5, gid: 0, additionalGids: [0] });
  });

  // Catalog 18: /etc/passwd pointing out of the rootfs, or huge.
  it('reads /etc/passwd through an absolute symlink inside the rootfs, never the host file', async () => {
    const hostPasswd = join(dir, 'host-passwd');
    writeFileSync(hostPasswd, 'evil:x:0:0::/:/bin/sh\n');
    rmSync(join(rootfs, 'etc/passwd'));
    // Absolute and relative escapes both land inside the rootfs, where nothing exists.
    symlinkSync(hostPasswd, join(rootfs, 'etc/passwd'));
    await rejects(
      containerConfig({}, { run_as_username: 'evil' }),
      'InvalidArgument',
      /"evil" is not in the image/,
    );
    rmSync(join(rootfs, 'etc/passwd'));
    symlinkSync(`../../../../../../..${hostPasswd}`, join(rootfs, 'etc/passwd'));
    await rejects(
      containerConfig({}, { run_as_username: 'evil' }),
      'InvalidArgument',
      /"evil" is not in the image/,
    );
  });

  it('follows an in-root symlink chain to the real file', async () => {
    mkdirSync(join(rootfs, 'usr/lib'), { recursive: true });
    writeFileSync(join(rootfs, 'usr/lib/passwd'), 'svc:x:321:654::/:/bin/sh\n');
    rmSync(join(rootfs, 'etc/passwd'));
    symlinkSync('/usr/lib/passwd', join(rootfs, 'etc/passwd'));
    expect(await user({ run_as_username: 'svc' })).toMatchObject({ uid: 321, gid: 654 });
  });

  it('refuses /etc/passwd larger than 1 MiB (catalog 18)', async () => {
    writeFileSync(join(rootfs, 'etc/passwd'), 'x'.repeat(1024 * 1024 + 1));
    await rejects(
      containerConfig({}, { run_as_username: 'app' }),
      'InvalidArgument',
      /more than the 1048576 bytes/,
    );
  });

  it('refuses /etc/group that is a directory or a symlink loop', async () => {
    rmSync(join(rootfs, 'etc/group'));
    mkdirSync(join(rootfs, 'etc/group'));
    await rejects(
      containerConfig({}, { run_as_user: { value: '1000' } }),
      'InvalidArgument',
      /not a regular file/,
    );
    rmSync(join(rootfs, 'etc/group'), { recursive: true });
    symlinkSync('/etc/group', join(rootfs, 'etc/group'));
    await rejects(
      containerConfig({}, { run_as_user: { value: '1000' } }),
      'InvalidArgument',
      /too many levels/,
    );
  });

  it('skips a passwd line whose uid overflows rather than wrapping it', async () => {
    await rejects(
      containerConfig({}, { run_as_username: 'huge' }),
      'InvalidArgument',
      /"huge" is not in the image/,
    );
  });
});

describe('mounts', () => {
  let hostDir: string;
  beforeEach(() => {
    hostDir = join(dir, 'host');
    mkdirSync(hostDir);
  });
  const find = (s: OciSpec, dest: string) => s.mounts.filter((m) => m.destination === dest);

  it('binds a host dir with propagation and readonly', async () => {
    const s = await spec(
      containerConfig({
        mounts: [
          mount({ container_path: '/a', host_path: hostDir }),
          mount({
            container_path: '/b',
            host_path: hostDir,
            readonly: true,
            propagation: 'PROPAGATION_HOST_TO_CONTAINER',
          }),
          mount({
            container_path: '/c',
            host_path: hostDir,
            propagation: 'PROPAGATION_BIDIRECTIONAL',
            selinux_relabel: true,
          }),
        ],
      }),
    );
    expect(find(s, '/a')).toEqual([
      { destination: '/a', type: 'bind', source: hostDir, options: ['rbind', 'rprivate', 'rw'] },
    ]);
    expect(find(s, '/b')[0]!.options).toEqual(['rbind', 'rslave', 'ro']);
    expect(find(s, '/c')[0]!.options).toEqual(['rbind', 'rshared', 'rw']);
    expect(s.linux.rootfsPropagation).toBe('rshared');
  });

  it('a host path that is a symlink mounts its target (catalog 24)', async () => {
    symlinkSync(hostDir, join(dir, 'link'));
    const s = await spec(
      containerConfig({ mounts: [mount({ container_path: '/a', host_path: join(dir, 'link') })] }),
    );
    expect(find(s, '/a')[0]!.source).toBe(hostDir);
  });

  // Catalog 23.
  for (const containerPath of ['', 'relative/path']) {
    it(`rejects container_path ${JSON.stringify(containerPath)} (catalog 23)`, async () => {
      await rejects(
        containerConfig({ mounts: [mount({ container_path: containerPath, host_path: hostDir })] }),
        'InvalidArgument',
        /must be an absolute path/,
      );
    });
  }

  it('rejects a missing host_path (catalog 23)', async () => {
    await rejects(
      containerConfig({ mounts: [mount({ host_path: join(dir, 'missing') })] }),
      'InvalidArgument',
      /does not exist/,
    );
  });

  it('rejects recursive read-only without readonly, with non-private propagation, or unsupported (catalog 23)', async () => {
    const rro = (o: Parameters<typeof mount>[0]) =>
      containerConfig({ mounts: [mount({ host_path: hostDir, recursive_read_only: true, ...o })] });
    await rejects(rro({ readonly: false }), 'InvalidArgument', /needs readonly/);
    await rejects(
      rro({ readonly: true, propagation: 'PROPAGATION_HOST_TO_CONTAINER' }),
      'InvalidArgument',
      /PRIVATE/,
    );
    await rejects(
      rro({ readonly: true, propagation: 'PROPAGATION_BIDIRECTIONAL' }),
      'InvalidArgument',
      /PRIVATE/,
    );
    await rejects(rro({ readonly: true }), 'InvalidArgument', /not supported on this node/);
    const s = await spec(rro({ readonly: true }), undefined, {
      hostFacts: hostFacts({ recursiveReadOnlyMounts: true }),
    });
    expect(find(s, '/data')[0]!.options).toEqual(['rbind', 'rprivate', 'ro', 'rro']);
  });

  it('an image volume that reaches the spec unmounted is an Internal error, never a path (CreateContainer mounts them first)', async () => {
    await rejects(
      containerConfig({
        mounts: [
          mount({
            host_path: '',
            image_sub_path: '../..',
            image: {
              image: 'x',
              annotations: {},
              user_specified_image: '',
              runtime_handler: '',
              image_ref: '',
            },
          }),
        ],
      }),
      'Internal',
      /image volume reached the spec unmounted/,
    );
  });

  it('adds the pod files and /dev/shm, readonly with a readonly rootfs', async () => {
    const s = await spec(containerConfig({}, { readonly_rootfs: true }));
    expect(find(s, '/etc/hosts')[0]).toEqual({
      destination: '/etc/hosts',
      type: 'bind',
      source: '/pods/pod1/hosts',
      options: ['rbind', 'rprivate', 'ro'],
    });
    expect(find(s, '/etc/resolv.conf')[0]!.source).toBe('/pods/pod1/resolv.conf');
    expect(find(s, '/etc/hostname')[0]!.source).toBe('/pods/pod1/hostname');
    expect(find(s, '/dev/shm')).toEqual([
      {
        destination: '/dev/shm',
        type: 'bind',
        source: '/pods/pod1/shm',
        options: ['rbind', 'rprivate', 'rw'],
      },
    ]);
    expect(s.root).toEqual({ path: rootfs, readonly: true });
  });

  it('uses the node /dev/shm for IPC NODE and a private tmpfs when the pod has none', async () => {
    const node = await spec(
      containerConfig(
        {},
        {
          namespace_options: {
            network: 'POD',
            pid: 'CONTAINER',
            ipc: 'NODE',
            target_id: '',
            userns_options: null,
          },
        },
      ),
    );
    expect(find(node, '/dev/shm')[0]!.source).toBe('/dev/shm');
    const sandbox = sandboxInfo();
    sandbox.files.shm = null;
    const own = await spec(containerConfig(), undefined, { sandbox });
    expect(find(own, '/dev/shm')[0]!.type).toBe('tmpfs');
  });

  it('a request mount replaces a default at or under its destination', async () => {
    const s = await spec(
      containerConfig({
        mounts: [
          mount({ container_path: '/etc/hosts', host_path: hostDir }),
          mount({ container_path: '/dev', host_path: hostDir }),
        ],
      }),
    );
    expect(find(s, '/etc/hosts')).toHaveLength(1);
    expect(find(s, '/etc/hosts')[0]!.source).toBe(hostDir);
    expect(s.mounts.filter((m) => m.destination.startsWith('/dev'))).toEqual([
      { destination: '/dev', type: 'bind', source: hostDir, options: ['rbind', 'rprivate', 'rw'] },
    ]);
  });

  it('orders request mounts parents first', async () => {
    const s = await spec(
      containerConfig({
        mounts: [
          mount({ container_path: '/a/b/c', host_path: hostDir }),
          mount({ container_path: '/a', host_path: hostDir }),
        ],
      }),
    );
    const dests = s.mounts.map((m) => m.destination);
    expect(dests.indexOf('/a')).toBeLessThan(dests.indexOf('/a/b/c'));
  });
});

describe('namespaces', () => {
  const ns = (o: { network?: string; pid?: string; ipc?: string }) =>
    securityContext({
      namespace_options: {
        network: (o.network ?? 'POD') as 'POD',
        pid: (o.pid ?? 'CONTAINER') as 'POD',
        ipc: (o.ipc ?? 'POD') as 'POD',
        target_id: '',
        userns_options: null,
      },
    });

  it('joins the pod network/uts/ipc, new pid, mount and cgroup; never a user namespace', async () => {
    const s = await spec(containerConfig({}, ns({})));
    expect(s.linux.namespaces).toEqual([
      { type: 'mount' },
      { type: 'network', path: '/run/netns/n1' },
      { type: 'uts', path: '/run/uts/u1' },
      { type: 'ipc', path: '/run/ipc/i1' },
      { type: 'pid' },
      { type: 'cgroup' },
    ]);
  });

  it('pid POD joins the infra process; NODE namespaces are left out', async () => {
    const s = await spec(containerConfig({}, ns({ pid: 'POD', network: 'NODE', ipc: 'NODE' })));
    expect(s.linux.namespaces).toEqual([
      { type: 'mount' },
      { type: 'pid', path: '/proc/4242/ns/pid' },
      { type: 'cgroup' },
    ]);
    expect(s.mounts.some((m) => m.destination === '/etc/hostname')).toBe(false);
  });

  it('pid TARGET joins the target, and needs it', async () => {
    const s = await spec(containerConfig({}, ns({ pid: 'TARGET' })), undefined, {
      targetPidNamespace: '/proc/77/ns/pid',
    });
    expect(s.linux.namespaces).toContainEqual({ type: 'pid', path: '/proc/77/ns/pid' });
    await rejects(containerConfig({}, ns({ pid: 'TARGET' })), 'InvalidArgument', /TARGET/);
  });

  it('pid POD without an infra process is FailedPrecondition', async () => {
    await rejects(
      containerConfig({}, ns({ pid: 'POD' })),
      'FailedPrecondition',
      /no infra process/,
      undefined,
      {
        sandbox: sandboxInfo({ infraPid: null }),
      },
    );
  });

  it('falls back to the pod namespace options when the container has none', async () => {
    const pod = podConfig();
    pod.linux!.security_context!.namespace_options!.pid = 'POD';
    const s = await spec(containerConfig({}, null), undefined, { sandbox: sandboxInfo({ config: pod }) });
    expect(s.linux.namespaces).toContainEqual({ type: 'pid', path: '/proc/4242/ns/pid' });
  });

  it('refuses a user namespace mode the pod does not have (catalog 27; pod user namespaces: pod-user-namespace.test.ts)', async () => {
    const sc = ns({});
    sc.namespace_options!.userns_options = { mode: 'POD', uids: [], gids: [] };
    await rejects(containerConfig({}, sc), 'InvalidArgument', /user namespace mode/);
    sc.namespace_options!.userns_options = { mode: 'NODE', uids: [], gids: [] };
    await expect(spec(containerConfig({}, sc))).resolves.toBeDefined();
  });
});

describe('capabilities', () => {
  const caps = async (add: string[], drop: string[]) =>
    (
      await spec(
        containerConfig(
          {},
          { capabilities: { add_capabilities: add, drop_capabilities: drop, add_ambient_capabilities: [] } },
        ),
      )
    ).process.capabilities;

  it('defaults to containerd set with an empty inheritable set', async () => {
    const c = (await spec(containerConfig())).process.capabilities;
    expect(c.bounding).toEqual([...DEFAULT_CAPABILITIES]);
    expect(c.effective).toEqual(c.bounding);
    expect(c.permitted).toEqual(c.bounding);
    expect(c.inheritable).toEqual([]);
  });

  it('adds and drops by short or CAP_ name', async () => {
    const c = await caps(['NET_ADMIN', 'cap_sys_time'], ['NET_RAW']);
    expect(c.bounding).toContain('CAP_NET_ADMIN');
    expect(c.bounding).toContain('CAP_SYS_TIME');
    expect(c.bounding).not.toContain('CAP_NET_RAW');
  });

  it('ALL first, then the individual ones', async () => {
    expect((await caps(['ALL'], ['CHOWN'])).bounding).toHaveLength(40);
    expect((await caps(['ALL'], ['CHOWN'])).bounding).not.toContain('CAP_CHOWN');
    expect((await caps(['KILL'], ['ALL'])).bounding).toEqual(['CAP_KILL']);
    expect((await caps([], ['ALL'])).bounding).toEqual([]);
  });

  it('rejects unknown capability names', async () => {
    await rejects(
      containerConfig(
        {},
        { capabilities: { add_capabilities: ['FLY'], drop_capabilities: [], add_ambient_capabilities: [] } },
      ),
      'InvalidArgument',
      /unknown capability "FLY"/,
    );
  });

  it('ambient capabilities are also inheritable (the kernel needs both)', async () => {
    const c = (
      await spec(
        containerConfig(
          {},
          {
            capabilities: {
              add_capabilities: [],
              drop_capabilities: [],
              add_ambient_capabilities: ['NET_BIND_SERVICE'],
            },
          },
        ),
      )
    ).process.capabilities;
    expect(c.ambient).toEqual(['CAP_NET_BIND_SERVICE']);
    expect(c.inheritable).toEqual(['CAP_NET_BIND_SERVICE']);
  });
});

describe('privileged', () => {
  const privilegedSandbox = () => sandboxInfo({ config: podConfig(true) });

  it('gets every capability, the node devices, no masks, no seccomp, writable /sys', async () => {
    const s = await spec(
      containerConfig(
        {},
        { privileged: true, seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' } },
      ),
      undefined,
      {
        sandbox: privilegedSandbox(),
      },
    );
    expect(s.process.capabilities.bounding).toHaveLength(41);
    expect(s.linux.devices).toEqual([
      { path: '/dev/fuse', type: 'c', major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 },
    ]);
    expect(s.linux.maskedPaths).toBeUndefined();
    expect(s.linux.readonlyPaths).toBeUndefined();
    expect(s.linux.seccomp).toBeUndefined();
    expect(s.linux.resources?.devices).toEqual([{ allow: true, access: 'rwm' }]);
    expect(s.mounts.find((m) => m.destination === '/sys')!.options).toContain('rw');
  });

  it('needs a privileged sandbox', async () => {
    await rejects(containerConfig({}, { privileged: true }), 'InvalidArgument', /privileged pod sandbox/);
  });
});

describe('masked and read-only paths', () => {
  it('defaults when unset or empty (catalog 28)', async () => {
    const s = await spec(containerConfig({}, { masked_paths: [], readonly_paths: [] }));
    expect(s.linux.maskedPaths).toEqual([...DEFAULT_MASKED_PATHS]);
    expect(s.linux.readonlyPaths).toEqual([...DEFAULT_READONLY_PATHS]);
    expect(s.linux.readonlyPaths).toContain('/proc/sys');
  });

  it('uses the requested lists', async () => {
    const s = await spec(containerConfig({}, { masked_paths: ['/bin/ls'], readonly_paths: ['/tmp'] }));
    expect(s.linux.maskedPaths).toEqual(['/bin/ls']);
    expect(s.linux.readonlyPaths).toEqual(['/tmp']);
  });

  it('rejects relative masked paths', async () => {
    await rejects(containerConfig({}, { masked_paths: ['bin/ls'] }), 'InvalidArgument', /masked path/);
  });
});

describe('seccomp', () => {
  const seccomp = async (sc: Parameters<typeof securityContext>[0]) =>
    (await spec(containerConfig({}, sc))).linux.seccomp;

  it('nil profile is unconfined; empty SecurityProfile is RuntimeDefault', async () => {
    expect(await seccomp({})).toBeUndefined();
    const d = await seccomp({ seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' } });
    expect(d?.defaultAction).toBe('SCMP_ACT_ERRNO');
    expect(d?.defaultErrnoRet).toBe(1);
    expect(d?.architectures).toEqual(['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
  });

  it('the default profile allows ordinary calls and refuses privileged ones without the capability', async () => {
    const d = (await seccomp({ seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' } }))!;
    const allowed = d
      .syscalls!.filter((s) => s.action === 'SCMP_ACT_ALLOW' && !s.args)
      .flatMap((s) => s.names);
    for (const name of ['read', 'write', 'execve', 'openat', 'futex', 'chroot', 'setuid', 'epoll_wait']) {
      expect(allowed).toContain(name);
    }
    for (const name of [
      'mount',
      'unshare',
      'setns',
      'sethostname',
      'reboot',
      'init_module',
      'kexec_load',
      'bpf',
      'clone3',
    ]) {
      expect(allowed).not.toContain(name);
    }
    const clone = d.syscalls!.find((s) => s.names.includes('clone'));
    expect(clone?.args?.[0]).toMatchObject({ index: 0, op: 'SCMP_CMP_MASKED_EQ', valueTwo: 0 });
    expect(d.syscalls!.find((s) => s.names.includes('clone3'))).toMatchObject({
      action: 'SCMP_ACT_ERRNO',
      errnoRet: 38,
    });
  });

  it('the default profile opens namespace calls to CAP_SYS_ADMIN', async () => {
    const d = (await seccomp({
      seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' },
      capabilities: { add_capabilities: ['SYS_ADMIN'], drop_capabilities: [], add_ambient_capabilities: [] },
    }))!;
    const allowed = d
      .syscalls!.filter((s) => s.action === 'SCMP_ACT_ALLOW' && !s.args)
      .flatMap((s) => s.names);
    expect(allowed).toEqual(
      expect.arrayContaining(['mount', 'unshare', 'setns', 'sethostname', 'clone', 'clone3']),
    );
  });

  it('legacy seccomp_profile_path values', async () => {
    expect(await seccomp({ seccomp_profile_path: 'runtime/default' })).toBeDefined();
    expect(await seccomp({ seccomp_profile_path: 'docker/default' })).toBeDefined();
    expect(await seccomp({ seccomp_profile_path: 'unconfined' })).toBeUndefined();
    await rejects(containerConfig({}, { seccomp_profile_path: 'bogus' }), 'InvalidArgument', /not supported/);
  });

  it('translates a Docker-format Localhost profile', async () => {
    const file = join(dir, 'profile.json');
    writeFileSync(
      file,
      JSON.stringify({
        defaultAction: 'SCMP_ACT_ALLOW',
        archMap: [
          { architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86'] },
          { architecture: 'SCMP_ARCH_AARCH64', subArchitectures: ['SCMP_ARCH_ARM'] },
        ],
        syscalls: [
          { names: ['chmod', 'fchmodat'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
          { name: 'sethostname', action: 'SCMP_ACT_ERRNO' },
          { names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } },
          { names: ['ioperm'], action: 'SCMP_ACT_ALLOW', excludes: { arches: ['amd64'] } },
          {
            names: ['personality'],
            action: 'SCMP_ACT_ALLOW',
            args: [{ index: 0, value: 8, op: 'SCMP_CMP_EQ' }],
          },
          { names: ['newer'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '7.0' } },
        ],
      }),
    );
    const s = await seccomp({ seccomp: { profile_type: 'Localhost', localhost_ref: file } });
    expect(s).toEqual({
      defaultAction: 'SCMP_ACT_ALLOW',
      architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86'],
      syscalls: [
        { names: ['chmod', 'fchmodat'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 },
        { names: ['sethostname'], action: 'SCMP_ACT_ERRNO' },
        {
          names: ['personality'],
          action: 'SCMP_ACT_ALLOW',
          args: [{ index: 0, value: 8, op: 'SCMP_CMP_EQ' }],
        },
      ],
    });
    expect(await seccomp({ seccomp_profile_path: `localhost/${file}` })).toEqual(s);
  });

  const badProfiles: [string, unknown, RegExp][] = [
    ['not JSON', '{', /not valid JSON/],
    ['an array', [], /not a JSON object/],
    ['unknown action', { defaultAction: 'SCMP_ACT_EXPLODE' }, /unknown action/],
    ['notify', { defaultAction: 'SCMP_ACT_ALLOW', listenerPath: '/run/agent.sock' }, /listenerPath/],
    [
      'bad op',
      {
        defaultAction: 'SCMP_ACT_ALLOW',
        syscalls: [{ names: ['x'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1, op: 'LIKE' }] }],
      },
      /unknown operator/,
    ],
    [
      'bad index',
      {
        defaultAction: 'SCMP_ACT_ALLOW',
        syscalls: [
          { names: ['x'], action: 'SCMP_ACT_ALLOW', args: [{ index: 9, value: 1, op: 'SCMP_CMP_EQ' }] },
        ],
      },
      /out of range/,
    ],
    [
      'no names',
      { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ action: 'SCMP_ACT_ALLOW' }] },
      /names no syscall/,
    ],
  ];
  for (const [name, doc, message] of badProfiles) {
    it(`rejects a Localhost profile that is ${name}`, async () => {
      const file = join(dir, 'bad.json');
      writeFileSync(file, typeof doc === 'string' ? doc : JSON.stringify(doc));
      await rejects(
        containerConfig({}, { seccomp: { profile_type: 'Localhost', localhost_ref: file } }),
        'InvalidArgument',
        message,
      );
    });
  }

  for (const ref of ['relative.json', '/a/../etc/shadow', '']) {
    it(`rejects the Localhost path ${JSON.stringify(ref)}`, async () => {
      await rejects(
        containerConfig({}, { seccomp: { profile_type: 'Localhost', localhost_ref: ref } }),
        'InvalidArgument',
        /absolute, normalised/,
      );
    });
  }

  it('rejects a missing Localhost file and a directory', async () => {
    await rejects(
      containerConfig({}, { seccomp: { profile_type: 'Localhost', localhost_ref: join(dir, 'none.json') } }),
      'InvalidArgument',
      /cannot read/,
    );
    await rejects(
      containerConfig({}, { seccomp: { profile_type: 'Localhost', localhost_ref: dir } }),
      'InvalidArgument',
      /cannot read/,
    );
  });
});

describe('resources', () => {
  const withResources = (r: Parameters<typeof resources>[0]) => {
    const c = containerConfig();
    c.linux!.resources = resources(r);
    return c;
  };

  it('maps cpu, memory and unified into the container cgroup under the pod', async () => {
    const r = await build(
      withResources({
        cpu_shares: '512',
        cpu_quota: '50000',
        cpu_period: '100000',
        memory_limit_in_bytes: '15728640',
        memory_swap_limit_in_bytes: '15728640',
        unified: { 'memory.high': '10000000', 'pids.max': '100' },
      }),
    );
    expect(r.spec.linux.cgroupsPath).toBe(`/pods/pod1/${'c'.repeat(64)}`);
    expect(r.spec.linux.resources).toMatchObject({
      cpu: { shares: 512, quota: 50000, period: 100000 },
      memory: { limit: 15728640, swap: 15728640 },
      unified: { 'memory.high': '10000000', 'pids.max': '100' },
    });
    expect(r.warnings).toEqual([]);
  });

  it('drops limits of controllers that are not delegated, with a warning each (hybrid node: hugetlb only)', async () => {
    const r = await build(
      withResources({
        cpu_shares: '512',
        memory_limit_in_bytes: '1000000',
        unified: { 'memory.high': '1', 'hugetlb.2MB.max': '0' },
        hugepage_limits: [{ page_size: '2MB', limit: '4194304' }],
      }),
      undefined,
      { hostFacts: hostFacts({ controllers: ['hugetlb'] }) },
    );
    expect(r.spec.linux.resources?.cpu).toBeUndefined();
    expect(r.spec.linux.resources?.memory).toBeUndefined();
    expect(r.spec.linux.resources?.unified).toEqual({ 'hugetlb.2MB.max': '0' });
    expect(r.warnings).toEqual([
      expect.stringMatching(/^cpu shares\/quota\/period dropped: the cpu cgroup controller is not delegated/),
      expect.stringMatching(/^memory limit dropped/),
      expect.stringMatching(/^hugepage limits dropped/),
      expect.stringMatching(/^unified memory.high dropped/),
    ]);
  });

  it('without a pod cgroup there is no cgroupsPath and every limit is dropped', async () => {
    const r = await build(withResources({ cpu_shares: '2' }), undefined, {
      sandbox: sandboxInfo({ cgroupParent: null }),
    });
    expect(r.spec.linux.cgroupsPath).toBeUndefined();
    expect(r.warnings[0]).toMatch(/has no cgroup/);
  });

  it('rejects unified keys that are not cgroup file names', async () => {
    for (const key of ['../../escape', 'memory/../x', 'nodot']) {
      await rejects(
        withResources({ unified: { [key]: '1' } }),
        'InvalidArgument',
        /not a cgroup v2 file name/,
      );
    }
  });

  it('raises an oom_score_adj below the daemon to the daemon value', async () => {
    const r = await build(withResources({ oom_score_adj: '-997' }), undefined, {
      hostFacts: hostFacts({ oomScoreAdjMin: -500 }),
    });
    expect(r.spec.process.oomScoreAdj).toBe(-500);
    expect(r.warnings[0]).toMatch(/raised to -500/);
    expect((await spec(withResources({ oom_score_adj: '1000' }))).process.oomScoreAdj).toBe(1000);
  });
});

describe('devices', () => {
  it('rejects a host path that is not a device, or missing, or bad permissions', async () => {
    const device = (host: string, perms = 'rw') =>
      containerConfig({ devices: [{ container_path: '/dev/x', host_path: host, permissions: perms }] });
    await rejects(device(dir), 'InvalidArgument', /not a device node/);
    await rejects(device(join(dir, 'none')), 'InvalidArgument', /does not exist/);
    await rejects(device('/dev/null', 'rwx'), 'InvalidArgument', /permissions/);
  });

  it('adds /dev/null as a device with an allow rule', async () => {
    const s = await spec(
      containerConfig({
        devices: [{ container_path: '/dev/mynull', host_path: '/dev/null', permissions: 'rw' }],
      }),
    );
    expect(s.linux.devices).toEqual([
      expect.objectContaining({ path: '/dev/mynull', type: 'c', major: 1, minor: 3 }),
    ]);
    expect(s.linux.resources?.devices).toEqual([
      { allow: false, access: 'rwm' },
      { allow: true, type: 'c', major: 1, minor: 3, access: 'rw' },
    ]);
  });
});

describe('the rest of the spec', () => {
  it('tty, no_new_privs, annotations, stop signal', async () => {
    const r = await build(containerConfig({ tty: true }, { no_new_privs: true }), {
      Cmd: ['sh'],
      StopSignal: 'SIGQUIT',
    });
    expect(r.spec.process.terminal).toBe(true);
    expect(r.spec.process.noNewPrivileges).toBe(true);
    expect(r.spec.annotations).toEqual({
      'io.kubernetes.cri.container-type': 'container',
      'io.kubernetes.cri.sandbox-id': 'a'.repeat(64),
      'io.kubernetes.cri.sandbox-name': 'pod',
      'io.kubernetes.cri.sandbox-namespace': 'default',
      'io.kubernetes.cri.sandbox-uid': 'uid-1',
      'io.kubernetes.cri.container-name': 'app',
      'io.kubernetes.cri.image-name': 'docker.io/library/busybox:latest',
    });
    expect(r.stopSignal).toBe('SIGQUIT');
    expect(
      (await build(containerConfig({ stop_signal: 'SIGNAL_SIGINT' }), { Cmd: ['sh'], StopSignal: '3' }))
        .stopSignal,
    ).toBe('SIGINT');
    expect((await build(containerConfig(), { Cmd: ['sh'], StopSignal: '3' })).stopSignal).toBe('SIGQUIT');
    expect((await build(containerConfig())).stopSignal).toBe('SIGTERM');
  });

  it('request annotations never reach the OCI spec (crun reads run.oci.* annotations)', async () => {
    const s = await spec(
      containerConfig({ annotations: { 'run.oci.handler': 'krun', 'io.kubernetes.cri.sandbox-id': 'x' } }),
    );
    expect(s.annotations['run.oci.handler']).toBeUndefined();
    expect(s.annotations['io.kubernetes.cri.sandbox-id']).toBe('a'.repeat(64));
  });

  it('confines image VOLUME paths to the rootfs (catalog 19)', async () => {
    const r = await build(containerConfig(), {
      Cmd: ['sh'],
      Volumes: { '/../../../etc': {}, '/data': {}, 'rel/../../x': {} },
    });
    expect(r.imageVolumes).toEqual(['/etc', '/data', '/x']);
  });

  it('AppArmor and SELinux requests are accepted and reported as not enforced', async () => {
    const r = await build(
      containerConfig(
        {},
        {
          apparmor: { profile_type: 'Localhost', localhost_ref: 'my-profile' },
          selinux_options: { user: 'system_u', role: 'system_r', type: 'container_t', level: 's0:c1,c2' },
        },
      ),
    );
    expect(r.warnings).toEqual([
      expect.stringMatching(/AppArmor profile my-profile not enforced/),
      expect.stringMatching(/SELinux options not enforced/),
    ]);
  });

  it('requires metadata.name', async () => {
    await rejects(containerConfig({ metadata: null }), 'InvalidArgument', /metadata.name/);
  });
});

describe('containerLogPath (catalog 26)', () => {
  it('joins a relative path', () => {
    expect(containerLogPath('/var/log/pods/p', 'app/0.log')).toBe('/var/log/pods/p/app/0.log');
    expect(containerLogPath('/var/log/pods/p', 'a/../b.log')).toBe('/var/log/pods/p/b.log');
    expect(containerLogPath('', 'x.log')).toBe('');
  });

  for (const bad of ['../../../.bashrc', '/etc/passwd', 'a/../../x', '.']) {
    it(`rejects ${bad}`, () => {
      expect(() => containerLogPath('/var/log/pods/p', bad)).toThrow(/log_path/);
    });
  }
});
