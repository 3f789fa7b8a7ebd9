//! End-to-end test support: the real `attache` binary started as a child process, small real
//! upstream apps on loopback sockets, and HTTP clients. Nothing is mocked: requests cross real
//! TCP connections and are parsed by real HTTP stacks on both sides.

#![forbid(unsafe_code)]

pub mod app;
pub mod client;
pub mod context_suite;
pub mod metrics;
pub mod otlp;
pub mod pki;
pub mod redis;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use app::App;

/// A loopback port nobody listens on right now, and never handed out before in this test
/// process: tests run in parallel threads, and two of them asking before either binds would
/// otherwise be able to get the same port.
///
/// Ports come from below the kernel's ephemeral range. A port that `bind(0)` picks is an
/// ephemeral one, which any outgoing connection (a test client's, attache's own to an app) may
/// take as its local port between this call and attache binding it; the ports below the range
/// are never handed out that way.
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    static START: OnceLock<u32> = OnceLock::new();
    let low: u32 = 10_000;
    let high: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
        .max(low + 1_000);
    let span = high - low;
    // Where this process starts in the range: random, so test binaries run side by side
    // rarely meet.
    let start = *START.get_or_init(|| {
        (std::collections::hash_map::RandomState::new().hash_one(std::process::id())
            % u64::from(span)) as u32
    });
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for i in 0..span {
        let port = (low + (start + given.len() as u32 + i) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    // The whole range is busy: an ephemeral port, as a last resort.
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on loopback");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Path to the `attache` binary, built once per test process (a no-op when up to date).
pub fn attache_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build(&["-p", "attache", "--bin", "attache"]).join("attache"))
}

/// The example `name` of the filters crate (`filters/examples/<name>.rs`), built.
pub fn filters_example(name: &str) -> PathBuf {
    build(&["-p", "attache-filters", "--example", name])
        .join("examples")
        .join(name)
}

/// Runs `cargo build` with `args` in this test's profile; returns `target/<profile>`.
fn build(args: &[&str]) -> PathBuf {
    // target/<profile>/deps/<test> → target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q"]).args(args);
    // Cargo gives this process the test crate's package variables; build scripts that
    // declare them as inputs (ring's does) would otherwise rebuild on every switch
    // between this build and one from a shell.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*key)
        {
            cmd.env_remove(&*key);
        }
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
    profile_dir
}

/// A scratch directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "attache-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ports for one attache instance.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub inbound: u16,
    pub outbound: u16,
    pub admin: u16,
}

impl Ports {
    pub fn new() -> Self {
        Self {
            inbound: free_port(),
            outbound: free_port(),
            admin: free_port(),
        }
    }
}

impl Default for Ports {
    fn default() -> Self {
        Self::new()
    }
}

/// A config with an inbound listener in front of `app` and the admin port; `extra` is appended
/// under `spec:` (indent it by two spaces).
pub fn sidecar_config(ports: Ports, app: SocketAddr, extra: &str) -> String {
    format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
metadata: {{ name: e2e }}
spec:
  inbound:
    listen: 127.0.0.1:{}
    app: http://{app}
  admin:
    listen: 127.0.0.1:{}
{extra}",
        ports.inbound, ports.admin
    )
}

/// A running attache process, killed when dropped. Its stderr goes to a log file that is
/// printed if the test fails.
pub struct Attache {
    child: Option<Child>,
    pub ports: Ports,
    pub dir: TempDir,
    log: PathBuf,
}

impl Attache {
    /// `attache run -c <config>`; waits until `/ready` answers 200.
    pub fn run(ports: Ports, config: &str) -> Self {
        Self::run_with_env(ports, config, &[])
    }

    /// As [`Attache::run`], with extra environment variables.
    pub fn run_with_env(ports: Ports, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new();
        let path = dir.write("config.yaml", config);
        let args = ["run", "-c", path.to_str().unwrap_or_default()];
        let mut a = Self::spawn_with_env(ports, dir, &args, env);
        a.wait_ready();
        a
    }

    /// `attache run` as a sidecar in front of `app`, on fresh ports; `extra` goes under
    /// `spec:` (see [`sidecar_config`]).
    pub fn sidecar(app: SocketAddr, extra: &str) -> Self {
        let ports = Ports::new();
        Self::run(ports, &sidecar_config(ports, app, extra))
    }

