#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: deterministic,
# so a change of a few hundred instructions shows where wall-clock CPU time (±10% from run to
# run on a shared machine) cannot. For attache (filters off, as bench/run.sh runs it), the
# hyper floor (proxy/examples/hyper_floor.rs: hyper's server and client with nothing between)
# and nginx, each in front of the same nginx upstream; and for attache with its filters on, as
# bench/tracing.sh and bench/flags.sh run it:
#
#   traced         tracing on (propagation, request id, restoration), access log off: the
#                  `none` row of bench/flags.sh and `propagation-only` of bench/tracing.sh
#   10-flags       traced, plus the 10 flags of bench/flags-10.json evaluated and delivered
#   control        traced, the client sending the headers and baggage the 10 flags would add
#   1-limit        traced, plus one local rate limit keyed by the x-user-id header (generous:
#                  every request allowed), as bench/ratelimit.sh's `local` mode
#   20-rules       traced, plus an authorization policy of 20 rules, the one that allows the
#                  request last (identity rules, path rules, a denial), default deny
#
# The filtered targets send what bench/flags.sh sends (x-user-id, x-plan).
#
# Each target serves two loads of different length, and the difference between the two counts
# is divided by the difference in requests, so start-up and shutdown drop out.
#
#   bash bench/instructions.sh                   # attache, floor, nginx; saturated
#   TARGETS=attache bash bench/instructions.sh   # one target
#   TARGETS="traced 10-flags control" bash bench/instructions.sh   # the filters' cost
#   TARGETS="traced 1-limit" bash bench/instructions.sh   # a rate limit's cost
#   TARGETS="traced 20-rules" bash bench/instructions.sh  # authorization's cost
#   LOAD=rate bash bench/instructions.sh         # 400 req/s: every request wakes the proxy alone
#   HEADERS=flags bash bench/instructions.sh     # every target's requests carry x-user-id and
#                                                # x-plan, as the counts before 569daca did
#   ATTACHE_BIN=/tmp/attache-old TARGETS=attache bash bench/instructions.sh
#                                                # a binary built elsewhere (another commit), to
#                                                # compare two commits side by side:
#     git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p attache)
#     cp /tmp/old/target/release/attache /tmp/attache-old
#   ROUNDS=3 bash bench/instructions.sh          # each target counted three times; take the
#                                                # median (a round can land ~1k high when
#                                                # anything else loads the CPU meanwhile)
#   NO_BUILD=1 ATTACHE_BIN=... bash bench/instructions.sh   # no cargo build first
#
# Needs: valgrind, h2load, nginx (apt-get install valgrind nghttp2-client nginx-light).
# Takes about a minute per target. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=${TARGETS:-attache floor nginx}
LOAD=${LOAD:-saturated}
UP=18080 PROXY=18001 ADMIN=18100
source bench/lib.sh

need valgrind "apt-get install valgrind"
need h2load "apt-get install nghttp2-client"
need nginx "apt-get install nginx-light"

# NO_BUILD=1 measures the binaries as they are (sources being edited meanwhile, say).
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p attache --bin attache --example hyper_floor
ATTACHE_BIN=${ATTACHE_BIN:-target/release/attache}
ROUNDS=${ROUNDS:-1}

upstream_nginx "$UP" 1
wait_port "$UP"

attache_plain_yaml "$OUT/instr-attache.yaml" "$PROXY" "$ADMIN" "$UP"
nginx_proxy_conf "$PWD/$OUT/instr-nginx.conf" "$PROXY" "$UP" master-off
# The filtered targets: attache's defaults (tracing on) without the access log, as flags.sh.
filtered_yaml() {
  cat > "$OUT/instr-$1.yaml" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound: { listen: "127.0.0.1:$PROXY", app: "http://127.0.0.1:$UP" }
  admin: { listen: "127.0.0.1:$ADMIN" }
  telemetry: { access_log: { enabled: false } }
$2
CONF
}
filtered_yaml traced ""
filtered_yaml control ""
filtered_yaml 10-flags "  flags:
    sources: [ { file: '$PWD/bench/flags-10.json' } ]
    ofrep: null
    context:
      targeting_key: [ { header: x-user-id } ]
      attributes: [ { header: x-plan, as: plan } ]
    deliver: { flags: [s1, s2, s3, s4, s5, s6, t1, t2, t3, f1] }"
filtered_yaml 1-limit "  rate_limits:
    limits: [ { name: per-user, rate: 1000000/s, key: { header: x-user-id } } ]"
