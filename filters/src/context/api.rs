//! The HTTP side of the Context API (spec §2–§4): paths and methods into [`Op`]s, bodies read
//! within their limits, preconditions from `If-Match` / `If-None-Match`, `Idempotency-Key`
//! on mutating requests, and outcomes into JSON answers with their `ETag`.
//!
//! ```text
//! POST   /v1/contexts                          {"prefix":"order-"} -> a fresh name
//! GET    /v1/contexts/{ctx}                    its objects
//! DELETE /v1/contexts/{ctx}                    all of them
//! GET|POST|PUT|DELETE  .../counters/{name}     {"value"} | {"by","min","max"} | {"value"}
//! GET|PUT|PATCH|DELETE .../maps/{name}         {"fields"} | {"set","delete","incr"} or a merge patch
//! GET    .../maps/{name}/fields/{field}
//! GET|POST|DELETE      .../sets/{name}         {"members","cursor","count"} | {"add","remove"}
//! GET|HEAD .../sets/{name}/members/{member}    204 or 404
//! GET|POST|DELETE      .../locks/{name}        the holder | {"owner","ttl","wait"} -> a lease
//! PUT|DELETE .../locks/{name}/leases/{lease}   renew {"ttl"} | release
//! ```
//!
//! Any write may carry `Attache-Fence: <lock>=<token>`: it applies only while the token is
//! the lock's latest grant.
//!
//! A map named `a/fields/b` is read as field `b` of map `a`, and a set named `a/members/b` as
//! member `b` of set `a`: names with those segments are not addressable whole.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::ContextError;
use super::memory::{MAX_PAGE, PAGE};
use super::names;
use super::op::{Change, Cond, Kind, Object, Op, Outcome, Shown, Ttl, TtlMode};

const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const FENCE: HeaderName = HeaderName::from_static("attache-fence");

/// What the request asks, once parsed.
pub struct Parsed {
    pub ctx: String,
    pub op: Op,
    /// The metric label of the operation: `counter_add`, `map_get`, ...
    pub label: &'static str,
    /// The `Idempotency-Key` of a mutating request.
    pub key: Option<Vec<u8>>,
    /// How long an acquire may wait for a held lock.
    pub wait: Duration,
}

/// What parsing needs to know.
pub struct Rules {
    /// Deliveries of a queue's message before it goes to the dead letters.
    pub max_attempts: u32,
    /// How long a dedupe id (or a CloudEvent's source and id) names one message.
    pub dedupe_window: Duration,
    pub max_message_bytes: usize,
    pub max_ttl: Duration,
    pub default_ttl: Option<Duration>,
    pub ttl_mode: TtlMode,
    pub max_members_per_request: usize,
}

/// The request's target, parsed: the context and what follows it.
pub enum Target<'a> {
    /// `POST /v1/contexts`.
    Contexts,
    Context(&'a str),
    /// `POST /v1/contexts/{ctx}/batch`.
    Batch(&'a str),
    Object {
        ctx: &'a str,
        kind: Kind,
        /// The object's name, and a map field or set member after it.
        name: &'a str,
        part: Option<String>,
    },
}

pub fn target(path: &str) -> Result<Target<'_>, ContextError> {
    let not_found = || ContextError::NotFound(format!("no Context API resource at {path}"));
    let rest = path.strip_prefix("/v1/contexts").ok_or_else(not_found)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Target::Contexts);
    }
    let rest = rest.strip_prefix('/').ok_or_else(not_found)?;
    let (ctx, rest) = match rest.split_once('/') {
        None => return Ok(Target::Context(rest)),
        Some((ctx, "")) => return Ok(Target::Context(ctx)),
        Some((ctx, "batch")) => return Ok(Target::Batch(ctx)),
        Some(split) => split,
    };
    let (plural, name) = rest.split_once('/').ok_or_else(not_found)?;
    let kind = Kind::from_plural(plural).ok_or_else(not_found)?;
    let part_of = |marker: &str| {
        name.rsplit_once(marker)
            .map(|(n, p)| (n, crate::codec::percent::decode_str(p, false)))
    };
    let (name, part) = match kind {
        Kind::Map => part_of("/fields/").map_or((name, None), |(n, p)| (n, Some(p))),
        Kind::Set => part_of("/members/").map_or((name, None), |(n, p)| (n, Some(p))),
        Kind::Lock => part_of("/leases/").map_or((name, None), |(n, p)| (n, Some(p))),
        Kind::Queue => queue_part(name),
        Kind::Counter => (name, None),
    };
    Ok(Target::Object {
        ctx,
        kind,
        name,
        part,
    })
}

