# Helpers shared by the benchmark scripts (sourced, not run).

# All processes of a proxy: the one we started and its children (nginx's worker).
procs() { echo "$1"; pgrep -P "$1" || true; }
cpu_ticks() { local t=0; for p in $(procs "$1"); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
rss_kib() { local t=0; for p in $(procs "$1"); do t=$((t + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)

# The P-th percentile (0-100) of the request durations in an h2load --log-file, in ms.
pct_ms() { cut -f3 "$1" | sort -n | awk -v p="$2" '{a[NR]=$1} END{i=int(NR*p/100+0.5); if (i<1) i=1; if (i>NR) i=NR; printf "%.2f", a[i]/1000}'; }

# Runs of interleaved rounds, one line per round, CPU µs/req first: median FILE prints the
# median round's line.
median() { sort -n -k1,1 "$1" | awk '{a[NR]=$0} END{print a[int((NR+1)/2)]}'; }
# paired BASE FILE: the median, over rounds, of FILE's CPU against BASE's run of the same round
# (runs of one round are seconds apart, so a drift of the machine's speed cancels out).
ratios() { paste -d' ' "$1" "$2" | awk -v w="$(head -1 "$1" | wc -w)" '{printf "%.4f\n", $(w + 1) / $1}' | sort -n; }
paired() { ratios "$1" "$2" | awk '{a[NR]=$1} END{printf "%.2f", a[int((NR+1)/2)]}'; }
# interval BASE FILE: a 95% confidence interval for that median ratio that assumes nothing
# about how the rounds are distributed (the sign test's: with n rounds, the k-th smallest and
# the k-th largest ratio, k the largest with P(Binomial(n, 1/2) < k) <= 0.025).
interval() {
  ratios "$1" "$2" |
    awk '{a[NR]=$1} END{
      n = NR; pk = 1; for (i = 0; i < n; i++) pk /= 2
      cum = 0; k = 0
      for (i = 0; i <= n; i++) { if (cum + pk > 0.025) break; cum += pk; k = i + 1; pk = pk * (n - i) / (i + 1) }
      if (k < 1) { printf "none (%d rounds are too few; 6 or more give one)", n; exit }
      printf "%.2f× to %.2f× (%d rounds, %.1f%% confidence)", a[k], a[n - k + 1], n, 100 * (1 - 2 * cum) }'
}

need() { command -v "$1" >/dev/null || { echo "missing $1: $2" >&2; exit 1; }; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# The upstream: nginx returning a small fixed body. upstream_nginx PORT CPU
upstream_nginx() {
  cat > "$OUT/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $PWD/$OUT/upstream.pid; error_log /dev/null crit;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { return 200 "hello from the upstream\n"; } } }
CONF
  taskset -c "$2" nginx -c "$PWD/$OUT/upstream.conf" -p "$PWD/$OUT" & PIDS+=($!)
}

# nginx as a proxy to the upstream, the way every comparison here configures it: one worker,
# keep-alive to the upstream, X-Forwarded-For added as attache adds it.
# nginx_proxy_conf FILE PORT UPSTREAM_PORT [master_process off, for valgrind]
nginx_proxy_conf() {
  local master=""
  [ -n "${4:-}" ] && master=" master_process off;"
  cat > "$1" <<CONF
worker_processes 1;$master daemon off; pid $1.pid; error_log /dev/null crit;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$3; keepalive 128; }
  server { listen 127.0.0.1:$2;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
CONF
}

# attache with its filters off (as issue 2 compares it with plain proxies), in front of the
# upstream. attache_plain_yaml FILE PORT ADMIN_PORT UPSTREAM_PORT
attache_plain_yaml() {
  cat > "$1" <<CONF
apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: bench }
spec:
  inbound: { listen: "127.0.0.1:$2", app: "http://127.0.0.1:$4" }
  admin: { listen: "127.0.0.1:$3" }
  telemetry: { access_log: { enabled: false } }
  trace: { enabled: false }
CONF
}

# Envoy as a proxy to the upstream, one listener and one static cluster; with CERT and KEY it
# terminates TLS (ALPN h2, http/1.1). envoy_conf FILE PORT ADMIN_PORT UPSTREAM_PORT [CERT KEY]
envoy_conf() {
  local tls=""
  if [ -n "${5:-}" ]; then
    tls="
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              common_tls_context:
                alpn_protocols: [\"h2\", \"http/1.1\"]
                tls_certificates: [ { certificate_chain: { filename: \"$5\" }, private_key: { filename: \"$6\" } } ]
          filters:"
  else
    tls="
        - filters:"
  fi
  cat > "$1" <<CONF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $3 } } }
static_resources:
  listeners:
    - address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
      filter_chains:$tls
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: bench
                route_config:
                  virtual_hosts:
                    - { name: all, domains: ["*"], routes: [ { match: { prefix: "/" }, route: { cluster: app } } ] }
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
    - name: app
      type: STATIC
      load_assignment:
        cluster_name: app
        endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $4 } } } } ] } ]
CONF
}

# Every scenario: results under bench/out, the file-descriptor limit raised, and the processes
# it starts (appended to PIDS) stopped when it exits.
OUT=bench/out
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