# 19 rules the request walks past (a deny rule, identity rules a plaintext peer fails, path
# rules for other services), then the one that allows it.
rules_20() {
  echo "  authz:"
  echo "    default: deny"
  echo "    peers: { web: [spiffe://bench.local/ns/web/sa/frontend, spiffe://bench.local/ns/web/sa/bff] }"
  echo "    rules:"
  echo "      - { name: no-debug, action: deny, to: { paths: ['/admin/debug/**'] } }"
  for i in $(seq 1 9); do
    echo "      - { name: web-$i, from: web, to: ['/v$i/orders', '/v$i/orders/*'] }"
    echo "      - { name: svc-$i, from: any, to: { methods: [GET, POST], paths: ['/svc$i/**'] } }"
  done
  echo "      - { name: public, from: any, to: { methods: [GET], paths: ['/**'] } }"
}
filtered_yaml 20-rules "$(rules_20)"

# load TARGET SIZE: one load against the proxy; prints the requests completed.
load() {
  local h=()
  [ "${HEADERS:-}" = flags ] && h=(-H 'x-user-id: user-42' -H 'x-plan: pro')
  case $1 in
    traced | 10-flags | 1-limit | 20-rules) h=(-H 'x-user-id: user-42' -H 'x-plan: pro') ;;
    control) h=(-H 'x-user-id: user-42' -H 'x-plan: pro'
      -H 'x-flag-s1: true' -H 'x-flag-s2: false' -H 'x-flag-s3: dark' -H 'x-flag-s4: 20'
      -H 'x-flag-s5: {"cols":3,"dense":true}' -H 'x-flag-t1: beta' -H 'x-flag-t2: true'
      -H 'x-flag-t3: eu' -H 'x-flag-f1: c'
      -H 'baggage: flag.f1=c,flag.s1=on,flag.s2=off,flag.s3=dark,flag.s4=b,flag.s5=cfg,flag.t1=beta,flag.t2=yes,flag.t3=eu') ;;
  esac
  if [ "$LOAD" = rate ]; then
    h2load --h1 -c20 --rps=20 -D "$2" "${h[@]}" "http://127.0.0.1:$PROXY/" > "$OUT/instr-h2load.txt" 2>&1
  else
    h2load --h1 -c20 -n "$2" "${h[@]}" "http://127.0.0.1:$PROXY/" > "$OUT/instr-h2load.txt" 2>&1
  fi
  grep -q "0 failed" "$OUT/instr-h2load.txt" || { echo "requests failed:" >&2; cat "$OUT/instr-h2load.txt" >&2; exit 1; }
  awk '/^requests:/{print $8}' "$OUT/instr-h2load.txt"
}

# jemalloc's background thread and decay (attache's settings: give memory back after a burst)
# purge on a wall clock, which valgrind slows some 50 times: how many slabs are given back and
# made again during a run depends on timing, and moved the counts by up to 2k instructions per
# request between runs of the same binary. Off while counting, the counts repeat to within a
# few instructions per request, and what is left is the request path.
STEADY_ALLOCATOR=background_thread:false,dirty_decay_ms:-1,muzzy_decay_ms:-1

# count TARGET SIZE: instructions collected over one run; prints "instructions requests".
count() {
  local log="$OUT/instr-$1.log" pid n
  case $1 in
    attache | traced | 10-flags | control | 1-limit | 20-rules) _RJEM_MALLOC_CONF=$STEADY_ALLOCATOR ATTACHE_LOG=warn ATTACHE_WORKERS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$ATTACHE_BIN" run -c "$OUT/instr-$1.yaml" 2>"$log" >/dev/null & ;;
    floor) valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        target/release/examples/hyper_floor "127.0.0.1:$PROXY" "127.0.0.1:$UP" 2>"$log" >/dev/null & ;;
    nginx) valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        nginx -c "$PWD/$OUT/instr-nginx.conf" -p "$PWD/$OUT" 2>"$log" >/dev/null & ;;
    *) echo "unknown target $1 (attache, floor, nginx, traced, 10-flags, control, 1-limit, 20-rules)" >&2; exit 1 ;;
  esac
  pid=$!
  wait_port "$PROXY"
  n=$(load "$1" "$2")
  # nginx finishes gracefully on QUIT; the others on TERM.
  if [ "$1" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
  wait "$pid" || true
  echo "$(grep -o 'Collected : [0-9]*' "$log" | awk '{print $3}') $n"
}

if [ "$LOAD" = rate ]; then short=4 long=12; else short=4000 long=12000; fi
echo "instructions per request ($LOAD load, h2load --h1 -c20):"
for t in $TARGETS; do
  for _ in $(seq "$ROUNDS"); do
    read -r i1 n1 < <(count "$t" "$short")
    read -r i2 n2 < <(count "$t" "$long")
    awk -v t="$t" -v d=$((i2 - i1)) -v n=$((n2 - n1)) 'BEGIN{printf "  %-8s %6.1fk\n", t, d/n/1000}'
  done
done
