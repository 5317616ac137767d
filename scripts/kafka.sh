#!/usr/bin/env bash
# Start or stop a single-node Apache Kafka 4.x broker (KRaft, broker+controller)
# on 127.0.0.1 from jars resolved with Maven. No Docker needed.
#
#   scripts/kafka.sh up      resolve jars (cached), format storage, start, wait for metadata
#   scripts/kafka.sh down    stop the broker started by `up` on this port
#   scripts/kafka.sh status
#
# Environment:
#   KAFKA_PORT             client port (default 9092); the controller uses KAFKA_PORT+1
#   KAFKA_DATA_DIR         storage and logs (default .run/kafka-$KAFKA_PORT in the repo)
#   SLUICEGATE_CACHE       jar cache (default ~/.cache/sluicegate)
# Logs: $KAFKA_DATA_DIR/logs/server.log (broker), $KAFKA_DATA_DIR/logs/stdout.log (JVM).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
port=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
data=${KAFKA_DATA_DIR:-$here/.run/kafka-$port}
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")
cache=${SLUICEGATE_CACHE:-$HOME/.cache/sluicegate}/kafka-$version
pidfile=$data/broker.pid
py=${PYTHON:-$here/.venv/bin/python}

die() { echo "kafka.sh: $*" >&2; exit 1; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

metadata_ok() {
  # A real metadata request (not just an open port): the broker must answer with itself.
  "$py" - "$port" <<'PY' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": f"127.0.0.1:{sys.argv[1]}"}).list_topics(timeout=2)
sys.exit(0 if md.brokers else 1)
PY
}

resolve_jars() {
  if [ -f "$cache/libs/.complete" ]; then return; fi
  command -v mvn >/dev/null || die "Maven (mvn) is required to fetch the Kafka jars: apt-get install maven"
  echo "kafka.sh: resolving Kafka $version jars with Maven into $cache/libs"
  mkdir -p "$cache/libs"
  mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$cache/libs" -DincludeScope=runtime \
    || die "Maven could not resolve the Kafka jars (see output above)"
  touch "$cache/libs/.complete"
}

write_config() {
  mkdir -p "$data/logs"
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data/kraft-logs
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=336
PROPS
}

up() {
  command -v java >/dev/null || die "Java 17+ is required to run Kafka: apt-get install openjdk-17-jre-headless"
  [ -x "$py" ] || die "no Python at $py: run 'make install' first"
  if running && metadata_ok; then echo "kafka.sh: broker already up on 127.0.0.1:$port"; return; fi
  resolve_jars
  write_config
  local cp="$cache/libs/*"
  local jvm=(java -Xmx1G -Xms256M -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
             -Dkafka.logs.dir="$data/logs" -Dlog4j2.configurationFile="$here/kafka/log4j2.properties"
             -cp "$cp")
  if [ ! -f "$data/kraft-logs/meta.properties" ]; then
    local id
    id=$("$py" -c 'import base64,uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"): print(s); break')
    "${jvm[@]}" kafka.tools.StorageTool format -c "$data/server.properties" -t "$id" -g \
      > "$data/logs/format.log" 2>&1 || { cat "$data/logs/format.log" >&2; die "storage format failed"; }
  fi
  nohup "${jvm[@]}" kafka.Kafka "$data/server.properties" > "$data/logs/stdout.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if metadata_ok; then echo "kafka.sh: broker up on 127.0.0.1:$port (logs: $data/logs/server.log)"; return; fi
    running || { tail -30 "$data/logs/stdout.log" >&2; die "broker exited during start-up"; }
    sleep 0.5
  done
  die "broker did not answer a metadata request within 60 s (logs: $data/logs)"
}

down() {
  if ! running; then echo "kafka.sh: no broker running on port $port"; rm -f "$pidfile"; return; fi
  local pid; pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "kafka.sh: broker stopped"; return; }; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true; rm -f "$pidfile"; echo "kafka.sh: broker killed after 30 s"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running && metadata_ok; then echo "up on 127.0.0.1:$port"; else echo "down"; exit 1; fi ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
