#!/usr/bin/env bash
# What Idempotency-Key enforcement costs (issue 4): attache in front of a fixed-answer upstream
# with records in a local redis-server. wrk POSTs with no key (idempotency off, then on), with a
# new key per request (claim + complete), and with one key (replays). attache is pinned to core
# 0 with one worker; wrk, the upstream and Redis share core 1. Redis round trips per request
# come from `INFO commandstats`. A run fails if any response was not 2xx, or if the requests
# did not take the path their case measures: with unique keys each request must be completed
# (claimed and stored), with one key each must be replayed (attache's outcome counters).
#
#   bash bench/idempotency.sh            # 10 s per run, 50 connections, 3 rounds of off/no-key
#
# Needs: wrk, nginx, redis-server (apt-get install wrk nginx-light redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
UP=18080 ATT=18001 ATT_ADMIN=18100 REDIS=18379
source bench/lib.sh
need wrk "apt-get install wrk"
need nginx "apt-get install nginx-light"
need redis-server "apt-get install redis-server"

cargo build --release -q -p attache
ATTACHE=target/release/attache
upstream_nginx "$UP" "$LOAD_CPU"
taskset -c "$LOAD_CPU" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
for p in $UP $REDIS; do wait_port "$p"; done

evals() { redis-cli -p "$REDIS" INFO commandstats | awk -F'[=:,]' '/^cmdstat_eval(sha)?:/{s+=$3} END{print s+0}'; }
# outcome NAME: attache's count of idempotency outcomes NAME so far (0 without the layer).
outcome() { curl -s "http://127.0.0.1:$ATT_ADMIN/metrics" | awk -v o="outcome=\"$1\"" 'index($0, "attache_idempotency_outcomes_total{") == 1 && index($0, o) {s += $NF} END {print s + 0}'; }

# run NAME IDEMPOTENCY(on|off) IDEM_MODE: one attache run; appends "cpu rps p99 trips" to
# $OUT/idem-NAME.runs.
run() {
  local name=$1 on=$2 mode=$3 extra=""
  [ "$on" = on ] && extra="  idempotency: { store: 'redis://127.0.0.1:$REDIS', scope_secret: bench }"
  cat > "$OUT/attache-idem-$name.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound: { listen: "127.0.0.1:$ATT", app: "http://127.0.0.1:$UP" }
  admin: { listen: "127.0.0.1:$ATT_ADMIN" }
  trace: { enabled: false }
  telemetry: { access_log: { enabled: false } }
$extra
CONF
  ATTACHE_LOG=warn ATTACHE_WORKERS=1 taskset -c "$PROXY_CPU" "$ATTACHE" run -c "$OUT/attache-idem-$name.yaml" >/dev/null 2>"$OUT/attache-idem-$name.log" &
  local pid=$!
  wait_port "$ATT"
  [ "$mode" = same ] && curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -H 'Idempotency-Key: bench-same-key' -d '{"qty":1}' "http://127.0.0.1:$ATT/"
  IDEM_MODE=$mode taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d3s -s bench/idempotency.lua "http://127.0.0.1:$ATT/" >/dev/null
  local before after e0 e1 expect="" o0 o1
  case $mode in unique) expect=completed ;; same) expect=replayed ;; esac
  [ -n "$expect" ] && o0=$(outcome "$expect")
  before=$(cpu_ticks "$pid"); e0=$(evals)
  IDEM_MODE=$mode taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s bench/idempotency.lua "http://127.0.0.1:$ATT/" > "$OUT/wrk-idem-$name.txt"
  after=$(cpu_ticks "$pid"); e1=$(evals)
  [ -n "$expect" ] && o1=$(outcome "$expect")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local reqs rps p99
  reqs=$(awk '/requests in/{print $1}' "$OUT/wrk-idem-$name.txt")
  if grep -q "Non-2xx" "$OUT/wrk-idem-$name.txt"; then
    echo "$name: some responses were not 2xx:" >&2; cat "$OUT/wrk-idem-$name.txt" >&2; exit 1
  fi
  # wrk counts the requests it completed; attache may have finished a few more that wrk's
  # connections dropped at the end of the run.
  if [ -n "$expect" ] && [ $((o1 - o0)) -lt "$reqs" ]; then
    echo "$name: $reqs requests but only $((o1 - o0)) $expect" >&2; exit 1
  fi
  rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' "$OUT/wrk-idem-$name.txt")
  p99=$(awk '$1=="99%"{print $2}' "$OUT/wrk-idem-$name.txt")
  echo "$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.1f", d*1e6/hz/n}') $rps $p99 $(awk -v e=$((e1 - e0)) -v n="$reqs" 'BEGIN{printf "%.2f", e/n}')" >> "$OUT/idem-$name.runs"
}

for n in off no-key first replay; do rm -f "$OUT/idem-$n.runs"; done
for _ in $(seq "$ROUNDS"); do
  run off off none
  run no-key on none
done
run first on unique
run replay on same

{
  echo "wrk -t1 -c$CONNS -d$DURATION POST, attache pinned to CPU $PROXY_CPU with one worker, wrk + upstream + redis-server on CPU $LOAD_CPU; off and no-key: median of $ROUNDS interleaved rounds."
  echo
  echo "| case | CPU µs/req | all rounds | req/s | p99 | Redis round trips per request |"
  echo "|---|---|---|---|---|---|"
  for n in off no-key first replay; do
    read -r cpu rps p99 trips <<<"$(median "$OUT/idem-$n.runs")"
    all=$(awk '{printf "%s%s", sep, $1; sep=", "}' "$OUT/idem-$n.runs")
    echo "| $n | $cpu | $all | $rps | $p99 | $trips |"
  done
} | tee "$OUT/idempotency-results.md"
