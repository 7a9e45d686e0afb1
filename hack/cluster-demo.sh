#!/usr/bin/env bash
# The whole user story on a local cluster, for a person to watch, cleaned up afterwards.
#
#   hack/cluster-demo.sh               on five kwok nodes: `helm install` of the chart, the controller
#                                      running as the chart's ServiceAccount, `kubectl apply` of
#                                      examples/fanoutgroup.yaml, a real `fanout proxy` started for
#                                      every proxy pod, a publisher following the group through the
#                                      API and a subscriber on every node, a node added and one
#                                      removed, the group deleted; prints the EndpointSlices, the
#                                      ConfigMap, `kubectl get fg`, the join and leave times and the
#                                      messages each node received
#   hack/cluster-demo.sh --real-nodes  on two real nodes (kubelet, containerd, runc, CNI, kube-proxy)
#                                      beside two kwok nodes, with the image hack/image.sh builds:
#                                      the controller as the chart's Deployment, proxies through their
#                                      init container, agent and publisher pods from examples/, a
#                                      proxy pod deleted (loss and recovery on that node printed),
#                                      helm upgrade, a changed group rolling the proxies, uninstall
#
# Each is the end-to-end test of that path, run on its own in a namespace of its own, so what you
# watch is exactly what CI checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "${1:-}" in
  "") test=e2e filter=user_path ;;
  --real-nodes) test=e2e_real_nodes filter=user_path_on_real_nodes ;;
  *) echo "usage: $0 [--real-nodes]" >&2; exit 2 ;;
esac
hack/tools.sh ensure
cargo build --locked --tests --bins
[ "$test" = e2e ] || hack/image.sh
export FANOUT_NETNS="${FANOUT_NETNS:-fanout-demo}"
export FANOUT_CLUSTER_DIR="${FANOUT_CLUSTER_DIR:-/tmp/fanout-cluster-demo}"
exec tests/cluster/with-cluster.sh cargo test --locked --offline --test "$test" "$filter" -- --ignored --nocapture
