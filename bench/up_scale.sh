#!/usr/bin/env bash
# The embedded pipeline at scale: the real `dialer up` (SQLite, in-process bus and limiter, mock
# provider with 1–5 ms calls, caps that never bind) gets one campaign of N targets (default
# 100,000) and dials it to completion. Prints how long creating the campaign took and the drain
# rate (attempts ÷ seconds from start to completed).
#   bench/up_scale.sh [N]          uses $DIALER or the release build in $CARGO_TARGET_DIR
#   UP_LOG=FILE RUST_LOG=info,sqlx::query=debug bench/up_scale.sh N; bench/sql_time.py FILE
#                                  keeps dialer's log, here with each statement's time
set -euo pipefail
n=${1:-100000}
target=${CARGO_TARGET_DIR:-$HOME/.cache/dialer/target}
bin=${DIALER:-$target/release/dialer}
[ -x "$bin" ] || { echo "up_scale.sh: $bin missing: cargo build --release -p dialer" >&2; exit 1; }
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; [ -z "${UP_LOG:-}" ] || cp "$dir/up.log" "$UP_LOG"; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/dialer.toml" <<TOML
[api]
max_targets_per_request = $n
max_body_bytes = $((n * 64 + 4096))
[limits]
global_max_concurrency = 100000
per_campaign_max_concurrency = 100000
max_concurrent_calls = 100000
[provider]
min_call_ms = 1
max_call_ms = 5
max_ring_ms = 0
answer_rate = 1.0
# The numbers (+1200…) map to no zone: recipient windows would hold them by the time of day.
# Lists and attempt records still apply; bench rules measures the windows.
[calling_rules]
enabled = false
TOML
"$bin" --config "$dir/dialer.toml" up --data-dir "$dir/data" --listen "127.0.0.1:$port" 2>"$dir/up.log" &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
python3 -c "
import json,sys
n=int(sys.argv[1])
json.dump({'name':'scale','max_concurrent_calls':100000,'targets':[{'phone_number':'+1%010d' % (2000000000+i)} for i in range(n)]}, open(sys.argv[2],'w'))
" "$n" "$dir/body.json"
t0=$(date +%s.%N)
id=$(curl -sf -X POST -H 'Content-Type: application/json' --data-binary @"$dir/body.json" "http://127.0.0.1:$port/api/v1/campaigns" | jq -r .id)
t1=$(date +%s.%N)
curl -sf -X POST "http://127.0.0.1:$port/api/v1/campaigns/$id/start" >/dev/null
while [ "$(curl -sf "http://127.0.0.1:$port/api/v1/campaigns/$id" | jq -r .status)" != completed ]; do sleep 0.5; done
t2=$(date +%s.%N)
stats=$(curl -sf "http://127.0.0.1:$port/api/v1/campaigns/$id/stats")
attempts=$(echo "$stats" | jq .attempts_total)
python3 -c "
import sys
n,t0,t1,t2,a=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]),int(sys.argv[5])
print(f'targets {n}: created in {t1-t0:.1f} s, drained in {t2-t1:.1f} s: {a} attempts, {a/(t2-t1):.0f} dials/s (nproc $(nproc))')
" "$n" "$t0" "$t1" "$t2" "$attempts"