/// A queue's path after its name: `messages`, `leases`, `leases/<receipt>`, `dead`,
/// `dead/<id>`.
fn queue_part(name: &str) -> (&str, Option<String>) {
    let decode = |p: &str| crate::codec::percent::decode_str(p, false);
    if let Some((n, r)) = name.rsplit_once("/leases/") {
        return (n, Some(format!("leases/{}", decode(r))));
    }
    if let Some((n, id)) = name.rsplit_once("/dead/") {
        return (n, Some(format!("dead/{}", decode(id))));
    }
    for part in ["messages", "leases", "dead"] {
        if let Some(n) = name.strip_suffix(part).and_then(|n| n.strip_suffix('/')) {
            return (n, Some(part.to_owned()));
        }
    }
    (name, None)
}

/// A duration as attache's config writes them: `250ms`, `30s`, `5m`, `24h`, `30d`, `1h30m`.
pub fn duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest.get(..digits)?.parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
        total = total.saturating_add(match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86_400),
            _ => return None,
        });
        rest = &rest[unit..];
    }
    Some(total)
}

fn invalid(message: impl Into<String>) -> ContextError {
    ContextError::InvalidRequest(message.into())
}

impl Rules {
    fn ttl(&self, ttl: Option<&str>, mode: Option<&str>) -> Result<Ttl, ContextError> {
        let given = match ttl {
            None => None,
            Some(t) => {
                let d = duration(t).filter(|d| !d.is_zero()).ok_or_else(|| {
                    invalid(format!("invalid ttl {t:?} (write it like 30s, 5m or 24h)"))
                })?;
                if d > self.max_ttl {
                    return Err(invalid(format!(
                        "ttl {t} is over the limit of {} s",
                        self.max_ttl.as_secs()
                    )));
                }
                Some(d)
            }
        };
        let mode = match mode {
            None => self.ttl_mode,
            Some("create") => TtlMode::Create,
            Some("touch") => TtlMode::Touch,
            Some("keep") => TtlMode::Keep,
            Some(other) => {
                return Err(invalid(format!(
                    "invalid ttl_mode {other:?} (create, touch or keep)"
                )));
            }
        };
        Ok(Ttl {
            given,
            default: self.default_ttl,
            mode,
        })
    }

    fn members(&self, what: &'static str, n: usize) -> Result<(), ContextError> {
        if n > self.max_members_per_request {
            return Err(ContextError::TooMany {
                what,
                limit: self.max_members_per_request as u64,
            });
        }
        Ok(())
    }
}

fn body<'a, T: Deserialize<'a> + Default>(bytes: &'a [u8]) -> Result<T, ContextError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("the request body: {e}")))
}