    /// [`Attache::sidecar`] with `workers` runtime threads (the harness's default is 2; 1 runs
    /// tokio's current-thread scheduler).
    pub fn sidecar_on(app: SocketAddr, extra: &str, workers: usize) -> Self {
        let ports = Ports::new();
        let workers = workers.to_string();
        Self::run_with_env(
            ports,
            &sidecar_config(ports, app, extra),
            &[("ATTACHE_WORKERS", &workers)],
        )
    }

    /// Any attache command line; does not wait.
    pub fn spawn(ports: Ports, dir: TempDir, args: &[&str]) -> Self {
        Self::spawn_with_env(ports, dir, args, &[])
    }

    pub fn spawn_with_env(ports: Ports, dir: TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::spawn_in(ports, dir, args, env, &cwd)
    }

    /// As [`Attache::spawn_with_env`], with `cwd` as the working directory.
    pub fn spawn_in(
        ports: Ports,
        dir: TempDir,
        args: &[&str],
        env: &[(&str, &str)],
        cwd: &Path,
    ) -> Self {
        Self::launch(Command::new(attache_bin()), ports, dir, args, env, cwd)
    }

    /// attache started by another program that then runs it, e.g. `prlimit --nofile=256:8192`.
    pub fn spawn_under(ports: Ports, dir: TempDir, wrapper: &[&str], args: &[&str]) -> Self {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper program");
        let mut cmd = Command::new(program);
        cmd.args(wrapper_args).arg(attache_bin());
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::launch(cmd, ports, dir, args, &[], &cwd)
    }

    fn launch(
        mut cmd: Command,
        ports: Ports,
        dir: TempDir,
        args: &[&str],
        env: &[(&str, &str)],
        cwd: &Path,
    ) -> Self {
        let log = dir.path().join("attache.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout file");
        let child = cmd
            .args(args)
            .current_dir(cwd)
            .env("ATTACHE_LOG", "info")
            .env("ATTACHE_WORKERS", "2")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start attache");
        Self {
            child: Some(child),
            ports,
            dir,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    pub fn inbound(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.inbound))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.inbound)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.admin)
    }

    /// Polls `/ready` for up to 20 s.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                panic!("attache exited early ({status}):\n{}", self.log_text());
            }
            if client::blocking_get(&self.admin_url("/ready")).is_ok_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("attache never became ready:\n{}", self.log_text());
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The admin port's `/metrics` text.
    pub fn metrics_text(&self) -> String {
        client::blocking_get(&self.admin_url("/metrics"))
            .expect("GET /metrics")
            .1
    }

    /// The current value of one series (`name{labels}`, as attache writes it), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metrics::value(&self.metrics_text(), series)
    }

    /// Replaces the config file with `config` (written aside, then renamed over, as config
    /// tools do) and waits up to 10 s for the reload to succeed.
    pub async fn reconfigure(&self, config: &str) {
        let series = "attache_config_reloads_total{result=\"success\"}";
        let before = self.metric(series).unwrap_or(0.0);
        crate::pki::replace(&self.config_path(), config);
        assert!(
            eventually(10, async || self.metric(series).unwrap_or(0.0) > before).await,
            "the new config was never applied:\n{}",
            self.log_text()
        );
    }

    /// Fails the test unless each sample (`name{labels} value`) is in `/metrics`, with that
    /// very value.
    pub fn assert_metrics(&self, samples: &[&str]) {
        let text = self.metrics_text();
        for sample in samples {
            assert!(metrics::has(&text, sample), "missing {sample}:\n{text}");
        }
    }

    /// The access log lines written so far (stdout), parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("stdout.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits up to `secs` for access log lines matching `pred`.
    pub fn wait_access_log(
        &self,
        secs: u64,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let lines: Vec<_> = self.access_log().into_iter().filter(|l| pred(l)).collect();
            if !lines.is_empty() || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Peak and current resident memory of the process, in KiB (`VmHWM`, `VmRSS`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for Attache {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- attache log ----\n{}", self.log_text());
        }
    }
}

/// Runs a future with a time limit, failing the test if it is exceeded.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test step did not finish within {secs}s"))
}

/// Retries `f` every 50 ms for up to `secs` until it returns true.
pub async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
