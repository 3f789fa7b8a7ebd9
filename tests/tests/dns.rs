//! DNS endpoints (`dns_refresh`), end to end: a name with several addresses is balanced over
//! all of them, a new address joins on the next refresh, and a failed lookup keeps the last
//! good set. The name lives in `/etc/hosts`, so the test runs attache, three small upstreams
//! and its client in mount and network namespaces of their own (`unshare -m -n`, loopback
//! up), with a private `/etc/hosts` bound over the real one: the machine's is never touched.

use attache_tests::TempDir;

#[test]
fn a_name_is_balanced_over_all_its_addresses_and_the_last_good_set_survives_a_failed_lookup() {
    let dir = TempDir::new();
    let hosts = dir.write(
        "hosts",
        "127.0.0.1 localhost\n127.0.0.2 backend.test\n127.0.0.3 backend.test\n",
    );
    let config = dir.write(
        "config.yaml",
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ { listen: '127.0.0.1:15001', upstream: backend } ]
  upstreams:
    backend:
      endpoints: ['http://backend.test:8080']
      dns_refresh: 1s
      ejection: { consecutive_failures: 0 }
  admin: { listen: 127.0.0.1:15000 }
",
    );
    // Each upstream answers with its own address.
    let server = dir.write(
        "server.py",
        "import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[1].encode()
        self.send_response(200)
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer((sys.argv[1], 8080), H).serve_forever()
",
    );
    let script = format!(
        r#"set -e
ip link set lo up
mount --bind {hosts} /etc/hosts
for a in 127.0.0.2 127.0.0.3 127.0.0.4; do python3 {server} $a & done
ATTACHE_LOG=info {bin} run -c {config} >{log} 2>&1 &
wait_port() {{ for _ in $(seq 100); do (exec 3<>/dev/tcp/$1/$2) 2>/dev/null && return 0; sleep 0.1; done; echo "no $1:$2"; exit 1; }}
# Waits (10 s at most) until attache's log has a line with both words.
wait_log() {{ for _ in $(seq 100); do grep "$1" {log} | grep -q "$2" && return 0; sleep 0.1; done; echo "never logged: $1 $2"; exit 1; }}
for a in 127.0.0.2 127.0.0.3 127.0.0.4; do wait_port $a 8080; done
wait_port 127.0.0.1 15001
wait_log "endpoints changed" 127.0.0.3
ask() {{
  for _ in $(seq 12); do
    exec 3<>/dev/tcp/127.0.0.1/15001
    printf 'GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n' >&3
    timeout 5 cat <&3 | tail -1
    echo
    exec 3<&-
  done | sort | uniq -c | awk '{{printf "%s=%s ", $2, $1}}'
  echo
}}
echo "two: $(ask)"
echo "127.0.0.4 backend.test" >> {hosts}
wait_log "endpoints changed" 127.0.0.4
echo "three: $(ask)"
printf '127.0.0.1 localhost\n' > {hosts}
wait_log "keeping the last good addresses" backend.test
echo "kept: $(ask)"
kill $(jobs -p) 2>/dev/null || true
"#,
        hosts = hosts.display(),
        server = server.display(),
        bin = attache_tests::attache_bin().display(),
        config = config.display(),
        log = dir.path().join("attache.log").display(),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "-n", "bash", "-c", &script])
        .output()
        .expect("unshare (util-linux), ip (iproute2) and python3 are installed by .ci/run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("attache.log")).unwrap_or_default();
    let line = |tag: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or_else(|| panic!("no {tag} line: {stdout}\n{log}"))
            .to_owned()
    };
    // Round robin over both addresses of the name: six each.
    assert_eq!(line("two:"), "two: 127.0.0.2=6 127.0.0.3=6 ", "{log}");
    // A third address joined on a refresh: four each.
    assert_eq!(
        line("three:"),
        "three: 127.0.0.2=4 127.0.0.3=4 127.0.0.4=4 ",
        "{log}"
    );
    // The name is gone (the lookup fails): the last good set still serves.
    assert_eq!(
        line("kept:"),
        "kept: 127.0.0.2=4 127.0.0.3=4 127.0.0.4=4 ",
        "{log}"
    );
    assert!(log.contains("keeping the last good addresses"), "{log}");
}
