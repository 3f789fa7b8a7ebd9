//! The memory backend: every context in this process, behind one lock (an operation is one
//! critical section, so it is atomic as a Redis script is). For `attache dev` and tests; its
//! state ends with the process.
//!
//! Expired objects are dropped when an operation meets them, and by [`MemoryStore::sweep`],
//! which the proxy runs on an interval, so that objects nobody reads again do not stay.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use serde_json::Value;

use super::error::ContextError;
use super::op::{Change, Cond, Kind, Object, Op, Outcome, Shown};
use super::store::{Limits, Once, Ran, Store, StoreFuture, now_ms};

/// The default and largest page of a set's members.
pub const PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Data {
    Counter(i64),
    Map(BTreeMap<String, Value>),
    Set(BTreeSet<String>),
    /// A queue's messages, dead letters and dedupe ids.
    Queue(Box<Queue>),
    /// A held lock (its entry expires with the lease).
    Lock {
        owner: String,
        lease: String,
        token: u64,
    },
}

impl Data {
    fn kind(&self) -> Kind {
        match self {
            Data::Counter(_) => Kind::Counter,
            Data::Map(_) => Kind::Map,
            Data::Set(_) => Kind::Set,
            Data::Lock { .. } => Kind::Lock,
            Data::Queue(_) => Kind::Queue,
        }
    }

