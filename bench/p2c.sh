#!/usr/bin/env bash
# The ambassador's balancing around a slow endpoint (issue 22): three endpoints, two fast (nginx)
# and one that answers after SLOW_MS (a small Python server); the same load through an outbound
# port with `balance: round_robin` and with `balance: p2c_ewma`. Reports, for each, the
# latency percentiles the client saw and the share of requests the slow endpoint got.
# attache is pinned to core 0 with one worker; the load generator and the endpoints share
# core 1.
#
#   bash bench/p2c.sh                     # 20,000 requests, 16 connections, 20 ms slow endpoint
#   REQUESTS=50000 SLOW_MS=50 bash bench/p2c.sh
#
# Needs: h2load, nginx, python3 (apt-get install nghttp2-client nginx-light python3). Traffic
# stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
CONNS=${CONNS:-16}
SLOW_MS=${SLOW_MS:-20}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

UP1=18081 UP2=18082 SLOW=18083 OUTB=18002 ADMIN=18101
source bench/lib.sh

need h2load "apt-get install nghttp2-client"
need nginx "apt-get install nginx-light"
need python3 "apt-get install python3"

cargo build --release -q -p attache
ATTACHE=target/release/attache

# Two fast endpoints: nginx, one config each.
for port in $UP1 $UP2; do
  mkdir -p "$OUT/up$port"
  cat > "$OUT/up$port/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $PWD/$OUT/up$port/nginx.pid; error_log /dev/null crit;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; location / { return 200 "fast\n"; } } }
CONF
  taskset -c "$LOAD_CPU" nginx -c "$PWD/$OUT/up$port/nginx.conf" -p "$PWD/$OUT/up$port" & PIDS+=($!)
done

# The slow endpoint: answers every request after SLOW_MS, keep-alive, and counts them in a file.
cat > "$OUT/slow.py" <<'PY'
import asyncio, sys
port, delay, count_file = int(sys.argv[1]), float(sys.argv[2]) / 1000, sys.argv[3]
served = 0
async def handle(reader, writer):
    global served
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(delay)
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslow\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def report():
    while True:
        await asyncio.sleep(0.2)
        with open(count_file, "w") as f:
            f.write(str(served))
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    asyncio.create_task(report())
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
taskset -c "$LOAD_CPU" python3 "$OUT/slow.py" "$SLOW" "$SLOW_MS" "$OUT/slow.count" & PIDS+=($!)
for p in $UP1 $UP2 $SLOW; do wait_port "$p"; done

# run BALANCE: one attache, one load; prints "balance p50 p90 p99 slow-share".
run() {
  cat > "$OUT/p2c-$1.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  outbound: [ { listen: "127.0.0.1:$OUTB", upstream: three } ]
  upstreams:
    three:
      endpoints: ["http://127.0.0.1:$UP1", "http://127.0.0.1:$UP2", "http://127.0.0.1:$SLOW"]
      balance: $1
      ejection: { consecutive_failures: 0 }
  admin: { listen: "127.0.0.1:$ADMIN" }
  telemetry: { access_log: { enabled: false } }
  trace: { enabled: false }
CONF
  ATTACHE_LOG=warn ATTACHE_WORKERS=1 taskset -c "$PROXY_CPU" "$ATTACHE" run -c "$OUT/p2c-$1.yaml" \
    2>"$OUT/p2c-$1.log" & local pid=$!
  wait_port "$OUTB"
  sleep 0.5
  local before; before=$(cat "$OUT/slow.count" 2>/dev/null || echo 0)
  taskset -c "$LOAD_CPU" h2load --h1 -c "$CONNS" -n "$REQUESTS" --log-file="$OUT/p2c-$1.times" \
    "http://127.0.0.1:$OUTB/" > "$OUT/p2c-$1.h2load" 2>&1
  grep -q " 0 failed" "$OUT/p2c-$1.h2load" || { echo "requests failed:" >&2; cat "$OUT/p2c-$1.h2load" >&2; exit 1; }
  sleep 0.5
  local after; after=$(cat "$OUT/slow.count")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf "  %-12s p50 %6s ms  p90 %6s ms  p99 %6s ms  slow endpoint: %5.1f%%\n" "$1" \
    "$(pct_ms "$OUT/p2c-$1.times" 50)" "$(pct_ms "$OUT/p2c-$1.times" 90)" \
    "$(pct_ms "$OUT/p2c-$1.times" 99)" "$(awk -v a="$after" -v b="$before" -v n="$REQUESTS" 'BEGIN{print 100*(a-b)/n}')"
}

echo "three endpoints, one answering after ${SLOW_MS} ms; $REQUESTS requests, $CONNS connections:"
run round_robin
run p2c_ewma
