//! Flag sources in the running proxy (specs/feature-flags.md §5, §10): the sources and their
//! watchers, which outlive config snapshots (a reload that leaves `spec.flags.sources` alone
//! keeps them and their last good documents), and their status for admin `GET /flags`. The
//! flags step of each leg is built in `steps/flags.rs`; the OFREP listener is served by `serve.rs`.
//!
//! - A file source has a [`FileWatch`]: its directory's events (a
//!   ConfigMap swap included), debounced 200 ms, and a check every `file_poll_interval` for
//!   filesystems without inotify. A missing file is retried
//!   6 × 200 ms. Unchanged content is a no-op.
//! - A URL source is polled every `poll_interval` ± 10% with `If-None-Match`; 304 is a no-op.
//!   HTTPS uses rustls and the system's CA store.
//! - Parsing and compiling run in `spawn_blocking`; a failure never replaces the last good
//!   document. It is logged at WARN, counted, and shown on admin `GET /flags`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use attache_config::FlagSource;
use attache_filters::flags::eval::FlagSet;
use attache_filters::flags::store::FlagStore;
use attache_filters::metrics::Metrics;
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::kept::Kept;
use crate::watch::{FileWatch, Trigger};

const MISSING_RETRIES: u32 = 6;
/// A URL source's document may not be larger than this.
const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// A flag file's bytes, refused past [`MAX_DOCUMENT_BYTES`] (as an HTTP source's body is)
/// without reading the rest.
async fn read_document(path: &Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the file is larger than {} MiB, the most a flag document may be",
                MAX_DOCUMENT_BYTES / (1024 * 1024)
            ),
        ));
    }
    Ok(bytes)
}

/// One source's state, for `/flags`.
#[derive(Debug, Clone, Default)]
struct SourceStatus {
    /// `loading` until the first attempt ends, then `ok` or `error`.
    state: &'static str,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    etag: Option<String>,
}

/// What decides whether the sources must be restarted on reload.
#[derive(Clone, PartialEq)]
struct SourcesKey {
    sources: Vec<FlagSource>,
    file_poll_interval: Duration,
}

/// The sources of one `spec.flags.sources` list, their watchers and the merged store.
pub struct Running {
    pub store: Arc<FlagStore>,
    sources: Vec<FlagSource>,
    status: Arc<Mutex<Vec<SourceStatus>>>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Running {
    /// Every source that readiness waits for has loaded once.
    pub fn ready(&self) -> bool {
        self.sources
            .iter()
            .enumerate()
            .all(|(i, s)| s.optional || self.store.loaded(i))
    }

    /// The admin view: each source's state and each flag's.
    pub fn admin(&self) -> Value {
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        let unix = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        let sources: Vec<Value> = self
            .sources
            .iter()
            .zip(status.iter())
            .map(|(src, st)| {
                json!({
                    "name": src.label(),
                    "location": src.location(),
                    "optional": src.optional,
                    "state": st.state,
                    "last_success_unix": unix(st.last_success),
                    "last_error": st.last_error,
                    "etag": st.etag,
                })
            })
            .collect();
        let snap = self.store.snapshot();
        let flags: BTreeMap<&String, Value> = snap
            .flags
            .iter()
            .map(|(key, f)| {
                let compile_error = match &f.targeting {
                    Some(Err(e)) => Some(e.as_str()),
                    _ => None,
                };
                (
                    key,
                    json!({
                        "source": self.sources.get(f.source).map(FlagSource::location),
                        "state": if f.enabled { "ENABLED" } else { "DISABLED" },
                        "variants": f.variants,
                        "default_variant": f.default_variant,
                        "compile_error": compile_error,
                    }),
                )
            })
            .collect();
        json!({ "sources": sources, "flags": flags, "warnings": snap.warnings })
    }
}

/// The running sources, kept across reloads.
pub struct Flags {
    current: Kept<SourcesKey, Arc<Running>>,
    metrics: Arc<Metrics>,
}

impl Flags {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            current: Kept::default(),
            metrics,
        }
    }

    /// The running sources for `flags`: the current ones when the list is unchanged, else
    /// new ones (the old watchers stop once no snapshot uses them).
    pub fn running(&self, flags: &attache_config::Flags) -> Arc<Running> {
        let key = SourcesKey {
            sources: flags.sources.clone(),
            file_poll_interval: flags.file_poll_interval.get(),
        };
        self.current.get_or_insert(key, |key, previous| {
            let poll = key.file_poll_interval;
            let store = Arc::new(FlagStore::new(flags.sources.len()));
            // A source that was already loaded keeps its flags through the reload: requests never
            // see a window without them while its watcher starts again.
            if let Some(old) = previous {
                for (index, source) in flags.sources.iter().enumerate() {
                    let Some(was) = old.sources.iter().position(|s| s == source) else {
                        continue;
                    };
                    if let Some(set) = old.store.good(was) {
                        let mut set = (*set).clone();
                        for flag in set.flags.values_mut() {
                            Arc::make_mut(flag).source = index;
                        }
                        let _ = store.install(index, set);
                    }
                }
            }
            let status = Arc::new(Mutex::new(vec![
                SourceStatus {
                    state: "loading",
                    ..SourceStatus::default()
                };
                flags.sources.len()
            ]));
            let mut tasks = Vec::new();
            for (index, source) in flags.sources.iter().enumerate() {
                let ctx = SourceCtx {
                    index,
                    label: source.label(),
                    store: store.clone(),
                    status: status.clone(),
                    metrics: self.metrics.family(),
                };
                let task = match (&source.file, &source.url) {
                    (Some(file), _) => tokio::spawn(watch_file(ctx, PathBuf::from(file), poll)),
                    (None, Some(url)) => tokio::spawn(poll_url(ctx, source.clone(), url.clone())),
                    (None, None) => continue,
                };
                tasks.push(task.abort_handle());
            }
            Arc::new(Running {
                store,
                sources: flags.sources.clone(),
                status,
                tasks,
            })
        })
    }

    /// `spec.flags` is gone: stop the sources once no snapshot uses them.
    pub fn clear(&self) {
        self.current.clear();
    }
}

