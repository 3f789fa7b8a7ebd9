//! The operations a store runs, each atomically on one context, and what they answer. The API
//! (`api.rs`) turns requests into these; every backend runs the same ones, so that one
//! conformance suite checks them all.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// An object's type, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Counter,
    Map,
    Set,
    Lock,
    Queue,
}

impl Kind {
    /// The path segment naming the type: `counters`, `maps`, `sets`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Counter => "counters",
            Kind::Map => "maps",
            Kind::Set => "sets",
            Kind::Lock => "locks",
            Kind::Queue => "queues",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Map => "map",
            Kind::Set => "set",
            Kind::Lock => "lock",
            Kind::Queue => "queue",
        }
    }

    pub fn from_plural(s: &str) -> Option<Kind> {
        match s {
            "counters" => Some(Kind::Counter),
            "maps" => Some(Kind::Map),
            "sets" => Some(Kind::Set),
            "locks" => Some(Kind::Lock),
            "queues" => Some(Kind::Queue),
            _ => None,
        }
    }
}

/// An object of a context: its type and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Object {
    pub kind: Kind,
    pub name: String,
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.plural(), self.name)
    }
}

/// How a write moves the object's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlMode {
    /// Set when the object is created, never moved.
    #[default]
    Create,
    /// Every write restarts it (a sliding window).
    Touch,
    /// Moved only by a write that names a `ttl`; others leave it as it is.
    Keep,
}

/// A write's time to live: the request's `ttl` (or the default), and the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ttl {
    /// Given by the request.
    pub given: Option<Duration>,
    /// The context's default, used when the request gives none.
    pub default: Option<Duration>,
    pub mode: TtlMode,
}

impl Ttl {
    /// The expiry a write leaves, `now_ms` being the store's clock: `current` is the object's
    /// (`None` for a new object, `Some(None)` for one without expiry).
    pub fn expiry(&self, now_ms: u64, current: Option<Option<u64>>) -> Option<u64> {
        let ttl = self.given.or(self.default);
        let from_now = |d: Duration| now_ms.saturating_add(d.as_millis() as u64);
        match (current, self.mode) {
            (None, _) => ttl.map(from_now),
            (Some(_), TtlMode::Touch) if ttl.is_some() => ttl.map(from_now),
            (Some(_), TtlMode::Keep) if self.given.is_some() => self.given.map(from_now),
            (Some(current), _) => current,
        }
    }
}

/// Preconditions of a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cond {
    /// `If-Match`: the version the object must be at.
    pub if_match: Option<u64>,
    /// `If-None-Match: *`: the object must not exist (create-only).
    pub if_none_match: bool,
    /// `Attache-Fence: <lock>=<token>`: the token must be the lock's latest grant, checked in
    /// the same step as the write (a holder whose lease ran out while it was paused, and was
    /// granted to another since, is refused).
    pub fence: Option<(String, u64)>,
}

/// What a write does to its object.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    CounterAdd {
        by: i64,
        min: i64,
        max: i64,
    },
    CounterSet {
        value: i64,
    },
    /// Applied in this order: `set`, `delete`, `incr` (an integer field, created at 0).
    MapPatch {
        set: BTreeMap<String, Value>,
        delete: Vec<String>,
        incr: BTreeMap<String, i64>,
    },
    /// RFC 7396: `null` removes a field, an object merges into an object, anything else
    /// replaces.
    MapMerge(serde_json::Map<String, Value>),
    MapPut(BTreeMap<String, Value>),
    SetUpdate {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

impl Change {
    pub fn kind(&self) -> Kind {
        match self {
            Change::CounterAdd { .. } | Change::CounterSet { .. } => Kind::Counter,
            Change::MapPatch { .. } | Change::MapMerge(_) | Change::MapPut(_) => Kind::Map,
            Change::SetUpdate { .. } => Kind::Set,
        }
    }
}

/// One operation on one context.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The whole object (a map's `fields` only, when given; a page of a set's members).
    Get {
        object: Object,
        fields: Option<Vec<String>>,
        page: Option<(usize, usize)>,
    },
    GetField {
        name: String,
        field: String,
    },
    HasMember {
        name: String,
        member: String,
    },
    Write {
        object: Object,
        cond: Cond,
        ttl: Ttl,
        change: Change,
    },
    Delete {
        object: Object,
        cond: Cond,
    },
    /// Takes the lock `name` for `owner` under a new lease (an id made by the caller), if it
    /// is free (or its lease ran out), with the next fencing token.
    Acquire {
        name: String,
        owner: String,
        lease: String,
        ttl: Duration,
    },
    /// Extends the lease, if it still holds the lock.
    Renew {
        name: String,
        lease: String,
        ttl: Duration,
    },
    /// Gives the lock up, if the lease still holds it.
    Release {
        name: String,
        lease: String,
    },
    /// Adds a message (the queue is made by its first); with `dedupe`, a message with the
    /// same dedupe id within the window gets the first one's id back instead.
    Enqueue {
        name: String,
        message: NewMessage,
    },
    /// Up to `max` visible messages, each invisible for `visibility` from now under a new
    /// receipt (messages whose lease ran out come back first); a message that has had
    /// `max_attempts` deliveries goes to the dead letters instead.
    Lease {
        name: String,
        max: usize,
        visibility: Duration,
        max_attempts: u32,
    },
    /// Acknowledges (removes) the message of a receipt that still holds it.
    Ack {
        name: String,
        receipt: String,
    },
    /// Moves the message of a receipt that still holds it to `visibility` from now (`0s`:
    /// gives it back at once).
    Extend {
        name: String,
        receipt: String,
        visibility: Duration,
    },
    /// Moves the message of a receipt that still holds it to the dead letters (a delivery the
    /// app refused for good).
    Bury {
        name: String,
        receipt: String,
    },
    /// The dead letters.
    DeadLetters {
        name: String,
    },
    /// A dead letter back in the queue, its attempts counted afresh.
    Replay {
        name: String,
        id: String,
    },
    /// Writes and deletes of distinct objects, all or none: every precondition (`checks`:
    /// objects and the versions they must be at) and every op's own checks pass, then every op
    /// applies, in one atomic step.
    Batch {
        checks: Vec<(Object, u64)>,
        ops: Vec<Op>,
    },
    /// The context's objects.
    List,
    /// Every object of the context.
    DeleteContext,
}

