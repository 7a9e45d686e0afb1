#!/usr/bin/env bash
# Runs the project's benchmarks with the peers they compare against installed.
#
#   hack/bench.sh [BENCH...]     default: fanout proxy_throughput
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
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
export PATH="$PATH:/usr/sbin"

benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(fanout proxy_throughput)
for bench in "${benches[@]}"; do
  echo "== cargo bench --bench $bench" >&2
  cargo bench --locked --bench "$bench"
done
