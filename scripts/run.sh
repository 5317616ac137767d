#!/usr/bin/env bash
# `make run`: Kafka (unless one is already up), then `sluicegate dev` in the foreground.
# Ctrl-C stops everything this started, the broker included.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
mkdir -p .run
started=""
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  scripts/kafka.sh up || exit 1
  started=1
fi
cleanup() { if [ -n "$started" ]; then scripts/kafka.sh down; fi; }
trap cleanup EXIT
trap 'true' INT
.venv/bin/sluicegate dev "$@"
