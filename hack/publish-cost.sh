#!/usr/bin/env bash
# Instructions a publisher spends per delivered message, counted by callgrind: load-independent
# evidence beside the wall-clock benchmark (BENCHMARKS.md, "Publisher instructions per message").
#
#   hack/publish-cost.sh [SIZE] [K] [N1] [N2]      defaults: 16 1 20000 120000
#
# Runs K native `fanout proxy`s (XSUB on 127.0.0.1 TCP, XPUB on a unix socket), each with a
# native `fanout subscribe --prefix bench`, and then, under `valgrind --tool=callgrind`, each
# publisher twice (N1 and N2 messages of SIZE payload bytes, topic `bench`):
#   fanout   `fanout publish` (the library's `Publisher`, what `fanout publish` does)
#   bare     a plain libzmq PUB sending topic+payload as one frame (the `bare` child of
#            benches/fanout.rs)
# and prints (Ir(N2) - Ir(N1)) / ((N2 - N1) * K): the whole publisher process (caller, socket
# thread, libzmq's I/O thread) per delivery, with start-up and settling cancelled out.
#
# FANOUT_COST_SIDE=subscriber measures our subscriber instead: `fanout subscribe --topic bench
# --count N` under callgrind on proxy 1, fed at 20 000 msg/s by a native `fanout publish`, and
# prints (Ir(N2) - Ir(N1)) / (N2 - N1) per message received (its I/O thread included; at that
# rate it also polls between messages).
# Needs valgrind; builds the release binaries first (`cargo bench --no-run --bench fanout`), or
# takes them from FANOUT_BIN and FANOUT_BENCH_BIN (to measure an older build).
set -euo pipefail
cd "$(dirname "$0")/.."

size=${1:-16}
k=${2:-1}
n1=${3:-20000}
n2=${4:-120000}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

bench=${FANOUT_BENCH_BIN:-}
fanout=${FANOUT_BIN:-target/release/fanout}
[ -n "$bench" ] || bench=$(cargo bench --locked --no-run --bench fanout --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "fanout" and "bench" in m["target"]["kind"]:
        print(m["executable"])')
[ -x "$fanout" ] && [ -x "$bench" ] || { echo "release binaries missing ($fanout, $bench)" >&2; exit 1; }

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

endpoints=()
for i in $(seq 1 "$k"); do
  port=$(free_port)
  "$fanout" proxy --log-level warn --publishers "tcp://127.0.0.1:$port" \
    --subscribers "ipc://$dir/p$i.sock" --hwm 0 --max-message-bytes 16777216 2>>"$dir/receivers.log" &
  pids+=($!)
  endpoints+=("tcp://127.0.0.1:$port")
done
sleep 1
for i in $(seq 1 "$k"); do
  "$fanout" subscribe --log-level warn --connect "ipc://$dir/p$i.sock" --prefix bench --hwm 0 --quiet >/dev/null 2>>"$dir/receivers.log" &
  pids+=($!)
done
sleep 1
targets=$(IFS=,; echo "${endpoints[*]}")

# Total instructions of one callgrind run of "$@".
instructions() {
  local out="$dir/callgrind.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>"$dir/valgrind.log" || {
    cat "$dir/valgrind.log" >&2
    exit 1
  }
  sed -n 's/^totals: //p;s/^summary: //p' "$out" | head -1
}

fanout_run() {
  instructions "$fanout" publish --log-level warn --endpoints "$targets" --topic bench \
    --count "$1" --size "$size" --hwm 0 --settle 1 --linger 60
}
bare_run() {
  FANOUT_BENCH_ROLE=bare FANOUT_BENCH_TARGET="$targets" FANOUT_BENCH_COUNT="$1" \
    FANOUT_BENCH_SIZE="$size" instructions "$bench"
}

subscriber_run() {
  "$fanout" publish --log-level warn --endpoints "${endpoints[0]}" --topic bench --count "$(($1 + 100000))" \
    --size "$size" --hwm 0 --settle 3 --rate 20000 >/dev/null 2>>"$dir/receivers.log" &
  local publisher=$!
  pids+=("$publisher")
  instructions "$fanout" subscribe --log-level warn --connect "ipc://$dir/p1.sock" --topic bench \
    --count "$1" --hwm 0 --quiet
  kill "$publisher" 2>/dev/null || true
  wait "$publisher" 2>/dev/null || true
}

if [ "${FANOUT_COST_SIDE:-publisher}" = subscriber ]; then
  a=$(subscriber_run "$n1")
  b=$(subscriber_run "$n2")
  echo "subscriber instructions per message: payload $size B, (Ir($n2) - Ir($n1)) / $((n2 - n1))"
  python3 -c "print(f'{\"fanout\":<8} {($b - $a) / ($n2 - $n1):10.0f} Ir/message   (Ir({$n1}) = $a, Ir({$n2}) = $b)')"
  exit 0
fi

echo "publisher instructions per delivery: payload $size B, K = $k, (Ir($n2) - Ir($n1)) / ($((n2 - n1)) x $k)"
for who in fanout bare; do
  a=$("${who}_run" "$n1")
  b=$("${who}_run" "$n2")
  python3 -c "print(f'{\"$who\":<8} {($b - $a) / (($n2 - $n1) * $k):10.0f} Ir/delivery   (Ir({$n1}) = $a, Ir({$n2}) = $b)')"
done
