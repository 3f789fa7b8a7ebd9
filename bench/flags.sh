#!/usr/bin/env bash
# What feature flags cost per request (specs/feature-flags.md §13, issue 5): attache's CPU time
# per request at a fixed rate with no flags, and with 10 flags evaluated and delivered to the
# app on every request (6 static, 3 targeting rules on the targeting key and a header
# attribute, 1 fractional split) as x-flag-* headers and baggage, and also with the combined
# x-flags header. A control run sends, from the client, the same headers the 10 flags add, with
# no flags configured: what carrying those bytes costs by itself.
# attache is pinned to core 0 with one worker; the load generator and the upstream share core 1.
#
#   bash bench/flags.sh                      # 20,000 req/s, 8 s per run, 3 rounds
#   RATE=10000 ROUNDS=5 bash bench/flags.sh
#   MODES="none 10-flags" ROUNDS=9 bash bench/flags.sh   # the target's two rows only
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

UP=18080 ATT=18001 ATT_ADMIN=18100 OFREP=18016
source bench/lib.sh

need h2load "apt-get install nghttp2-client"
need nginx "apt-get install nginx-light"

cargo build --release -q -p attache
ATTACHE=target/release/attache


upstream_nginx "$UP" "$LOAD_CPU"
wait_port "$UP"

# run_mode NAME YAML: one attache run at the fixed rate; appends "cpu mean done" to
# $OUT/flags-NAME.runs.
run_mode() {
  local name=$1 extra=$2
  cat > "$OUT/attache-flags-$name.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound: { listen: "127.0.0.1:$ATT", app: "http://127.0.0.1:$UP" }
  admin: { listen: "127.0.0.1:$ATT_ADMIN" }
  telemetry: { access_log: { enabled: false } }
$extra
CONF
  ATTACHE_LOG=warn ATTACHE_WORKERS=1 taskset -c "$PROXY_CPU" "$ATTACHE" run -c "$OUT/attache-flags-$name.yaml" >/dev/null 2>"$OUT/attache-flags-$name.log" &
  local pid=$!
  wait_port "$ATT"
  local load=(h2load --h1 -c"$CONNS" --rps=$((RATE / CONNS)) -H 'x-user-id: user-42' -H 'x-plan: pro')
  # The bytes-only control: the client itself sends what the 10 flags add to each request.
  if [ "$name" = none+same-headers-from-client ]; then
    load+=(-H 'x-flag-s1: true' -H 'x-flag-s2: false' -H 'x-flag-s3: dark' -H 'x-flag-s4: 20'
      -H 'x-flag-s5: {"cols":3,"dense":true}' -H 'x-flag-t1: beta' -H 'x-flag-t2: true'
      -H 'x-flag-t3: eu' -H 'x-flag-f1: c'
      -H 'baggage: flag.f1=c,flag.s1=on,flag.s2=off,flag.s3=dark,flag.s4=b,flag.s5=cfg,flag.t1=beta,flag.t2=yes,flag.t3=eu')
  fi
  taskset -c "$LOAD_CPU" "${load[@]}" -D "$WARMUP_SECS" "http://127.0.0.1:$ATT/" >/dev/null 2>&1
  local before after
  before=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" "${load[@]}" -D "$RATE_SECS" "http://127.0.0.1:$ATT/" > "$OUT/h2load-flags-$name.txt" 2>&1
  after=$(cpu_ticks "$pid")
  local evaluated
  evaluated=$(curl -s "http://127.0.0.1:$ATT_ADMIN/metrics" | awk '/^attache_flag_evaluations_total/{s+=$2} END{print s+0}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local done_n mean
  done_n=$(awk '/^requests:/{print $8}' "$OUT/h2load-flags-$name.txt")
  mean=$(awk '/^time for request:/{print $6}' "$OUT/h2load-flags-$name.txt")
  echo "$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$done_n" 'BEGIN{printf "%.1f", d*1e6/hz/n}') $mean $done_n $evaluated" >> "$OUT/flags-$name.runs"
}

FLAGS_SECTION="  flags:
    sources: [ { file: '$PWD/bench/flags-10.json' } ]
    ofrep: { listen: '127.0.0.1:$OFREP' }
    context:
      targeting_key: [ { header: x-user-id } ]
      attributes: [ { header: x-plan, as: plan } ]"
ALL_MODES=(none none+same-headers-from-client flags-configured-0-delivered 10-flags 10-flags+x-flags)
# MODES="none 10-flags" ROUNDS=9 measures just the target's two rows, with more rounds.
read -r -a MODES <<<"${MODES:-${ALL_MODES[*]}}"
declare -A YAML=(
  [none]=""
  [none+same-headers-from-client]=""
  [flags-configured-0-delivered]="$FLAGS_SECTION"
  [10-flags]="$FLAGS_SECTION
    deliver: { flags: [s1, s2, s3, s4, s5, s6, t1, t2, t3, f1] }"
  [10-flags+x-flags]="$FLAGS_SECTION
    deliver: { flags: [s1, s2, s3, s4, s5, s6, t1, t2, t3, f1], combined_header: x-flags }"
)
for m in "${MODES[@]}"; do rm -f "$OUT/flags-$m.runs"; done
for round in $(seq "$ROUNDS"); do
  for m in "${MODES[@]}"; do run_mode "$m" "${YAML[$m]}"; done
done

{
  echo "h2load --h1 -c$CONNS at $RATE req/s for $RATE_SECS s per run, $ROUNDS interleaved rounds (median shown); attache pinned to CPU $PROXY_CPU with one worker; load and upstream on CPU $LOAD_CPU; tracing on, access log off."
  echo
  echo "| mode                         | CPU µs/req (median) | all rounds            | vs none | round by round | mean latency | evaluations |"
  echo "|------------------------------|---------------------|-----------------------|---------|----------------|--------------|-------------|"
  base=$(median "$OUT/flags-none.runs" | awk '{print $1}')
  for m in "${MODES[@]}"; do
    read -r cpu mean _ evaluated <<<"$(median "$OUT/flags-$m.runs")"
    all=$(awk '{printf "%s%s", sep, $1; sep=", "}' "$OUT/flags-$m.runs")
    printf "| %-28s | %19s | %-21s | %6s× | %13s× | %12s | %11s |\n" "$m" "$cpu" "$all" "$(awk -v c="$cpu" -v b="$base" 'BEGIN{printf "%.2f", c/b}')" "$(paired "$OUT/flags-none.runs" "$OUT/flags-$m.runs")" "$mean" "$evaluated"
  done
  echo
  for m in "${MODES[@]}"; do
    [ "$m" = none ] && continue
    echo "$m against none, round by round: median $(paired "$OUT/flags-none.runs" "$OUT/flags-$m.runs")×, interval $(interval "$OUT/flags-none.runs" "$OUT/flags-$m.runs")"
  done
} | tee "$OUT/flags-results.md"
