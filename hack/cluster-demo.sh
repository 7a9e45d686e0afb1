#!/usr/bin/env bash
# The whole user story on a local cluster, for a person to watch, cleaned up afterwards:
# a control plane in a network namespace (hack/cluster.sh), `helm install` of the chart, the
# controller running as the chart's ServiceAccount, `kubectl apply` of examples/fanoutgroup.yaml
# on five fake nodes, a real `fanout proxy` started for every proxy pod, a publisher following
# the group through the API and a subscriber on every node, a node added and one removed, the
# group deleted. It prints the EndpointSlices, the ConfigMap, `kubectl get fg`, the measured
# join and leave times and the messages each node received.
#
# It is the end-to-end test of the user's path, run on its own in a namespace of its own, so
# what you watch is exactly what CI checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hack/tools.sh ensure
cargo build --locked --tests --bins
export FANOUT_NETNS="${FANOUT_NETNS:-fanout-demo}"
export FANOUT_CLUSTER_DIR="${FANOUT_CLUSTER_DIR:-/tmp/fanout-cluster-demo}"
exec tests/cluster/with-cluster.sh cargo test --locked --offline --test e2e user_path -- --ignored --nocapture
