//! The Redis backend: every operation is one Lua script (`EVALSHA`, one round trip), so it is
//! atomic as the memory store's critical section is, and every key of a context shares the
//! Cluster hash tag `{<ctx>}`, so each script runs on one slot:
//!
//! - `<prefix>:{<ctx>}:o:<name>`: the object, a hash: `t` (its type: `c`, `m`, `s`, `l`),
//!   `v` (its version), and its data: a counter's `n`; a map's fields as `f:<field>` (the
//!   value's JSON text) with `nf`/`nb` (how many, how many bytes); a set's members as
//!   `m:<member>`; a lock's `owner`, `lease`, `token`. Its expiry is the key's own
//!   (`PEXPIREAT`), set in the same script as the data.
//! - `:ver`: the last version given out (versions only grow); `:fence`: each lock's latest
//!   fencing token (kept when the lock, or the whole context, goes); `:idx`: the names of the
//!   context's objects (for listing and deletion; expired names are pruned as they are met);
//!   `:r:<key>`: a keyed request's outcome, kept for `idempotency_retention`.
//!
//! Times come from the Redis server's clock (`TIME`). Numbers travel as strings where Lua's
//! doubles would round them: counters are changed by `HINCRBY` (exact 64-bit); bounds are
//! compared as doubles, exact within ±2^53. A merge patch whose values are not objects is a
//! plain patch; one that merges into a nested object reads the map, merges in Rust and writes
//! with a version check, again if another write came between (the only operation of two
//! round trips).

use std::collections::BTreeMap;

use redis::Script;
use serde_json::{Value, json};

use super::error::ContextError;
use super::op::{Change, Cond, Kind, Object, Op, Outcome, Shown};
use super::store::{Limits, Once, Ran, Store, StoreFuture};
use crate::redis::Redis;

const RUN: &str = include_str!("run.lua");

pub struct RedisStore {
    redis: Redis,
    prefix: String,
    limits: Limits,
    script: Script,
    /// After each write: wait for this many replicas to acknowledge it, this long at most.
    confirm: Option<(u32, std::time::Duration)>,
}

fn unavailable(e: redis::RedisError) -> ContextError {
    ContextError::Unavailable(e.to_string())
}

fn kind_code(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "c",
        Kind::Map => "m",
        Kind::Set => "s",
        Kind::Lock => "l",
        Kind::Queue => "q",
    }
}

fn kind_of(code: &str) -> Option<Kind> {
    match code {
        "c" => Some(Kind::Counter),
        "m" => Some(Kind::Map),
        "s" => Some(Kind::Set),
        "l" => Some(Kind::Lock),
        "q" => Some(Kind::Queue),
        _ => None,
    }
}

fn cond_json(c: &Cond) -> Value {
    json!({
        "if_match": c.if_match.map(|v| v.to_string()),
        "if_none_match": c.if_none_match,
        "fence": c.fence.as_ref().map(|(lock, token)| json!([lock, token.to_string()])),
    })
}

fn ms(d: Option<std::time::Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_millis() as u64))
}

