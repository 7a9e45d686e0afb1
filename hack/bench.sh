#!/usr/bin/env bash
# Runs the project's benchmarks with the peers they compare against installed.
#
#   hack/bench.sh [BENCH...]     default: fanout proxy_throughput relay_tree
#
# relay_tree's output is also plotted into docs/img/relay_tree.png (hack/plot_relay_tree.py),
# fanout's into docs/img/fanout_peers.png (hack/plot_fanout.py), with Debian's
# python3-matplotlib, installed here.
#
# The fanout benchmark starts Debian's `nats-server` on 127.0.0.1 itself (skipped when it is
# missing), so this script installs it and the other build needs first. Knobs are the
# benchmarks' own environment variables (see the doc comment of each file in benches/).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
dpkg -s libzmq3-dev >/dev/null 2>&1 || missing+=(libzmq3-dev)
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(g++)
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || missing+=(python3-matplotlib)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
export PATH="$PATH:/usr/sbin"

benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(fanout proxy_throughput relay_tree)
for bench in "${benches[@]}"; do
  echo "== cargo bench --bench $bench" >&2
  if [ "$bench" = relay_tree ] || [ "$bench" = fanout ]; then
    out=$(mktemp)
    cargo bench --locked --bench "$bench" | tee "$out"
    if [ "$bench" = relay_tree ]; then
      /usr/bin/python3 hack/plot_relay_tree.py "$out" docs/img/relay_tree.png
    else
      /usr/bin/python3 hack/plot_fanout.py "$out" docs/img/fanout_peers.png
    fi
    rm -f "$out"
  else
    cargo bench --locked --bench "$bench"
  fi
done
