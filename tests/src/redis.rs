//! A real `redis-server` for the tests, on a free loopback port, persistence off, killed when
//! dropped. `.ci/run` installs redis-server when it is missing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// Its working directory: a replica writes the RDB it receives there, and a server loads
    /// what it finds there, so no two servers may share one.
    _dir: Option<crate::TempDir>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_on(crate::free_port(), &[])
    }

    /// On `port`, with extra `redis-server` arguments (e.g. `--maxmemory-policy allkeys-lru`).
    pub fn start_on(port: u16, args: &[&str]) -> Self {
        let dir = crate::TempDir::new();
        let child = Command::new("redis-server")
            .current_dir(dir.path())
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        let pid = child.id().to_string();
        let mut r = Self {
            port,
            child: Some(child),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ours, not another process that got the port first.
        while !r
            .cli(&["INFO", "server"])
            .lines()
            .any(|l| l.trim() == format!("process_id:{pid}"))
        {
            assert!(
                r.child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_none()),
                "redis-server on port {port} exited (port taken?)"
            );
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Successful calls of `cmd` so far (`INFO commandstats`: `calls` less `failed_calls`, so
    /// an `EVALSHA` answered `NOSCRIPT`, and reloaded, is not counted), e.g. `evalsha`.
    pub fn calls(&self, cmd: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{cmd}:");
        let Some(fields) = stats.lines().find_map(|l| l.trim().strip_prefix(&prefix)) else {
            return 0;
        };
        let field = |name: &str| -> u64 {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        field("calls").saturating_sub(field("failed_calls"))
    }

    /// Stops the server's process (SIGSTOP): it still accepts connections (the kernel does) and
    /// never answers, the slowest failure there is, until [`Redis::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .expect("a running server");
        let sent = Command::new("kill").args([sig, &pid.to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real three-primary Redis Cluster on loopback ports, made with `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<Redis>,
    _dir: crate::TempDir,
}

impl Cluster {
    pub fn start() -> Self {
        let dir = crate::TempDir::new();
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let port = crate::free_port();
                // The cluster bus port too comes from the allocator: by default it is
                // port + 10000, which another test (or the ephemeral range) may hold.
                let bus = crate::free_port().to_string();
                let conf = dir.path().join(format!("nodes-{port}.conf"));
                Redis::start_on(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        conf.to_str().unwrap_or_default(),
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes, _dir: dir }
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Script calls across the nodes.
    pub fn script_calls(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.calls("evalsha") + n.calls("eval"))
            .sum()
    }
}

/// A primary, a replica and one Sentinel watching them (quorum 1, quick failover).
pub struct Sentinel {
    pub primary: Redis,
    pub replica: Redis,
    pub sentinel: Redis,
    _dir: crate::TempDir,
}

impl Sentinel {
    pub const SERVICE: &'static str = "attache";

    pub fn start() -> Self {
        let primary = Redis::start();
        let replica = Redis::start_on(
            crate::free_port(),
            &["--replicaof", "127.0.0.1", &primary.port.to_string()],
        );
        let dir = crate::TempDir::new();
        let port = crate::free_port();
        let conf = dir.write(
            "sentinel.conf",
            &format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {s} 127.0.0.1 {p} 1\nsentinel down-after-milliseconds {s} 1000\nsentinel failover-timeout {s} 5000\n",
                s = Self::SERVICE,
                p = primary.port
            ),
        );
        let child = Command::new("redis-server")
            .current_dir(dir.path())
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        let sentinel = Redis {
            port,
            child: Some(child),
            _dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sentinel
            .cli(&["SENTINEL", "get-master-addr-by-name", Self::SERVICE])
            .contains(&primary.port.to_string())
        {
            assert!(Instant::now() < deadline, "sentinel never saw the primary");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            primary,
            replica,
            sentinel,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{}",
            self.sentinel.port,
            Self::SERVICE
        )
    }

    /// The port of the primary the Sentinel names now.
    pub fn primary_port(&self) -> String {
        self.sentinel
            .cli(&["SENTINEL", "get-master-addr-by-name", Self::SERVICE])
            .lines()
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}
