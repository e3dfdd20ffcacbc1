#!/usr/bin/env bash
# Fuzzes every endpoint of the REST API from its OpenAPI document with schemathesis (PyPI),
# against a real `dialer up` (SQLite, API key on): no 5xx, and every answer conforms to the spec
# (status codes, content types, headers, bodies). Installs schemathesis into a cache venv once.
# The live streams (`…/events`, Server-Sent Events) never end, so they are left out here; their
# bad input is tested in control-plane/tests/webhooks.rs.
# Usage: scripts/fuzz.sh [MAX_EXAMPLES]   (default 60 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/dialer/target}
VENV=$HOME/.cache/dialer/venv
SCHEMATHESIS_VERSION=4.32.5
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "fuzz.sh: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV" || { echo "fuzz.sh: python3 -m venv failed; install it with: apt-get install -y python3-venv" >&2; exit 1; }
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build --quiet -p dialer
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key="fuzz-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DIALER_API_KEYS="$key" DIALER_API_RATE_LIMIT_PER_KEY=0 \
  "$CARGO_TARGET_DIR/debug/dialer" up --data-dir "$data" --listen "127.0.0.1:$port" >"$data/up.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
status=0
# A prompt upload is a WAV file: scripts/fuzz_hooks.py sends generated bodies as bytes.
PYTHONPATH=scripts SCHEMATHESIS_HOOKS=fuzz_hooks "$VENV/bin/schemathesis" run "http://127.0.0.1:$port/api/v1/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks all --exclude-checks ignored_auth,positive_data_acceptance \
  --max-examples "${1:-60}" --workers 2 --seed 1 --no-color \
  --exclude-path-regex '/events$' \
  --suppress-health-check all || status=$?
if grep -q "panicked" "$data/up.log"; then echo "fuzz.sh: the server panicked:"; grep -A5 panicked "$data/up.log"; status=1; fi
exit $status
