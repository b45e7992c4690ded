#!/usr/bin/env node
/**
 * rootless-cri command line:
 *   serve [--in-node]        run the daemon (joining or starting the rootless node)
 *   doctor [--json]          check the host and say what is missing
 *   enter -- CMD...          run CMD as uid 0 inside the node namespaces (like `podman unshare`)
 *   stop [--all]             stop the daemon; --all also tears the node down
 *   config                   print the resolved configuration (JSON)
 *   overlay --server ...     inside the node: the VXLAN overlay of a multi-node cluster
 *   version                  print the version
 * Global flags: --config FILE, --root-dir DIR, --run-dir DIR, --socket PATH, --log-level LEVEL
 */
import { realpathSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type Config, type ConfigOverrides, loadConfig } from './config.js';
import { runDaemon } from './daemon.js';
import { CriError, describeError } from './errors.js';
import { createLogger, type Logger } from './log.js';
import { ENTER_CGROUP_NAME, ensureCgroup } from './os/cgroup-delegation.js';
import { start } from './os/process-runner.js';
import { formatDoctorReport, runDoctor } from './rootless/doctor.js';
import { RealHostProbe } from './rootless/host-probe.js';
import { findNode, inUserNamespace, nsenterArgs, stopNode, withSbin } from './rootless/node.js';
import { overlayCommand } from './rootless/overlay-command.js';
import { childOf, stopDaemon, superviseDaemon } from './rootless/supervisor.js';
import { packageVersion } from './version.js';

const USAGE = `usage: rootless-cri [global flags] COMMAND

commands:
  serve             run the CRI daemon inside the rootless node (starting the node if needed)
  doctor [--json]   check this host for everything rootless-cri needs; exit 0 only when all is there
  enter -- CMD...   run CMD as uid 0 inside the node namespaces (like \`podman unshare\`)
  stop [--all]      stop the daemon; --all also stops the node and every pod in it
  config            print the configuration in effect (file, flags and defaults) as JSON
  overlay ...       inside the node: the VXLAN overlay of a multi-node cluster (overlay --help)
  version           print the version

global flags:
  --config FILE       TOML config (default $XDG_CONFIG_HOME/rootless-cri/config.toml if present)
  --root-dir DIR      persistent state (default $XDG_DATA_HOME/rootless-cri)
  --run-dir DIR       runtime state (default $XDG_RUNTIME_DIR/rootless-cri)
  --socket PATH       gRPC socket (default <run-dir>/rootless-cri.sock)
  --log-level LEVEL   trace, debug, info, warn, error
`;

/** The Node.js LTS line deploy/install-node.sh pins. */
const MIN_NODE_MAJOR = 24;

