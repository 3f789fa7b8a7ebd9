//! The access log (specs/trace-context.md §11): one JSON line per request, written when its
//! response ends. The line is formatted where the request ends, straight into a shared
//! buffer; a writer thread of its own empties the buffer every 100 ms (sooner when it fills)
//! with one write. The request path never waits on the output: past 4 MiB of unwritten lines,
//! lines are dropped and counted.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::families::ExportFamilies;
use crate::metrics::Metrics;

/// Where lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// Unwritten lines beyond which new ones are dropped.
const MAX_BUFFERED: usize = 4 * 1024 * 1024;
/// Buffered bytes that wake the writer before its next tick.
const WAKE_AT: usize = 64 * 1024;

struct Buffer {
    lines: Mutex<String>,
    ready: Condvar,
}

/// The access log's sending half. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    buffer: Arc<Buffer>,
    output: Output,
    metrics: Arc<ExportFamilies>,
}

impl AccessLog {
    /// Starts the writer thread. It ends once every `AccessLog` is gone and the buffer is
    /// written.
    pub fn start(output: Output, metrics: Arc<Metrics>) -> Self {
        let metrics: Arc<ExportFamilies> = metrics.family();
        let buffer = Arc::new(Buffer {
            lines: Mutex::new(String::with_capacity(WAKE_AT * 2)),
            ready: Condvar::new(),
        });
        let weak = Arc::downgrade(&buffer);
        let counter = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name("attache-access-log".into())
            .spawn(move || {
                let mut spare = String::with_capacity(WAKE_AT * 2);
                while let Some(buffer) = weak.upgrade() {
                    {
                        let lines = buffer.lines.lock().unwrap_or_else(|p| p.into_inner());
                        let (mut lines, _) = buffer
                            .ready
                            .wait_timeout_while(lines, Duration::from_millis(100), |l| {
                                l.len() < WAKE_AT
                            })
                            .unwrap_or_else(|p| p.into_inner());
                        std::mem::swap(&mut *lines, &mut spare);
                    }
                    drop(buffer);
                    if !spare.is_empty() {
                        write_out(output, &spare, &counter);
                        spare.clear();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the access log writer: {e}");
        }
        Self {
            buffer,
            output,
            metrics,
        }
    }

    /// Appends a request's line without waiting on the output.
    pub fn send(&self, entry: &Entry<'_>) {
        let mut lines = self.buffer.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() >= MAX_BUFFERED {
            drop(lines);
            self.metrics.access_log_dropped.inc();
            return;
        }
        entry.write_to(&mut lines);
        if lines.len() >= WAKE_AT {
            self.buffer.ready.notify_one();
        }
    }

    /// Writes what is buffered now, on the calling thread (at exit).
    pub fn flush(&self) {
        let pending =
            std::mem::take(&mut *self.buffer.lines.lock().unwrap_or_else(|p| p.into_inner()));
        write_out(self.output, &pending, &self.metrics);
    }
}

/// Writes `text`; lines that a closed or failing output loses are counted as dropped (and the
/// first failure logged): attache keeps serving.
fn write_out(output: Output, text: &str, metrics: &ExportFamilies) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if text.is_empty() {
        return;
    }
    let written = match output {
        Output::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
        Output::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
    };
    if let Err(e) = written {
        let lines = text.bytes().filter(|&b| b == b'\n').count();
        metrics.access_log_dropped.inc_by(lines as u64);
        WARNED.call_once(|| {
            tracing::warn!(error = %e, ?output, "the access log output failed; its lines are dropped and counted in attache_access_log_dropped_total");
        });
    }
}

/// One request, as the access log records it.
#[derive(Debug)]
pub struct Entry<'a> {
    pub timestamp_unix_nanos: u64,
    pub direction: &'a str,
    pub method: &'a str,
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: Option<u16>,
    pub duration: std::time::Duration,
    pub request_bytes: Option<u64>,
    pub response_bytes: u64,
    pub client_address: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub trace_id: Option<u128>,
    pub span_id: Option<u64>,
    pub sampled: Option<bool>,
    pub error: Option<&'a str>,
    /// What the layers had to say in the log (`Fact::log_fields`), after the fixed fields.
    pub facts: Option<&'a crate::facts::Facts>,
}

impl Entry<'_> {
    /// The JSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut s = String::with_capacity(384);
        self.write_to(&mut s);
        s
    }

    /// Appends the JSON line, newline included, to `s`. Numbers are written by hand: this
    /// runs once per request, and `core::fmt` for floats and 128-bit hex costs more than the
    /// rest of the line.
    pub fn write_to(&self, s: &mut String) {
        s.push_str("{\"timestamp\":\"");
        rfc3339(s, self.timestamp_unix_nanos);
        s.push_str("\",\"direction\":");
        json_str(s, self.direction);
        s.push_str(",\"method\":");
        json_str(s, self.method);
        s.push_str(",\"authority\":");
        opt_str(s, self.authority);
        s.push_str(",\"path\":");
        json_str(s, self.path);
        s.push_str(",\"protocol\":");
        json_str(s, self.protocol);
        s.push_str(",\"status\":");
        opt_u64(s, self.status.map(u64::from));
        s.push_str(",\"duration_ms\":");
        let micros = self.duration.as_micros() as u64;
        push_u64(s, micros / 1000);
        s.push('.');
        push_padded(s, micros % 1000, 3);
        s.push_str(",\"request_bytes\":");
        opt_u64(s, self.request_bytes);
        s.push_str(",\"response_bytes\":");
        push_u64(s, self.response_bytes);
        s.push_str(",\"client_address\":");
        opt_str(s, self.client_address);
        s.push_str(",\"upstream\":");
        opt_str(s, self.upstream);
        s.push_str(",\"request_id\":");
        opt_str(s, self.request_id);
        s.push_str(",\"trace_id\":");
        match self.trace_id {
            Some(t) => {
                s.push('"');
                crate::codec::hex::push(s, &t.to_be_bytes());
                s.push('"');
            }
            None => s.push_str("null"),
        }
        s.push_str(",\"span_id\":");
        match self.span_id {
            Some(t) => {
                s.push('"');
                crate::codec::hex::push(s, &t.to_be_bytes());
                s.push('"');
            }
            None => s.push_str("null"),
        }
        s.push_str(",\"sampled\":");
        match self.sampled {
            Some(b) => s.push_str(if b { "true" } else { "false" }),
            None => s.push_str("null"),
        }
        s.push_str(",\"error\":");
        opt_str(s, self.error);
        for fact in self.facts.iter().flat_map(|f| f.iter()) {
            fact.log_fields(&mut |name, value| {
                s.push_str(",\"");
                s.push_str(name);
                s.push_str("\":");
                match value {
                    crate::facts::Value::Str(v) => json_str(s, &v),
                    crate::facts::Value::Int(v) => s.push_str(&v.to_string()),
                    crate::facts::Value::Bool(v) => s.push_str(if v { "true" } else { "false" }),
                }
            });
        }
        s.push_str("}\n");
    }
}

