#!/usr/bin/env bash
# The servers the distributed product needs, on this machine, from what the project already
# fetches (Debian's Redis and PostgreSQL, the Apache Kafka and Cassandra jars of
# scripts/servers.sh), on free ports, through the harness the tests use:
#
#   scripts/stack.sh up [--cassandra]   start Redis, a durable PostgreSQL (fsync and synchronous
#                                       commit on), Apache Kafka (and Cassandra); print the
#                                       environment to export
#   scripts/stack.sh env                print that environment again: eval "$(scripts/stack.sh env)"
#   scripts/stack.sh down               stop them; their data goes with them
#
# DIALER_STACK_DIR (default ~/.cache/dialer/stack) holds its pid, environment and log;
# DIALER_STACK_BIN names a built `stack` binary (default: built here with cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${DIALER_STACK_DIR:-$HOME/.cache/dialer/stack}"
mkdir -p "$STATE"

running() { [[ -f "$STATE/pid" ]] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; }

up() {
  if running; then
    echo "stack.sh: already up (pid $(cat "$STATE/pid")); its environment:" >&2
    cat "$STATE/env"
    return
  fi
  bin="${DIALER_STACK_BIN:-}"
  if [[ -z "$bin" ]]; then
    ./scripts/servers.sh >&2
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dialer/target}"
    cargo build -q -p dialer-testkit --bin stack >&2
    bin="$CARGO_TARGET_DIR/debug/stack"
  fi
  rm -f "$STATE/env"
  nohup "$bin" --env "$STATE/env" "$@" </dev/null >"$STATE/stack.log" 2>&1 &
  echo $! >"$STATE/pid"
  # Kafka takes seconds, Cassandra a minute or two.
  for _ in $(seq 1 600); do
    [[ -f "$STATE/env" ]] && { cat "$STATE/env"; return; }
    running || { echo "stack.sh: the servers did not start:" >&2; tail -20 "$STATE/stack.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "stack.sh: not up after 300 s; see $STATE/stack.log" >&2
  down
  exit 1
}

down() {
  if ! running; then
    echo "stack.sh: not running" >&2
    rm -f "$STATE/pid" "$STATE/env"
    return
  fi
  pid="$(cat "$STATE/pid")"
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  # Each server's watchdog sees the holder gone within half a second, asks the server to stop
  # and kills it after 5 s.
  sleep 6
  rm -f "$STATE/pid" "$STATE/env"
  echo "stack.sh: stopped" >&2
}

case "${1:-}" in
  up) shift; up "$@" ;;
  env) running && cat "$STATE/env" || { echo "stack.sh: not running; start it with scripts/stack.sh up" >&2; exit 1; } ;;
  down) down ;;
  *) echo "usage: scripts/stack.sh up [--cassandra] | env | down" >&2; exit 2 ;;
esac
