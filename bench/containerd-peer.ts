/**
 * containerd 1.6 rootless as a bench peer, from Debian 12's packages (bench/peer-setup.sh
 * installs containerd and runc): rootlesskit (slirp4netns, host loopback disabled) starts
 * containerd as the unprivileged bench user with the CRI plugin's `disable_cgroup`, runc through
 * containerd-shim-runc-v2, the overlayfs snapshotter (kernel overlay in the user namespace), the
 * same CNI plugins as rootless-cri (bridge + host-local + portmap, from /usr/lib/cni) and its
 * CRI on a unix socket the bench talks to.
 *
 * Images come from the bench's local registry on the host's 127.0.0.1. containerd's network
 * namespace has its own loopback, so a socat pair joins the two without leaving loopback: on the
 * host, a unix socket (in this peer's temp dir) forwarding to the registry; inside the namespace,
 * a listener on 127.0.0.1:<the registry's port> forwarding to that unix socket. Image references
 * are therefore the same for both runtimes, and containerd's hosts.toml sends the registry's
 * host name to plain http on 127.0.0.1.
 *
 * Everything lives in one temp dir owned by the user; stop() removes the pods, ends rootlesskit
 * (and so containerd, slirp4netns and the inner socat), kills whatever of its user namespace is
 * left, and removes the dir.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CriClient } from '../test/harness/cri-client.js';
import { APP_DIR, type UserInfo } from '../test/harness/daemon.js';

const RUN_AS_USER = path.join(APP_DIR, 'deploy/run-as-user.sh');

export interface ContainerdPeerOptions {
  user: UserInfo;
  /** The local registry's `127.0.0.1:<port>`. */
  registryHost: string;
  /** The sandbox ("pause") image, in that registry. */
  sandboxImage: string;
}

function configToml(dir: string, sandboxImage: string): string {
  return `version = 2
root = "${dir}/root"
state = "${dir}/state"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "${dir}/containerd.sock"

[ttrpc]
  address = "${dir}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "${dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  disable_cgroup = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_selinux = false
  sandbox_image = "${sandboxImage}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${dir}/cni"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "${dir}/certs.d"
`;
}

/** rootless-cri's default network (deploy/cni), on its own subnet and IPAM dir. */
function cniConflist(dir: string): string {
  return `${JSON.stringify(
    {
      cniVersion: '1.0.0',
      name: 'containerd-peer',
      plugins: [
        {
          type: 'bridge',
          bridge: 'cni0',
          isGateway: true,
          ipMasq: true,
          hairpinMode: true,
          ipam: {
            type: 'host-local',
            ranges: [[{ subnet: '10.89.0.0/16' }]],
            routes: [{ dst: '0.0.0.0/0' }],
            dataDir: `${dir}/ipam`,
          },
        },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    },
    null,
    2,
  )}\n`;
}

function hostsToml(registryHost: string): string {
  return `server = "http://${registryHost}"\n\n[host."http://${registryHost}"]\n  capabilities = ["pull", "resolve"]\n`;
}

/**
 * What rootlesskit runs in the new namespaces: the inner registry listener, then containerd.
 * --copy-up leaves the host's entries of /run, /var/lib and /etc as symlinks to the host's
 * (root-owned) dirs; the ones containerd, runc, CNI and iptables write to are dropped, so they
 * are created afresh on the namespace's own tmpfs.
 */
function childScript(dir: string, port: number): string {
  return `set -e
for p in /run/netns /run/containerd /run/runc /run/xtables.lock /var/lib/cni /var/lib/containerd /etc/containerd /etc/cni; do
  if [ -L "$p" ]; then rm -f "$p"; fi
done
socat TCP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:${dir}/registry.sock &
exec containerd --config ${dir}/config.toml
`;
}

export class ContainerdPeer {
  client: CriClient;
  private rootlesskit: ChildProcess | null = null;
  private rootlesskitExit: Promise<void> = Promise.resolve();
  private hostSocat: ChildProcess | null = null;
  private hostSocatExit: Promise<void> = Promise.resolve();
  private userNamespace: string | null = null;

  private constructor(
    readonly dir: string,
    readonly user: UserInfo,
  ) {
    this.client = new CriClient(path.join(dir, 'containerd.sock'));
  }

  get socket(): string {
    return path.join(this.dir, 'containerd.sock');
  }

  static async start(options: ContainerdPeerOptions): Promise<ContainerdPeer> {
    const { user } = options;
    const dir = await mkdtemp('/tmp/rcri-peer-containerd-');
    const peer = new ContainerdPeer(dir, user);
    try {
      await peer.prepare(options);
      await peer.launch(Number(options.registryHost.split(':')[1]));
    } catch (err) {
      const log = await peer.logTail();
      await peer.stop();
      throw new Error(`containerd peer did not start: ${String(err)}\n${log}`);
    }
    return peer;
  }

  private async prepare(options: ContainerdPeerOptions): Promise<void> {
    const { dir, user } = this;
    const hostsDir = path.join(dir, 'certs.d', options.registryHost);
    for (const d of ['cni', 'ipam', 'rootlesskit', 'opt', hostsDir]) {
      await mkdir(path.isAbsolute(d) ? d : path.join(dir, d), { recursive: true });
    }
    await writeFile(path.join(dir, 'config.toml'), configToml(dir, options.sandboxImage));
    await writeFile(path.join(dir, 'cni', '10-containerd-peer.conflist'), cniConflist(dir));
    await writeFile(path.join(hostsDir, 'hosts.toml'), hostsToml(options.registryHost));
    await writeFile(path.join(dir, 'child.sh'), childScript(dir, Number(options.registryHost.split(':')[1])));
    const own = async (p: string): Promise<void> => {
      await chown(p, user.uid, user.gid);
      for (const e of await readdir(p, { withFileTypes: true })) {
        const child = path.join(p, e.name);
        if (e.isDirectory()) await own(child);
        else await chown(child, user.uid, user.gid);
      }
    };
    await own(dir);
  }

