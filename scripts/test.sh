#!/usr/bin/env bash
# `make test`: unit and integration tests against a real Kafka broker.
# Uses KAFKA_BOOTSTRAP_SERVERS when set; otherwise starts a fresh broker on a test port
# (KAFKA_TEST_PORT, default 19092) and stops it afterwards. Fails, never skips, when no
# broker can be had.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
started=""
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  export KAFKA_PORT=${KAFKA_TEST_PORT:-19092}
  export KAFKA_DATA_DIR="$here/.run/test-kafka-$KAFKA_PORT"
  scripts/kafka.sh down >/dev/null 2>&1 || true
  rm -rf "$KAFKA_DATA_DIR"
  scripts/kafka.sh up
  started=1
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
fi
cleanup() { if [ -n "$started" ]; then scripts/kafka.sh down || true; fi; }
trap cleanup EXIT
.venv/bin/python -m pytest "${@:-tests}" -q
