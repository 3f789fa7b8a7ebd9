#!/usr/bin/env bash
# attache's memory as a pod sees it (VmRSS, and the anonymous part of it): idle after start;
# with 1,000 keep-alive client connections open, each having made one request; and 15 s
# after they all closed, to show what was handed back to the OS. attache runs as a user runs
# it: its default config (tracing, request ids, access log on; the log goes to /dev/null) and
# its default worker count, in front of nginx returning a small body.
#
#   bash bench/memory.sh                      # CONNS=1000 AFTER=15
#   MALLOC_CONF=... bash bench/memory.sh      # passed as _RJEM_MALLOC_CONF, to try jemalloc settings
#
# Needs: nginx (apt-get install nginx-light), python3. Builds attache in release mode. Traffic
# stays on 127.0.0.1; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-1000}
AFTER=${AFTER:-15}
UP=18280 ATT=18201 ATT_ADMIN=18202
source bench/lib.sh
need nginx "apt-get install nginx-light"

cargo build --release -q -p attache --bin attache
upstream_nginx "$UP" 1

cat > "$OUT/memory.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound: { listen: "127.0.0.1:$ATT", app: "http://127.0.0.1:$UP" }
  admin: { listen: "127.0.0.1:$ATT_ADMIN" }
CONF
env ${MALLOC_CONF:+_RJEM_MALLOC_CONF=$MALLOC_CONF} ATTACHE_LOG=warn \
  target/release/attache run -c "$OUT/memory.yaml" >/dev/null 2>"$OUT/memory-attache.log" & PIDS+=($!)
PID=$!
wait_port "$UP"
wait_port "$ATT"
sleep 1

anon_kib() { awk '/^RssAnon:/{print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
idle=$(rss_kib "$PID") idle_anon=$(anon_kib "$PID")

# Open the connections one at a time, a request on each, then hold them; print RSS, close them
# all, wait, print RSS again.
read -r held held_anon after after_anon < <(python3 - "$ATT" "$PID" "$CONNS" "$AFTER" <<'PY'
import socket, sys, time
port, pid, conns, after = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
def mem():
    f = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
    return int(f["VmRSS"].split()[0]), int(f["RssAnon"].split()[0])
socks = []
for _ in range(conns):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
    got = b""
    while b"hello from the upstream" not in got:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection closed after {got!r}")
        got += chunk
    socks.append(s)
time.sleep(1)
held = mem()
for s in socks:
    s.close()
time.sleep(after)
print(*held, *mem())
PY
)

echo "attache $(git rev-parse --short HEAD), $(date -u +%F), default config, ${MALLOC_CONF:+_RJEM_MALLOC_CONF=$MALLOC_CONF, }$CONNS connections"
echo "| state | RSS MiB | anonymous MiB |"
echo "|---|---|---|"
echo "| idle after start | $(mib "$idle") | $(mib "$idle_anon") |"
echo "| $CONNS keep-alive connections open | $(mib "$held") | $(mib "$held_anon") |"
echo "| ${AFTER} s after they closed | $(mib "$after") | $(mib "$after_anon") |"
