#!/usr/bin/env bash
# User and system CPU time per request, apart, for attache (filters off), the hyper floor
# (proxy/examples/hyper_floor.rs) and nginx, at a fixed rate that saturates none of them. Each
# proxy runs alone on core 0; h2load and the upstream share core 1. Where bench/run.sh says
# "attache costs more", this says whether the kernel or attache's own code is the difference.
#
#   bash bench/cpu_split.sh                  # 20,000 req/s for 10 s, 3 rounds
#   RATE=10000 ROUNDS=5 bash bench/cpu_split.sh
#
# Needs: h2load, nginx (apt-get install nghttp2-client nginx-light). Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-50}
RATE=${RATE:-20000}
RATE_SECS=${RATE_SECS:-10}
ROUNDS=${ROUNDS:-3}
UP=18080 PROXY=18001 ADMIN=18100
source bench/lib.sh

need h2load "apt-get install nghttp2-client"
need nginx "apt-get install nginx-light"

cargo build --release -q -p attache --bin attache --example hyper_floor

upstream_nginx "$UP" 1
wait_port "$UP"

attache_plain_yaml "$OUT/split-attache.yaml" "$PROXY" "$ADMIN" "$UP"
nginx_proxy_conf "$PWD/$OUT/split-nginx.conf" "$PROXY" "$UP" master-off

load() { taskset -c 1 h2load --h1 -c"$CONNS" --rps=$((RATE / CONNS)) -D "$1" "http://127.0.0.1:$PROXY/" > "$OUT/split-h2load.txt" 2>&1; }

echo "CPU µs per request at $RATE req/s (h2load --h1 -c$CONNS, $RATE_SECS s), user + system:"
for round in $(seq "$ROUNDS"); do
  for t in attache floor nginx; do
    case $t in
      attache) ATTACHE_LOG=warn ATTACHE_WORKERS=1 taskset -c 0 target/release/attache run -c "$OUT/split-attache.yaml" >/dev/null 2>&1 & ;;
      floor) taskset -c 0 target/release/examples/hyper_floor "127.0.0.1:$PROXY" "127.0.0.1:$UP" >/dev/null 2>&1 & ;;
      nginx) taskset -c 0 nginx -c "$PWD/$OUT/split-nginx.conf" -p "$PWD/$OUT" >/dev/null 2>&1 & ;;
    esac
    pid=$!
    wait_port "$PROXY"
    load 3 # warm-up
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    load "$RATE_SECS"
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    n=$(awk '/^requests:/{print $8}' "$OUT/split-h2load.txt")
    awk -v r="$round" -v t="$t" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$HZ" \
      'BEGIN{printf "  round %d  %-8s user %5.1f  system %5.1f  (%d requests)\n", r, t, u*1e6/hz/n, s*1e6/hz/n, n}'
    if [ "$t" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" 2>/dev/null || true
    # The next target binds the same port.
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$PROXY") 2>/dev/null || break; sleep 0.1; done
  done
done
