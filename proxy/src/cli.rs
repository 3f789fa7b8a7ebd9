//! The command line: `run`, `dev`, `validate`, `schema` and `inject`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use attache_config::{Config, Inbound, ListenAddr, UpstreamUrl};
use clap::{Parser, Subcommand};

use crate::logging::{self, LogFormat};

/// Where `attache dev` reads the flags' targeting key when it sets the flags up itself.
const DEV_TARGETING_KEY_HEADER: &str = "x-user-id";

const EXAMPLES: &str = "\
Examples:
  attache dev                                  # demo app behind attache on 127.0.0.1:15006
  attache dev --app 3000                       # your app on 127.0.0.1:3000 behind attache
  attache dev --flags flags.json               # flags (flagd format) as x-flag-* headers + OFREP
  attache run -c /etc/attache/config.yaml      # as a sidecar, from a config file
  attache validate -c config.yaml              # check a file, list every error
  attache authz explain -c config.yaml --peer spiffe://prod.example/ns/web/sa/frontend \\
      --method POST --path /v1/orders          # which rule allows or denies, and why
  attache schema > schema.json                 # JSON schema for editors
  attache inject deploy.yaml | kubectl apply -f -   # add the sidecar to manifests
  attache install --inject-namespace shop | kubectl apply -f -   # automatic injection

Ports: inbound 15006, outbound 15001, admin 15000 (loopback).
Logs: ATTACHE_LOG (or RUST_LOG), e.g. ATTACHE_LOG=debug.";

