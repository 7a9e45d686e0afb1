#!/usr/bin/env bash
# The one command that passes every test: formatting and lints, unit and integration tests
# (real libzmq sockets), the chart tests (real helm), and the end-to-end tests of the user's
# path against a real control plane (etcd, kube-apiserver, controller-manager, scheduler,
# kwok) that hack/cluster.sh starts inside a network namespace. Installs what a fresh machine
# lacks; the Kubernetes binaries are built once and cached outside the repository.
#
#   hack/test.sh            everything
#   FANOUT_SKIP_LINT=1      skip fmt/clippy (local iteration only; CI runs them)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

t0=$(date +%s)
phase_t0=$t0
phase() {
  local now; now=$(date +%s)
  printf '\n=== [%4ds total, previous phase %4ds] %s\n' "$((now - t0))" "$((now - phase_t0))" "$*"
  phase_t0=$now
}

phase "system packages"
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v ip >/dev/null || missing+=(iproute2)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
# Debian's libzmq5 with CURVE (libsodium), linked through the override in .cargo/config.toml.
dpkg -s libzmq3-dev >/dev/null 2>&1 || missing+=(libzmq3-dev)
# pyzmq for Debian's python3: the CURVE interop test (tests/proxy_curve.rs) must not skip here.
dpkg -s python3-zmq >/dev/null 2>&1 || missing+=(python3-zmq)
export FANOUT_REQUIRE_PYZMQ=1
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }

phase "control-plane tools (built from Go modules once, then cached)"
hack/tools.sh ensure

if [ -z "${FANOUT_SKIP_LINT:-}" ]; then
  phase "cargo fmt --check"
  cargo fmt --check
  phase "cargo clippy"
  cargo clippy --all-targets --locked -- -D warnings
fi

phase "library features (no Kubernetes API version forced on users; publisher/subscriber alone)"
# A crate depending on fanout as a library picks its own k8s-openapi version: no feature of ours,
# the default included, may enable one (the binary gets it from .cargo/config.toml's [env]).
if cargo tree --locked -e normal,build,features -i k8s-openapi | grep 'feature "v1_'; then
  echo "a fanout feature enables a k8s-openapi version feature (see above)"; exit 1
fi
cargo check --locked --lib --no-default-features
cargo check --locked --lib --no-default-features --features kubernetes

phase "build"
cargo build --locked --all-targets

phase "unit, integration and chart tests"
cargo test --locked

phase "the container images (hack/image.sh: release build, OCI archives, chroot check)"
hack/image.sh
# Reproducible: the same binary built into images again gives the same digests.
first=$(hack/image.sh --print-env)
hack/image.sh >/dev/null
second=$(hack/image.sh --print-env)
if [ "$first" != "$second" ]; then
  echo "hack/image.sh is not reproducible:"; diff <(echo "$first") <(echo "$second") || true; exit 1
fi
echo "reproducible: a second build gave the same digests"

phase "end-to-end tests on kwok nodes against a fresh cluster (up, tests, down)"
tests/cluster/with-cluster.sh cargo test --locked --offline --test e2e --test chart -- --ignored --test-threads=1 --nocapture

phase "scale: one group over 1 000 kwok nodes on a cluster of its own (hack/scale.sh; generous bounds only, the figures are BENCHMARKS.md's)"
# The controller is the release build hack/image.sh made; the probe is the debug build above.
FANOUT_SCALE_DEBUG_PROBE=1 FANOUT_NETNS=fanout-test-scale FANOUT_CLUSTER_DIR=/tmp/fanout-test-scale \
  hack/scale.sh 1000 --changes 20 --check

phase "end-to-end tests on real nodes (kubelet, containerd, runc, CNI) against a fresh cluster"
tests/cluster/with-cluster.sh cargo test --locked --offline --test e2e_real_nodes -- --ignored --test-threads=1 --nocapture

phase "done"
