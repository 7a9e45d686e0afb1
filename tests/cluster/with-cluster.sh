#!/usr/bin/env bash
# Runs one command against a fresh local cluster and always tears the cluster down afterwards:
#
#   tests/cluster/with-cluster.sh CMD...
#
# Builds the tools if they are not cached yet (hack/tools.sh ensure), brings the cluster up
# (hack/cluster.sh up), runs CMD inside the cluster's network namespace with KUBECONFIG, PATH
# (kubectl, helm, ...) and FANOUT_* set, then runs hack/cluster.sh down whatever happened.
# Exits with CMD's status; if the tools or the cluster cannot be had, exits non-zero (for CI:
# a cluster that cannot start is a failure, never a skip). Prints how long each phase took.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HACK="$ROOT/hack"
[ $# -ge 1 ] || { echo "usage: $0 CMD..." >&2; exit 2; }

phase() { printf '[with-cluster] %s: %s s\n' "$1" "$2" >&2; }

t=$SECONDS
if ! "$HACK/tools.sh" ensure; then
  echo "[with-cluster] FAILED: could not build the control-plane tools" >&2
  exit 1
fi
phase "tools (build or cache)" $((SECONDS - t))

# shellcheck disable=SC2317 # called by the EXIT trap
teardown() {
  local t=$SECONDS
  "$HACK/cluster.sh" down || echo "[with-cluster] warning: cluster.sh down failed" >&2
  phase "down" $((SECONDS - t))
}
trap teardown EXIT
trap 'exit 130' INT TERM

t=$SECONDS
if ! "$HACK/cluster.sh" up; then
  echo "[with-cluster] FAILED: the cluster did not come up (logs: ${FANOUT_CLUSTER_DIR:-/tmp/fanout-cluster}/logs)" >&2
  exit 1
fi
phase "up" $((SECONDS - t))

t=$SECONDS
"$HACK/cluster.sh" exec "$@"
rc=$?
phase "command (exit $rc)" $((SECONDS - t))
exit $rc
