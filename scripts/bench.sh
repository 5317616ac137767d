#!/usr/bin/env bash
# `make bench` / `make bench-quick`: the benchmark (tests/bench/run.py) against a real broker.
#
#   scripts/bench.sh full|quick [--only saturation,burst]
#
# Uses KAFKA_BOOTSTRAP_SERVERS when set; otherwise starts a fresh broker of its own on
# KAFKA_BENCH_PORT (default 29092, data under .run/bench-kafka-<port>) and stops it
# afterwards. The Python runner starts and stops the simulator and the workers. Writes
# docs/benchmarks.md, docs/benchmarks/<date>[-quick].json and PNG charts.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
mode=${1:-full}
shift || true
case "$mode" in full|quick) ;; *) echo "usage: $0 full|quick [--only a,b]" >&2; exit 2 ;; esac

started=""
cleanup() {
  if [ -n "$started" ]; then
    scripts/kafka.sh down >/dev/null 2>&1 || true
    rm -rf "$KAFKA_DATA_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  export KAFKA_PORT=${KAFKA_BENCH_PORT:-29092}
  export KAFKA_DATA_DIR="$here/.run/bench-kafka-$KAFKA_PORT"
  scripts/kafka.sh down >/dev/null 2>&1 || true
  rm -rf "$KAFKA_DATA_DIR"
  started=1
  scripts/kafka.sh up
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
  export BENCH_BROKER_STARTED=1
fi

command="make bench"
[ "$mode" = quick ] && command="make bench-quick"
[ $# -gt 0 ] && command="scripts/bench.sh $mode $*"
.venv/bin/python -m tests.bench.run --mode "$mode" --command "$command" "$@"