/// What a source's task needs.
struct SourceCtx {
    index: usize,
    label: String,
    store: Arc<FlagStore>,
    status: Arc<Mutex<Vec<SourceStatus>>>,
    metrics: Arc<attache_filters::flags::metrics::FlagFamilies>,
}

/// The document format: by extension or `Content-Type`, else a leading `{` means JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Yaml,
    Sniff,
}

fn parse_document(bytes: &[u8], format: Format) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let json = match format {
        Format::Json => true,
        Format::Yaml => false,
        Format::Sniff => text.trim_start().starts_with('{'),
    };
    if json {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
    } else {
        attache_config::parse_document(text).map_err(|e| format!("invalid YAML: {e}"))
    }
}

impl SourceCtx {
    fn set_status(&self, f: impl FnOnce(&mut SourceStatus)) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = status.get_mut(self.index) {
            f(s);
        }
    }

    /// `result` is `ok`, `unchanged`, `invalid` or `unreachable`.
    fn record(&self, result: &'static str, error: Option<String>) {
        self.metrics.source_load(&self.label, result);
        match error {
            None => self.set_status(|s| {
                s.state = "ok";
                s.last_success = Some(SystemTime::now());
                s.last_error = None;
            }),
            Some(e) => {
                tracing::warn!(source = %self.label, error = %e, "flag source failed; keeping its last good flags");
                self.set_status(|s| {
                    s.state = "error";
                    s.last_error = Some(e);
                });
            }
        }
    }

    /// Parses and compiles off the runtime, then publishes or records the failure.
    async fn load(&self, bytes: Vec<u8>, format: Format) -> bool {
        let index = self.index;
        let parsed = tokio::task::spawn_blocking(move || {
            let doc = parse_document(&bytes, format)?;
            FlagSet::parse_source(&doc, index).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the parser failed: {e}")));
        match parsed {
            Ok(set) => {
                for w in &set.warnings {
                    tracing::warn!(source = %self.label, "flag loaded with a problem: {w}");
                }
                let count = set.flags.len();
                if let Err(e) = self.store.install(index, set) {
                    self.record("invalid", Some(e.to_string()));
                    return false;
                }
                tracing::info!(source = %self.label, flags = count, "flags loaded");
                self.record("ok", None);
                true
            }
            Err(e) => {
                self.store.fail(
                    index,
                    attache_filters::flags::parse::LoadError {
                        path: "$".into(),
                        message: e.clone(),
                    },
                );
                self.record("invalid", Some(e));
                false
            }
        }
    }
}

/// What the periodic check compares: the target's identity, size and mtime.
fn stat(path: &Path) -> Option<(u64, u64, Option<SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.modified().ok()))
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

