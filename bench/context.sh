#!/usr/bin/env bash
# What the Context API costs (issue 25). Against a local redis-server, in one run:
#
#   redis-direct   redis-benchmark sending HINCRBY straight to Redis (64 clients): the floor,
#                  what the operation costs with no sidecar in between
#   redis          POST /v1/contexts/bench/counters/hits {"by":1} through attache (wrk, 64
#                  connections): requests per second, p99, and Redis calls per request
#   redis-patch    PATCH .../maps/order {"set":...,"incr":...} through attache, the same way
#   memory         the counter increment with the memory store, at a fixed rate: attache's CPU
#                  per operation (target: under 5 µs)
#   memory-404     GET of a missing object at the same rate: the listener's own cost (HTTP,
#                  span, routing) with no store work, the floor under `memory`
#
# attache runs pinned to core 0 with one worker; wrk, redis-server and redis-benchmark on
# core 1.
#
#   bash bench/context.sh
#   SECS=20 RATE=5000 bash bench/context.sh
#
# Needs: wrk, redis-server, redis-benchmark, h2load (apt-get install wrk redis-server
# nghttp2-client). Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-10}
RATE=${RATE:-5000}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
CTX=18500 ADMIN=18100 APP=18080 REDIS=18379
source bench/lib.sh

need wrk "apt-get install wrk"
need redis-server "apt-get install redis-server"
need h2load "apt-get install nghttp2-client"

[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p attache
ATTACHE=${ATTACHE_BIN:-target/release/attache}

taskset -c "$LOAD_CPU" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$REDIS"
upstream_nginx "$APP" "$LOAD_CPU"
wait_port "$APP"

# start STORE: attache with the Context API over STORE; its pid in ATT.
start() {
  cat > "$OUT/attache-context.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound: { listen: "127.0.0.1:18001", app: "http://127.0.0.1:$APP" }
  admin: { listen: "127.0.0.1:$ADMIN" }
  telemetry: { access_log: { enabled: false } }
  context: { listen: "127.0.0.1:$CTX", store: "$1" }
CONF
  ATTACHE_LOG=warn ATTACHE_WORKERS=1 taskset -c "$PROXY_CPU" "$ATTACHE" run -c "$OUT/attache-context.yaml" >/dev/null 2>"$OUT/attache-context.log" &
  ATT=$!
  wait_port "$CTX"
}

# wrk_post METHOD PATH BODY: a wrk script for one request.
wrk_script() {
  cat > "$OUT/context-$1.lua" <<LUA
wrk.method = "$2"
wrk.body = '$3'
wrk.headers["Content-Type"] = "application/json"
LUA
}

echo "Context API, $CONNS connections, $SECS s per load; attache on CPU $PROXY_CPU with one worker, load and Redis on CPU $LOAD_CPU."
echo

# The floor: HINCRBY straight to Redis.
taskset -c "$LOAD_CPU" redis-benchmark -p "$REDIS" -c "$CONNS" -n 200000 --csv HINCRBY bench:direct n 1 > "$OUT/context-direct.txt" 2>&1 || true
# "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
awk -F',' 'NR==2{for (i = 1; i <= NF; i++) gsub(/"/, "", $i); printf "redis-direct (redis-benchmark HINCRBY): %s req/s, p50 %s ms, p99 %s ms\n", $2, $5, $7}' "$OUT/context-direct.txt"

start "redis://127.0.0.1:$REDIS"
for load in counter patch; do
  case $load in
    counter) wrk_script counter POST '{"by":1}'; path=/v1/contexts/bench/counters/hits ;;
    patch) wrk_script patch PATCH '{"set":{"status":"paid"},"incr":{"views":1}}'; path=/v1/contexts/bench/maps/order ;;
  esac
  redis-cli -p "$REDIS" CONFIG RESETSTAT >/dev/null
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$OUT/context-$load.lua" "http://127.0.0.1:$CTX$path" > "$OUT/context-wrk-$load.txt"
  calls=$(redis-cli -p "$REDIS" INFO commandstats | awk -F'[:=,]' '/^cmdstat_evalsha:/{print $3}')
  reqs=$(awk '/requests in/{print $1}' "$OUT/context-wrk-$load.txt")
  non2xx=$(awk '/Non-2xx/{print $NF}' "$OUT/context-wrk-$load.txt")
  printf "redis %-7s through attache: %s req/s, p50 %s, p99 %s, %s Redis script calls per request%s\n" "$load" \
    "$(awk '/Requests\/sec/{print $2}' "$OUT/context-wrk-$load.txt")" \
    "$(awk '$1=="50%"{print $2}' "$OUT/context-wrk-$load.txt")" \
    "$(awk '$1=="99%"{print $2}' "$OUT/context-wrk-$load.txt")" \
    "$(awk -v c="${calls:-0}" -v n="$reqs" 'BEGIN{printf "%.3f", c/n}')" \
    "${non2xx:+ ($non2xx non-2xx)}"
done
kill "$ATT"; wait "$ATT" 2>/dev/null || true

# The memory store's CPU per operation, at a fixed rate, and the listener's floor.
start memory
for load in memory memory-404; do
  case $load in
    memory) args=(-d "$OUT/context-body.json" "http://127.0.0.1:$CTX/v1/contexts/bench/counters/hits"); echo '{"by":1}' > "$OUT/context-body.json" ;;
    memory-404) args=("http://127.0.0.1:$CTX/v1/contexts/bench/counters/missing") ;;
  esac
  h2load --h1 -c"$CONNS" --rps=$((RATE / CONNS)) -D 2 "${args[@]}" >/dev/null 2>&1 || true
  before=$(cpu_ticks "$ATT")
  taskset -c "$LOAD_CPU" h2load --h1 -c"$CONNS" --rps=$((RATE / CONNS)) -D "$SECS" "${args[@]}" > "$OUT/context-h2load-$load.txt" 2>&1 || true
  after=$(cpu_ticks "$ATT")
  done_n=$(awk '/^requests:/{print $6}' "$OUT/context-h2load-$load.txt")
  printf "%-10s %s requests at %s req/s: %s µs of attache CPU per request\n" "$load" "$done_n" "$RATE" \
    "$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$done_n" 'BEGIN{printf "%.1f", d*1e6/hz/n}')"
done
kill "$ATT"; wait "$ATT" 2>/dev/null || true
