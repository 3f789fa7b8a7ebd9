#!/usr/bin/env bash
# What a rate limit costs per request (issue 24): attache's CPU time per request at a fixed
# rate with no limit, with one local limit keyed by a header, and with one shared limit (the
# same key, in a local redis-server), all generous enough that every request is allowed (the
# cost of a check, not of a 429). For the shared limit, also the Redis round trips per request
# (script calls over requests, from redis-server's INFO commandstats) and the latency it adds.
# attache is pinned to core 0 with one worker; the load generator, the upstream and
# redis-server share core 1.
#
#   bash bench/ratelimit.sh                  # 10,000 req/s, 8 s per run, 3 rounds
#   RATE=5000 ROUNDS=5 bash bench/ratelimit.sh
#   MODES="none local" ROUNDS=9 bash bench/ratelimit.sh
#
# Needs: h2load, nginx, redis-server (apt-get install nghttp2-client nginx-light redis-server).
# Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-50}
RATE=${RATE:-10000}
RATE_SECS=${RATE_SECS:-8}
ROUNDS=${ROUNDS:-3}
WARMUP_SECS=${WARMUP_SECS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

UP=18080 ATT=18001 ATT_ADMIN=18100 REDIS=18379
source bench/lib.sh

need h2load "apt-get install nghttp2-client"
need nginx "apt-get install nginx-light"
need redis-server "apt-get install redis-server"

[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p attache
ATTACHE=${ATTACHE_BIN:-target/release/attache}

upstream_nginx "$UP" "$LOAD_CPU"
wait_port "$UP"
taskset -c "$LOAD_CPU" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$REDIS"

# run_mode NAME YAML: one attache run at the fixed rate; appends
# "cpu mean done script_calls" to $OUT/ratelimit-NAME.runs.
run_mode() {
  local name=$1 extra=$2
  cat > "$OUT/attache-ratelimit-$name.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound: { listen: "127.0.0.1:$ATT", app: "http://127.0.0.1:$UP" }
  admin: { listen: "127.0.0.1:$ATT_ADMIN" }
  telemetry: { access_log: { enabled: false } }
$extra
CONF
  ATTACHE_LOG=warn ATTACHE_WORKERS=1 taskset -c "$PROXY_CPU" "$ATTACHE" run -c "$OUT/attache-ratelimit-$name.yaml" >/dev/null 2>"$OUT/attache-ratelimit-$name.log" &
  local pid=$!
  wait_port "$ATT"
  local load=(h2load --h1 -c"$CONNS" --rps=$((RATE / CONNS)) -H 'x-user-id: user-42')
  taskset -c "$LOAD_CPU" "${load[@]}" -D "$WARMUP_SECS" "http://127.0.0.1:$ATT/" >/dev/null 2>&1
  redis-cli -p "$REDIS" CONFIG RESETSTAT >/dev/null
  local before after
  before=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" "${load[@]}" -D "$RATE_SECS" "http://127.0.0.1:$ATT/" > "$OUT/h2load-ratelimit-$name.txt" 2>&1
  after=$(cpu_ticks "$pid")
  local calls
  calls=$(redis-cli -p "$REDIS" INFO commandstats | awk -F'[:=,]' '/^cmdstat_evalsha:/{print $3}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  grep -q " 0 failed" "$OUT/h2load-ratelimit-$name.txt" || { echo "requests failed ($name):" >&2; cat "$OUT/h2load-ratelimit-$name.txt" >&2; exit 1; }
  grep -q "status codes: [0-9]* 2xx, 0 3xx, 0 4xx" "$OUT/h2load-ratelimit-$name.txt" || { echo "requests were limited ($name): the bench measures allowed checks" >&2; grep "status codes" "$OUT/h2load-ratelimit-$name.txt" >&2; exit 1; }
  local done_n mean
  done_n=$(awk '/^requests:/{print $8}' "$OUT/h2load-ratelimit-$name.txt")
  mean=$(awk '/^time for request:/{print $6}' "$OUT/h2load-ratelimit-$name.txt")
  echo "$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$done_n" 'BEGIN{printf "%.1f", d*1e6/hz/n}') $mean $done_n ${calls:-0}" >> "$OUT/ratelimit-$name.runs"
}

ALL_MODES=(none local shared)
read -r -a MODES <<<"${MODES:-${ALL_MODES[*]}}"
declare -A YAML=(
  [none]=""
  [local]="  rate_limits:
    limits: [ { name: per-user, rate: 1000000/s, key: { header: x-user-id } } ]"
  [shared]="  rate_limits:
    store: redis://127.0.0.1:$REDIS
    limits: [ { name: per-user, rate: 1000000/s, key: { header: x-user-id }, shared: true } ]"
)
for m in "${MODES[@]}"; do rm -f "$OUT/ratelimit-$m.runs"; done
for round in $(seq "$ROUNDS"); do
  for m in "${MODES[@]}"; do run_mode "$m" "${YAML[$m]}"; done
done

{
  echo "h2load --h1 -c$CONNS at $RATE req/s for $RATE_SECS s per run, $ROUNDS interleaved rounds (median shown); attache pinned to CPU $PROXY_CPU with one worker; load, upstream and redis-server on CPU $LOAD_CPU; tracing on, access log off; every request allowed."
  echo
  echo "| mode   | CPU µs/req (median) | all rounds            | vs none | round by round | mean latency | Redis calls/req |"
  echo "|--------|---------------------|-----------------------|---------|----------------|--------------|-----------------|"
  base=$(median "$OUT/ratelimit-none.runs" | awk '{print $1}')
  for m in "${MODES[@]}"; do
    read -r cpu mean done_n calls <<<"$(median "$OUT/ratelimit-$m.runs")"
    all=$(awk '{printf "%s%s", sep, $1; sep=", "}' "$OUT/ratelimit-$m.runs")
    printf "| %-6s | %19s | %-21s | %6s× | %13s× | %12s | %15s |\n" "$m" "$cpu" "$all" "$(awk -v c="$cpu" -v b="$base" 'BEGIN{printf "%.2f", c/b}')" "$(paired "$OUT/ratelimit-none.runs" "$OUT/ratelimit-$m.runs")" "$mean" "$(awk -v c="$calls" -v n="$done_n" 'BEGIN{printf "%.3f", c/n}')"
  done
} | tee "$OUT/ratelimit-results.md"