const GLOBAL_OPTIONS = {
  config: { type: 'string' },
  'root-dir': { type: 'string' },
  'run-dir': { type: 'string' },
  socket: { type: 'string' },
  'log-level': { type: 'string' },
  'in-node': { type: 'boolean' },
  json: { type: 'boolean' },
  all: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

async function main(argv: string[]): Promise<number> {
  // The overlay agent has flags of its own: everything after its name is its.
  const overlayAt = argv.indexOf('overlay');
  if (overlayAt >= 0 && !argv.slice(0, overlayAt).includes('--')) {
    const { values } = parseArgs({ args: argv.slice(0, overlayAt), options: GLOBAL_OPTIONS });
    return overlayCommand(argv.slice(overlayAt + 1), createLogger({ level: values['log-level'] ?? 'info' }));
  }
  const dashDash = argv.indexOf('--');
  const own = dashDash >= 0 ? argv.slice(0, dashDash) : argv;
  const rest = dashDash >= 0 ? argv.slice(dashDash + 1) : [];
  const { values, positionals } = parseArgs({ args: own, options: GLOBAL_OPTIONS, allowPositionals: true });
  const command = positionals[0];
  if (values.help || !command) {
    process.stdout.write(USAGE);
    return command || values.help ? 0 : 2;
  }
  if (command === 'version') {
    process.stdout.write(`rootless-cri ${packageVersion()}\nCRI API: v1\n`);
    return 0;
  }
  // <app>/bin/rootless-cri runs the Node.js the app was installed with; started any other way on
  // an older one, the daemon would lack what it relies on (zstd layers need node:zlib's zstd).
  if (Number(process.versions.node.split('.')[0]) < MIN_NODE_MAJOR) {
    process.stderr.write(
      `rootless-cri needs Node.js >= ${MIN_NODE_MAJOR}, this is ${process.version}: run <app>/bin/rootless-cri ` +
        '(deploy/install.sh), which uses the Node.js the app was installed with\n',
    );
    return 1;
  }
  const overrides: ConfigOverrides = {};
  if (values['root-dir']) overrides.root_dir = values['root-dir'];
  if (values['run-dir']) overrides.run_dir = values['run-dir'];
  if (values.socket) overrides.socket = values.socket;
  if (values['log-level']) overrides.log_level = values['log-level'] as ConfigOverrides['log_level'];
  const config = loadConfig({ file: values.config, overrides });
  const logger = createLogger({ level: config.logLevel });
  switch (command) {
    case 'serve':
      return serve(config, logger, own, Boolean(values['in-node']));
    case 'doctor': {
      const report = await runDoctor(config, new RealHostProbe());
      process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatDoctorReport(report));
      return report.ok ? 0 : 1;
    }
    case 'enter':
      return enter(config, rest);
    case 'config':
      // What scripts need to agree with the daemon (deploy/cluster/cluster.sh reads the node's).
      process.stdout.write(`${JSON.stringify(config, null, 2)}\n`);
      return 0;
    case 'stop':
      return stop(config, logger, Boolean(values.all));
    default:
      process.stderr.write(`rootless-cri: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

/**
 * V8 flags of the daemon. A young generation of at most 4 MiB per semi-space (V8's default is
 * 16): with 16 every scavenge touched the whole space and it stayed resident, 15 MiB of an idle
 * daemon's RSS. 1 MiB (the previous value) saved those but was too small for one stats call at
 * 110 pods: what a call keeps alive across its awaits was promoted, so kubelet's polling grew
 * the old generation. many-pods bench, 110 pods, ListPodSandboxStats + ListContainerStats 50
 * times each, per semi-space size (MiB): daemon CPU per pod-stats call 1: 40-47 ms, 2: 33,
 * 4: 28-29, 8: 27, 16: 31; RSS after the calls 1: 199-221 MiB, 2: 184, 4: 149-155, 8: 149,
 * 16: 154; RSS idle before any pod 1: 93-94, 2: 95, 4: 99-100, 8: 102, 16: 102. 4 is the knee.
 * An operator's own NODE_OPTIONS come first and these win over them.
 */
const DAEMON_V8_FLAGS = ['--max-semi-space-size=4'];

async function serve(config: Config, logger: Logger, ownArgs: string[], inNode: boolean): Promise<number> {
  const alreadyInNode = inNode || Boolean(process.env.ROOTLESSKIT_STATE_DIR) || (await inUserNamespace());
  if (alreadyInNode) return runDaemon(config, logger);
  const cli = realpathSync(fileURLToPath(import.meta.url));
  const passArgs = ownArgs.filter((a) => a !== 'serve');
  return superviseDaemon(
    {
      runDir: config.runDir,
      socket: config.socket,
      node: nodeOptions(config),
      daemonCommand: [process.execPath, ...DAEMON_V8_FLAGS, cli, 'serve', '--in-node', ...passArgs],
      nsenter: config.node.nsenter,
    },
    logger,
  );
}

function nodeOptions(config: Config) {
  return {
    stateDir: config.node.stateDir,
    rootlesskit: config.node.rootlesskit,
    catatonit: config.node.catatonit,
    slirp4netns: config.node.slirp4netns,
    mtu: config.node.slirp4netnsMtu,
    portDriver: config.node.portDriver,
    copyUp: config.node.copyUp,
    disableHostLoopback: config.node.disableHostLoopback,
    cgroupSubtree: config.cgroup.subtree,
    logFile: `${config.runDir}/node.log`,
  };
}

async function enter(config: Config, command: string[]): Promise<number> {
  if (command.length === 0) {
    process.stderr.write('rootless-cri enter: give the command after --, e.g. `rootless-cri enter -- sh`\n');
    return 2;
  }
  const node = await findNode(config.node.stateDir, config.cgroup.subtree);
  if (!node) {
    process.stderr.write(
      `rootless-cri enter: no rootless node is running (state dir ${config.node.stateDir}); start one with \`rootless-cri serve\`\n`,
    );
    return 1;
  }
  // What runs in the node belongs in the node's cgroup tree, not in the caller's cgroup (which
  // is outside the node's cgroup namespace: kubelet would see itself in "/../launch"). The
  // shell moves itself into the leaf before it becomes nsenter, so every child starts there.
  let leaf = '';
  if (node.cgroupDir) {
    leaf = path.join(node.cgroupDir, ENTER_CGROUP_NAME);
    await ensureCgroup(leaf).catch(() => undefined);
  }
  const script =
    'if [ -n "$1" ] && ! { echo $$ > "$1/cgroup.procs"; } 2>/dev/null; then ' +
    'echo "rootless-cri enter: could not join the node cgroup $1; running in the caller\'s cgroup" >&2; fi; ' +
    'shift; exec "$@"';
  const child = start(
    '/bin/sh',
    [
      '-c',
      script,
      'sh',
      leaf,
      config.node.nsenter,
      ...nsenterArgs(node.childPid, { workdir: process.cwd() }),
      ...command,
    ],
    {
      stdio: ['inherit', 'inherit', 'inherit'],
      env: { ...process.env, PATH: withSbin(process.env.PATH) },
      ownGroup: false,
    },
  );
  // nsenter does not forward signals to the command it forked into the node's pid namespace
  // (it dies and leaves the command running): signal the command itself.
  const forward = (s: NodeJS.Signals) => {
    const nsenterPid = child.pid;
    if (nsenterPid === undefined) return;
    void childOf(nsenterPid).then((commandPid) => {
      try {
        process.kill(commandPid ?? nsenterPid, s);
      } catch {
        // already gone
      }
    });
  };
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, forward);
  try {
    await child.spawned;
  } catch (err) {
    process.stderr.write(`rootless-cri enter: ${describeError(err)}\n`);
    return 127;
  }
  const { exitCode, signal } = await child.exited;
  // As a shell reports it: 128 + the number of the signal that ended the command.
  return signal ? 128 + (osConstants.signals[signal] ?? 0) : (exitCode ?? 1);
}

async function stop(config: Config, logger: Logger, all: boolean): Promise<number> {
  const stopped = await stopDaemon(config.runDir);
  process.stdout.write(stopped ? 'rootless-cri daemon stopped\n' : 'rootless-cri daemon was not running\n');
  if (all) {
    const node = await findNode(config.node.stateDir, config.cgroup.subtree);
    if (node) {
      await stopNode(node, logger);
      process.stdout.write('rootless node stopped\n');
    } else {
      process.stdout.write('no rootless node was running\n');
    }
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const kind = err instanceof CriError ? `${err.kind}: ` : '';
    process.stderr.write(`rootless-cri: ${kind}${describeError(err)}\n`);
    process.exitCode = 1;
  },
);
