#!/usr/bin/env bash
# Measures the [kafka] settings of a data-plane tuning file: `bench dataplane --bus kafka
# --limiter redis` (journal on, status events on) once per variant of the base file, each
# twice: closed loop with caps that never bind (throughput), then open loop at a fixed rate
# (dispatch→dial latency). Prints one row per variant; raw JSON in $OUT (default a temp dir).
#
#   bench/kafka_tuning.sh BROKERS [DURATION] [RATE]
#
# BROKERS: a warm broker (`cargo run --release -p dialer-testkit --bin kafka` prints one): a
# broker just started spends a core compiling for its first minutes, which would favour
# whichever variant runs last.
set -euo pipefail
brokers=${1:?usage: bench/kafka_tuning.sh BROKERS [DURATION] [RATE]}
duration=${2:-15s}
rate=${3:-2000}
base=${BASE:-tuning/laptop.toml}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
bench=${BENCH:-${CARGO_TARGET_DIR:-$HOME/.cache/dialer/target}/release/bench}
variants=(
  "base|"
  "linger_ms=0|linger_ms = 0"
  "linger_ms=20|linger_ms = 20"
  "batch_num_messages=1000|batch_num_messages = 1000"
  "fetch_wait_max_ms=50|fetch_wait_max_ms = 50"
  "compression=lz4|compression = \"lz4\""
  "compression=gzip|compression = \"gzip\""
)
printf '%-26s %12s %14s %16s\n' variant "dials/s" "broker share" "open p50/p99 ms"
for v in "${variants[@]}"; do
  name=${v%%|*}
  line=${v#*|}
  file="$out/$name.toml"
  # The variant's line replaces the base's key in [kafka] (or joins the section).
  python3 - "$base" "$file" "$line" <<'PY'
import re, sys
base, dst, line = sys.argv[1:]
text = open(base).read()
if line:
    key = line.split("=")[0].strip()
    pat = re.compile(rf"^{key}\s*=.*$", re.M)
    text = pat.sub(line, text) if pat.search(text) else text.replace("[kafka]\n", f"[kafka]\n{line}\n", 1)
open(dst, "w").write(text)
PY
  "$bench" dataplane --bus kafka --limiter redis --brokers "$brokers" --tuning "$file" --duration "$duration" \
    --campaign-cap 10000 --global-cap 1000000 --lease-batch 1024 --json "$out/$name.closed.json" >/dev/null 2>&1
  "$bench" dataplane --bus kafka --limiter redis --brokers "$brokers" --tuning "$file" --duration "$duration" \
    --rate "$rate" --json "$out/$name.open.json" >/dev/null 2>&1
  python3 - "$out/$name" "$name" <<'PY'
import json, sys
c = json.load(open(sys.argv[1] + ".closed.json"))
o = json.load(open(sys.argv[1] + ".open.json"))
share = c.get("broker_ceiling_share")
print(f"{sys.argv[2]:<26} {c['dials_per_sec']:12.0f} {share * 100 if share else 0:13.0f}% "
      f"{o['p50_us'] / 1000:7.1f}/{o['p99_us'] / 1000:.1f}")
PY
done
echo "raw results: $out"
