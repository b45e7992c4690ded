/**
 * Pod sandbox lifecycle: RunPodSandbox + StopPodSandbox + RemovePodSandbox through a real
 * daemon (as the unprivileged test user, in its own rootless node), 50 pods sequentially and
 * 50 with 2 in parallel, against a floor measured in the same node in the same run: a shell
 * loop that pins a netns and runs the same CNI plugins (bridge + host-local, then portmap)
 * ADD and DEL directly. Needs root (it starts the daemon as the test user, like make test).
 */
import { TestDaemon } from '../test/harness/daemon.js';
import { percentile } from './stats.js';

const PODS = Number(process.env.BENCH_PODS ?? 50);

function podConfig(i: number, round: string) {
  return {
    config: {
      metadata: { name: `bench-${round}-${i}`, namespace: 'bench', uid: `uid-${round}-${i}`, attempt: 0 },
      log_directory: '',
      linux: {},
    },
  };
}

async function lifecycle(daemon: TestDaemon, i: number, round: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  const { pod_sandbox_id } = await daemon.client.runtime('RunPodSandbox', podConfig(i, round));
  await daemon.client.runtime('StopPodSandbox', { pod_sandbox_id });
  await daemon.client.runtime('RemovePodSandbox', { pod_sandbox_id });
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

async function runPods(daemon: TestDaemon, parallel: number, round: string): Promise<number[]> {
  const samples: number[] = [];
  let next = 0;
  const worker = async () => {
    while (next < PODS) samples.push(await lifecycle(daemon, next++, round));
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return samples;
}

/** The floor: the same netns + CNI work as a shell loop inside the node, timed per pod. */
function floorScript(confDir: string, ipamDir: string, pods: number): string {
  return `
set -e
conf=$(cat ${confDir}/*.conflist)
# Each plugin's own config, made once (the daemon also prepares it once per network).
for t in bridge portmap; do
  printf '%s' "$conf" | jq -c --arg t "$t" --arg d "${ipamDir}-floor" \
    '(.plugins[] | select(.type == $t)) + {name: .name, cniVersion: .cniVersion} | if .ipam then .ipam.dataDir = $d else . end' \
    > /tmp/rcri-floor-$t.json
done
plugin() { # type command id netns
  CNI_COMMAND=$2 CNI_CONTAINERID=$3 CNI_NETNS=$4 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni PATH=$PATH:/usr/sbin \
    /usr/lib/cni/$1 < /tmp/rcri-floor-$1.json >/dev/null
}
dir=$(mktemp -d)
for i in $(seq ${pods}); do
  t0=$(date +%s%N)
  id=floor$i; ns=$dir/$id
  touch $ns && unshare --net=$ns true
  plugin bridge ADD $id $ns; plugin portmap ADD $id $ns || true
  plugin portmap DEL $id $ns || true; plugin bridge DEL $id $ns
  umount $ns && rm $ns
  echo $(( ($(date +%s%N) - t0) / 1000 ))
done
rmdir $dir; rm -f /tmp/rcri-floor-bridge.json /tmp/rcri-floor-portmap.json
`;
}

export async function benchPods(): Promise<void> {
  const daemon = await TestDaemon.start();
  try {
    const info = JSON.parse((await daemon.crictl(['info', '-o', 'json'])).stdout) as {
      config: { network: { cniConfDir: string; ipamDataDir: string } };
    };
    const floorRun = await daemon.enter([
      'sh',
      '-c',
      floorScript(info.config.network.cniConfDir, info.config.network.ipamDataDir, PODS),
    ]);
    if (floorRun.exitCode !== 0) throw new Error(`floor script failed: ${floorRun.stderr}`);
    const floor = floorRun.stdout
      .trim()
      .split('\n')
      .map((us) => Number(us) / 1000);
    const seq = await runPods(daemon, 1, 'seq');
    const par = await runPods(daemon, 2, 'par');
    const fmt = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      return { p50: percentile(s, 50), p99: percentile(s, 99) };
    };
    const f = fmt(floor);
    const a = fmt(seq);
    const b = fmt(par);
    console.log(`pods: RunPodSandbox+Stop+Remove, ${PODS} pods (ms)`);
    console.log(`  floor (netns + CNI ADD/DEL in a shell)  p50 ${f.p50.toFixed(1)}  p99 ${f.p99.toFixed(1)}`);
    console.log(
      `  rootless-cri sequential                  p50 ${a.p50.toFixed(1)}  p99 ${a.p99.toFixed(1)}  ratio p50 ${(a.p50 / f.p50).toFixed(2)}x (aim <= 1.5x)`,
    );
    console.log(
      `  rootless-cri 2 in parallel               p50 ${b.p50.toFixed(1)}  p99 ${b.p99.toFixed(1)}  ratio p50 ${(b.p50 / f.p50).toFixed(2)}x`,
    );
  } finally {
    await daemon.stop();
  }
}