fn push_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend(buf[i..].iter().map(|b| *b as char));
}

/// `v` in exactly `width` decimal digits, zero-padded.
fn push_padded(out: &mut String, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    for i in (0..width.min(20)).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend(buf[..width.min(20)].iter().map(|b| *b as char));
}

fn opt_u64(out: &mut String, v: Option<u64>) {
    match v {
        Some(v) => push_u64(out, v),
        None => out.push_str("null"),
    }
}

fn opt_str(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

fn json_str(out: &mut String, v: &str) {
    if !v.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push('"');
        out.push_str(v);
        out.push('"');
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-11-23T14:58:37.123Z` from nanoseconds since the epoch (UTC, civil calendar).
pub fn rfc3339(out: &mut String, unix_nanos: u64) {
    let secs = unix_nanos / 1_000_000_000;
    let millis = (unix_nanos / 1_000_000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    push_padded(out, y as u64, 4);
    out.push('-');
    push_padded(out, m as u64, 2);
    out.push('-');
    push_padded(out, d as u64, 2);
    out.push('T');
    push_padded(out, rem / 3600, 2);
    out.push(':');
    push_padded(out, (rem / 60) % 60, 2);
    out.push(':');
    push_padded(out, rem % 60, 2);
    out.push('.');
    push_padded(out, millis, 3);
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_every_field() {
        let e = Entry {
            timestamp_unix_nanos: 1_795_359_517_123_000_000,
            direction: "inbound",
            method: "GET",
            authority: Some("shop\"x"),
            path: "/a\nb",
            protocol: "1.1",
            status: Some(200),
            duration: std::time::Duration::from_micros(1500),
            request_bytes: Some(0),
            response_bytes: 12,
            client_address: Some("127.0.0.1"),
            upstream: Some("app"),
            request_id: None,
            trace_id: Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
            span_id: Some(0x00f067aa0ba902b7),
            sampled: Some(true),
            error: None,
            facts: None,
        };
        let line = e.to_line();
        assert!(line.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "2026-11-22T14:58:37.123Z");
        assert_eq!(v["authority"], "shop\"x");
        assert_eq!(v["path"], "/a\nb");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["response_bytes"], 12);
        assert_eq!(v["request_id"], serde_json::Value::Null);
        assert_eq!(v.as_object().unwrap().len(), 17);
    }
}