  private spawnAsUser(command: string[], logName: string): ChildProcess {
    const logFd = openSync(path.join(this.dir, logName), 'a');
    try {
      return spawn('bash', [RUN_AS_USER, this.user.name, '--', ...command], {
        stdio: ['ignore', logFd, logFd],
        detached: true,
      });
    } finally {
      closeSync(logFd);
    }
  }

  private async launch(port: number): Promise<void> {
    const { dir } = this;
    const registrySocket = path.join(dir, 'registry.sock');
    const socat = this.spawnAsUser(
      ['socat', `UNIX-LISTEN:${registrySocket},fork,mode=600`, `TCP:127.0.0.1:${port}`],
      'socat.log',
    );
    this.hostSocat = socat;
    this.hostSocatExit = new Promise((resolve) => socat.once('exit', () => resolve()));
    const rk = this.spawnAsUser(
      [
        'rootlesskit',
        `--state-dir=${dir}/rootlesskit/state`,
        '--net=slirp4netns',
        '--mtu=65520',
        '--slirp4netns-sandbox=auto',
        '--slirp4netns-seccomp=auto',
        '--disable-host-loopback',
        '--port-driver=none',
        '--copy-up=/etc',
        '--copy-up=/run',
        '--copy-up=/var/lib',
        '--propagation=rslave',
        'sh',
        path.join(dir, 'child.sh'),
      ],
      'containerd.log',
    );
    this.rootlesskit = rk;
    this.rootlesskitExit = new Promise((resolve) => rk.once('exit', () => resolve()));
    const deadline = Date.now() + 60_000;
    let lastError: unknown;
    while (Date.now() < deadline) {
      if (rk.exitCode !== null || rk.signalCode !== null) {
        throw new Error(`rootlesskit exited early (code ${rk.exitCode}, signal ${rk.signalCode})`);
      }
      try {
        this.client.close();
        this.client = new CriClient(this.socket);
        await this.client.runtime('Version', {}, { timeoutMs: 1000 });
        this.userNamespace = await readlink(`/proc/${await this.childPid()}/ns/user`);
        return;
      } catch (err) {
        lastError = err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    throw new Error(`containerd did not answer within 60s (${String(lastError)})`);
  }

  async logTail(lines = 40): Promise<string> {
    const text = await readFile(path.join(this.dir, 'containerd.log'), 'utf8').catch(() => '');
    return text.split('\n').slice(-lines).join('\n');
  }

  /** Host pid of rootlesskit's parent process (run-as-user.sh execs into it). */
  rootlesskitPid(): number {
    return this.rootlesskit?.pid ?? -1;
  }

  /** Host pid of rootlesskit's child (the first process in the new namespaces). */
  async childPid(): Promise<number> {
    return Number((await readFile(path.join(this.dir, 'rootlesskit/state/child_pid'), 'utf8')).trim());
  }

  /** Host pids of the bench's own registry plumbing (the socat pair), not part of the peer. */
  plumbingPids(): number[] {
    return this.hostSocat?.pid ? [this.hostSocat.pid] : [];
  }

  /** Every pod gone, then rootlesskit and all in its user namespace, then the dir. */
  async stop(): Promise<void> {
    try {
      if (this.userNamespace !== null) {
        const { items } = await this.client.runtime('ListPodSandbox', {});
        for (const pod of items ?? []) {
          await this.client.runtime('StopPodSandbox', { pod_sandbox_id: pod.id });
          await this.client.runtime('RemovePodSandbox', { pod_sandbox_id: pod.id });
        }
      }
    } finally {
      this.client.close();
      const rk = this.rootlesskit;
      if (rk && rk.exitCode === null && rk.signalCode === null) {
        rk.kill('SIGTERM');
        await Promise.race([this.rootlesskitExit, new Promise((r) => setTimeout(r, 10_000))]);
        if (rk.exitCode === null && rk.signalCode === null) rk.kill('SIGKILL');
        await this.rootlesskitExit;
      }
      if (this.userNamespace !== null) await this.killNamespace(this.userNamespace);
      const socat = this.hostSocat;
      if (socat && socat.exitCode === null && socat.signalCode === null) {
        // Its group: the children it forked per connection go too.
        process.kill(-socat.pid!, 'SIGTERM');
        await this.hostSocatExit;
      }
      await rm(this.dir, { recursive: true, force: true });
    }
  }

  /** SIGKILL to what is left of the user's processes in this peer's user namespace (shims). */
  private async killNamespace(userNamespace: string): Promise<void> {
    for (let attempt = 0; attempt < 50; attempt++) {
      const left: number[] = [];
      for (const entry of await readdir('/proc')) {
        if (!/^\d+$/.test(entry)) continue;
        const ns = await readlink(`/proc/${entry}/ns/user`).catch(() => null);
        if (ns === userNamespace) left.push(Number(entry));
      }
      if (left.length === 0) return;
      for (const pid of left) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('processes of the containerd peer outlived SIGKILL');
  }
}
