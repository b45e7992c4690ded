#!/usr/bin/env bash
# Everything CI runs (`make test`, called by .ci/run). As root on a fresh Debian 12 machine:
# prepare the host, install crictl/critest, build the Kubernetes components, build, lint, then
# run every test suite as the unprivileged test user's daemon. Ends with one line
# "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
TEST_USER=${ROOTLESS_CRI_TEST_USER:-rcri-test}
# A second user, for the test of two users' nodes side by side (two-users.test.ts).
TEST_USER2=${ROOTLESS_CRI_TEST_USER2:-rcri-test2}
# Go builds crictl/critest and the tests' Go client; on these machines it lives here.
case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) export PATH="$PATH:/usr/local/go/bin" ;; esac
# The test user's own app dir (deploy/install.sh's default for --user): a make test of another
# checkout with other users, or make demo, installs elsewhere and links nothing host-wide.
APP=/opt/rootless-cri/users/$TEST_USER
REPORT_DIR=${ROOTLESS_CRI_REPORT_DIR:-$repo/.work/reports}
mkdir -p "$REPORT_DIR"
rm -f "$REPORT_DIR"/critest-*
export ROOTLESS_CRI_REPORT_DIR=$REPORT_DIR

step() { printf '\n=== %s\n' "$*"; }
die() { echo "run-all: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "make test must run as root: it prepares the host and creates the test user"

step "install: host setup, test user $TEST_USER, crictl/critest, build, app copy in $APP"
bash deploy/install.sh --user "$TEST_USER" --app-dir "$APP" || die "deploy/install.sh failed"
bash deploy/setup-host.sh --user "$TEST_USER2" --no-packages || die "cannot set up the second test user $TEST_USER2"
# The test users' nodes keep nothing between runs: give each one range of subordinate ids (a user
# set up with the old 65,536 would otherwise have two), so critest's pod user namespace (node ids
# 1000..100999) is one line of the node's map, as critest expects it in the pod's uid_map.
for u in "$TEST_USER" "$TEST_USER2"; do
  bash deploy/setup-host.sh --user "$u" --no-packages --renumber-subids || die "cannot renumber the subordinate ids of $u"
done
export ROOTLESS_CRI_APP=$APP ROOTLESS_CRI_TEST_USER=$TEST_USER ROOTLESS_CRI_TEST_USER2=$TEST_USER2
ROOTLESS_CRI_CRITEST=$(bash deploy/install.sh --print-critest)
export ROOTLESS_CRI_CRITEST
# Everything below (npx, biome, tsc, vitest and the daemons the tests start) runs on the pinned
# Node.js that install.sh installed, whatever node is on PATH.
NODE_BIN=$(bash deploy/install-node.sh --check) || die "the pinned Node.js is not installed"
export PATH="$NODE_BIN:$PATH"
step "Node.js $(node --version) ($(command -v node)), npm $(npm --version)"
# The second user is also the "another local user" of the connection-flood test.
export ROOTLESS_CRI_ATTACKER_USER=$TEST_USER2
ROOTLESS_CRI_TEST_BUSYBOX=$(bash test/setup/fetch-test-busybox.sh) || die "cannot fetch Debian's busybox for the test images"
export ROOTLESS_CRI_TEST_BUSYBOX

# Built from the Go module proxy once (about 15 minutes on 2 cores), a no-op once installed.
step "Kubernetes components for test/kubernetes (deploy/kubernetes/build.sh)"
ROOTLESS_CRI_K8S_BIN=$(bash deploy/kubernetes/build.sh) || die "deploy/kubernetes/build.sh failed"
export ROOTLESS_CRI_K8S_BIN
rm -f "$REPORT_DIR/kubernetes-checks.txt"

lint_failed=0
step "lint (biome) and type check"
npx biome check . || lint_failed=1
npx tsc -p tsconfig.check.json || lint_failed=1

step "vitest: unit, integration and conformance suites"
npx vitest run --reporter=default --reporter=json --outputFile.json="$REPORT_DIR/vitest.json"
vitest_rc=$?

[ -f "$REPORT_DIR/critest-summary.txt" ] && cat "$REPORT_DIR/critest-summary.txt"
[ -f "$REPORT_DIR/kubernetes-checks.txt" ] && cat "$REPORT_DIR/kubernetes-checks.txt"
node - "$REPORT_DIR/vitest.json" "$lint_failed" "$vitest_rc" <<'JS'
const [file, lintFailed, rc] = process.argv.slice(2);
let passed = 0, failed = 0, skipped = 0;
try {
  const r = JSON.parse(require('fs').readFileSync(file, 'utf8'));
  passed = r.numPassedTests; failed = r.numFailedTests;
  skipped = (r.numPendingTests || 0) + (r.numTodoTests || 0);
  // A suite that failed to load counts as a failure even when no test in it ran.
  failed += (r.testResults || []).filter((t) => t.status === 'failed' && (t.assertionResults || []).length === 0).length;
} catch (e) {
  console.error(`run-all: no vitest report (${e.message})`);
  failed += 1;
}
if (lintFailed === '1') { console.error('run-all: lint or type check failed'); failed += 1; } else passed += 1;
if (rc !== '0' && failed === 0) failed = 1;
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exitCode = failed > 0 ? 1 : 0;
JS
