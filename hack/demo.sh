#!/usr/bin/env bash
# `fanout demo` on a fresh Debian machine: installs the one system library the build links
# (Debian's libzmq5 with CURVE, through libzmq3-dev; see .cargo/config.toml) and the C/C++
# toolchain, then runs the demo. Arguments go to `fanout demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
dpkg -s libzmq3-dev >/dev/null 2>&1 || missing+=(libzmq3-dev)
command -v c++ >/dev/null || missing+=(g++)
command -v pkg-config >/dev/null || missing+=(pkg-config)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
exec cargo run --release --locked -- demo "$@"