async fn watch_file(ctx: SourceCtx, path: PathBuf, poll: Duration) {
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Format::Json,
        Some("yaml" | "yml") => Format::Yaml,
        _ => Format::Sniff,
    };
    let mut watch = FileWatch::new(&path, poll, "flag file");
    let mut last: Option<u64> = None;
    // Whether the content hashed in `last` loaded: unchanged content that failed is still
    // failing, and must not read as a success.
    let mut loaded = false;
    let mut last_stat;
    let mut event = true;
    loop {
        // Read, with retries while the file is missing (mid-swap, or not yet created).
        let mut attempt = 0;
        let read = loop {
            match read_document(&path).await {
                Ok(b) => break Ok(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < MISSING_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(crate::watch::DEBOUNCE).await;
                }
                Err(e) => break Err(e),
            }
        };
        match read {
            Ok(bytes) => {
                let hash = content_hash(&bytes);
                last_stat = stat(&path);
                if last == Some(hash) {
                    if event && loaded {
                        ctx.record("unchanged", None);
                    }
                } else {
                    last = Some(hash);
                    loaded = ctx.load(bytes, format).await;
                }
            }
            Err(e) => {
                // Forget the content, so the same file coming back loads again.
                if last.is_some() || event {
                    ctx.record(
                        "unreachable",
                        Some(format!("cannot read {}: {e}", path.display())),
                    );
                }
                last = None;
                last_stat = None;
            }
        }
        // Wait for a change: a directory event (debounced) or a poll that sees one.
        event = loop {
            if watch.changed().await == Trigger::Event {
                break true;
            }
            let now = stat(&path);
            let changed = now != last_stat || now.is_none() != last.is_none();
            if changed
                || now.is_some()
                    && read_document(&path).await.ok().map(|b| content_hash(&b)) != last
            {
                break false;
            }
        };
    }
}

/// The connector for URL sources: `http://`, and `https://` with rustls against the system's
/// CA store (`SSL_CERT_FILE` or `SSL_CERT_DIR` name another). Without any CA certificate,
/// only `http://` works, and an `https://` source says why.
fn url_connector()
-> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>
{
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| {
            format!("no CA certificates for https:// (install ca-certificates, or set SSL_CERT_FILE): {e}")
        })?;
    Ok(builder.https_or_http().enable_http1().build())
}

async fn poll_url(ctx: SourceCtx, source: FlagSource, url: String) {
    let connector = match url_connector() {
        Ok(c) => c,
        Err(e) => {
            ctx.record("unreachable", Some(e));
            return;
        }
    };
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let headers = crate::telemetry::header_lines(&source.headers);
    let mut etag: Option<HeaderValue> = None;
    let interval = source.poll_interval.get();
    let timeout = source.timeout.get();
    // Errors name the URL as `/flags` shows it: without its credentials.
    let shown = source.location();
    loop {
        let mut builder = Request::get(url.as_str());
        for (k, v) in &headers {
            builder = builder.header(k, v);
        }
        if let Some(tag) = &etag {
            builder = builder.header(http::header::IF_NONE_MATCH, tag);
        }
        match builder.body(http_body_util::Empty::new()) {
            Err(e) => ctx.record("unreachable", Some(format!("invalid request: {e}"))),
            Ok(req) => {
                let fetched = tokio::time::timeout(timeout, async {
                    let res = client.request(req).await.map_err(|e| {
                        format!("GET {shown}: {}", attache_filters::errors::error_chain(&e))
                    })?;
                    let (parts, body) = res.into_parts();
                    let bytes = Limited::new(body, MAX_DOCUMENT_BYTES)
                        .collect()
                        .await
                        .map_err(|e| format!("GET {shown}: reading the body: {e}"))?
                        .to_bytes();
                    Ok::<_, String>((parts, bytes))
                })
                .await
                .unwrap_or_else(|_| Err(format!("GET {shown}: no answer within {timeout:?}")));
                match fetched {
                    Err(e) => ctx.record("unreachable", Some(e)),
                    Ok((parts, _)) if parts.status == http::StatusCode::NOT_MODIFIED => {
                        ctx.record("unchanged", None);
                    }
                    Ok((parts, _)) if !parts.status.is_success() => {
                        ctx.record(
                            "unreachable",
                            Some(format!("GET {shown}: HTTP {}", parts.status)),
                        );
                    }
                    Ok((parts, bytes)) => {
                        let ct = parts
                            .headers
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_ascii_lowercase();
                        let format = if ct.contains("yaml") {
                            Format::Yaml
                        } else if ct.contains("json") {
                            Format::Json
                        } else {
                            Format::Sniff
                        };
                        if ctx.load(bytes.to_vec(), format).await {
                            etag = parts.headers.get(http::header::ETAG).cloned();
                            let shown = etag
                                .as_ref()
                                .and_then(|e| e.to_str().ok())
                                .map(str::to_owned);
                            ctx.set_status(|s| s.etag = shown);
                        }
                    }
                }
            }
        }
        // ± 10% so replicas do not poll in step.
        let jitter = 0.9 + rand_unit() * 0.2;
        tokio::time::sleep(interval.mul_f64(jitter)).await;
    }
}

/// A number in [0, 1) from the clock's low bits; jitter needs no better.
fn rand_unit() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}
