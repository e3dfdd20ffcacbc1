#!/usr/bin/env bash
# A standalone Apache Kafka broker (KRaft, one node, the harness's settings) from the libraries
# scripts/servers.sh cached, for benches that take --brokers: a broker that keeps running
# between runs is warm (its JIT done), as production brokers are. A broker started by a bench
# itself spends a core or so compiling during the first run (`perf`: "C2 CompilerThread").
#   bench/kafka.sh PORT            runs in the foreground until interrupted
set -euo pipefail
port=${1:?usage: bench/kafka.sh PORT}
cport=$((port + 1))
libs=${DIALER_KAFKA_LIBS:-$HOME/.cache/dialer/servers/kafka/libs}
[ -d "$libs" ] || { echo "kafka.sh: $libs missing: run scripts/servers.sh" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.partitions=1
auto.create.topics.enable=true
num.network.threads=2
num.io.threads=2
PROPS
printf 'status = warn\nrootLogger.level = warn\n' >"$dir/log4j2.properties"
id=$(python3 -c 'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
java -cp "$libs/*" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" >/dev/null
echo "kafka.sh: broker on 127.0.0.1:$port (Ctrl-C stops it)"
java -Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$libs/*" kafka.Kafka "$dir/server.properties"
