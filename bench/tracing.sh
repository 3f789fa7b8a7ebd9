#!/usr/bin/env bash
# What tracing costs (specs/trace-context.md §13, issue 3): attache's CPU time per request at a
# fixed rate with tracing off, on with every span exported to a local OTLP collector (HTTP and
# gRPC), and on with the access log as well. attache is pinned to core 0 with one worker; the
# load generator, the upstream and the collector share core 1.
#
#   bash bench/tracing.sh                   # 20,000 req/s, 8 s per run, 3 rounds
#   RATE=10000 RATE_SECS=20 ROUNDS=5 bash bench/tracing.sh
#
# Needs: h2load, nginx (apt-get install nghttp2-client nginx-light). Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-50}
RATE=${RATE:-20000}
RATE_SECS=${RATE_SECS:-8}
ROUNDS=${ROUNDS:-3}
WARMUP_SECS=${WARMUP_SECS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

UP=18080 ATT=18001 ATT_ADMIN=18100 OTLP_HTTP=18318 OTLP_GRPC=18317
source bench/lib.sh

need h2load "apt-get install nghttp2-client"
need nginx "apt-get install nginx-light"

cargo build --release -q -p attache -p attache-tests --bin attache --bin otlp-collector
ATTACHE=target/release/attache

upstream_nginx "$UP" "$LOAD_CPU"
taskset -c "$LOAD_CPU" target/release/otlp-collector "$OTLP_HTTP" http > "$OUT/collector-http.txt" & PIDS+=($!); COL_HTTP=$!
taskset -c "$LOAD_CPU" target/release/otlp-collector "$OTLP_GRPC" grpc > "$OUT/collector-grpc.txt" & PIDS+=($!); COL_GRPC=$!
for p in $UP $OTLP_HTTP $OTLP_GRPC; do wait_port "$p"; done

# run_mode NAME YAML ROUND: one attache run at the fixed rate; appends "cpu mean exported
# dropped done" to $OUT/trace-NAME.runs.
run_mode() {
  local name=$1 extra=$2
  cat > "$OUT/attache-$name.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound: { listen: "127.0.0.1:$ATT", app: "http://127.0.0.1:$UP" }
  admin: { listen: "127.0.0.1:$ATT_ADMIN" }
$extra
CONF
  ATTACHE_LOG=warn ATTACHE_WORKERS=1 taskset -c "$PROXY_CPU" "$ATTACHE" run -c "$OUT/attache-$name.yaml" >/dev/null 2>"$OUT/attache-$name.log" &
  local pid=$!
  wait_port "$ATT"
  taskset -c "$LOAD_CPU" h2load --h1 -c"$CONNS" --rps=$((RATE / CONNS)) -D "$WARMUP_SECS" "http://127.0.0.1:$ATT/" >/dev/null 2>&1
  local before after
  before=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" h2load --h1 -c"$CONNS" --rps=$((RATE / CONNS)) -D "$RATE_SECS" "http://127.0.0.1:$ATT/" > "$OUT/h2load-trace-$name.txt" 2>&1
  after=$(cpu_ticks "$pid")
  local metrics exported dropped
  metrics=$(curl -s "http://127.0.0.1:$ATT_ADMIN/metrics")
  exported=$(awk '/^attache_spans_exported_total/{print $2}' <<<"$metrics")
  dropped=$(awk '/^attache_spans_dropped_total/{s+=$2} END{print s+0}' <<<"$metrics")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local done_n mean
  done_n=$(awk '/^requests:/{print $8}' "$OUT/h2load-trace-$name.txt")
  mean=$(awk '/^time for request:/{print $6}' "$OUT/h2load-trace-$name.txt")
  echo "$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$done_n" 'BEGIN{printf "%.1f", d*1e6/hz/n}') $mean ${exported:-0} $dropped $done_n" >> "$OUT/trace-$name.runs"
}

MODES=(off propagation-only export-http export-grpc export-http+access-log)
declare -A YAML=(
  [off]="  trace: { enabled: false }
  telemetry: { access_log: { enabled: false } }"
  [propagation-only]="  telemetry: { access_log: { enabled: false } }"
  [export-http]="  telemetry:
    otlp: { endpoint: 'http://127.0.0.1:$OTLP_HTTP' }
    access_log: { enabled: false }"
  [export-grpc]="  telemetry:
    otlp: { endpoint: 'http://127.0.0.1:$OTLP_GRPC', protocol: grpc }
    access_log: { enabled: false }"
  [export-http+access-log]="  telemetry:
    otlp: { endpoint: 'http://127.0.0.1:$OTLP_HTTP' }"
)
for m in "${MODES[@]}"; do rm -f "$OUT/trace-$m.runs"; done
# Rounds interleave the modes, so drift on the machine hits them alike; the table shows the
# median round of each, and each mode's CPU against `off`'s in the same round (paired).
for round in $(seq "$ROUNDS"); do
  for m in "${MODES[@]}"; do run_mode "$m" "${YAML[$m]}"; done
done

{
  echo "h2load --h1 -c$CONNS at $RATE req/s for $RATE_SECS s per run, $ROUNDS interleaved rounds (median shown); attache pinned to CPU $PROXY_CPU with one worker; load, upstream and collector on CPU $LOAD_CPU."
  echo
  echo "| mode                   | CPU µs/req (median) | all rounds                   | vs off | round by round | mean latency | spans exported | dropped |"
  echo "|------------------------|---------------------|------------------------------|--------|----------------|--------------|----------------|---------|"
  base=$(median "$OUT/trace-off.runs" | awk '{print $1}')
  for m in "${MODES[@]}"; do
    read -r cpu mean exported dropped _ <<<"$(median "$OUT/trace-$m.runs")"
    all=$(awk '{printf "%s%s", sep, $1; sep=", "}' "$OUT/trace-$m.runs")
    printf "| %-22s | %19s | %-28s | %5s× | %13s× | %12s | %14s | %7s |\n" "$m" "$cpu" "$all" "$(awk -v c="$cpu" -v b="$base" 'BEGIN{printf "%.2f", c/b}')" "$(paired "$OUT/trace-off.runs" "$OUT/trace-$m.runs")" "$mean" "$exported" "$dropped"
  done
  echo
  # Each mode against `off` of the same round: the machine's drift cancels out.
  for m in "${MODES[@]}"; do
    [ "$m" = off ] && continue
    echo "$m against off, round by round: median $(paired "$OUT/trace-off.runs" "$OUT/trace-$m.runs")×, interval $(interval "$OUT/trace-off.runs" "$OUT/trace-$m.runs")"
  done
} | tee "$OUT/tracing-results.md"