/// The preconditions of `headers`: `If-Match: "<version>"`, `If-None-Match: *`.
fn cond(headers: &HeaderMap) -> Result<Cond, ContextError> {
    let if_match = match headers.get(header::IF_MATCH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().strip_prefix('"')?.strip_suffix('"')?.parse().ok())
                .ok_or_else(|| invalid("If-Match must be one strong ETag, as an answer gave it"))?,
        ),
    };
    let if_none_match = match headers.get(header::IF_NONE_MATCH) {
        None => false,
        Some(v) if v.as_bytes().trim_ascii() == b"*" => true,
        Some(_) => return Err(invalid("If-None-Match: * is the only form writes take")),
    };
    let fence = match headers.get(FENCE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().split_once('='))
                .and_then(|(lock, token)| {
                    names::object(lock).ok()?;
                    Some((lock.to_owned(), token.parse().ok()?))
                })
                .ok_or_else(|| {
                    invalid("Attache-Fence must be <lock>=<token>, as a grant gave it")
                })?,
        ),
    };
    Ok(Cond {
        if_match,
        if_none_match,
        fence,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CounterAdd {
    by: Option<i64>,
    min: Option<i64>,
    max: Option<i64>,
    #[serde(flatten)]
    ttl: TtlFieldsLoose,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CounterSet {
    value: Option<i64>,
    #[serde(flatten)]
    ttl: TtlFieldsLoose,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MapPatch {
    #[serde(default)]
    set: BTreeMap<String, Value>,
    /// Per-field time to live: no store here offers it yet (it needs Redis's `HEXPIRE`, 7.4).
    #[serde(default)]
    field_ttl: Option<Value>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    incr: BTreeMap<String, i64>,
    #[serde(flatten)]
    ttl: TtlFieldsLoose,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MapPut {
    fields: Option<BTreeMap<String, Value>>,
    #[serde(flatten)]
    ttl: TtlFieldsLoose,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SetUpdate {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(flatten)]
    ttl: TtlFieldsLoose,
}

/// The TTL fields inside a flattened body (serde's `flatten` cannot deny unknown fields on
/// both sides, so the outer struct does the denying).
#[derive(Deserialize, Default)]
struct TtlFieldsLoose {
    ttl: Option<String>,
    ttl_mode: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Acquire {
    owner: Option<String>,
    ttl: Option<String>,
    wait: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LeaseMessages {
    max: Option<usize>,
    visibility: Option<String>,
    wait: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Visibility {
    visibility: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Renew {
    ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewContext {
    #[serde(default)]
    pub prefix: String,
}

/// The query's value for `name`, percent-decoded.
fn query(q: Option<&str>, name: &str) -> Option<String> {
    q?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| crate::codec::percent::decode_str(v, true))
    })
}

/// A lease's length: `ttl` (default 30 s), within `max_ttl`.
fn lease_ttl(ttl: Option<&str>, rules: &Rules) -> Result<Duration, ContextError> {
    let ttl = rules
        .ttl(ttl, None)?
        .given
        .unwrap_or(Duration::from_secs(30));
    Ok(ttl)
}

/// A `wait` of at most 60 s.
fn wait_of(w: Option<&str>) -> Result<Duration, ContextError> {
    match w {
        None => Ok(Duration::ZERO),
        Some(w) => duration(w)
            .filter(|w| *w <= Duration::from_secs(60))
            .ok_or_else(|| invalid(format!("invalid wait {w:?} (at most 60s)"))),
    }
}

/// A visibility timeout (default 30 s), at most `max_ttl`.
fn visibility_of(v: Option<&str>, rules: &Rules) -> Result<Duration, ContextError> {
    match v {
        None => Ok(Duration::from_secs(30)),
        Some(v) => duration(v)
            .filter(|d| *d <= rules.max_ttl)
            .ok_or_else(|| invalid(format!("invalid visibility {v:?}"))),
    }
}

/// An enqueued message: the body as text, its content type, `?delay=`, and its dedupe id
/// (`?dedupe_id=`, else a CloudEvent's `source` and `id`, binary mode or structured).
fn new_message(
    q: Option<&str>,
    headers: &HeaderMap,
    bytes: &[u8],
    rules: &Rules,
    id: String,
) -> Result<super::op::NewMessage, ContextError> {
    if bytes.len() > rules.max_message_bytes {
        return Err(ContextError::TooLarge {
            what: "a queue message",
            limit: rules.max_message_bytes as u64,
        });
    }
    let body = std::str::from_utf8(bytes)
        .map_err(|_| invalid("a queue message is text (JSON or UTF-8)"))?
        .to_owned();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_else(|| "application/json".into());
    let delay = match query(q, "delay") {
        None => Duration::ZERO,
        Some(d) => duration(&d)
            .filter(|d| *d <= rules.max_ttl)
            .ok_or_else(|| invalid(format!("invalid delay {d:?}")))?,
    };
    let cloudevent = match (header("ce-source"), header("ce-id")) {
        (Some(source), Some(id)) => Some(format!("ce:{source}\n{id}")),
        _ if content_type.starts_with("application/cloudevents+json") => {
            serde_json::from_str::<Value>(&body).ok().and_then(|e| {
                Some(format!(
                    "ce:{}\n{}",
                    e.get("source")?.as_str()?,
                    e.get("id")?.as_str()?
                ))
            })
        }
        _ => None,
    };
    let dedupe = query(q, "dedupe_id")
        .map(|d| format!("id:{d}"))
        .or(cloudevent)
        .map(|d| (d, rules.dedupe_window));
    Ok(super::op::NewMessage {
        id,
        body,
        content_type,
        delay,
        dedupe,
        traceparent: header("traceparent"),
        baggage: header("baggage"),
    })
}

/// Parses one object request into its operation; `lease` is the fresh id a lock granted (or
/// a message enqueued) by this request gets.
pub fn parse(
    method: &Method,
    path: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    bytes: &[u8],
    rules: &Rules,
    lease: String,
) -> Result<Parsed, ContextError> {
    let Target::Object {
        ctx,
        kind,
        name,
        part,
    } = target(path)?
    else {
        return Err(invalid("not an object path"));
    };
    names::context(ctx)?;
    names::object(name)?;
    let object = Object {
        kind,
        name: name.to_owned(),
    };
    let merge_patch = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/merge-patch+json"));
    let write = |change: Change, ttl: Ttl| -> Result<Op, ContextError> {
        Ok(Op::Write {
            object: object.clone(),
            cond: cond(headers)?,
            ttl,
            change,
        })
    };
    let wrong = || ContextError::MethodNotAllowed(method.to_string());
    let mut wait = Duration::ZERO;
    let part_str = part.as_deref().unwrap_or("");
    let (op, label) = match (kind, part_str, method.as_str()) {
        (Kind::Queue, "", "GET") => (get(&object, None, None), "queue_get"),
        (Kind::Queue, "messages", "POST") => (
            Op::Enqueue {
                name: name.to_owned(),
                message: new_message(q, headers, bytes, rules, lease)?,
            },
            "queue_enqueue",
        ),
        (Kind::Queue, "leases", "POST") => {
            let b: LeaseMessages = body(bytes)?;
            wait = wait_of(b.wait.as_deref())?;
            let max = b.max.unwrap_or(1);
            if max == 0 || max > rules.max_members_per_request {
                return Err(invalid(format!(
                    "max must be 1 to {}",
                    rules.max_members_per_request
                )));
            }
            let op = Op::Lease {
                name: name.to_owned(),
                max,
                visibility: visibility_of(b.visibility.as_deref(), rules)?,
                max_attempts: rules.max_attempts,
            };
            (op, "queue_lease")
        }
        (Kind::Queue, p, "DELETE") if p.starts_with("leases/") => (
            Op::Ack {
                name: name.to_owned(),
                receipt: p["leases/".len()..].to_owned(),
            },
            "queue_ack",
        ),
        (Kind::Queue, p, "PATCH") if p.starts_with("leases/") => {
            let b: Visibility = body(bytes)?;
            let op = Op::Extend {
                name: name.to_owned(),
                receipt: p["leases/".len()..].to_owned(),
                visibility: visibility_of(b.visibility.as_deref(), rules)?,
            };
            (op, "queue_extend")
        }
        (Kind::Queue, "dead", "GET") => (
            Op::DeadLetters {
                name: name.to_owned(),
            },
            "queue_dead",
        ),
        (Kind::Queue, p, "POST") if p.starts_with("dead/") => (
            Op::Replay {
                name: name.to_owned(),
                id: p["dead/".len()..].to_owned(),
            },
            "queue_replay",
        ),
        (Kind::Queue, "", "DELETE") => (
            Op::Delete {
                object: object.clone(),
                cond: cond(headers)?,
            },
            "queue_delete",
        ),
        (Kind::Queue, _, _) => return Err(wrong()),
        (Kind::Lock, "", "GET") => (get(&object, None, None), "lock_get"),
        (Kind::Lock, "", "POST") => {
            let b: Acquire = body(bytes)?;
            if let Some(w) = b.wait.as_deref() {
                wait = duration(w)
                    .filter(|w| *w <= Duration::from_secs(60))
                    .ok_or_else(|| invalid(format!("invalid wait {w:?} (at most 60s)")))?;
            }
            let op = Op::Acquire {
                name: name.to_owned(),
                owner: b.owner.unwrap_or_default(),
                lease,
                ttl: lease_ttl(b.ttl.as_deref(), rules)?,
            };
            (op, "lock_acquire")
        }
        (Kind::Lock, lease, "PUT") if !lease.is_empty() => {
            let b: Renew = body(bytes)?;
            let op = Op::Renew {
                name: name.to_owned(),
                lease: lease.to_owned(),
                ttl: lease_ttl(b.ttl.as_deref(), rules)?,
            };
            (op, "lock_renew")
        }
        (Kind::Lock, lease, "DELETE") if !lease.is_empty() => (
            Op::Release {
                name: name.to_owned(),
                lease: lease.to_owned(),
            },
            "lock_release",
        ),
        (Kind::Counter, "", "GET") => (get(&object, None, None), "counter_get"),
        (Kind::Counter, "", "POST") => {
            let b: CounterAdd = body(bytes)?;
            let ttl = rules.ttl(b.ttl.ttl.as_deref(), b.ttl.ttl_mode.as_deref())?;
            let change = Change::CounterAdd {
                by: b.by.unwrap_or(1),
                min: b.min.unwrap_or(i64::MIN),
                max: b.max.unwrap_or(i64::MAX),
            };
            (write(change, ttl)?, "counter_add")
        }
        (Kind::Counter, "", "PUT") => {
            let b: CounterSet = body(bytes)?;
            let value = b
                .value
                .ok_or_else(|| invalid("PUT needs {\"value\": <integer>}"))?;
            let ttl = rules.ttl(b.ttl.ttl.as_deref(), b.ttl.ttl_mode.as_deref())?;
            (write(Change::CounterSet { value }, ttl)?, "counter_set")
        }
        (Kind::Map, "", "GET") => {
            let fields = query(q, "fields").map(|f| {
                f.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            });
            (get(&object, fields, None), "map_get")
        }
        (Kind::Map, field, "GET") if !field.is_empty() => (
            Op::GetField {
                name: name.to_owned(),
                field: field.to_owned(),
            },
            "map_get_field",
        ),
        (Kind::Map, "", "PATCH") if merge_patch => {
            let patch = match serde_json::from_slice::<Value>(bytes) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(invalid("a merge patch of a map is a JSON object")),
                Err(e) => return Err(invalid(format!("the request body: {e}"))),
            };
            rules.members("the patch's fields", patch.len())?;
            let ttl = rules.ttl(query(q, "ttl").as_deref(), query(q, "ttl_mode").as_deref())?;
            (write(Change::MapMerge(patch), ttl)?, "map_patch")
        }
        (Kind::Map, "", "PATCH") => {
            let b: MapPatch = body(bytes)?;
            if b.field_ttl.is_some() {
                return Err(ContextError::NotImplemented(
                    "per-field TTL (field_ttl) needs a store with per-field expiry, Redis 7.4's HEXPIRE; this store keeps one TTL per object".into(),
                ));
            }
            rules.members(
                "the patch's fields",
                b.set.len() + b.delete.len() + b.incr.len(),
            )?;
            let ttl = rules.ttl(b.ttl.ttl.as_deref(), b.ttl.ttl_mode.as_deref())?;
            let change = Change::MapPatch {
                set: b.set,
                delete: b.delete,
                incr: b.incr,
            };
            (write(change, ttl)?, "map_patch")
        }
        (Kind::Map, "", "PUT") => {
            let b: MapPut = body(bytes)?;
            let fields = b
                .fields
                .ok_or_else(|| invalid("PUT needs {\"fields\": {...}}"))?;
            rules.members("the map's fields", fields.len())?;
            let ttl = rules.ttl(b.ttl.ttl.as_deref(), b.ttl.ttl_mode.as_deref())?;
            (write(Change::MapPut(fields), ttl)?, "map_put")
        }
        (Kind::Set, "", "GET") => {
            let number = |name: &str, default: usize| -> Result<usize, ContextError> {
                query(q, name).map_or(Ok(default), |v| {
                    v.parse()
                        .map_err(|_| invalid(format!("{name} must be a number")))
                })
            };
            let page = (
                number("cursor", 0)?,
                number("count", PAGE)?.clamp(1, MAX_PAGE),
            );
            (get(&object, None, Some(page)), "set_get")
        }
        (Kind::Set, member, "GET" | "HEAD") if !member.is_empty() => (
            Op::HasMember {
                name: name.to_owned(),
                member: member.to_owned(),
            },
            "set_has",
        ),
        (Kind::Set, "", "POST") => {
            let b: SetUpdate = body(bytes)?;
            rules.members("the request's members", b.add.len() + b.remove.len())?;
            let ttl = rules.ttl(b.ttl.ttl.as_deref(), b.ttl.ttl_mode.as_deref())?;
            let change = Change::SetUpdate {
                add: b.add,
                remove: b.remove,
            };
            (write(change, ttl)?, "set_update")
        }
        (_, "", "DELETE") => (
            Op::Delete {
                object: object.clone(),
                cond: cond(headers)?,
            },
            match kind {
                Kind::Counter => "counter_delete",
                Kind::Map => "map_delete",
                Kind::Set => "set_delete",
                Kind::Lock => "lock_delete",
                Kind::Queue => "queue_delete",
            },
        ),
        _ => return Err(wrong()),
    };
    Ok(Parsed {
        ctx: ctx.to_owned(),
        key: idempotency_key(&op, headers)?,
        op,
        label,
        wait,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    #[serde(default, rename = "if")]
    checks: Vec<BatchCheck>,
    ops: Vec<BatchOp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchCheck {
    /// `maps/order`.
    object: String,
    /// The version it must be at, as an answer's `ETag` gave it.
    etag: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchOp {
    method: String,
    /// The object, as after `/v1/contexts/{ctx}/`: `counters/stock`.
    path: String,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    if_match: Option<String>,
    #[serde(default)]
    fence: Option<String>,
}

/// `POST /v1/contexts/{ctx}/batch`: preconditions and ops (writes and deletes, each as it
/// would be sent alone, of distinct objects) into one all-or-nothing operation.
pub fn parse_batch(
    ctx: &str,
    bytes: &[u8],
    rules: &Rules,
    fresh_id: &dyn Fn() -> String,
) -> Result<Op, ContextError> {
    let b: BatchBody =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("the batch: {e}")))?;
    if b.ops.is_empty() {
        return Err(invalid("a batch needs at least one op"));
    }
    rules.members(
        "the batch's ops and preconditions",
        b.ops.len() + b.checks.len(),
    )?;
    let mut checks = Vec::with_capacity(b.checks.len());
    for (i, c) in b.checks.iter().enumerate() {
        let (plural, name) = c
            .object
            .split_once('/')
            .ok_or_else(|| invalid(format!("if[{i}].object: write it like maps/order")))?;
        let kind = Kind::from_plural(plural)
            .ok_or_else(|| invalid(format!("if[{i}].object: no type {plural:?}")))?;
        names::object(name)?;
        let version =
            c.etag.trim().trim_matches('"').parse().map_err(|_| {
                invalid(format!("if[{i}].etag: a strong ETag, as an answer gave it"))
            })?;
        checks.push((
            Object {
                kind,
                name: name.to_owned(),
            },
            version,
        ));
    }
    let mut ops = Vec::with_capacity(b.ops.len());
    let mut seen = std::collections::HashSet::new();
    for (i, o) in b.ops.iter().enumerate() {
        let method = Method::from_bytes(o.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid(format!("ops[{i}].method: not a method")))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in [(header::IF_MATCH, &o.if_match), (FENCE, &o.fence)] {
            if let Some(v) = value {
                let v =
                    HeaderValue::from_str(v).map_err(|_| invalid(format!("ops[{i}]: {v:?}")))?;
                headers.insert(name, v);
            }
        }
        let body = o.body.as_ref().map(Value::to_string).unwrap_or_default();
        let path = format!("/v1/contexts/{ctx}/{}", o.path);
        let parsed = parse(
            &method,
            &path,
            None,
            &headers,
            body.as_bytes(),
            rules,
            fresh_id(),
        )
        .map_err(|e| ContextError::Batch {
            at: format!("ops[{i}]"),
            error: Box::new(e),
        })?;
        let object = match &parsed.op {
            Op::Write {
                change: Change::MapMerge(_),
                ..
            } => None,
            Op::Write { object, .. } | Op::Delete { object, .. } => Some(object.clone()),
            Op::Enqueue { name, .. } => Some(Object {
                kind: Kind::Queue,
                name: name.clone(),
            }),
            _ => None,
        }
        .ok_or_else(|| {
            invalid(format!(
                "ops[{i}]: a batch holds writes and deletes of counters, maps and sets (merge patches aside), and enqueues"
            ))
        })?;
        if !seen.insert(object.name.clone()) {
            return Err(invalid(format!(
                "ops[{i}]: {object} is already changed by another op of the batch; one op per object"
            )));
        }
        ops.push(parsed.op);
    }
    Ok(Op::Batch { checks, ops })
}

fn get(object: &Object, fields: Option<Vec<String>>, page: Option<(usize, usize)>) -> Op {
    Op::Get {
        object: object.clone(),
        fields,
        page,
    }
}

/// The `Idempotency-Key` of a mutating request (reads ignore it).
pub fn idempotency_key(op: &Op, headers: &HeaderMap) -> Result<Option<Vec<u8>>, ContextError> {
    if !op.mutates() {
        return Ok(None);
    }
    match crate::idempotency::key::key(headers, &[IDEMPOTENCY_KEY], false) {
        Ok(k) => Ok(Some(k)),
        Err(crate::idempotency::key::KeyError::Missing) => Ok(None),
        Err(crate::idempotency::key::KeyError::Invalid(why)) => {
            Err(invalid(format!("Idempotency-Key: {why}")))
        }
    }
}

/// The fingerprint of a keyed request: a retry must be the same request (method, target and
/// body) to get the first outcome.
pub fn fingerprint(method: &Method, target: &str, bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(method.as_str());
    h.update([0]);
    h.update(target);
    h.update([0]);
    h.update(bytes);
    h.finalize().into()
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn json_response(status: StatusCode, value: &Value) -> Response<crate::Body> {
    let mut res = Response::new(crate::full(Bytes::from(value.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The answer of an outcome.
pub fn respond(outcome: &Outcome, replayed: bool, head: bool) -> Response<crate::Body> {
    let with_ttl = |mut v: Value, ttl_ms: &Option<u64>| {
        if let (Some(ms), Some(m)) = (ttl_ms, v.as_object_mut()) {
            m.insert("ttl_ms".into(), json!(ms));
        }
        v
    };
    let mut res = match outcome {
        Outcome::Object {
            shown,
            version,
            ttl_ms,
            created,
        } => {
            let v = match shown {
                Shown::Counter(value) => json!({ "value": value }),
                Shown::Map(fields) => json!({ "fields": fields }),
                Shown::Set {
                    members,
                    next,
                    count,
                } => json!({ "members": members, "cursor": next, "count": count }),
                Shown::Queue {
                    ready,
                    leased,
                    dead,
                } => json!({ "ready": ready, "leased": leased, "dead": dead }),
                Shown::Lock {
                    owner,
                    token,
                    expires_at_ms,
                } => {
                    json!({ "owner": owner, "token": token, "expires_at": rfc3339(*expires_at_ms) })
                }
            };
            let status = if *created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut res = json_response(status, &with_ttl(v, ttl_ms));
            res.headers_mut().insert(header::ETAG, etag(*version));
            res
        }
        Outcome::Field { value, version } => {
            let mut res = json_response(StatusCode::OK, &json!({ "value": value }));
            res.headers_mut().insert(header::ETAG, etag(*version));
            res
        }
        Outcome::Member(true) => empty(StatusCode::NO_CONTENT),
        Outcome::Member(false) => {
            if head {
                empty(StatusCode::NOT_FOUND)
            } else {
                crate::errors::problem_response(&ContextError::NotFound("no such member".into()))
            }
        }
        Outcome::SetUpdated {
            added,
            removed,
            count,
            version,
            ttl_ms,
        } => {
            let v = json!({ "added": added, "removed": removed, "count": count });
            let mut res = json_response(StatusCode::OK, &with_ttl(v, ttl_ms));
            res.headers_mut().insert(header::ETAG, etag(*version));
            res
        }
        Outcome::Deleted => empty(StatusCode::NO_CONTENT),
        Outcome::Enqueued { id, created } => {
            let status = if *created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(status, &json!({ "id": id }))
        }
        Outcome::Messages(messages) => {
            let list: Vec<Value> = messages.iter().map(message_json).collect();
            json_response(StatusCode::OK, &json!({ "messages": list }))
        }
        Outcome::Extended { visible_at_ms } => json_response(
            StatusCode::OK,
            &json!({ "visible_at": rfc3339(*visible_at_ms) }),
        ),
        Outcome::Batch(outcomes) => {
            let results: Vec<Value> = outcomes.iter().map(batch_result).collect();
            json_response(StatusCode::OK, &json!({ "results": results }))
        }
        Outcome::Lease {
            lease,
            token,
            expires_at_ms,
            granted,
        } => {
            let status = if *granted {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let left = expires_at_ms.saturating_sub(super::store::now_ms());
            json_response(
                status,
                &json!({ "lease": lease, "token": token, "expires_at": rfc3339(*expires_at_ms), "ttl_ms": left }),
            )
        }
        Outcome::Objects(objects) => {
            let list: Vec<Value> = objects
                .iter()
                .map(
                    |o| json!({ "type": o.kind.singular(), "name": o.name, "path": o.to_string() }),
                )
                .collect();
            json_response(StatusCode::OK, &json!({ "objects": list }))
        }
    };
    if replayed {
        res.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    res
}

/// A message as leases and dead letters show it: its body as JSON when it is JSON.
fn message_json(m: &super::op::Message) -> Value {
    let body = if m.content_type.contains("json") {
        serde_json::from_str(&m.body).unwrap_or_else(|_| Value::String(m.body.clone()))
    } else {
        Value::String(m.body.clone())
    };
    let mut v = json!({
        "id": m.id, "attempt": m.attempt, "body": body, "content_type": m.content_type,
        "enqueued_at": rfc3339(m.enqueued_at_ms),
    });
    if let Some(obj) = v.as_object_mut() {
        if !m.receipt.is_empty() {
            obj.insert("receipt".into(), json!(m.receipt));
        }
        if let Some(tp) = &m.traceparent {
            obj.insert("traceparent".into(), json!(tp));
        }
    }
    v
}

/// One op's result in a batch's answer: its status, its `etag` where it has one, and the body
/// it would have had alone.
fn batch_result(outcome: &Outcome) -> Value {
    let version = match outcome {
        Outcome::Object { version, .. }
        | Outcome::Field { version, .. }
        | Outcome::SetUpdated { version, .. } => Some(format!("\"{version}\"")),
        _ => None,
    };
    let single = respond(outcome, false, false);
    let status = single.status().as_u16();
    let body = match outcome {
        Outcome::Object {
            shown: Shown::Counter(v),
            ..
        } => json!({ "value": v }),
        Outcome::Object {
            shown: Shown::Map(fields),
            ..
        } => json!({ "fields": fields }),
        Outcome::SetUpdated {
            added,
            removed,
            count,
            ..
        } => json!({ "added": added, "removed": removed, "count": count }),
        Outcome::Enqueued { id, .. } => json!({ "id": id }),
        _ => Value::Null,
    };
    json!({ "status": status, "etag": version, "body": body })
}

fn rfc3339(unix_ms: u64) -> String {
    let mut out = String::with_capacity(24);
    crate::telemetry::access_log::rfc3339(&mut out, unix_ms.saturating_mul(1_000_000));
    out
}

fn empty(status: StatusCode) -> Response<crate::Body> {
    let mut res = Response::new(crate::empty());
    *res.status_mut() = status;
    res
}

/// The problem answer of `e`; a failed precondition carries the object's current ETag in its
/// body and header.
pub fn refuse(e: &ContextError) -> Response<crate::Body> {
    let mut res = crate::errors::problem_response(e);
    if let ContextError::PreconditionFailed {
        current: Some(tag), ..
    } = e
    {
        let doc = json!({
            "type": format!("{}{}", crate::errors::PROBLEM_BASE, crate::errors::Problem::slug(e)),
            "title": crate::errors::Problem::title(e),
            "status": 412,
            "detail": e.to_string(),
            "etag": tag,
        });
        let mut with_tag = Response::new(crate::full(Bytes::from(doc.to_string())));
        *with_tag.status_mut() = StatusCode::PRECONDITION_FAILED;
        *with_tag.headers_mut() = std::mem::take(res.headers_mut());
        if let Ok(v) = HeaderValue::from_str(tag) {
            with_tag.headers_mut().insert(header::ETAG, v);
        }
        res = with_tag;
    }
    res
}
