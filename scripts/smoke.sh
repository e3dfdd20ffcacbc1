#!/usr/bin/env bash
# The seed platform's curl smoke sequence against a running API, with checks.
# Usage: [API_KEY=KEY] scripts/smoke.sh [BASE_URL]   (default http://127.0.0.1:8081)
# With API_KEY set, every request carries it, and the script also checks that a request
# without it gets 401.
set -euo pipefail
BASE=${1:-http://127.0.0.1:8081}
command -v jq >/dev/null || { echo "smoke: jq is missing; install it with: apt-get install -y jq" >&2; exit 1; }
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }
AUTH=(); [ -n "${API_KEY:-}" ] && AUTH=(-H "Authorization: Bearer $API_KEY")
# req METHOD PATH [BODY] -> sets CODE and BODY
req() {
  local out
  if [ $# -ge 3 ]; then
    out=$(curl -sS "${AUTH[@]}" -o /tmp/smoke.$$ -w '%{http_code}' -X "$1" "$BASE$2" -H 'Content-Type: application/json' -d "$3")
  else
    out=$(curl -sS "${AUTH[@]}" -o /tmp/smoke.$$ -w '%{http_code}' -X "$1" "$BASE$2")
  fi
  CODE=$out; BODY=$(cat /tmp/smoke.$$); rm -f /tmp/smoke.$$
}
expect() { [ "$CODE" = "$1" ] || fail "$2: expected HTTP $1, got $CODE: $BODY"; echo "ok   $2 ($CODE)"; }

NAME="smoke-$(date +%s%N)"
req GET /healthz; expect 200 "healthz"
if [ -n "${API_KEY:-}" ]; then
  code=$(curl -sS -o /dev/null -w '%{http_code}' "$BASE/api/v1/campaigns")
  [ "$code" = 401 ] || fail "a request without the API key got $code, not 401"
  echo "ok   0. no API key: 401"
fi
req POST /api/v1/campaigns "{
  \"name\": \"$NAME\", \"description\": \"Sample outbound campaign\", \"time_zone\": \"America/New_York\",
  \"max_concurrent_calls\": 10,
  \"retry_policy\": {\"max_attempts\": 3, \"base_delay\": \"2s\", \"max_delay\": \"30s\", \"jitter\": 0.2},
  \"business_hours\": [{\"day_of_week\": 1, \"start\": \"09:00\", \"end\": \"18:00\"}],
  \"targets\": [{\"phone_number\": \"+15555550001\"}, {\"phone_number\": \"+15555550002\"}]}"
expect 201 "1. create campaign"
ID=$(jq -r .id <<<"$BODY"); [ "$(jq -r .status <<<"$BODY")" = pending ] || fail "new campaign not pending"
req PUT "/api/v1/campaigns/$ID" '{"description": "Evening calling window", "max_concurrent_calls": 25,
  "business_hours": [{"day_of_week": 1, "start": "13:00", "end": "21:00"}, {"day_of_week": 2, "start": "13:00", "end": "21:00"}],
  "retry_policy": {"max_attempts": 4, "base_delay": "3s", "max_delay": "45s", "jitter": 0.3}}'
