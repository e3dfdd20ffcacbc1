#!/usr/bin/env bash
# Installs what the test suite needs (only what is missing), then runs all of it:
# formatting, clippy, unit + integration tests against real servers, and the seed's smoke
# sequence against `dialer up`. Used by CI (.ci/run) and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/dialer/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# --- system packages -------------------------------------------------------------------------
need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server redis-tools)
command -v jq >/dev/null || need+=(jq)
command -v promtool >/dev/null || need+=(prometheus)
command -v curl >/dev/null || need+=(curl)
command -v cc >/dev/null || need+=(build-essential)
command -v cmake >/dev/null || need+=(cmake)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v sipp >/dev/null || need+=(sip-tester)
command -v faketime >/dev/null || need+=(faketime)
[ -x /usr/sbin/kamailio ] || need+=(kamailio)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
command -v baresip >/dev/null || need+=(baresip)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "test.sh: cargo is missing; install Rust from https://rustup.rs" >&2; exit 1; }

# playwright-core (the console's browser test drives chromium with it), once, into a cache
# outside the clone.
node_cache="$HOME/.cache/dialer/node"
if [ ! -d "$node_cache/node_modules/playwright-core" ]; then
  echo "test.sh: installing playwright-core into $node_cache"
  mkdir -p "$node_cache"
  npm install --prefix "$node_cache" --silent --no-audit --no-fund playwright-core@1
fi

# The build cache outside the clone stays bounded (stale test binaries and incremental sessions
# of earlier builds removed), and the run needs room: the servers the tests start write to /tmp.
python3 scripts/prune_cache.py "$CARGO_TARGET_DIR"
for d in "$(dirname "$CARGO_TARGET_DIR")" "${TMPDIR:-/tmp}"; do
  mkdir -p "$d"
  free_gib=$(df -Pk "$d" | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "$free_gib" -lt 8 ]; then
    echo "test.sh: only ${free_gib} GiB free under $d; the build and the test servers need 8 GiB: free disk space (e.g. rm -rf $CARGO_TARGET_DIR/debug/incremental)" >&2
    exit 1
  fi
done

# Apache Kafka and Apache Cassandra, the servers the tests start: their jars fetched from Maven
# Central once into a cache outside the clone (~/.cache/dialer/servers).
./scripts/servers.sh

# --- static checks ---------------------------------------------------------------------------
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# --- tests -------------------------------------------------------------------------------------
echo "== cargo test"
# The README's walkthrough test runs scripts/stack.sh with the harness's stack binary.
cargo build --quiet -p dialer-testkit --bins
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/dialer-test.$$.log
status=${PIPESTATUS[0]}
set -e
passed=$(grep -oE 'test result: [a-z]+\. [0-9]+ passed' /tmp/dialer-test.$$.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' /tmp/dialer-test.$$.log | awk '{s+=$6} END {print s+0}')
rm -f /tmp/dialer-test.$$.log
[ "$status" = 0 ] || { echo "$passed passed, $failed failed"; exit "$status"; }

# --- the seed's smoke sequence against the real binary -----------------------------------------
# `dialer up` with an API key, span export to a stand-in OTLP collector, and short mock calls
# so the 1,000-target campaign of the smoke finishes in seconds. Afterwards: spans arrived, and
# the log holds neither a full phone number nor the key.
echo "== smoke: dialer up + scripts/smoke.sh"
cargo build --quiet -p dialer
data=$(mktemp -d)
printf '[provider]\nmin_call_ms = 50\nmax_call_ms = 250\nmax_ring_ms = 20\n[scheduler]\ninterval_ms = 200\n[calling_rules]\nenabled = false\n' >"$data/smoke.toml"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); otlp=$(free_port)
key="smoke-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
python3 scripts/otlp_sink.py "$otlp" "$data/otlp.log" &
sink=$!
DIALER_API_KEYS="$key" OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp" \
  "$CARGO_TARGET_DIR/debug/dialer" --config "$data/smoke.toml" up --data-dir "$data" --listen "127.0.0.1:$port" >"$data/up.log" 2>&1 &
pid=$!
trap 'kill $pid $sink 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
smoke_ok=1
API_KEY="$key" scripts/smoke.sh "http://127.0.0.1:$port" || smoke_ok=0
kill -TERM $pid; wait $pid || { echo "smoke: dialer up did not stop cleanly"; smoke_ok=0; }
if ! grep -q '^POST /v1/traces [1-9]' "$data/otlp.log" 2>/dev/null; then
  echo "smoke: FAILED: no spans reached the OTLP endpoint"; smoke_ok=0
fi
if grep -nE '\+[0-9]{8,15}' "$data/up.log"; then echo "smoke: FAILED: a full phone number is in the log"; smoke_ok=0; fi
if grep -n "$key" "$data/up.log"; then echo "smoke: FAILED: the API key is in the log"; smoke_ok=0; fi
if [ $smoke_ok = 1 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); cat "$data/up.log"; fi

# --- a 60 s fault run under a binding global cap (24 < 5+12+19), two control planes and two data
# planes: SIGKILLed data planes and control planes, processes frozen past their leases (SIGSTOP),
# Redis, broker and PostgreSQL restarts, the timeline's Cassandra node SIGKILLed and started again
# (its commit log synced before each acknowledgement), a webhook receiver that fails 5 % of requests and goes down
# (503) for 8 s every 25 s, audited from its own log (every event arrived, none out of order), and
# one control plane's wall clock stepped 3 s ahead and behind (libfaketime), the data planes' journal
# disk full (a 16 MiB tmpfs of its own, filled for 10 s every 15 s; root), the attempt timeline on
# Apache Cassandra read back at the end (every dialled attempt has its row and outcome), the calls
# placed through the SIP provider on two sipp trunks whose far ends are SIGKILLed with calls up
# and answer 503 for a while, audited from the far ends' own logs (no attempt answered twice, no
# trunk over its channels or calls per second) ------------------------------------------------------
echo "== chaos: bench chaos (60 s)"
cargo build --quiet -p dialer -p dialer-bench
if "$CARGO_TARGET_DIR/debug/bench" chaos --fault-seconds 60 --campaigns 3 --targets 300 --global-cap 24 \
  --faults kill,cp-kill,freeze,redis,broker,postgres,cassandra,webhook,clock,disk,sip-kill,sip-503 --webhooks --cassandra \
  --sip --disk-full-every-s 15 --disk-full-s 10 --settle-timeout-s 300 \
  --json "${TMPDIR:-/tmp}/dialer-chaos.json"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi
# The same faults with the data planes as members of one consumer group (cooperative-sticky):
# a SIGKILLed member's partitions move to the others.
echo "== chaos: bench chaos (short, consumer group)"
if "$CARGO_TARGET_DIR/debug/bench" chaos --fault-seconds 30 --campaigns 3 --targets 200 --global-cap 24 \
  --assignment group --assignor cooperative_sticky --faults kill,redis,broker,postgres --settle-timeout-s 300 \
  --json "${TMPDIR:-/tmp}/dialer-chaos-group.json"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi

# --- schemathesis fuzzing of every endpoint from the OpenAPI document ---------------------------
echo "== fuzz: scripts/fuzz.sh"
if scripts/fuzz.sh 30; then passed=$((passed + 1)); else failed=$((failed + 1)); fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
