#!/usr/bin/env bash
# CPU used by PostgreSQL (all its processes) and by the bench, every INTERVAL seconds, as a
# percentage of one core (200 % = both cores of a 2-core machine), read from /proc. Run it beside
# a bench to see which side takes the cores, e.g. beside `bench webhooks --rounds 1`:
#   bench/proc_cpu.sh [INTERVAL] [BENCH_NAME]   (defaults: 2, bench); stop it with Ctrl-C
set -euo pipefail
interval=${1:-2}
name=${2:-bench}
hz=$(getconf CLK_TCK)
ticks() { # total utime+stime of the processes given on stdin
  local sum=0 t
  while read -r pid; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || continue
    sum=$((sum + ${t:-0}))
  done
  echo "$sum"
}
pg_ticks() { { pgrep -x postgres || true; } | ticks; }
bench_ticks() { { pgrep -x "$name" || true; } | ticks; }
echo "time      postgres%  $name%"
prev_pg=$(pg_ticks); prev_b=$(bench_ticks)
while sleep "$interval"; do
  pg=$(pg_ticks); b=$(bench_ticks)
  # A process that exited takes its ticks with it: clamp the difference at 0.
  d_pg=$(( pg > prev_pg ? pg - prev_pg : 0 )); d_b=$(( b > prev_b ? b - prev_b : 0 ))
  printf '%s %9d %8d\n' "$(date +%T)" $((100 * d_pg / hz / interval)) $((100 * d_b / hz / interval))
  prev_pg=$pg; prev_b=$b
done