expect 200 "2. update campaign"
[ "$(jq -r .max_concurrent_calls <<<"$BODY")" = 25 ] || fail "update not applied"
[ "$(jq -r '.business_hours | length' <<<"$BODY")" = 2 ] || fail "hours not replaced"
req POST "/api/v1/campaigns/$ID/start"; expect 200 "3. start"
[ "$(jq -r .status <<<"$BODY")" = in_progress ] || fail "not in_progress after start"
req POST "/api/v1/campaigns/$ID/pause"; expect 200 "4. pause"
[ "$(jq -r .status <<<"$BODY")" = paused ] || fail "not paused after pause"
req GET "/api/v1/campaigns/$ID"; expect 200 "5. inspect"
[ "$(jq -r .description <<<"$BODY")" = "Evening calling window" ] || fail "inspect shows stale data"
req POST /api/v1/calls "{\"campaign_id\": \"$ID\", \"phone_number\": \"+15555550001\", \"metadata\": {\"priority\": \"high\"}}"
[ "$CODE" = 201 ] || [ "$CODE" = 200 ] || fail "6. trigger call: HTTP $CODE: $BODY"; echo "ok   6. trigger call ($CODE)"
req POST /api/v1/calls "{\"campaign_id\": \"$ID\", \"phone_number\": \"+15555559999\"}"; expect 422 "6b. unregistered number refused"
req GET "/api/v1/campaigns/$ID/stats"; expect 200 "7. stats"
[ "$(jq -r .total_calls <<<"$BODY")" -ge 2 ] || fail "stats total_calls"
req GET "/api/v1/campaigns/$ID/calls"; expect 200 "8. list calls"
CALL_ID=$(jq -r '.calls[0].id' <<<"$BODY"); [ "$CALL_ID" != null ] || fail "no calls listed"
req GET "/api/v1/calls/$CALL_ID"; expect 200 "9. get call"
[ "$(jq -r .campaign_id <<<"$BODY")" = "$ID" ] || fail "call belongs to another campaign"
req POST "/api/v1/campaigns/$ID/complete"; expect 200 "10. complete"
req POST "/api/v1/campaigns/$ID/start"; expect 409 "10b. start after complete refused"
[ "$(jq -r .error.current_status <<<"$BODY")" = completed ] || fail "409 lacks current_status"

# 11. A 24x7 campaign of 1,000 targets runs to completion by itself, with stats equal to its calls.
if [ "${SMOKE_CAMPAIGN:-1}" = 1 ]; then
  TARGETS=$(python3 -c 'import json; print(json.dumps([{"phone_number": "+1999%07d" % i} for i in range(1000)]))')
  req POST /api/v1/campaigns "{\"name\": \"$NAME-1000\", \"max_concurrent_calls\": 100,
    \"retry_policy\": {\"max_attempts\": 3, \"base_delay\": \"100ms\", \"max_delay\": \"1s\"}, \"targets\": $TARGETS}"
  expect 201 "11. create a 1,000-target campaign"
  BIG=$(jq -r .id <<<"$BODY")
  req POST "/api/v1/campaigns/$BIG/start"; expect 200 "11. start it"
  for _ in $(seq 600); do
    req GET "/api/v1/campaigns/$BIG"; [ "$(jq -r .status <<<"$BODY")" = completed ] && break; sleep 0.5
  done
  [ "$(jq -r .status <<<"$BODY")" = completed ] || fail "1,000-target campaign did not complete within 300 s"
  req GET "/api/v1/campaigns/$BIG/stats"; expect 200 "11. stats of the finished campaign"
  total=$(jq -r .total_calls <<<"$BODY"); done_=$(jq -r '.completed_calls + .failed_calls' <<<"$BODY")
  [ "$total" = 1000 ] && [ "$done_" = 1000 ] || fail "stats after completion: $BODY"
  [ "$(jq -r '.pending_calls + .queued_calls + .in_progress_calls' <<<"$BODY")" = 0 ] || fail "calls left open: $BODY"
  [ "$(jq -r '.retries_attempted' <<<"$BODY")" -gt 0 ] || fail "no retries recorded: $BODY"
  req GET "/api/v1/campaigns/$BIG/calls?status=failed&limit=1000"
  [ "$(jq -r '.calls | length' <<<"$BODY")" = "$(jq -r '.failed_calls' <<<"$(curl -s "${AUTH[@]}" "$BASE/api/v1/campaigns/$BIG/stats")")" ] || fail "failed_calls differs from the failed call rows"
  echo "ok   11. 1,000-target campaign completed: $done_ terminal calls"
fi
echo "smoke: all steps passed against $BASE"
