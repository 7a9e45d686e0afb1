#!/usr/bin/env bash
# The scale benchmark (issue 12 §1): one FanoutGroup over N kwok nodes, on a fresh cluster of its
# own, with the real controller (release build, authenticated as the chart's ServiceAccount) and a
# follower (`fanout endpoints --group`). Prints `name: value unit` lines and a table (see
# examples/scale_probe.rs for what each figure is and how it is taken; BENCHMARKS.md for results).
#
#   hack/scale.sh N [PROBE FLAGS...]     e.g. hack/scale.sh 5000, hack/scale.sh 1000 --changes 20 --check
#
# The cluster is its own (FANOUT_NETNS, default fanout-scale; FANOUT_CLUSTER_DIR, default
# /tmp/fanout-scale) and is torn down afterwards (tests/cluster/with-cluster.sh). The controller's
# and the follower's logs are left in ${FANOUT_CLUSTER_DIR}-logs.
# FANOUT_SCALE_FANOUT=PATH runs another fanout binary as the controller and follower (e.g. an
# older build to compare against; the probe is always this tree's). FANOUT_SCALE_DEBUG_PROBE=1
# runs the probe's debug build (what `cargo build --all-targets` already made; hack/test.sh
# uses it) instead of building it in release: building an example in release unifies the
# dev-dependencies' features and so rebuilds tokio, kube and fanout once more (~5 min here).
# The controller is always the release `fanout` (`cargo build --release --bin fanout`, as the
# image has it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[scale %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Inside the cluster's namespace (called back by with-cluster.sh): install the chart, get the
# controller its ServiceAccount's kubeconfig, run the probe.
if [ "${1:-}" = "--inside" ]; then
  shift
  n=$1; shift
  logs="${FANOUT_CLUSTER_DIR}-logs"
  mkdir -p "$logs"
  helm install fanout "$ROOT/charts/fanout" --namespace fanout-system --create-namespace >/dev/null
  kubectl wait --for=condition=Established crd/fanoutgroups.fanout.dev --timeout=60s >/dev/null
  account=$(kubectl get deployment -n fanout-system -l app.kubernetes.io/component=controller \
    -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')
  sa_kubeconfig=$("$ROOT/hack/cluster.sh" sa-kubeconfig fanout-system "$account")
  exec "$FANOUT_SCALE_PROBE" --nodes "$n" \
    --fanout "${FANOUT_SCALE_FANOUT:-$ROOT/target/release/fanout}" \
    --controller-kubeconfig "$sa_kubeconfig" --log-dir "$logs" "$@"
fi

[ $# -ge 1 ] || die "usage: $0 N [PROBE FLAGS...]"
n=$1; shift
[[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number of nodes, not '$n'"
[ "$n" -le 15000 ] || die "N is at most 15000 (the probe's node address range)"
export FANOUT_NETNS=${FANOUT_NETNS:-fanout-scale}
export FANOUT_CLUSTER_DIR=${FANOUT_CLUSTER_DIR:-/tmp/fanout-scale}

t0=$SECONDS
log "cargo build --release --locked --bin fanout"
(cd "$ROOT" && cargo build --release --locked --bin fanout)
if [ -n "${FANOUT_SCALE_DEBUG_PROBE:-}" ]; then
  (cd "$ROOT" && cargo build --locked --example scale_probe)
  export FANOUT_SCALE_PROBE="$ROOT/target/debug/examples/scale_probe"
else
  (cd "$ROOT" && cargo build --release --locked --example scale_probe)
  export FANOUT_SCALE_PROBE="$ROOT/target/release/examples/scale_probe"
fi
log "built in $((SECONDS - t0)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$SECONDS
rc=0
"$ROOT/tests/cluster/with-cluster.sh" "$0" --inside "$n" "$@" || rc=$?
log "N=$n done in $((SECONDS - t0)) s (exit $rc)"
exit $rc