    fn empty(kind: Kind) -> Data {
        match kind {
            Kind::Counter => Data::Counter(0),
            Kind::Map => Data::Map(BTreeMap::new()),
            Kind::Set => Data::Set(BTreeSet::new()),
            Kind::Queue => Data::Queue(Box::default()),
            // Locks are made by `Op::Acquire`; no write names one.
            Kind::Lock => Data::Lock {
                owner: String::new(),
                lease: String::new(),
                token: 0,
            },
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Queue {
    messages: BTreeMap<String, Stored>,
    dead: BTreeMap<String, Stored>,
    /// Dedupe id → the message's id and when the window ends.
    dedupe: HashMap<String, (String, u64)>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Stored {
    body: String,
    content_type: String,
    enqueued_at_ms: u64,
    attempts: u32,
    visible_at_ms: u64,
    traceparent: Option<String>,
    baggage: Option<String>,
}

impl Stored {
    fn shown(&self, id: &str, receipt: String) -> super::op::Message {
        super::op::Message {
            id: id.to_owned(),
            receipt,
            attempt: self.attempts,
            body: self.body.clone(),
            content_type: self.content_type.clone(),
            enqueued_at_ms: self.enqueued_at_ms,
            traceparent: self.traceparent.clone(),
            baggage: self.baggage.clone(),
        }
    }
}

/// A receipt (`<id>.<attempt>`) as its id and attempt.
pub fn receipt_parts(receipt: &str) -> Option<(&str, u32)> {
    let (id, attempt) = receipt.rsplit_once('.')?;
    Some((id, attempt.parse().ok()?))
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Entry {
    version: u64,
    expires_ms: Option<u64>,
    data: Data,
}

#[derive(Debug)]
struct Record {
    fingerprint: [u8; 32],
    outcome: Outcome,
    expires_ms: u64,
}

/// One context: its objects by name (one name, one object: the type is part of the object,
/// not of its name), and the outcomes kept for retries.
#[derive(Debug, Default)]
struct Ctx {
    objects: BTreeMap<String, Entry>,
    records: HashMap<String, Record>,
}

impl Ctx {
    /// The live entry named `name`, dropping it if it has expired.
    fn live(&mut self, name: &str, now: u64) -> Option<&mut Entry> {
        if self
            .objects
            .get(name)
            .is_some_and(|e| e.expires_ms.is_some_and(|t| t <= now))
        {
            self.objects.remove(name);
        }
        self.objects.get_mut(name)
    }
}

pub struct MemoryStore {
    state: Mutex<State>,
    limits: Limits,
}

#[derive(Default)]
struct State {
    contexts: HashMap<String, Ctx>,
    /// The last version given out: versions only grow, across objects and contexts, so an old
    /// ETag never matches a later object of the same name.
    last_version: u64,
    /// Each lock's latest fencing token, by context and lock: kept after the lock is released,
    /// expires or its context is deleted, so that a token is never granted twice.
    fences: HashMap<String, HashMap<String, u64>>,
}

/// What a snapshot file holds: every context's objects, the fencing tokens and the last
/// version (retry records are not kept: they matter for minutes, and a restart ends them).
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    contexts: HashMap<String, BTreeMap<String, Entry>>,
    fences: HashMap<String, HashMap<String, u64>>,
    last_version: u64,
}

impl MemoryStore {
    /// The store's state as JSON, for a snapshot file.
    pub fn save(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let saved = Saved {
            contexts: state
                .contexts
                .iter()
                .filter(|(_, c)| !c.objects.is_empty())
                .map(|(name, c)| (name.clone(), c.objects.clone()))
                .collect(),
            fences: state.fences.clone(),
            last_version: state.last_version,
        };
        serde_json::to_string(&saved).unwrap_or_default()
    }

    /// Takes the state of a snapshot made by [`MemoryStore::save`] (objects expired since are
    /// dropped as they are met).
    pub fn load(&self, text: &str) -> Result<(), String> {
        let saved: Saved = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.contexts = saved
            .contexts
            .into_iter()
            .map(|(name, objects)| {
                (
                    name,
                    Ctx {
                        objects,
                        records: HashMap::new(),
                    },
                )
            })
            .collect();
        state.fences = saved.fences;
        state.last_version = saved.last_version;
        Ok(())
    }

    pub fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(State::default()),
            limits,
        }
    }

    /// Drops every expired object and retry record; contexts left empty go too.
    pub fn sweep(&self) {
        let now = now_ms();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.contexts.retain(|_, c| {
            c.objects
                .retain(|_, e| e.expires_ms.is_none_or(|t| t > now));
            c.records.retain(|_, r| r.expires_ms > now);
            !c.objects.is_empty() || !c.records.is_empty()
        });
    }

    fn run_now(&self, ctx: &str, op: &Op, once: Option<Once<'_>>) -> Result<Ran, ContextError> {
        let now = now_ms();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State {
            contexts,
            last_version,
            fences,
        } = &mut *state;
        let fences = fences.entry(ctx.to_owned()).or_default();
        let c = contexts.entry(ctx.to_owned()).or_default();
        if let Some(once) = &once {
            c.records.retain(|_, r| r.expires_ms > now);
            if let Some(r) = c.records.get(once.key) {
                if r.fingerprint != once.fingerprint {
                    return Err(ContextError::KeyReused);
                }
                return Ok(Ran {
                    outcome: r.outcome.clone(),
                    replayed: true,
                });
            }
        }
        let result = apply(c, op, now, &self.limits, last_version, fences);
        if let (Ok(outcome), Some(once)) = (&result, once) {
            c.records.insert(
                once.key.to_owned(),
                Record {
                    fingerprint: once.fingerprint,
                    outcome: outcome.clone(),
                    expires_ms: now.saturating_add(once.retention.as_millis() as u64),
                },
            );
        }
        if c.objects.is_empty() && c.records.is_empty() {
            contexts.remove(ctx);
        }
        result.map(|outcome| Ran {
            outcome,
            replayed: false,
        })
    }
}

impl Store for MemoryStore {
    fn run<'a>(&'a self, ctx: &'a str, op: &'a Op, once: Option<Once<'a>>) -> StoreFuture<'a, Ran> {
        let ran = self.run_now(ctx, op, once);
        Box::pin(async move { ran })
    }
}

fn not_found(object: &Object) -> ContextError {
    ContextError::NotFound(object.to_string())
}

fn mismatch(object: &Object, actual: Kind) -> ContextError {
    ContextError::TypeMismatch {
        object: format!("{}/{}", object.kind.plural(), object.name),
        actual: actual.singular(),
        wanted: object.kind.singular(),
    }
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// Checks `cond` against the object's current version (`None`: it does not exist).
pub fn check(cond: &Cond, current: Option<u64>) -> Result<(), ContextError> {
    if cond.if_none_match
        && let Some(v) = current
    {
        return Err(ContextError::PreconditionFailed {
            reason: "If-None-Match: * and the object exists".into(),
            current: Some(etag(v)),
        });
    }
    if let Some(wanted) = cond.if_match
        && current != Some(wanted)
    {
        return Err(ContextError::PreconditionFailed {
            reason: match current {
                Some(_) => format!("If-Match {} is not the object's version", etag(wanted)),
                None => "If-Match and the object does not exist".into(),
            },
            current: current.map(etag),
        });
    }
    Ok(())
}

fn ttl_ms(expires: Option<u64>, now: u64) -> Option<u64> {
    expires.map(|t| t.saturating_sub(now))
}

fn apply(
    c: &mut Ctx,
    op: &Op,
    now: u64,
    limits: &Limits,
    last_version: &mut u64,
    fences: &mut HashMap<String, u64>,
) -> Result<Outcome, ContextError> {
    let mut next_version = || {
        *last_version = (*last_version + 1).max(now.saturating_mul(1000));
        *last_version
    };
    match op {
        Op::Get {
            object,
            fields,
            page,
        } => {
            let e = c.live(&object.name, now).ok_or_else(|| not_found(object))?;
            if e.data.kind() != object.kind {
                return Err(mismatch(object, e.data.kind()));
            }
            let shown = match &e.data {
                Data::Counter(v) => Shown::Counter(*v),
                Data::Map(m) => Shown::Map(match fields {
                    Some(only) => m
                        .iter()
                        .filter(|(k, _)| only.contains(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    None => m.clone(),
                }),
                Data::Queue(q) => Shown::Queue {
                    ready: q
                        .messages
                        .values()
                        .filter(|m| m.visible_at_ms <= now)
                        .count(),
                    leased: q
                        .messages
                        .values()
                        .filter(|m| m.visible_at_ms > now)
                        .count(),
                    dead: q.dead.len(),
                },
                Data::Lock { owner, token, .. } => Shown::Lock {
                    owner: owner.clone(),
                    token: *token,
                    expires_at_ms: e.expires_ms.unwrap_or(0),
                },
                Data::Set(s) => {
                    let (from, count) = page.unwrap_or((0, PAGE));
                    let members: Vec<String> = s.iter().skip(from).take(count).cloned().collect();
                    let end = from + members.len();
                    Shown::Set {
                        next: (end < s.len()).then_some(end),
                        count: s.len(),
                        members,
                    }
                }
            };
            Ok(Outcome::Object {
                shown,
                version: e.version,
                ttl_ms: ttl_ms(e.expires_ms, now),
                created: false,
            })
        }
        Op::GetField { name, field } => {
            let object = Object {
                kind: Kind::Map,
                name: name.clone(),
            };
            let e = c.live(name, now).ok_or_else(|| not_found(&object))?;
            let Data::Map(m) = &e.data else {
                return Err(mismatch(&object, e.data.kind()));
            };
            let value = m
                .get(field)
                .cloned()
                .ok_or_else(|| ContextError::NotFound(format!("field {field:?} of {object}")))?;
            Ok(Outcome::Field {
                value,
                version: e.version,
            })
        }
        Op::HasMember { name, member } => {
            let object = Object {
                kind: Kind::Set,
                name: name.clone(),
            };
            let e = c.live(name, now).ok_or_else(|| not_found(&object))?;
            let Data::Set(s) = &e.data else {
                return Err(mismatch(&object, e.data.kind()));
            };
            Ok(Outcome::Member(s.contains(member)))
        }
        Op::Write {
            object,
            cond,
            ttl,
            change,
        } => {
            let existing = c.live(&object.name, now).cloned();
            if let Some(e) = &existing
                && e.data.kind() != object.kind
            {
                return Err(mismatch(object, e.data.kind()));
            }
            check(cond, existing.as_ref().map(|e| e.version))?;
            fenced(cond, fences)?;
            let mut data = existing
                .as_ref()
                .map_or_else(|| Data::empty(object.kind), |e| e.data.clone());
            let counts = change_data(&mut data, change, limits)?;
            let entry = Entry {
                version: next_version(),
                expires_ms: ttl.expiry(now, existing.as_ref().map(|e| e.expires_ms)),
                data,
            };
            let outcome = match (&entry.data, counts) {
                (Data::Set(s), Some((added, removed))) => Outcome::SetUpdated {
                    added,
                    removed,
                    count: s.len(),
                    version: entry.version,
                    ttl_ms: ttl_ms(entry.expires_ms, now),
                },
                (data, _) => Outcome::Object {
                    shown: match data {
                        Data::Counter(v) => Shown::Counter(*v),
                        Data::Map(m) => Shown::Map(m.clone()),
                        Data::Set(s) => Shown::Set {
                            members: s.iter().take(PAGE).cloned().collect(),
                            next: (s.len() > PAGE).then_some(PAGE),
                            count: s.len(),
                        },
                        Data::Lock { .. } | Data::Queue(_) => {
                            return Err(ContextError::InvalidRequest(
                                "locks and queues have operations of their own".into(),
                            ));
                        }
                    },
                    version: entry.version,
                    ttl_ms: ttl_ms(entry.expires_ms, now),
                    created: existing.is_none(),
                },
            };
            c.objects.insert(object.name.clone(), entry);
            Ok(outcome)
        }
        Op::Delete { object, cond } => {
            let e = c.live(&object.name, now).ok_or_else(|| not_found(object))?;
            if e.data.kind() != object.kind {
                return Err(mismatch(object, e.data.kind()));
            }
            check(cond, Some(e.version))?;
            fenced(cond, fences)?;
            c.objects.remove(&object.name);
            Ok(Outcome::Deleted)
        }
        Op::Acquire {
            name,
            owner,
            lease,
            ttl,
        } => {
            let object = Object {
                kind: Kind::Lock,
                name: name.clone(),
            };
            if let Some(e) = c.live(name, now) {
                return Err(match &e.data {
                    Data::Lock { .. } => ContextError::LockHeld(
                        object.to_string(),
                        std::time::Duration::from_millis(
                            e.expires_ms.unwrap_or(now).saturating_sub(now),
                        ),
                    ),
                    other => mismatch(&object, other.kind()),
                });
            }
            let token = fences.get(name).copied().unwrap_or(0) + 1;
            fences.insert(name.clone(), token);
            let expires_at_ms = now.saturating_add(ttl.as_millis() as u64);
            let version = next_version();
            c.objects.insert(
                name.clone(),
                Entry {
                    version,
                    expires_ms: Some(expires_at_ms),
                    data: Data::Lock {
                        owner: owner.clone(),
                        lease: lease.clone(),
                        token,
                    },
                },
            );
            Ok(Outcome::Lease {
                lease: lease.clone(),
                token,
                expires_at_ms,
                granted: true,
            })
        }
        Op::Renew { name, lease, ttl } => {
            let held = |e: &Entry| matches!(&e.data, Data::Lock { lease: l, .. } if l == lease);
            let version = next_version();
            match c.live(name, now) {
                Some(e) if held(e) => {
                    let expires_at_ms = now.saturating_add(ttl.as_millis() as u64);
                    e.expires_ms = Some(expires_at_ms);
                    e.version = version;
                    let Data::Lock { token, .. } = &e.data else {
                        return Err(ContextError::LeaseLost(format!("locks/{name}")));
                    };
                    Ok(Outcome::Lease {
                        lease: lease.clone(),
                        token: *token,
                        expires_at_ms,
                        granted: false,
                    })
                }
                _ => Err(ContextError::LeaseLost(format!("locks/{name}"))),
            }
        }
        Op::Release { name, lease } => match c.live(name, now) {
            Some(e) if matches!(&e.data, Data::Lock { lease: l, .. } if l == lease) => {
                c.objects.remove(name);
                Ok(Outcome::Deleted)
            }
            _ => Err(ContextError::LeaseLost(format!("locks/{name}"))),
        },
        Op::Enqueue { name, message } => {
            let object = Object {
                kind: Kind::Queue,
                name: name.clone(),
            };
            let version = next_version();
            let e = match c.live(name, now) {
                Some(e) => e,
                None => c.objects.entry(name.clone()).or_insert(Entry {
                    version,
                    expires_ms: None,
                    data: Data::Queue(Box::default()),
                }),
            };
            let Data::Queue(q) = &mut e.data else {
                return Err(mismatch(&object, e.data.kind()));
            };
            e.version = version;
            q.dedupe.retain(|_, (_, until)| *until > now);
            if let Some((dedupe, _)) = &message.dedupe
                && let Some((id, _)) = q.dedupe.get(dedupe)
            {
                return Ok(Outcome::Enqueued {
                    id: id.clone(),
                    created: false,
                });
            }
            if let Some((dedupe, window)) = &message.dedupe {
                q.dedupe.insert(
                    dedupe.clone(),
                    (
                        message.id.clone(),
                        now.saturating_add(window.as_millis() as u64),
                    ),
                );
            }
            q.messages.insert(
                message.id.clone(),
                Stored {
                    body: message.body.clone(),
                    content_type: message.content_type.clone(),
                    enqueued_at_ms: now,
                    attempts: 0,
                    visible_at_ms: now.saturating_add(message.delay.as_millis() as u64),
                    traceparent: message.traceparent.clone(),
                    baggage: message.baggage.clone(),
                },
            );
            Ok(Outcome::Enqueued {
                id: message.id.clone(),
                created: true,
            })
        }
        Op::Lease {
            name,
            max,
            visibility,
            max_attempts,
        } => {
            let q = queue(c, name, now)?;
            // Due messages, those whose lease ran out first, then by when they became due.
            let mut due: Vec<(bool, u64, String)> = q
                .messages
                .iter()
                .filter(|(_, m)| m.visible_at_ms <= now)
                .map(|(id, m)| (m.attempts == 0, m.visible_at_ms, id.clone()))
                .collect();
            due.sort();
            let mut leased = Vec::new();
            for (_, _, id) in due {
                if leased.len() >= *max {
                    break;
                }
                let Some(m) = q.messages.get_mut(&id) else {
                    continue;
                };
                if m.attempts >= *max_attempts {
                    if let Some(dead) = q.messages.remove(&id) {
                        q.dead.insert(id, dead);
                    }
                    continue;
                }
                m.attempts += 1;
                m.visible_at_ms = now.saturating_add(visibility.as_millis() as u64);
                leased.push(m.shown(&id, format!("{id}.{}", m.attempts)));
            }
            Ok(Outcome::Messages(leased))
        }
        Op::Ack { name, receipt }
        | Op::Extend { name, receipt, .. }
        | Op::Bury { name, receipt } => {
            let lost = || ContextError::LeaseLost(format!("queues/{name} receipt {receipt}"));
            let q = queue(c, name, now)?;
            let (id, attempt) = receipt_parts(receipt).ok_or_else(lost)?;
            let m = q.messages.get_mut(id).ok_or_else(lost)?;
            if m.attempts != attempt || m.visible_at_ms <= now {
                return Err(lost());
            }
            match op {
                Op::Extend { visibility, .. } => {
                    m.visible_at_ms = now.saturating_add(visibility.as_millis() as u64);
                    Ok(Outcome::Extended {
                        visible_at_ms: m.visible_at_ms,
                    })
                }
                Op::Bury { .. } => {
                    if let Some(dead) = q.messages.remove(id) {
                        q.dead.insert(id.to_owned(), dead);
                    }
                    Ok(Outcome::Deleted)
                }
                _ => {
                    q.messages.remove(id);
                    Ok(Outcome::Deleted)
                }
            }
        }
        Op::DeadLetters { name } => {
            let q = queue(c, name, now)?;
            Ok(Outcome::Messages(
                q.dead
                    .iter()
                    .map(|(id, m)| m.shown(id, String::new()))
                    .collect(),
            ))
        }
        Op::Replay { name, id } => {
            let q = queue(c, name, now)?;
            let mut m = q.dead.remove(id).ok_or_else(|| {
                ContextError::NotFound(format!("dead letter {id} of queues/{name}"))
            })?;
            m.attempts = 0;
            m.visible_at_ms = now;
            q.messages.insert(id.clone(), m);
            Ok(Outcome::Deleted)
        }
        Op::Batch { checks, ops } => {
            for (i, (object, version)) in checks.iter().enumerate() {
                let current = c.live(&object.name, now).map(|e| e.version);
                if current != Some(*version) {
                    return Err(ContextError::Batch {
                        at: format!("if[{i}] ({object})"),
                        error: Box::new(ContextError::PreconditionFailed {
                            reason: "the object is not at the version given".into(),
                            current: current.map(etag),
                        }),
                    });
                }
            }
            // All or nothing: on any refusal, the context is put back as it was.
            let saved = (c.objects.clone(), fences.clone(), *last_version);
            let mut outcomes = Vec::with_capacity(ops.len());
            for (i, op) in ops.iter().enumerate() {
                match apply(c, op, now, limits, last_version, fences) {
                    Ok(o) => outcomes.push(o),
                    Err(error) => {
                        (c.objects, *fences, *last_version) = saved;
                        return Err(ContextError::Batch {
                            at: format!("ops[{i}]"),
                            error: Box::new(error),
                        });
                    }
                }
            }
            Ok(Outcome::Batch(outcomes))
        }
        Op::List => {
            c.objects
                .retain(|_, e| e.expires_ms.is_none_or(|t| t > now));
            Ok(Outcome::Objects(
                c.objects
                    .iter()
                    .map(|(name, e)| Object {
                        kind: e.data.kind(),
                        name: name.clone(),
                    })
                    .collect(),
            ))
        }
        Op::DeleteContext => {
            c.objects
                .retain(|_, e| e.expires_ms.is_none_or(|t| t > now));
            if c.objects.is_empty() {
                return Err(ContextError::NotFound("the context has no objects".into()));
            }
            c.objects.clear();
            Ok(Outcome::Deleted)
        }
    }
}

/// The live queue `name` of `c`, or why not.
fn queue<'c>(c: &'c mut Ctx, name: &str, now: u64) -> Result<&'c mut Queue, ContextError> {
    let object = Object {
        kind: Kind::Queue,
        name: name.to_owned(),
    };
    let e = c.live(name, now).ok_or_else(|| not_found(&object))?;
    match &mut e.data {
        Data::Queue(q) => Ok(q),
        other => Err(mismatch(&object, other.kind())),
    }
}

/// A fenced write's check: its token must be the lock's latest grant.
fn fenced(cond: &Cond, fences: &HashMap<String, u64>) -> Result<(), ContextError> {
    if let Some((lock, token)) = &cond.fence {
        let latest = fences.get(lock).copied().unwrap_or(0);
        if *token != latest {
            return Err(ContextError::StaleFence {
                lock: format!("locks/{lock}"),
                token: *token,
                latest,
            });
        }
    }
    Ok(())
}

/// Applies `change` to `data` within `limits`; for a set, how many members were added and
/// removed.
fn change_data(
    data: &mut Data,
    change: &Change,
    limits: &Limits,
) -> Result<Option<(usize, usize)>, ContextError> {
    match (data, change) {
        (Data::Counter(value), Change::CounterAdd { by, min, max }) => {
            let next = value
                .checked_add(*by)
                .filter(|n| (*min..=*max).contains(n))
                .ok_or(ContextError::OutOfBounds {
                    value: *value,
                    by: *by,
                    min: *min,
                    max: *max,
                })?;
            *value = next;
            Ok(None)
        }
        (Data::Counter(value), Change::CounterSet { value: v }) => {
            *value = *v;
            Ok(None)
        }
        (Data::Map(m), Change::MapPatch { set, delete, incr }) => {
            let mut next = m.clone();
            next.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            for k in delete {
                next.remove(k);
            }
            for (k, by) in incr {
                let current = match next.get(k) {
                    None => 0,
                    Some(v) => v.as_i64().ok_or_else(|| {
                        ContextError::InvalidRequest(format!(
                            "field {k:?} is not an integer, so it cannot be incremented"
                        ))
                    })?,
                };
                let sum = current.checked_add(*by).ok_or_else(|| {
                    ContextError::InvalidRequest(format!("incrementing field {k:?} overflows"))
                })?;
                next.insert(k.clone(), Value::from(sum));
            }
            check_map(&next, limits)?;
            *m = next;
            Ok(None)
        }
        (Data::Map(m), Change::MapMerge(patch)) => {
            let mut next = m.clone();
            for (k, v) in patch {
                if v.is_null() {
                    next.remove(k);
                } else {
                    let slot = next.entry(k.clone()).or_insert(Value::Null);
                    merge(slot, v);
                }
            }
            check_map(&next, limits)?;
            *m = next;
            Ok(None)
        }
        (Data::Map(m), Change::MapPut(fields)) => {
            check_map(fields, limits)?;
            *m = fields.clone();
            Ok(None)
        }
        (Data::Set(s), Change::SetUpdate { add, remove }) => {
            if add.iter().any(|m| m.len() > limits.max_value_bytes) {
                return Err(ContextError::TooLarge {
                    what: "a set member",
                    limit: limits.max_value_bytes as u64,
                });
            }
            let mut next = s.clone();
            let added = add.iter().filter(|m| next.insert((*m).clone())).count();
            let removed = remove.iter().filter(|m| next.remove(*m)).count();
            if next.len() > limits.max_set_members {
                return Err(ContextError::TooMany {
                    what: "the set's members",
                    limit: limits.max_set_members as u64,
                });
            }
            *s = next;
            Ok(Some((added, removed)))
        }
        (data, change) => Err(ContextError::InvalidRequest(format!(
            "a {} change on a {}",
            change.kind().singular(),
            data.kind().singular()
        ))),
    }
}

/// RFC 7396 merge of `patch` into `target`.
pub(super) fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (target, Value::Object(p)) => {
            *target = Value::Object(serde_json::Map::new());
            merge(target, &Value::Object(p.clone()));
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// A map within the limits: fields, each value's size, the whole.
fn check_map(m: &BTreeMap<String, Value>, limits: &Limits) -> Result<(), ContextError> {
    if m.len() > limits.max_map_fields {
        return Err(ContextError::TooMany {
            what: "the map's fields",
            limit: limits.max_map_fields as u64,
        });
    }
    let mut total = 0usize;
    for (k, v) in m {
        let size = v.to_string().len();
        if size > limits.max_value_bytes {
            return Err(ContextError::TooLarge {
                what: "a map field's value",
                limit: limits.max_value_bytes as u64,
            });
        }
        total += k.len() + size;
    }
    if total > limits.max_map_bytes {
        return Err(ContextError::TooLarge {
            what: "the map",
            limit: limits.max_map_bytes as u64,
        });
    }
    Ok(())
}