#[derive(Parser)]
#[command(name = "attache", version, about = "A light sidecar HTTP proxy for service meshes", after_help = EXAMPLES)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "ATTACHE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Worker threads (default: the CPUs this process may run on, capped by a container CPU
    /// limit). One runs everything on a single thread.
    #[arg(long, global = true, env = "ATTACHE_WORKERS")]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run from a config file (the sidecar and ambassador roles).
    Run {
        /// The config file, YAML or JSON.
        #[arg(short, long, env = "ATTACHE_CONFIG")]
        config: PathBuf,
    },
    /// A zero-config local proxy in front of an app; without --app, in front of a demo app
    /// that echoes what it receives.
    Dev {
        /// The app to proxy to: http://127.0.0.1:3000, localhost:3000, or a port on this
        /// machine (3000).
        #[arg(long, value_parser = app_arg)]
        app: Option<UpstreamUrl>,
        /// Where to listen [default: 127.0.0.1:15006].
        #[arg(long)]
        listen: Option<ListenAddr>,
        /// Where the admin endpoints listen [default: 127.0.0.1:15000].
        #[arg(long)]
        admin: Option<ListenAddr>,
        /// Start from this config file instead of the built-in defaults.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Keep idempotency records in this Redis (e.g. redis://127.0.0.1:6379) instead of
        /// memory.
        #[arg(long)]
        redis: Option<String>,
        /// A flag file in flagd's format (JSON or YAML), watched for changes; every flag is
        /// delivered to the app as an `x-flag-<key>` header and served over OFREP, with the
        /// targeting key taken from the `x-user-id` header [default: ./flags.json when it
        /// exists].
        #[arg(long)]
        flags: Option<PathBuf>,
        /// Where OFREP is served when flags are loaded [default: 127.0.0.1:8016].
        #[arg(long)]
        ofrep: Option<ListenAddr>,
        /// Limit each client address to this rate (100/s, 600/m, 5/10s; the burst is the
        /// count), with the `RateLimit` fields on every response so the budget shows.
        #[arg(long, value_parser = |s: &str| s.parse::<attache_config::Rate>())]
        rate_limit: Option<attache_config::Rate>,
        /// Serve the Context API (counters, maps, sets under a context name), in memory, on
        /// this address [default when given alone: 127.0.0.1:3500].
        #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:3500")]
        context: Option<ListenAddr>,
    },
    /// Check config files; prints every error and exits 1 if any file is invalid.
    Validate {
        /// Files to check (`-` for standard input).
        #[arg(short, long = "config", required = true, num_args = 1..)]
        config: Vec<PathBuf>,
    },
    /// Print the JSON schema of the config file.
    Schema,
    /// Add attache to Kubernetes manifests: every pod template (Pod, Deployment, StatefulSet,
    /// DaemonSet, ReplicaSet, Job, CronJob, List) gets attache as a native sidecar, its config
    /// from a ConfigMap. Prints the manifests; `kubectl apply -f -` them.
    Inject {
        /// Files or directories of manifests (`-` or none: standard input).
        inputs: Vec<PathBuf>,
        /// The image to inject [default: the one matching this attache; the annotation
        /// `attache.dev/image` wins].
        #[arg(long)]
        image: Option<String>,
        /// A classic container in `containers` instead of a native sidecar (clusters before
        /// Kubernetes 1.29).
        #[arg(long)]
        classic: bool,
        /// Transparent capture: an init container (the only one with NET_ADMIN) redirects the
        /// pod's TCP through attache, so the app needs no port changes.
        #[arg(long)]
        transparent: bool,
    },
    /// Print the cluster side of automatic injection for `kubectl apply -f -`: a namespace,
    /// the webhook's ServiceAccount, certificate, Deployment and Service, the
    /// MutatingWebhookConfiguration (namespaces labelled attache.dev/inject=enabled), and the
    /// default sidecar config in each --inject-namespace.
    Install {
        /// Where the webhook runs.
        #[arg(long, default_value = "attache-system")]
        namespace: String,
        /// The attache image [default: the one matching this attache].
        #[arg(long)]
        image: Option<String>,
        /// A namespace to get the default sidecar config (ConfigMap `attache`); repeatable.
        #[arg(long = "inject-namespace")]
        inject_namespaces: Vec<String>,
        /// Ask cert-manager for the webhook's certificate instead of making one.
        #[arg(long, conflicts_with_all = ["ca_file", "cert_file", "key_file"])]
        cert_manager: bool,
        /// Reuse this CA (PEM) instead of making one (with --cert-file and --key-file: the
        /// output is then the same on every run).
        #[arg(long, requires_all = ["cert_file", "key_file"])]
        ca_file: Option<PathBuf>,
        /// Reuse this serving certificate (PEM, for `attache-webhook.<namespace>.svc`).
        #[arg(long, requires = "ca_file")]
        cert_file: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long, requires = "ca_file")]
        key_file: Option<PathBuf>,
        /// Stop pod creations when the webhook cannot be reached or cannot read a review.
        #[arg(long)]
        fail_closed: bool,
    },
    /// Program a pod's nat rules for transparent capture (run by an init container with
    /// NET_ADMIN): inbound TCP to the inbound port, the app's outbound TCP to the capture
    /// port, sparing attache's own UID, loopback and the exclusions.
    InitIptables(crate::kube::iptables::Settings),
    /// The mutating admission webhook: injects attache into pods as they are created, as
    /// `attache inject` would (HTTPS; `POST /inject`, `GET /ready`, `GET /metrics`).
    Webhook {
        /// Where to listen.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: ListenAddr,
        /// The serving certificate chain (PEM), read again when it changes.
        #[arg(long, env = "ATTACHE_WEBHOOK_CERT")]
        cert_file: String,
        /// Its private key (PEM).
        #[arg(long, env = "ATTACHE_WEBHOOK_KEY")]
        key_file: String,
        /// Refuse pods whose review cannot be read [default: allow them, uninjected, with a
        /// warning].
        #[arg(long)]
        fail_closed: bool,
        /// The image to inject [default: the one matching this attache].
        #[arg(long)]
        image: Option<String>,
        /// Inject a classic container instead of a native sidecar.
        #[arg(long)]
        classic: bool,
        /// Inject transparent capture into every pod.
        #[arg(long)]
        transparent: bool,
    },
    /// Authorization tools (`spec.authz`).
    Authz {
        #[command(subcommand)]
        command: AuthzCommand,
    },
}

#[derive(Subcommand)]
enum AuthzCommand {
    /// The decision a config's policy makes for one request, and why, rule by rule; exits 0
    /// on allow, 1 on deny (the same code the proxy runs).
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        /// The caller: a SPIFFE ID, `plaintext`, or `tls` (TLS without a client certificate).
        #[arg(long)]
        peer: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// The path as sent (it is normalized as the proxy does).
        #[arg(long)]
        path: String,
        /// The host the request names (without port).
        #[arg(long)]
        host: Option<String>,
        /// The caller's address, for `networks`.
        #[arg(long, default_value = "127.0.0.1")]
        addr: std::net::IpAddr,
        /// A request header, `name=value` (repeat for more).
        #[arg(long = "header", value_parser = header_arg)]
        headers: Vec<(String, String)>,
    },
}