/// The operation as the script reads it.
fn encode(op: &Op, limits: &Limits) -> Value {
    let bounds = json!({
        "value": limits.max_value_bytes,
        "map_bytes": limits.max_map_bytes,
        "map_fields": limits.max_map_fields,
        "set_members": limits.max_set_members,
    });
    match op {
        Op::Get {
            object,
            fields,
            page,
        } => json!({
            "op": "get", "name": object.name, "kind": kind_code(object.kind),
            "fields": fields, "page": page.map(|(from, count)| [from, count]),
        }),
        Op::GetField { name, field } => json!({"op": "get_field", "name": name, "field": field}),
        Op::HasMember { name, member } => {
            json!({"op": "has_member", "name": name, "member": member})
        }
        Op::Write {
            object,
            cond,
            ttl,
            change,
        } => {
            let change = match change {
                Change::CounterAdd { by, min, max } => json!({
                    "type": "counter_add", "by": by.to_string(),
                    "min": min.to_string(), "max": max.to_string(),
                }),
                Change::CounterSet { value } => {
                    json!({"type": "counter_set", "value": value.to_string()})
                }
                Change::MapPatch { set, delete, incr } => json!({
                    "type": "map_patch",
                    "set": set.iter().map(|(k, v)| (k.clone(), Value::String(v.to_string()))).collect::<serde_json::Map<_, _>>(),
                    "delete": delete,
                    "incr": incr.iter().map(|(k, v)| (k.clone(), Value::String(v.to_string()))).collect::<serde_json::Map<_, _>>(),
                }),
                Change::MapPut(fields) => json!({
                    "type": "map_put",
                    "set": fields.iter().map(|(k, v)| (k.clone(), Value::String(v.to_string()))).collect::<serde_json::Map<_, _>>(),
                }),
                // Turned into a patch before it gets here (`RedisStore::merge`).
                Change::MapMerge(_) => json!({"type": "unsupported"}),
                Change::SetUpdate { add, remove } => {
                    json!({"type": "set_update", "add": add, "remove": remove})
                }
            };
            json!({
                "op": "write", "name": object.name, "kind": kind_code(object.kind),
                "cond": cond_json(cond),
                "ttl": {"given": ms(ttl.given), "default": ms(ttl.default), "mode": match ttl.mode {
                    super::op::TtlMode::Create => "create",
                    super::op::TtlMode::Touch => "touch",
                    super::op::TtlMode::Keep => "keep",
                }},
                "change": change, "limits": bounds,
            })
        }
        Op::Delete { object, cond } => json!({
            "op": "delete", "name": object.name, "kind": kind_code(object.kind), "cond": cond_json(cond),
        }),
        Op::Acquire {
            name,
            owner,
            lease,
            ttl,
        } => json!({
            "op": "acquire", "name": name, "owner": owner, "lease": lease, "ttl": ttl.as_millis() as u64,
        }),
        Op::Renew { name, lease, ttl } => json!({
            "op": "renew", "name": name, "lease": lease, "ttl": ttl.as_millis() as u64,
        }),
        Op::Release { name, lease } => json!({"op": "release", "name": name, "lease": lease}),
        Op::Batch { checks, ops } => json!({
            "op": "batch",
            "checks": checks.iter().map(|(o, v)| json!([o.name, v.to_string()])).collect::<Vec<_>>(),
            "ops": ops.iter().map(|o| encode(o, limits)).collect::<Vec<_>>(),
        }),
        Op::Enqueue { name, message } => json!({
            "op": "enqueue", "name": name,
            "message": {
                "id": message.id, "body": message.body, "content_type": message.content_type,
                "delay": message.delay.as_millis() as u64,
                "dedupe": message.dedupe.as_ref().map(|(d, w)| json!([d, w.as_millis() as u64])),
                "traceparent": message.traceparent, "baggage": message.baggage,
            },
        }),
        Op::Lease {
            name,
            max,
            visibility,
            max_attempts,
        } => json!({
            "op": "lease", "name": name, "max": max,
            "visibility": visibility.as_millis() as u64, "max_attempts": max_attempts,
        }),
        Op::Ack { name, receipt } => json!({"op": "ack", "name": name, "receipt": receipt}),
        Op::Extend {
            name,
            receipt,
            visibility,
        } => json!({
            "op": "extend", "name": name, "receipt": receipt,
            "visibility": visibility.as_millis() as u64,
        }),
        Op::Bury { name, receipt } => json!({"op": "bury", "name": name, "receipt": receipt}),
        Op::DeadLetters { name } => json!({"op": "dead_letters", "name": name}),
        Op::Replay { name, id } => json!({"op": "replay", "name": name, "id": id}),
        Op::List => json!({"op": "list"}),
        Op::DeleteContext => json!({"op": "delete_context"}),
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn number(v: &Value, key: &str) -> u64 {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(0)
}

fn ttl_of(v: &Value) -> Option<u64> {
    v.get("ttl_ms")
        .filter(|t| !t.is_null())
        .map(|_| number(v, "ttl_ms"))
}

/// Map fields as the script gives them: names and JSON texts.
fn fields(v: &Value) -> Result<BTreeMap<String, Value>, ContextError> {
    let mut out = BTreeMap::new();
    if let Some(m) = v.as_object() {
        for (k, text) in m {
            let parsed = serde_json::from_str(text.as_str().unwrap_or("null"))
                .map_err(|e| ContextError::Unavailable(format!("a stored value: {e}")))?;
            out.insert(k.clone(), parsed);
        }
    }
    Ok(out)
}

/// The script's refusal, as the API's; within a batch, the op's or precondition's it came from.
fn refusal(v: &Value, op: &Op) -> ContextError {
    if let Op::Batch { checks, ops } = op {
        return match v.get("at") {
            Some(Value::Number(n)) => {
                let i = n.as_u64().unwrap_or(0) as usize;
                let inner = ops.get(i).map_or_else(
                    || ContextError::Unavailable("a batch op the store named is unknown".into()),
                    |o| refusal(v, o),
                );
                ContextError::Batch {
                    at: format!("ops[{i}]"),
                    error: Box::new(inner),
                }
            }
            _ => {
                let i = checks
                    .iter()
                    .position(|(o, _)| o.name == text(v, "name"))
                    .unwrap_or(0);
                let object = checks
                    .get(i)
                    .map(|(o, _)| o.to_string())
                    .unwrap_or_default();
                ContextError::Batch {
                    at: format!("if[{i}] ({object})"),
                    error: Box::new(ContextError::PreconditionFailed {
                        reason: "the object is not at the version given".into(),
                        current: v
                            .get("current")
                            .filter(|c| !c.is_null())
                            .map(|_| format!("\"{}\"", number(v, "current"))),
                    }),
                }
            }
        };
    }
    let object = match op {
        Op::Get { object, .. } | Op::Write { object, .. } | Op::Delete { object, .. } => {
            object.to_string()
        }
        Op::GetField { name, .. } => format!("maps/{name}"),
        Op::HasMember { name, .. } => format!("sets/{name}"),
        Op::Acquire { name, .. } | Op::Renew { name, .. } | Op::Release { name, .. } => {
            format!("locks/{name}")
        }
        Op::Enqueue { name, .. }
        | Op::Lease { name, .. }
        | Op::Ack { name, .. }
        | Op::Extend { name, .. }
        | Op::Bury { name, .. }
        | Op::DeadLetters { name }
        | Op::Replay { name, .. } => format!("queues/{name}"),
        Op::List | Op::DeleteContext | Op::Batch { .. } => "the context".into(),
    };
    let wanted = match op {
        Op::Get { object, .. } | Op::Write { object, .. } | Op::Delete { object, .. } => {
            object.kind
        }
        Op::GetField { .. } => Kind::Map,
        Op::HasMember { .. } => Kind::Set,
        Op::Enqueue { .. }
        | Op::Lease { .. }
        | Op::Ack { .. }
        | Op::Extend { .. }
        | Op::Bury { .. }
        | Op::DeadLetters { .. }
        | Op::Replay { .. } => Kind::Queue,
        _ => Kind::Lock,
    };
    match text(v, "err") {
        "not_found" => ContextError::NotFound(object),
        "no_field" => ContextError::NotFound(format!("field {:?} of {object}", text(v, "field"))),
        "no_objects" => ContextError::NotFound("the context has no objects".into()),
        "type_mismatch" => ContextError::TypeMismatch {
            object,
            actual: kind_of(text(v, "actual")).map_or("object", Kind::singular),
            wanted: wanted.singular(),
        },
        "precondition" => ContextError::PreconditionFailed {
            reason: text(v, "reason").to_owned(),
            current: v
                .get("current")
                .filter(|c| !c.is_null())
                .map(|_| format!("\"{}\"", number(v, "current"))),
        },
        "stale_fence" => ContextError::StaleFence {
            lock: format!("locks/{}", text(v, "lock")),
            token: number(v, "token"),
            latest: number(v, "latest"),
        },
        "out_of_bounds" => {
            let int = |k: &str| text(v, k).parse().unwrap_or(0);
            ContextError::OutOfBounds {
                value: int("value"),
                by: int("by"),
                min: int("min"),
                max: int("max"),
            }
        }
        "not_integer" => ContextError::InvalidRequest(format!(
            "field {:?} is not an integer, so it cannot be incremented",
            text(v, "field")
        )),
        "too_large" => ContextError::TooLarge {
            what: match text(v, "what") {
                "value" => "a map field's value",
                "member" => "a set member",
                _ => "the map",
            },
            limit: number(v, "limit"),
        },
        "too_many" => ContextError::TooMany {
            what: if text(v, "what") == "fields" {
                "the map's fields"
            } else {
                "the set's members"
            },
            limit: number(v, "limit"),
        },
        "lock_held" => ContextError::LockHeld(
            object,
            std::time::Duration::from_millis(number(v, "ttl_ms")),
        ),
        "lease_lost" => match op {
            Op::Ack { receipt, .. } | Op::Extend { receipt, .. } | Op::Bury { receipt, .. } => {
                ContextError::LeaseLost(format!("{object} receipt {receipt}"))
            }
            _ => ContextError::LeaseLost(object),
        },
        "no_dead_letter" => {
            ContextError::NotFound(format!("dead letter {} of {object}", text(v, "id")))
        }
        "key_reused" => ContextError::KeyReused,
        other => ContextError::Unavailable(format!("the store refused the operation: {other}")),
    }
}

/// The script's outcome, as the API's.
fn outcome(v: &Value) -> Result<Outcome, ContextError> {
    let version = number(v, "v");
    Ok(match text(v, "k") {
        "counter" => Outcome::Object {
            shown: Shown::Counter(text(v, "value").parse().unwrap_or(0)),
            version,
            ttl_ms: ttl_of(v),
            created: v.get("created").and_then(Value::as_bool).unwrap_or(false),
        },
        "map" => Outcome::Object {
            shown: Shown::Map(fields(v.get("fields").unwrap_or(&Value::Null))?),
            version,
            ttl_ms: ttl_of(v),
            created: v.get("created").and_then(Value::as_bool).unwrap_or(false),
        },
        "set" => Outcome::Object {
            shown: Shown::Set {
                members: v
                    .get("members")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                next: v.get("next").and_then(Value::as_u64).map(|n| n as usize),
                count: number(v, "count") as usize,
            },
            version,
            ttl_ms: ttl_of(v),
            created: v.get("created").and_then(Value::as_bool).unwrap_or(false),
        },
        "queue" => Outcome::Object {
            shown: Shown::Queue {
                ready: number(v, "ready") as usize,
                leased: number(v, "leased") as usize,
                dead: number(v, "dead") as usize,
            },
            version,
            ttl_ms: None,
            created: false,
        },
        "enqueued" => Outcome::Enqueued {
            id: text(v, "id").to_owned(),
            created: v.get("created").and_then(Value::as_bool).unwrap_or(false),
        },
        "extended" => Outcome::Extended {
            visible_at_ms: number(v, "visible_at_ms"),
        },
        "messages" => Outcome::Messages(
            v.get("messages")
                .and_then(Value::as_array)
                .map(|all| {
                    all.iter()
                        .map(|m| super::op::Message {
                            id: text(m, "id").to_owned(),
                            receipt: text(m, "receipt").to_owned(),
                            attempt: number(m, "attempt") as u32,
                            body: text(m, "body").to_owned(),
                            content_type: text(m, "content_type").to_owned(),
                            enqueued_at_ms: number(m, "enqueued_at_ms"),
                            traceparent: m
                                .get("traceparent")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                            baggage: m.get("baggage").and_then(Value::as_str).map(str::to_owned),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        "lock" => Outcome::Object {
            shown: Shown::Lock {
                owner: text(v, "owner").to_owned(),
                token: number(v, "token"),
                expires_at_ms: number(v, "expires_at_ms"),
            },
            version,
            ttl_ms: ttl_of(v),
            created: false,
        },
        "field" => Outcome::Field {
            value: serde_json::from_str(text(v, "value")).unwrap_or(Value::Null),
            version,
        },
        "member" => Outcome::Member(v.get("present").and_then(Value::as_bool).unwrap_or(false)),
        "set_updated" => Outcome::SetUpdated {
            added: number(v, "added") as usize,
            removed: number(v, "removed") as usize,
            count: number(v, "count") as usize,
            version,
            ttl_ms: ttl_of(v),
        },
        "deleted" => Outcome::Deleted,
        "objects" => {
            let mut objects: Vec<Object> = v
                .get("objects")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|o| {
                            Some(Object {
                                kind: kind_of(o.get(1)?.as_str()?)?,
                                name: o.get(0)?.as_str()?.to_owned(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            objects.sort_by(|a, b| a.name.cmp(&b.name));
            Outcome::Objects(objects)
        }
        "batch" => Outcome::Batch(
            v.get("outcomes")
                .and_then(Value::as_array)
                .map(|all| all.iter().map(outcome).collect::<Result<Vec<_>, _>>())
                .transpose()?
                .unwrap_or_default(),
        ),
        "lease" => Outcome::Lease {
            lease: text(v, "lease").to_owned(),
            token: number(v, "token"),
            expires_at_ms: number(v, "expires_at_ms"),
            granted: v.get("granted").and_then(Value::as_bool).unwrap_or(false),
        },
        other => {
            return Err(ContextError::Unavailable(format!(
                "the store answered an unknown outcome {other:?}"
            )));
        }
    })
}

impl RedisStore {
    /// A store for `url` (any form `crate::redis` reads), its keys under `prefix`.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: std::time::Duration,
        limits: Limits,
    ) -> Result<Self, ContextError> {
        Ok(Self {
            redis: Redis::new(url, timeout).map_err(unavailable)?,
            prefix: prefix.to_owned(),
            limits,
            script: Script::new(RUN),
            confirm: None,
        })
    }

    /// Confirms every write with `WAIT replicas timeout`: a write the replicas did not all
    /// acknowledge in time is answered 503 (it was made; a retry under its Idempotency-Key
    /// gets its outcome).
    pub fn confirm_with(mut self, replicas: u32, timeout: std::time::Duration) -> Self {
        self.confirm = (replicas > 0).then_some((replicas, timeout));
        self
    }

    async fn confirmed(&self, ran: Ran, op: &Op) -> Result<Ran, ContextError> {
        let Some((replicas, timeout)) = self.confirm.filter(|_| op.mutates() && !ran.replayed)
        else {
            return Ok(ran);
        };
        let acked = self
            .redis
            .wait(replicas, timeout)
            .await
            .map_err(unavailable)?;
        if acked < i64::from(replicas) {
            return Err(ContextError::Unavailable(format!(
                "written, but acknowledged by {acked} of {replicas} replicas within {timeout:?}; retry with the same Idempotency-Key for its outcome"
            )));
        }
        Ok(ran)
    }

    /// One script call: the operation, and the record of a keyed request.
    async fn call(&self, ctx: &str, op: &Op, once: Option<Once<'_>>) -> Result<Ran, ContextError> {
        let base = format!("{}:{{{ctx}}}", self.prefix);
        let name = match op {
            Op::Get { object, .. } | Op::Write { object, .. } | Op::Delete { object, .. } => {
                object.name.as_str()
            }
            Op::GetField { name, .. }
            | Op::HasMember { name, .. }
            | Op::Acquire { name, .. }
            | Op::Renew { name, .. }
            | Op::Release { name, .. }
            | Op::Enqueue { name, .. }
            | Op::Lease { name, .. }
            | Op::Ack { name, .. }
            | Op::Extend { name, .. }
            | Op::Bury { name, .. }
            | Op::DeadLetters { name }
            | Op::Replay { name, .. } => name.as_str(),
            Op::List | Op::DeleteContext | Op::Batch { .. } => "",
        };
        let record = once.map_or_else(|| format!("{base}:r:"), |o| format!("{base}:r:{}", o.key));
        let fingerprint = once.map_or_else(String::new, |o| {
            let mut hex = String::with_capacity(64);
            crate::codec::hex::push(&mut hex, &o.fingerprint);
            hex
        });
        let retention = once.map_or(0, |o| o.retention.as_millis() as u64);
        let reply: String = self
            .redis
            .invoke(
                self.script
                    .key(format!("{base}:o:{name}"))
                    .key(format!("{base}:ver"))
                    .key(format!("{base}:fence"))
                    .key(format!("{base}:idx"))
                    .key(record)
                    .arg(encode(op, &self.limits).to_string())
                    .arg(fingerprint)
                    .arg(retention)
                    .arg(format!("{base}:o:"))
                    .arg(format!("{base}:q:")),
            )
            .await
            .map_err(unavailable)?;
        let v: Value = serde_json::from_str(&reply)
            .map_err(|e| ContextError::Unavailable(format!("the store's answer: {e}")))?;
        if v.get("err").is_some() {
            return Err(refusal(&v, op));
        }
        Ok(Ran {
            outcome: outcome(v.get("out").unwrap_or(&Value::Null))?,
            replayed: v.get("replayed").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// A merge patch: a plain patch when no value merges into an object; otherwise read,
    /// merge, and write if the version is still the one read (again, if it was not).
    async fn merge(
        &self,
        ctx: &str,
        op: &Op,
        patch: &serde_json::Map<String, Value>,
        once: Option<Once<'_>>,
    ) -> Result<Ran, ContextError> {
        let Op::Write {
            object, cond, ttl, ..
        } = op
        else {
            return self.call(ctx, op, once).await;
        };
        let plain = |base: &BTreeMap<String, Value>| {
            let mut set = BTreeMap::new();
            let mut delete = Vec::new();
            for (k, v) in patch {
                if v.is_null() {
                    delete.push(k.clone());
                } else {
                    let mut slot = base.get(k).cloned().unwrap_or(Value::Null);
                    super::memory::merge(&mut slot, v);
                    set.insert(k.clone(), slot);
                }
            }
            Change::MapPatch {
                set,
                delete,
                incr: BTreeMap::new(),
            }
        };
        if !patch.values().any(Value::is_object) {
            let write = Op::Write {
                object: object.clone(),
                cond: cond.clone(),
                ttl: *ttl,
                change: plain(&BTreeMap::new()),
            };
            return self.call(ctx, &write, once).await;
        }
        for _ in 0..8 {
            let read = Op::Get {
                object: object.clone(),
                fields: Some(patch.keys().cloned().collect()),
                page: None,
            };
            let (current, version) = match self.call(ctx, &read, None).await {
                Ok(Ran {
                    outcome:
                        Outcome::Object {
                            shown: Shown::Map(m),
                            version,
                            ..
                        },
                    ..
                }) => (m, Some(version)),
                Err(ContextError::NotFound(_)) => (BTreeMap::new(), None),
                Err(e) => return Err(e),
                Ok(_) => return Err(ContextError::InvalidRequest("not a map".into())),
            };
            let guarded = Cond {
                if_match: cond.if_match.or(version),
                if_none_match: cond.if_none_match || version.is_none(),
                fence: cond.fence.clone(),
            };
            let write = Op::Write {
                object: object.clone(),
                cond: guarded,
                ttl: *ttl,
                change: plain(&current),
            };
            match self.call(ctx, &write, once).await {
                // Another write came between: read again, unless the caller's own
                // precondition is what failed.
                Err(ContextError::PreconditionFailed { .. })
                    if cond.if_match.is_none() && !cond.if_none_match => {}
                other => return other,
            }
        }
        Err(ContextError::Unavailable(
            "the map kept changing while the merge patch was applied; try again".into(),
        ))
    }
}

impl Store for RedisStore {
    fn run<'a>(&'a self, ctx: &'a str, op: &'a Op, once: Option<Once<'a>>) -> StoreFuture<'a, Ran> {
        Box::pin(async move {
            match op {
                Op::Write {
                    change: Change::MapMerge(patch),
                    ..
                } => self.merge(ctx, op, patch, once).await,
                _ => {
                    let ran = self.call(ctx, op, once).await?;
                    self.confirmed(ran, op).await
                }
            }
        })
    }
}
