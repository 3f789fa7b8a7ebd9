//! Transparent capture, end to end, in network namespaces the test builds: a "pod" namespace
//! and a "server" namespace joined by a veth pair. In the pod, `attache init-iptables` programs
//! the nat rules and attache runs as a non-root UID (65532); an app there and a server in the
//! other namespace know nothing of attache. Plain TCP clients (bash's /dev/tcp) then show that
//! the pod's outbound HTTP call reached the server through attache (with trace headers), an
//! inbound call reached the app through attache, and a non-HTTP connection was tunnelled
//! untouched. Needs root (CI runs as root); elsewhere it says why and passes nothing off as
//! tested.

use attache_tests::TempDir;

#[test]
fn a_pod_that_knows_nothing_of_attache_is_traced_both_ways_and_tcp_passes_through() {
    if !nix_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "transparent capture needs root, and CI runs as root"
        );
        eprintln!("skipped: transparent capture needs root (network namespaces, iptables)");
        return;
    }
    let dir = TempDir::new();
    // An HTTP server that answers with the headers it received, one per line.
    let server = dir.write(
        "server.py",
        "import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ''.join(f'{k.lower()}: {v}\\n' for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
",
    );
    // A TCP server that answers each line with `echo: <line>`.
    let echo = dir.write(
        "echo.py",
        "import socketserver, sys
class E(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b'echo: ' + line)
socketserver.TCPServer((sys.argv[1], int(sys.argv[2])), E).serve_forever()
",
    );
    let config = dir.write(
        "config.yaml",
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { listen: '0.0.0.0:15006', app: 'http://127.0.0.1:9090' }
  capture: { listen: '127.0.0.1:15003' }
  admin: { listen: '127.0.0.1:15000' }
",
    );
    let id = std::process::id() % 100_000;
    let script = format!(
        r#"set -e
P=attp{id}; S=atts{id}; VP=vp{id}; VS=vs{id}
cleanup() {{ kill $(jobs -p) 2>/dev/null || true; ip netns del $P 2>/dev/null || true; ip netns del $S 2>/dev/null || true; }}
trap cleanup EXIT
ip netns add $P; ip netns add $S
ip link add $VP type veth peer name $VS
ip link set $VP netns $P; ip link set $VS netns $S
ip -n $P addr add 10.231.0.1/24 dev $VP; ip -n $S addr add 10.231.0.2/24 dev $VS
for n in $P $S; do ip -n $n link set lo up; done
ip -n $P link set $VP up; ip -n $S link set $VS up
ip netns exec $S python3 {server} 10.231.0.2 8080 &
ip netns exec $S python3 {echo} 10.231.0.2 7000 &
ip netns exec $P python3 {server} 0.0.0.0 9090 &
ip netns exec $P {bin} init-iptables
ip netns exec $P setpriv --reuid=65532 --regid=65532 --clear-groups {bin} run -c {config} >{log} 2>&1 &
wait_port() {{ for _ in $(seq 100); do ip netns exec $1 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0; sleep 0.1; done; echo "no $2:$3 in $1"; exit 1; }}
wait_port $P 127.0.0.1 15000; wait_port $S 10.231.0.2 8080; wait_port $S 10.231.0.2 7000; wait_port $P 127.0.0.1 9090
get() {{ ip netns exec $1 bash -c "exec 3<>/dev/tcp/$2/$3; printf 'GET $4 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n' >&3; timeout 5 cat <&3"; }}
echo "== outbound"; get $P 10.231.0.2 8080 /out
echo "== inbound"; get $S 10.231.0.1 9090 /in
echo "== tcp"; ip netns exec $P bash -c "exec 3<>/dev/tcp/10.231.0.2/7000; printf 'HELLO\n' >&3; timeout 3 head -1 <&3"
echo "== metrics"; get $P 127.0.0.1 15000 /metrics | grep -E '^attache_(capture_tcp_tunnels_total|requests_total)' || true
echo "== end"
"#,
        server = server.display(),
        echo = echo.display(),
        bin = attache_tests::attache_bin().display(),
        config = config.display(),
        log = dir.path().join("attache.log").display(),
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = std::fs::read_to_string(dir.path().join("attache.log")).unwrap_or_default();
    let ctx = format!("{stdout}\n{}\n{log}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("== end"), "{ctx}");
    let section = |name: &str| {
        let start = stdout
            .find(&format!("== {name}\n"))
            .unwrap_or_else(|| panic!("{ctx}"));
        let rest = &stdout[start + name.len() + 4..];
        rest[..rest.find("\n== ").unwrap_or(rest.len())].to_owned()
    };
    // The pod's own call to 10.231.0.2:8080 went through attache: the server saw the trace
    // context attache started, and the Host the client sent.
    let outbound = section("outbound");
    assert!(
        outbound.starts_with("HTTP/1.") && outbound.contains(" 200 OK"),
        "{ctx}"
    );
    assert!(outbound.contains("traceparent: 00-"), "{ctx}");
    assert!(outbound.contains("host: x"), "{ctx}");
    // A call from outside to the app's own port went through attache's inbound listener.
    let inbound = section("inbound");
    assert!(
        inbound.starts_with("HTTP/1.") && inbound.contains(" 200 OK"),
        "{ctx}"
    );
    assert!(inbound.contains("traceparent: 00-"), "{ctx}");
    assert!(inbound.contains("x-forwarded-for: 10.231.0.2"), "{ctx}");
    // Not HTTP: the bytes went through as they were.
    assert_eq!(section("tcp").trim(), "echo: HELLO", "{ctx}");
    let metrics = section("metrics");
    assert!(
        attache_tests::metrics::has(&metrics, "attache_capture_tcp_tunnels_total 1"),
        "{ctx}"
    );
}

/// Whether this process runs as root.
fn nix_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