impl Op {
    /// Whether the operation changes anything (and so may carry an `Idempotency-Key`).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Op::Write { .. }
                | Op::Delete { .. }
                | Op::DeleteContext
                | Op::Acquire { .. }
                | Op::Renew { .. }
                | Op::Release { .. }
                | Op::Batch { .. }
                | Op::Enqueue { .. }
                | Op::Lease { .. }
                | Op::Ack { .. }
                | Op::Extend { .. }
                | Op::Bury { .. }
                | Op::Replay { .. }
        )
    }
}

/// An object's state as an answer shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shown {
    Counter(i64),
    Map(BTreeMap<String, Value>),
    /// A page of members, the cursor of the next page (`None` at the end), and how many in
    /// all.
    Set {
        members: Vec<String>,
        next: Option<usize>,
        count: usize,
    },
    /// A queue: messages visible now, leased, and dead.
    Queue {
        ready: usize,
        leased: usize,
        dead: usize,
    },
    /// A held lock: its owner, the token of the grant, and when the lease ends (ms since the
    /// epoch).
    Lock {
        owner: String,
        token: u64,
        expires_at_ms: u64,
    },
}

/// What an operation answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An object: its state, version and remaining time to live.
    Object {
        shown: Shown,
        version: u64,
        ttl_ms: Option<u64>,
        /// Written by this operation (created: 201).
        created: bool,
    },
    Field {
        value: Value,
        version: u64,
    },
    Member(bool),
    SetUpdated {
        added: usize,
        removed: usize,
        count: usize,
        version: u64,
        ttl_ms: Option<u64>,
    },
    Deleted,
    Objects(Vec<Object>),
    /// Each op's outcome, in order.
    Batch(Vec<Outcome>),
    /// A message's id: `created` false when a dedupe id found an earlier one.
    Enqueued {
        id: String,
        created: bool,
    },
    /// Leased messages, or dead letters.
    Messages(Vec<Message>),
    /// A receipt's message is now visible again at this time.
    Extended {
        visible_at_ms: u64,
    },
    /// A lease: granted by this operation (201), or renewed.
    Lease {
        lease: String,
        token: u64,
        expires_at_ms: u64,
        granted: bool,
    },
}

/// A message as it is enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Its id, made by the caller (a ULID).
    pub id: String,
    /// The body, as text (JSON, or any UTF-8 text).
    pub body: String,
    pub content_type: String,
    /// Invisible until this long after it is enqueued.
    pub delay: Duration,
    /// With its window: the same id within it is the same message.
    pub dedupe: Option<(String, Duration)>,
    /// The trace context captured when it was enqueued (`traceparent`, `baggage`), for
    /// whoever delivers it.
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
}

/// A message as a lease (or the dead letters) gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    /// `<id>.<attempt>`: acknowledges or extends this delivery only.
    pub receipt: String,
    pub attempt: u32,
    pub body: String,
    pub content_type: String,
    pub enqueued_at_ms: u64,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
}