fn header_arg(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("{s:?}: expected name=value"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Schema => {
            print!("{}", attache_config::schema_json());
            ExitCode::SUCCESS
        }
        Command::Validate { config } => validate(&config),
        Command::Authz {
            command:
                AuthzCommand::Explain {
                    config,
                    peer,
                    method,
                    path,
                    host,
                    addr,
                    headers,
                },
        } => {
            let c = match attache_config::load_file_with(&config, &crate::authz::check) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let q = crate::authz::Question {
                peer,
                method,
                path,
                host,
                addr,
                headers,
            };
            match crate::authz::explain(&c, &q, &mut std::io::stdout()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("attache authz explain: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Inject {
            inputs,
            image,
            classic,
            transparent,
        } => crate::kube::inject_command(
            &inputs,
            &crate::kube::inject::Options {
                image,
                classic,
                transparent,
            },
        ),
        Command::Install {
            namespace,
            image,
            inject_namespaces,
            cert_manager,
            ca_file,
            cert_file,
            key_file,
            fail_closed,
        } => {
            let existing = match (ca_file, cert_file, key_file) {
                (Some(ca), Some(cert), Some(key)) => {
                    let read = |p: &Path| {
                        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
                    };
                    match (read(&ca), read(&cert), read(&key)) {
                        (Ok(ca), Ok(cert), Ok(key)) => {
                            Some(crate::kube::install::Existing { ca, cert, key })
                        }
                        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                            eprintln!("error: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                _ => None,
            };
            crate::kube::install_command(&crate::kube::install::Settings {
                namespace,
                image: image.unwrap_or_else(crate::kube::sidecar::default_image),
                inject_namespaces,
                cert_manager,
                existing,
                fail_closed,
            })
        }
        Command::InitIptables(settings) => crate::kube::iptables::command(&settings),
        Command::Webhook {
            listen,
            cert_file,
            key_file,
            fail_closed,
            image,
            classic,
            transparent,
        } => {
            logging::init(cli.log_format);
            crate::kube::webhook::command(crate::kube::webhook::Settings {
                listen: listen.0,
                cert_file,
                key_file,
                fail_closed,
                inject: crate::kube::inject::Options {
                    image,
                    classic,
                    transparent,
                },
            })
        }
        Command::Run { config } => {
            logging::init(cli.log_format);
            match attache_config::load_file_with(&config, &crate::authz::check) {
                Ok(c) => serve(cli.workers, c, Some(config), false, false),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev {
            app,
            listen,
            admin,
            config,
            redis,
            flags,
            ofrep,
            rate_limit,
            context,
        } => {
            logging::init(cli.log_format);
            let (mut c, demo) = match dev_config(app, listen, admin, config.as_deref(), redis) {
                Ok(made) => made,
                Err(code) => return code,
            };
            dev_flags(&mut c, flags, ofrep);
            if let Some(rate) = rate_limit {
                dev_rate_limit(&mut c, rate);
            }
            if let Some(listen) = context {
                c.spec.context.get_or_insert_with(Default::default).listen = listen;
            }
            serve(cli.workers, c, config, demo, true)
        }
    }
}

/// `attache dev`'s config: the file's, or the dev defaults, with the command line's app,
/// addresses and Redis over it. `Err` when the file cannot be loaded (the error is printed);
/// the flag says the demo app must be started (no app anywhere).
fn dev_config(
    app: Option<UpstreamUrl>,
    listen: Option<ListenAddr>,
    admin: Option<ListenAddr>,
    config: Option<&Path>,
    redis: Option<String>,
) -> Result<(Config, bool), ExitCode> {
    // Without --app (and without an app in the file), the demo app is started and its
    // address filled in; until then the inbound points at this placeholder.
    let demo_placeholder = || UpstreamUrl {
        scheme: attache_config::Scheme::Http,
        host: "127.0.0.1".into(),
        port: 0,
        userinfo: None,
    };
    let dev_listen = ListenAddr::new([127, 0, 0, 1], 15006);
    let mut c = match config {
        Some(path) => match attache_config::load_file_with(path, &crate::authz::check) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return Err(ExitCode::FAILURE);
            }
        },
        None => Config::dev(demo_placeholder(), dev_listen),
    };
    let inbound = c
        .spec
        .inbound
        .get_or_insert_with(|| Inbound::new(demo_placeholder(), dev_listen));
    let demo = app.is_none() && inbound.app.port == 0;
    if let Some(app) = app {
        inbound.app = app;
    }
    if let Some(listen) = listen {
        inbound.listen = listen;
    }
    if let Some(admin) = admin {
        c.spec.admin.listen = admin;
    }
    // A laptop sees replays with no setup: keyed POST and PATCH requests are enforced,
    // in memory unless --redis says where.
    let idem = c.spec.idempotency.get_or_insert_with(Default::default);
    if let Some(url) = redis {
        idem.store = url;
        if idem.scope_secret.is_none() {
            idem.scope_secret = Some(
                std::env::var("ATTACHE_IDEMPOTENCY_SECRET")
                    .unwrap_or_else(|_| "attache-dev".to_owned()),
            );
        }
    }
    Ok((c, demo))
}

/// `attache dev --rate-limit`: one inbound limit per client address, advertised on every
/// response, added to the file's limits (replacing one of the same name).
fn dev_rate_limit(c: &mut Config, rate: attache_config::Rate) {
    let rl = c.spec.rate_limits.get_or_insert_with(Default::default);
    rl.limits.retain(|l| l.name != "dev");
    rl.limits.push(attache_config::RateLimit {
        key: attache_config::LimitKey::ClientAddress,
        headers_on_allowed: true,
        ..attache_config::RateLimit::new("dev", rate)
    });
}

/// `attache dev`'s flags: a flag file, and OFREP when asked for.
fn dev_flags(c: &mut Config, flags: Option<PathBuf>, ofrep: Option<ListenAddr>) {
    // Flags with no setup: ./flags.json (or --flags FILE), every flag delivered as a
    // header and in x-flags, OFREP on its usual port, and the targeting key read from
    // `x-user-id` (so a `fractional` rollout or a per-user rule can be tried with curl;
    // a config file's `spec.flags` is taken as it is).
    let flag_file = flags.or_else(|| {
        let default = PathBuf::from("flags.json");
        default.is_file().then_some(default)
    });
    if let Some(file) = flag_file {
        let f = c.spec.flags.get_or_insert_with(|| attache_config::Flags {
            deliver: attache_config::Deliver {
                flags: vec!["*".to_owned()],
                combined_header: Some("x-flags".to_owned()),
                ..Default::default()
            },
            context: attache_config::FlagContext {
                targeting_key: vec![attache_config::ContextSource {
                    header: Some(DEV_TARGETING_KEY_HEADER.to_owned()),
                    cookie: None,
                    query: None,
                    baggage: None,
                    name: None,
                }],
                ..Default::default()
            },
            ..Default::default()
        });
        f.sources.push(attache_config::FlagSource {
            name: None,
            file: Some(file.display().to_string()),
            url: None,
            poll_interval: attache_config::Duration(std::time::Duration::from_secs(30)),
            timeout: attache_config::Duration(std::time::Duration::from_secs(10)),
            headers: Default::default(),
            optional: false,
        });
    }
    if let (Some(addr), Some(f)) = (ofrep, c.spec.flags.as_mut()) {
        f.ofrep = Some(attache_config::Ofrep {
            listen: addr,
            ..Default::default()
        });
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        // A Kubernetes manifest: the attache configs of its ConfigMaps, with its pods' probes.
        if f.as_os_str() != "-"
            && let Ok(text) = std::fs::read_to_string(f)
            && let Some(m) = crate::kube::inject::manifest(&text)
        {
            if m.configs.is_empty() {
                eprintln!("{}: no attache config in its ConfigMaps", f.display());
                ok = false;
            }
            for (at, config) in &m.configs {
                let name = format!("{}: {at}", f.display());
                let env = |var: &str| std::env::var(var).ok();
                match attache_config::load_str_with(config, &name, &env, &crate::authz::check) {
                    Ok(c) => {
                        println!("{name}: valid");
                        for w in crate::authz::warnings(&c, &m.probes) {
                            eprintln!("{name}: warning: {w}");
                        }
                    }
                    Err(e) => {
                        ok = false;
                        eprintln!("{e}");
                    }
                }
            }
            continue;
        }
        // `-`: standard input, e.g. `kubectl get configmap ... | attache validate -c -`.
        let loaded = if f.as_os_str() == "-" {
            match attache_config::read_capped(std::io::stdin()) {
                Ok(text) => attache_config::load_str_with(
                    &text,
                    "<stdin>",
                    &|name| std::env::var(name).ok(),
                    &crate::authz::check,
                ),
                Err(e) => {
                    eprintln!("<stdin>: cannot read: {e}");
                    ok = false;
                    continue;
                }
            }
        } else {
            attache_config::load_file_with(f, &crate::authz::check)
        };
        let name = if f.as_os_str() == "-" {
            "<stdin>".to_owned()
        } else {
            f.display().to_string()
        };
        match loaded {
            Ok(c) => {
                println!("{name}: valid");
                for w in crate::authz::warnings(&c, &[]) {
                    eprintln!("{name}: warning: {w}");
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Each proxied connection holds two file descriptors (the client's and the upstream's), and
/// many systems start processes with a soft limit of 1,024 under a far higher hard limit: the
/// soft limit is raised to the hard one, as Go programs do, so a laptop's `attache dev` does not
/// refuse connections at about 500 clients. A limit that stays low is logged.
fn raise_open_file_limit() {
    const LOW: u64 = 4096;
    let before = rlimit::Resource::NOFILE.get().map(|(soft, _)| soft).ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if now < LOW => tracing::warn!(
            limit = now,
            "the open-file limit is low: each proxied connection takes two; raise it (ulimit -n, or LimitNOFILE= under systemd)"
        ),
        Ok(now) if before.is_some_and(|b| b < now) => {
            tracing::debug!(from = before, to = now, "raised the open-file limit")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

/// `--app` as a developer types it: a URL, `host:port` (http is implied), or a bare port on
/// this machine.
fn app_arg(s: &str) -> Result<UpstreamUrl, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u16>() {
            Ok(port) if port > 0 => format!("http://127.0.0.1:{port}").parse(),
            _ => Err(format!("{s} is not a port (1-65535)")),
        };
    }
    if s.contains("://") {
        s.parse()
    } else {
        format!("http://{s}").parse()
    }
}

fn serve(
    workers: Option<usize>,
    mut config: Config,
    source: Option<PathBuf>,
    demo: bool,
    dev: bool,
) -> ExitCode {
    raise_open_file_limit();
    crate::allocator::tune();
    let workers = workers
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    // One worker: tokio's current-thread scheduler, on the main thread. The multi-thread one
    // with a single worker still pays for work stealing and cross-thread wakeups: 3% more CPU
    // per request and a higher p99 on a core of its own, 15-20% more when the core is shared
    // (bench/RESULTS.md).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let rt = match builder.thread_name("attache-worker").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("attache: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        if demo {
            let addr = crate::demo::start().await?;
            if let Some(inbound) = config.spec.inbound.as_mut() {
                inbound.app.host = addr.ip().to_string();
                inbound.app.port = addr.port();
            }
            let listen = config.spec.inbound.as_ref().map(|i| i.listen.to_string()).unwrap_or_default();
            tracing::info!(app = %addr, "no --app given: started the demo app, which echoes what it receives");
            eprintln!("\n  attache dev is proxying http://{listen} -> demo app (JSON echo)\n  try:  curl -s http://{listen}/hello\n        curl -s http://{}/metrics", config.spec.admin.listen);
            if let Some(o) = config.spec.flags.as_ref().and_then(|f| f.ofrep.as_ref()) {
                eprintln!("        curl -s -X POST http://{}/ofrep/v1/evaluate/flags", o.listen);
            }
            eprintln!();
        }
        if let Err(e) = config.check() {
            anyhow::bail!("{e}");
        }
        if dev
            && !demo
            && let Some(inbound) = &config.spec.inbound
        {
            eprintln!(
                "\n  attache dev is proxying http://{} -> http://{}\n  metrics, config, flags: http://{}/\n",
                inbound.listen,
                inbound.app.authority(),
                config.spec.admin.listen
            );
        }
        crate::server::run(config, source, dev).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("attache: {e:#}");
            let taken = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
            });
            if dev && taken {
                eprintln!(
                    "attache: another process (another attache dev?) has that port; pick others with --listen, --admin and --ofrep"
                );
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::app_arg;

    #[test]
    fn app_takes_a_url_a_host_and_port_or_a_port() {
        let authority = |s: &str| app_arg(s).map(|u| u.authority());
        assert_eq!(
            authority("http://127.0.0.1:3000").as_deref(),
            Ok("127.0.0.1:3000")
        );
        assert_eq!(authority("localhost:8080").as_deref(), Ok("localhost:8080"));
        assert_eq!(authority("3000").as_deref(), Ok("127.0.0.1:3000"));
        assert_eq!(authority(" 3000 ").as_deref(), Ok("127.0.0.1:3000"));
        // An https app is reached over TLS (the system's roots).
        let https = app_arg("https://127.0.0.1:8443").expect("https");
        assert_eq!(https.scheme, attache_config::Scheme::Https);
        assert_eq!(https.authority(), "127.0.0.1:8443");
        assert!(app_arg("ftp://x:1").is_err());
        assert!(app_arg("70000").is_err(), "not a port, not a host");
    }
}
