//! JsonLogic, compiled once per flag set, with flagd's operator set and attache's own custom
//! operators (specs/feature-flags.md §3–§4). Coercion and truthiness follow jsonlogic.com
//! (JavaScript's rules); an unknown operator is a compile error.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use super::murmur3::murmur3_x86_32;
use super::semver::number_text;

/// `fractional`'s bucketing arithmetic (§4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FractionalVersion {
    V1,
    #[default]
    V2,
    /// flagd's non-string hashing: the deterministic CBOR of the value is hashed.
    V3,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Literal(Value),
    Array(Vec<Rule>),
    Op(Op, Vec<Rule>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Var,
    Missing,
    MissingSome,
    If,
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Not,
    NotNot,
    Or,
    And,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Max,
    Min,
    Map,
    Filter,
    Reduce,
    All,
    None,
    Some,
    Merge,
    In,
    Cat,
    Substr,
    Fractional,
    SemVer,
    StartsWith,
    EndsWith,
}

fn op_of(name: &str) -> Option<Op> {
    Some(match name {
        "var" => Op::Var,
        "missing" => Op::Missing,
        "missing_some" => Op::MissingSome,
        "if" | "?:" => Op::If,
        "==" => Op::Eq,
        "===" => Op::StrictEq,
        "!=" => Op::Ne,
        "!==" => Op::StrictNe,
        "!" => Op::Not,
        "!!" => Op::NotNot,
        "or" => Op::Or,
        "and" => Op::And,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "+" => Op::Add,
        "-" => Op::Sub,
        "*" => Op::Mul,
        "/" => Op::Div,
        "%" => Op::Mod,
        "max" => Op::Max,
        "min" => Op::Min,
        "map" => Op::Map,
        "filter" => Op::Filter,
        "reduce" => Op::Reduce,
        "all" => Op::All,
        "none" => Op::None,
        "some" => Op::Some,
        "merge" => Op::Merge,
        "in" => Op::In,
        "cat" => Op::Cat,
        "substr" => Op::Substr,
        "fractional" => Op::Fractional,
        "sem_ver" => Op::SemVer,
        "starts_with" => Op::StartsWith,
        "ends_with" => Op::EndsWith,
        _ => return None,
    })
}

/// Compiles a JsonLogic value. An object with exactly one key is an operation; other objects
/// are data.
pub fn compile(v: &Value) -> Result<Rule, CompileError> {
    match v {
        Value::Array(items) => {
            let rules: Vec<Rule> = items.iter().map(compile).collect::<Result<_, _>>()?;
            // An array of constants is a constant: evaluated once here, borrowed after.
            if rules.iter().all(|r| matches!(r, Rule::Literal(_))) {
                return Ok(Rule::Literal(v.clone()));
            }
            Ok(Rule::Array(rules))
        }
        Value::Object(m) if m.len() == 1 => {
            let (name, args) = m
                .iter()
                .next()
                .ok_or_else(|| CompileError("empty".into()))?;
            let op =
                op_of(name).ok_or_else(|| CompileError(format!("unknown operator {name:?}")))?;
            let args = match args {
                Value::Array(a) => a.iter().map(compile).collect::<Result<_, _>>()?,
                other => vec![compile(other)?],
            };
            Ok(Rule::Op(op, args))
        }
        other => Ok(Rule::Literal(other.clone())),
    }
}

/// The data a rule reads with `var` and `missing`.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// A JSON document: what OFREP callers send, and the items of `map` and friends.
    Json(&'a Value),
    /// A flat context: values at whole dotted paths, e.g. `targetingKey`, `user.plan`,
    /// `request.method`. A path reads the field it names or a path inside one; no field is
    /// inside another. The proxy builds this for a request when no rule of the snapshot reads
    /// a parent of a field or the whole data (`Needs`, in `context.rs`, checks), so that every
    /// read answers as it would against the same context as a JSON document.
    Fields(Flat<'a>),
}

/// A flat context, and where the `var` paths of the rule being evaluated land in it.
#[derive(Debug, Clone, Copy)]
pub struct Flat<'a> {
    pub fields: &'a [Field<'a>],
    /// Worked out once per plan ([`Slot::of_rule`]); a path not listed here is found by
    /// comparing it with the fields' paths.
    pub slots: &'a [Slot],
}

/// One value of a flat context.
#[derive(Debug, Clone)]
pub struct Field<'a> {
    pub path: &'a str,
    /// `None` when the request has no value for it.
    pub value: Option<Cow<'a, Value>>,
}

/// Where a path lands among the fields of a flat context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The field at this index.
    Field(usize),
    /// Inside the field at this index; the rest of the path starts at this byte.
    Inside(usize, usize),
    /// In no field.
    Nowhere,
}

impl Place {
    /// Where `path` lands among fields at `paths` (no one inside another, so at most one
    /// matches).
    pub fn of<'p>(paths: impl Iterator<Item = &'p str>, path: &str) -> Place {
        for (i, f) in paths.enumerate() {
            if let Some(rest) = path.strip_prefix(f) {
                if rest.is_empty() {
                    return Place::Field(i);
                }
                if rest.starts_with('.') {
                    return Place::Inside(i, f.len() + 1);
                }
            }
        }
        Place::Nowhere
    }
}

/// One constant `var` path of a compiled rule, and where it lands in a flat layout. The path
/// is known by the address and length of its text inside the rule, which the plan that holds
/// the slots keeps alive (and unchanged): equal addresses are the same text, so a read finds
/// its field without comparing strings, and any other text is compared as usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    text: (usize, usize),
    pub place: Place,
}

impl Slot {
    /// The slots of every constant `var` path in `rule`, against fields at `paths`.
    pub fn of_rule(rule: &Rule, paths: &[String]) -> Vec<Slot> {
        let mut slots: Vec<Slot> = Vec::new();
        rule.var_texts(&mut |text| {
            let key = (text.as_ptr() as usize, text.len());
            if !slots.iter().any(|s| s.text == key) {
                slots.push(Slot {
                    text: key,
                    place: Place::of(paths.iter().map(String::as_str), text),
                });
            }
        });
        slots
    }
}

impl<'a> Flat<'a> {
    fn get(self, path: &str) -> Option<&'a Value> {
        let key = (path.as_ptr() as usize, path.len());
        let place = match self.slots.iter().find(|s| s.text == key) {
            Some(s) => s.place,
            None => Place::of(self.fields.iter().map(|f| f.path), path),
        };
        match place {
            Place::Field(i) => self.fields.get(i)?.value.as_deref(),
            Place::Inside(i, at) => descend(self.fields.get(i)?.value.as_deref()?, path.get(at..)?),
            Place::Nowhere => None,
        }
    }
}

impl<'a> Data<'a> {
    /// The value at a dotted path; the empty path is the whole data.
    pub fn get(self, path: &str) -> Option<&'a Value> {
        match self {
            Data::Json(v) => var_str(v, path),
            Data::Fields(flat) => flat.get(path),
        }
    }
}

/// What a rule runs against.
pub struct Scope<'a> {
    pub data: Data<'a>,
    /// flagd's built-ins, `$flagd.flagKey` and `$flagd.timestamp`, which shadow any caller
    /// value at `$flagd` (top level only: inside `map` and friends the data is the item).
    pub flagd: Option<Flagd<'a>>,
    pub fractional: FractionalVersion,
}

#[derive(Debug, Clone, Copy)]
pub struct Flagd<'a> {
    pub flag_key: &'a str,
    pub timestamp: u64,
}

impl<'a> Scope<'a> {
    /// `var` with the built-ins overlaid.
    fn lookup(&self, path: &Value) -> Option<Cow<'a, Value>> {
        if let (Some(f), Value::String(p)) = (self.flagd, path)
            && let Some(rest) = p.strip_prefix("$flagd")
        {
            match rest {
                "" => {
                    return Some(Cow::Owned(
                        serde_json::json!({"flagKey": f.flag_key, "timestamp": f.timestamp}),
                    ));
                }
                ".flagKey" => return Some(Cow::Owned(Value::String(f.flag_key.to_owned()))),
                ".timestamp" => return Some(Cow::Owned(Value::from(f.timestamp))),
                r if r.starts_with('.') => return None,
                _ => {}
            }
        }
        match path {
            Value::Null => match self.data {
                Data::Json(v) => Some(Cow::Borrowed(v)),
                // Never built for rules that read the whole data.
                Data::Fields(_) => None,
            },
            Value::String(p) => self.data.get(p).map(Cow::Borrowed),
            Value::Number(n) => self.data.get(&number_text(n)).map(Cow::Borrowed),
            _ => None,
        }
    }

    /// `$flagd.flagKey` as `fractional` reads it, without building a path.
    fn flag_key(&self) -> Option<Cow<'a, str>> {
        match self.flagd {
            Some(f) => Some(Cow::Borrowed(f.flag_key)),
            None => match self.data.get("$flagd.flagKey")? {
                Value::String(k) => Some(Cow::Borrowed(k)),
                _ => None,
            },
        }
    }
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

fn num(f: f64) -> Value {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::Number(Number::from(f as i64))
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// JavaScript's ToNumber.
fn to_number(v: &Value) -> Option<f64> {
    match v {
        Value::Null => Some(0.0),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                Some(0.0)
            } else {
                t.parse::<f64>().ok()
            }
        }
        Value::Array(a) => match a.as_slice() {
            [] => Some(0.0),
            [one] => to_number(one),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

/// JavaScript's ToString, for `cat` and `in`.
fn to_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number_text(n),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(to_text).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

/// JavaScript's `==` on JSON values.
pub(super) fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::String(x), Value::String(y)) => x == y,
        (
            Value::Number(_) | Value::String(_) | Value::Bool(_),
            Value::Number(_) | Value::String(_) | Value::Bool(_),
        ) => match (to_number(a), to_number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        (Value::Array(_) | Value::Object(_), Value::Array(_) | Value::Object(_)) => false,
        (Value::Array(_), other) | (other, Value::Array(_)) => {
            let text = to_text(if matches!(a, Value::Array(_)) { a } else { b });
            loose_eq(&Value::String(text), other)
        }
        _ => false,
    }
}

pub(super) fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(_) | Value::Object(_), _) => false,
        _ => a == b,
    }
}

/// JavaScript's relational comparison: strings compare as strings, anything else as numbers.
pub(super) fn less(a: &Value, b: &Value, or_equal: bool) -> bool {
    if let (Value::String(x), Value::String(y)) = (a, b) {
        return if or_equal { x <= y } else { x < y };
    }
    match (to_number(a), to_number(b)) {
        (Some(x), Some(y)) => {
            if or_equal {
                x <= y
            } else {
                x < y
            }
        }
        _ => false,
    }
}

fn strings_in(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, f)),
        Value::Object(m) => m.values().for_each(|v| strings_in(v, f)),
        _ => {}
    }
}

/// A dotted path into `data`; the empty path is `data` itself.
fn var_str<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(data);
    }
    descend(data, path)
}

/// The value at `path` (one segment or more, dot-separated) below `data`.
fn descend<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = data;
    let mut rest = path;
    loop {
        // A byte scan: paths are a few short segments, too short for `split`'s searcher.
        let (part, tail) = match rest.bytes().position(|b| b == b'.') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
        match tail {
            Some(t) => rest = t,
            None => return Some(cur),
        }
    }
}

impl Rule {
    /// Calls `f` with every constant string in the rule, operands and paths alike. Returns
    /// `false` when a `var`, `missing` or `missing_some` takes a computed path, or `var` the
    /// whole data: then any part of the context may be read.
    pub fn constant_strings(&self, f: &mut dyn FnMut(&str)) -> bool {
        match self {
            Rule::Literal(v) => {
                strings_in(v, f);
                true
            }
            Rule::Array(items) => items.iter().all(|r| r.constant_strings(f)),
            Rule::Op(op, args) => {
                let computed = match op {
                    Op::Var => !matches!(
                        args.first(),
                        Some(Rule::Literal(Value::String(_) | Value::Number(_)))
                    ),
                    Op::Missing | Op::MissingSome => {
                        args.iter().any(|a| !matches!(a, Rule::Literal(_)))
                    }
                    _ => false,
                };
                !computed && args.iter().all(|r| r.constant_strings(f))
            }
        }
    }

    /// Calls `f` with the text of every constant string path of a `var` in the rule, as it
    /// lies in the rule (not a copy): what [`Slot::of_rule`] keys by address.
    pub fn var_texts<'r>(&'r self, f: &mut dyn FnMut(&'r str)) {
        match self {
            Rule::Literal(_) => {}
            Rule::Array(items) => items.iter().for_each(|r| r.var_texts(f)),
            Rule::Op(op, args) => {
                if let (Op::Var, Some(Rule::Literal(Value::String(p)))) = (op, args.first()) {
                    f(p);
                }
                args.iter().for_each(|r| r.var_texts(f));
            }
        }
    }

    /// Calls `f` with every path the rule reads with `var`, `missing` and `missing_some`
    /// (those of `map` and friends too, though they read an item, not the context). Returns
    /// `false` when a path is computed or the whole data is read: then any part may be.
    pub fn read_paths(&self, f: &mut dyn FnMut(&str)) -> bool {
        let Rule::Op(op, args) = self else {
            return match self {
                Rule::Array(items) => items.iter().all(|r| r.read_paths(f)),
                _ => true,
            };
        };
        let mut key = |v: &Value| match v {
            Value::String(p) if !p.is_empty() => {
                f(p);
                true
            }
            Value::Number(n) => {
                f(&number_text(n));
                true
            }
            _ => false,
        };
        let own = match op {
            Op::Var => match args.first() {
                Some(Rule::Literal(p)) => key(p),
                _ => false,
            },
            Op::Missing => args.iter().all(|a| match a {
                Rule::Literal(Value::Array(keys)) => keys.iter().all(&mut key),
                Rule::Literal(k) => key(k),
                _ => false,
            }),
            Op::MissingSome => match args.get(1) {
                Some(Rule::Literal(Value::Array(keys))) => keys.iter().all(&mut key),
                _ => false,
            },
            _ => true,
        };
        own && args.iter().all(|r| r.read_paths(f))
    }

    /// Evaluates the rule, borrowing constants and context values instead of copying them:
    /// `var`, `if`, `and`, `or` and the comparisons copy nothing.
    ///
    /// `var`, `if`, `starts_with`, `ends_with` and the operators whose value is a boolean
    /// (comparisons, `in`, `!`, `!!`) are answered here, in a small function; the rest go to `eval_op`. Conditions are
    /// evaluated by [`Rule::test`], to a `bool`.
    pub fn eval_ref<'r>(&'r self, s: &Scope<'r>) -> Cow<'r, Value> {
        match self {
            Rule::Literal(v) => Cow::Borrowed(v),
            Rule::Array(items) => {
                Cow::Owned(Value::Array(items.iter().map(|r| r.eval(s)).collect()))
            }
            Rule::Op(Op::Var, args) => var_op(args, s),
            Rule::Op(Op::If, args) => match if_branch(args, s) {
                None => Cow::Borrowed(&NULL),
                Some(r) => match quick(r, s) {
                    Some(v) => Cow::Borrowed(v),
                    None => r.eval_ref(s),
                },
            },
            Rule::Op(op @ (Op::StartsWith | Op::EndsWith), args) => {
                Cow::Owned(affix_op(*op, args, s).map_or(Value::Null, Value::Bool))
            }
            Rule::Op(op, args) => match boolean_op(*op, args, s) {
                Some(b) => Cow::Owned(Value::Bool(b)),
                None => eval_op(*op, args, s),
            },
        }
    }

    /// Whether the rule's value is truthy; comparisons and the logical operators answer
    /// without building a value.
    pub fn test<'r>(&'r self, s: &Scope<'r>) -> bool {
        let Rule::Op(op, args) = self else {
            return truthy(&self.eval_ref(s));
        };
        if let Some(v) = quick(self, s) {
            return truthy(v);
        }
        match op {
            // `and` yields its first falsy operand or its last; `or` its first truthy one or
            // its last: either way, the truthiness is all()/any() of the operands'.
            Op::And => args.iter().all(|r| r.test(s)),
            Op::Or => args.iter().any(|r| r.test(s)),
            Op::If => if_branch(args, s).is_some_and(|r| r.test(s)),
            Op::StartsWith | Op::EndsWith => affix_op(*op, args, s).unwrap_or(false),
            _ => boolean_op(*op, args, s).unwrap_or_else(|| truthy(&self.eval_ref(s))),
        }
    }

    pub fn eval(&self, s: &Scope<'_>) -> Value {
        self.eval_ref(s).into_owned()
    }
}

/// `var`: the value at a path (a literal one is not copied), or the default when it is
/// missing or null.
fn var_op<'r>(args: &'r [Rule], s: &Scope<'r>) -> Cow<'r, Value> {
    let found = match args.first() {
        Some(Rule::Literal(path)) => s.lookup(path),
        Some(r) => s.lookup(&r.eval_ref(s)),
        None => s.lookup(&Value::Null),
    };
    match found.filter(|v| !v.is_null()) {
        Some(v) => v,
        None => args
            .get(1)
            .map_or(Cow::Owned(Value::Null), |r| r.eval_ref(s)),
    }
}

/// The operand `if` yields: the branch after the first truthy condition, else the trailing
/// else-branch, if any.
fn if_branch<'r>(args: &'r [Rule], s: &Scope<'r>) -> Option<&'r Rule> {
    let mut i = 0;
    while i + 1 < args.len() {
        if args[i].test(s) {
            return Some(&args[i + 1]);
        }
        i += 2;
    }
    args.get(i)
}

/// `starts_with` and `ends_with`: `None` (their value is null) unless given two strings.
fn affix_op<'r>(op: Op, args: &'r [Rule], s: &Scope<'r>) -> Option<bool> {
    if args.len() != 2 {
        return None;
    }
    match (&*operand(args, 0, s), &*operand(args, 1, s)) {
        (Value::String(a), Value::String(b)) => Some(if op == Op::StartsWith {
            a.starts_with(b.as_str())
        } else {
            a.ends_with(b.as_str())
        }),
        _ => None,
    }
}

static NULL: Value = Value::Null;

/// An operand that needs no evaluation: a constant, or a `var` with a constant path, no
/// default and no built-in, borrowed from the rule or the context (null when the path finds
/// nothing, as `var` gives). `None` for any other rule. Nearly every targeting condition
/// compares such operands, and this skips the evaluator's dispatch, `var`'s general form and
/// a `Cow` per operand.
#[inline]
fn quick<'r>(r: &'r Rule, s: &Scope<'r>) -> Option<&'r Value> {
    match r {
        Rule::Literal(v) => Some(v),
        Rule::Op(Op::Var, args) => match args.as_slice() {
            [Rule::Literal(Value::String(p))] if !p.starts_with('$') => {
                Some(s.data.get(p).unwrap_or(&NULL))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The value of operand `i`: borrowed when [`quick`] can, else evaluated; null past the end.
#[inline]
fn operand<'r>(args: &'r [Rule], i: usize, s: &Scope<'r>) -> Cow<'r, Value> {
    match args.get(i) {
        None => Cow::Borrowed(&NULL),
        Some(r) => match quick(r, s) {
            Some(v) => Cow::Borrowed(v),
            None => r.eval_ref(s),
        },
    }
}

/// The operators whose value is always a boolean: that boolean; `None` for the others.
fn boolean_op<'r>(op: Op, args: &'r [Rule], s: &Scope<'r>) -> Option<bool> {
    let arg = |i: usize| operand(args, i, s);
    Some(match op {
        Op::Eq => loose_eq(&arg(0), &arg(1)),
        Op::Ne => !loose_eq(&arg(0), &arg(1)),
        Op::StrictEq => strict_eq(&arg(0), &arg(1)),
        Op::StrictNe => !strict_eq(&arg(0), &arg(1)),
        Op::Not => !args.first().is_some_and(|r| r.test(s)),
        Op::NotNot => args.first().is_some_and(|r| r.test(s)),
        Op::Lt | Op::Le => {
            let eq = op == Op::Le;
            match args.len() {
                2 => less(&arg(0), &arg(1), eq),
                n if n > 2 => {
                    let b = arg(1);
                    less(&arg(0), &b, eq) && less(&b, &arg(2), eq)
                }
                _ => false,
            }
        }
        Op::Gt => less(&arg(1), &arg(0), false),
        Op::Ge => less(&arg(1), &arg(0), true),
        Op::In => {
            let needle = arg(0);
            match &*arg(1) {
                Value::Array(hay) => hay.iter().any(|h| strict_eq(h, &needle)),
                Value::String(hay) => hay.contains(&to_text(&needle)),
                _ => false,
            }
        }
        _ => return None,
    })
}

/// The operators [`Rule::eval_ref`] does not answer itself (`var`, `if` and the boolean
/// ones), kept out of line so that the common path stays small.
#[inline(never)]
fn eval_op<'r>(op: Op, args: &'r [Rule], s: &Scope<'r>) -> Cow<'r, Value> {
    let arg = |i: usize| {
        args.get(i)
            .map_or(Cow::Owned(Value::Null), |r| r.eval_ref(s))
    };
    let all = || args.iter().map(|r| r.eval(s)).collect::<Vec<_>>();
    Cow::Owned(match op {
        // Answered by `Rule::eval_ref` before it calls here.
        Op::Var => return var_op(args, s),
        Op::If => return if_branch(args, s).map_or(Cow::Owned(Value::Null), |r| r.eval_ref(s)),
        Op::Eq
        | Op::Ne
        | Op::StrictEq
        | Op::StrictNe
        | Op::Not
        | Op::NotNot
        | Op::Lt
        | Op::Le
        | Op::Gt
        | Op::Ge
        | Op::In => Value::Bool(boolean_op(op, args, s).unwrap_or_default()),
        Op::StartsWith | Op::EndsWith => affix_op(op, args, s).map_or(Value::Null, Value::Bool),
        Op::Missing => {
            let mut keys = all();
            if let [Value::Array(inner)] = keys.as_slice() {
                keys = inner.clone();
            }
            Value::Array(
                keys.into_iter()
                    .filter(|k| s.lookup(k).is_none_or(|v| v.is_null() || *v == ""))
                    .collect(),
            )
        }
        Op::MissingSome => {
            let need = to_number(&arg(0)).unwrap_or(0.0);
            let keys = arg(1);
            let Value::Array(keys) = &*keys else {
                return Cow::Owned(Value::Array(Vec::new()));
            };
            let missing: Vec<Value> = keys
                .iter()
                .filter(|k| s.lookup(k).is_none_or(|v| v.is_null() || *v == ""))
                .cloned()
                .collect();
            if (keys.len() - missing.len()) as f64 >= need {
                Value::Array(Vec::new())
            } else {
                Value::Array(missing)
            }
        }
        Op::Or | Op::And => {
            let mut last = Cow::Owned(Value::Bool(op == Op::And));
            for r in args {
                last = r.eval_ref(s);
                if truthy(&last) == (op == Op::Or) {
                    return last;
                }
            }
            return last;
        }
        Op::Add => {
            let mut sum = 0.0;
            for v in all() {
                match to_number(&v) {
                    Some(n) => sum += n,
                    None => return Cow::Owned(Value::Null),
                }
            }
            num(sum)
        }
        Op::Mul => {
            let mut p = 1.0;
            for v in all() {
                match to_number(&v) {
                    Some(n) => p *= n,
                    None => return Cow::Owned(Value::Null),
                }
            }
            num(p)
        }
        Op::Sub => match (to_number(&arg(0)), args.len()) {
            (Some(a), 1) => num(-a),
            (Some(a), _) => to_number(&arg(1)).map_or(Value::Null, |b| num(a - b)),
            _ => Value::Null,
        },
        Op::Div => match (to_number(&arg(0)), to_number(&arg(1))) {
            (Some(a), Some(b)) if b != 0.0 => num(a / b),
            _ => Value::Null,
        },
        Op::Mod => match (to_number(&arg(0)), to_number(&arg(1))) {
            (Some(a), Some(b)) if b != 0.0 => num(a % b),
            _ => Value::Null,
        },
        Op::Max | Op::Min => {
            let nums: Option<Vec<f64>> = all().iter().map(to_number).collect();
            match nums {
                Some(n) if !n.is_empty() => num(if op == Op::Max {
                    n.into_iter().fold(f64::MIN, f64::max)
                } else {
                    n.into_iter().fold(f64::MAX, f64::min)
                }),
                _ => Value::Null,
            }
        }
        Op::Map | Op::Filter | Op::All | Op::None | Op::Some => {
            let items = arg(0);
            let Value::Array(items) = &*items else {
                return Cow::Owned(match op {
                    Op::Map | Op::Filter => Value::Array(Vec::new()),
                    Op::All | Op::Some => Value::Bool(false),
                    _ => Value::Bool(true),
                });
            };
            let Some(rule) = args.get(1) else {
                return Cow::Owned(Value::Null);
            };
            let each = |item: &Value| {
                rule.eval(&Scope {
                    data: Data::Json(item),
                    flagd: None,
                    fractional: s.fractional,
                })
            };
            match op {
                Op::Map => Value::Array(items.iter().map(each).collect()),
                Op::Filter => {
                    Value::Array(items.iter().filter(|i| truthy(&each(i))).cloned().collect())
                }
                Op::All => Value::Bool(!items.is_empty() && items.iter().all(|i| truthy(&each(i)))),
                Op::None => Value::Bool(!items.iter().any(|i| truthy(&each(i)))),
                _ => Value::Bool(items.iter().any(|i| truthy(&each(i)))),
            }
        }
        Op::Reduce => {
            let Value::Array(items) = arg(0).into_owned() else {
                return arg(2);
            };
            let Some(rule) = args.get(1) else {
                return Cow::Owned(Value::Null);
            };
            let mut acc = arg(2).into_owned();
            for item in items {
                let mut ctx = Map::new();
                ctx.insert("current".into(), item);
                ctx.insert("accumulator".into(), acc);
                acc = rule.eval(&Scope {
                    data: Data::Json(&Value::Object(ctx)),
                    flagd: None,
                    fractional: s.fractional,
                });
            }
            acc
        }
        Op::Merge => Value::Array(
            all()
                .into_iter()
                .flat_map(|v| match v {
                    Value::Array(a) => a,
                    other => vec![other],
                })
                .collect(),
        ),
        Op::Cat => Value::String(all().iter().map(to_text).collect()),
        Op::Substr => {
            let text: Vec<char> = to_text(&arg(0)).chars().collect();
            let len = text.len() as i64;
            let start = to_number(&arg(1)).unwrap_or(0.0) as i64;
            let start = if start < 0 {
                (len + start).max(0)
            } else {
                start.min(len)
            };
            let end = match args.get(2).map(|r| r.eval(s)) {
                Some(v) if !v.is_null() => {
                    let n = to_number(&v).unwrap_or(0.0) as i64;
                    if n < 0 {
                        (len + n).max(start)
                    } else {
                        (start + n).min(len)
                    }
                }
                _ => len,
            };
            Value::String(
                text[start as usize..end.max(start) as usize]
                    .iter()
                    .collect(),
            )
        }
        Op::SemVer => super::semver::evaluate(&all()),
        Op::Fractional => return fractional_op(args, s),
    })
}

/// `fractional`: when its operands are constants, as they nearly always are (the shorthand
/// that buckets flagKey + targetingKey), they are read in place, and the chosen bucket's
/// variant is borrowed from the rule.
fn fractional_op<'r>(args: &'r [Rule], s: &Scope<'r>) -> Cow<'r, Value> {
    const ON_STACK: usize = 8;
    if args.len() <= ON_STACK {
        let mut v: [&'r Value; ON_STACK] = [&NULL; ON_STACK];
        let mut constant = true;
        for (slot, r) in v.iter_mut().zip(args) {
            match r {
                Rule::Literal(x) => *slot = x,
                _ => constant = false,
            }
        }
        if constant {
            return fractional(&v[..args.len()], s)
                .and_then(|i| bucket(v[i]))
                .map_or(Cow::Owned(Value::Null), |(variant, _)| {
                    Cow::Borrowed(variant)
                });
        }
    }
    let v: Vec<Cow<'r, Value>> = args.iter().map(|r| r.eval_ref(s)).collect();
    let picked = fractional(&v, s).and_then(|i| bucket(&v[i]).map(|(variant, _)| variant));
    Cow::Owned(picked.cloned().unwrap_or(Value::Null))
}

/// §4.1. `args` are the evaluated operands; the answer is the index of the chosen bucket
/// among them (`None`: the operation's value is null).
fn fractional<V: std::ops::Deref<Target = Value>>(args: &[V], s: &Scope<'_>) -> Option<usize> {
    let first = args.first()?;
    if s.fractional == FractionalVersion::V3 {
        let mut key = Vec::new();
        // Where the buckets start among the operands.
        let buckets = match &**first {
            Value::Array(_) => {
                let (Some(flag), Some(Value::String(target))) =
                    (s.flag_key(), s.data.get("targetingKey"))
                else {
                    return None;
                };
                super::cbor::encode(
                    &Value::Array(vec![
                        Value::String(flag.into_owned()),
                        Value::String(target.clone()),
                    ]),
                    &mut key,
                );
                0
            }
            Value::Null => return None,
            first => {
                super::cbor::encode(first, &mut key);
                1
            }
        };
        return buckets_pick(murmur3_x86_32(&key, 0), &args[buckets..], s.fractional)
            .map(|i| i + buckets);
    }
    // v1 and v2: a string first operand is the bucketing value; otherwise flagKey +
    // targetingKey, concatenated (on the stack when short, as they nearly always are).
    if let Value::String(k) = &**first {
        return buckets_pick(murmur3_x86_32(k.as_bytes(), 0), &args[1..], s.fractional)
            .map(|i| i + 1);
    }
    let (Some(flag), Some(Value::String(target))) = (s.flag_key(), s.data.get("targetingKey"))
    else {
        return None;
    };
    if target.is_empty() {
        return None;
    }
    let skip = usize::from(first.is_null());
    let h = default_bucketing_hash(flag.as_bytes(), target.as_bytes());
    buckets_pick(h, &args[skip..], s.fractional).map(|i| i + skip)
}

/// flagd's default bucketing value, flag key + targeting key, hashed (v1 and v2); the two are
/// joined on the stack when short, as they nearly always are.
pub(super) fn default_bucketing_hash(flag: &[u8], target: &[u8]) -> u32 {
    let len = flag.len() + target.len();
    let mut short = [0u8; 128];
    if len <= short.len() {
        short[..flag.len()].copy_from_slice(flag);
        short[flag.len()..len].copy_from_slice(target);
        murmur3_x86_32(&short[..len], 0)
    } else {
        murmur3_x86_32(&[flag, target].concat(), 0)
    }
}

/// One `[variant, weight]` bucket: `None` when malformed (which makes the whole operation
/// null). A missing or null weight is 1; a negative one is 0.
pub(super) fn bucket(b: &Value) -> Option<(&Value, u64)> {
    let Value::Array(pair) = b else {
        return None;
    };
    let variant = pair.first()?;
    if matches!(variant, Value::Array(_) | Value::Object(_)) {
        return None;
    }
    let weight = match pair.get(1) {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|w| w <= 2_147_483_647) => {
            n.as_u64().unwrap_or_default()
        }
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(-1.0);
            if f.fract() != 0.0 || f > 2_147_483_647.0 {
                return None;
            }
            if f < 0.0 { 0 } else { f as u64 }
        }
        Some(_) => return None,
    };
    Some((variant, weight))
}

/// The index of the bucket whose share of the weights holds hash `h`; `None` when a bucket
/// is malformed or the weights are out of range.
fn buckets_pick<V: std::ops::Deref<Target = Value>>(
    h: u32,
    buckets: &[V],
    version: FractionalVersion,
) -> Option<usize> {
    // Weights parsed once, onto the stack for the usual handful of buckets.
    let mut first = [0u64; 8];
    let mut total = 0u64;
    for (i, b) in buckets.iter().enumerate() {
        let (_, w) = bucket(b)?;
        total += w;
        if let Some(slot) = first.get_mut(i) {
            *slot = w;
        }
    }
    if buckets.is_empty() || total == 0 || total > 2_147_483_647 {
        return None;
    }
    // Every bucket was checked above, so each has a weight here.
    let weights = buckets.iter().enumerate().map(|(i, b)| match first.get(i) {
        Some(w) => *w,
        None => bucket(b).map_or(0, |(_, w)| w),
    });
    pick(h, weights, total, version)
}

/// The index of the bucket, among buckets of `weights` (summing to `total`, at most
/// 2³¹ − 1), whose share holds hash `h`.
pub(super) fn pick(
    h: u32,
    weights: impl Iterator<Item = u64>,
    total: u64,
    version: FractionalVersion,
) -> Option<usize> {
    match version {
        FractionalVersion::V2 | FractionalVersion::V3 => {
            let at = (u64::from(h) * total) >> 32;
            let mut end = 0;
            for (i, w) in weights.enumerate() {
                end += w;
                if at < end {
                    return Some(i);
                }
            }
            None
        }
        FractionalVersion::V1 => {
            let b = f64::from((h as i32).unsigned_abs()) / 2_147_483_647.0 * 100.0;
            let mut end = 0.0;
            for (i, w) in weights.enumerate() {
                end += 100.0 * w as f64 / total as f64;
                if b < end {
                    return Some(i);
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(rule: Value, data: Value) -> Value {
        run_v(rule, data, FractionalVersion::V2)
    }

    fn run_v(rule: Value, data: Value, v: FractionalVersion) -> Value {
        let key = data
            .pointer("/$flagd/flagKey")
            .and_then(Value::as_str)
            .map(str::to_owned);
        compile(&rule).unwrap().eval(&Scope {
            data: Data::Json(&data),
            flagd: key.as_deref().map(|flag_key| Flagd {
                flag_key,
                timestamp: 0,
            }),
            fractional: v,
        })
    }

    /// JsonLogic's operators case by case: each row a rule, its data and the value JsonLogic
    /// (JavaScript semantics) gives. Written against jsonlogic.com's definitions; the rows
    /// sit on the boundaries a mutation test found untested (operand counts, empty arrays,
    /// zero divisors, mixed types).
    #[test]
    fn operator_table() {
        let rows = [
            // Arithmetic: JavaScript's ToNumber, null for what is not a number.
            (json!({"*": [2, 4]}), json!({}), json!(8)),
            (json!({"*": [2, "3", 1.5]}), json!({}), json!(9)),
            (
                json!({"*": [2, {"var": "o"}]}),
                json!({"o": {}}),
                json!(null),
            ),
            (json!({"+": [1, "2", true]}), json!({}), json!(4)),
            (json!({"+": [9.0e15]}), json!({}), json!(9.0e15)),
            (
                json!({"+": [8.0e15]}),
                json!({}),
                json!(8_000_000_000_000_000_i64),
            ),
            (json!({"-": [5, 2]}), json!({}), json!(3)),
            (json!({"-": [5]}), json!({}), json!(-5)),
            (json!({"-": [5, "x"]}), json!({}), json!(null)),
            (json!({"/": [7, 2]}), json!({}), json!(3.5)),
            (json!({"/": [1, 0]}), json!({}), json!(null)),
            (json!({"%": [7, 3]}), json!({}), json!(1)),
            (json!({"%": [-7, 3]}), json!({}), json!(-1)),
            (json!({"%": [7, 0]}), json!({}), json!(null)),
            (json!({"min": [3, 1, 2]}), json!({}), json!(1)),
            (json!({"max": [3, 1, 2]}), json!({}), json!(3)),
            (json!({"max": []}), json!({}), json!(null)),
            (json!({"min": ["a"]}), json!({}), json!(null)),
            // Comparisons: strings as strings, anything else as numbers; three operands are
            // "between".
            (json!({"<": ["a", "b"]}), json!({}), json!(true)),
            (json!({"<=": ["b", "b"]}), json!({}), json!(true)),
            (json!({"<": ["b", "b"]}), json!({}), json!(false)),
            (json!({"<=": ["c", "b"]}), json!({}), json!(false)),
            (json!({"<": [1, 2, 3]}), json!({}), json!(true)),
            (json!({"<": [1, 3, 2]}), json!({}), json!(false)),
            (json!({"<": [1, 2, 2]}), json!({}), json!(false)),
            (json!({"<=": [1, 2, 2]}), json!({}), json!(true)),
            (json!({"<=": [-1]}), json!({}), json!(false)),
            (json!({"<": [2, 1]}), json!({}), json!(false)),
            (json!({"<": [null, 1]}), json!({}), json!(true)),
            (
                json!({"<": [{"var": "o"}, 1]}),
                json!({"o": {}}),
                json!(false),
            ),
            (json!({">": [2, 1]}), json!({}), json!(true)),
            (json!({">=": [1, 1]}), json!({}), json!(true)),
            // Equality.
            (json!({"==": [null, null]}), json!({}), json!(true)),
            (json!({"==": [null, 0]}), json!({}), json!(false)),
            (json!({"==": [0, null]}), json!({}), json!(false)),
            (
                json!({"==": [{"var": "a"}, {"var": "a"}]}),
                json!({"a": [1]}),
                json!(false),
            ),
            (
                json!({"==": [{"var": "a"}, 1]}),
                json!({"a": [1]}),
                json!(true),
            ),
            (
                json!({"==": [1, {"var": "a"}]}),
                json!({"a": [1]}),
                json!(true),
            ),
            (json!({"!=": [1, "1"]}), json!({}), json!(false)),
            (json!({"===": [1, 1.0]}), json!({}), json!(true)),
            (json!({"===": [1, 2]}), json!({}), json!(false)),
            (
                json!({"===": [{"var": "a"}, {"var": "a"}]}),
                json!({"a": [1]}),
                json!(false),
            ),
            (json!({"!==": [1, 2]}), json!({}), json!(true)),
            // Logic: `and` and `or` give an operand, `!` and `!!` a boolean.
            (json!({"!!": [1]}), json!({}), json!(true)),
            (json!({"!!": [[]]}), json!({}), json!(false)),
            (json!({"!": [0]}), json!({}), json!(true)),
            (json!({"and": [1, 0, 2]}), json!({}), json!(0)),
            (json!({"and": [1, 2]}), json!({}), json!(2)),
            (json!({"or": [0, "", 3]}), json!({}), json!(3)),
            (json!({"or": [0, false]}), json!({}), json!(false)),
            // No operands: each gives its identity (JsonLogic leaves it unsaid).
            (json!({"and": []}), json!({}), json!(true)),
            (json!({"or": []}), json!({}), json!(false)),
            (json!({"if": [false, 1, true, 2, 3]}), json!({}), json!(2)),
            (json!({"if": [false, 1]}), json!({}), json!(null)),
            // Arrays.
            (
                json!({"map": [[1, 2], {"*": [{"var": ""}, 2]}]}),
                json!({}),
                json!([2, 4]),
            ),
            (json!({"map": [5, {"var": ""}]}), json!({}), json!([])),
            (
                json!({"filter": [[1, 2, 3, 4], {"%": [{"var": ""}, 2]}]}),
                json!({}),
                json!([1, 3]),
            ),
            (json!({"filter": [null, {"var": ""}]}), json!({}), json!([])),
            (
                json!({"all": [[1, 2], {">": [{"var": ""}, 0]}]}),
                json!({}),
                json!(true),
            ),
            (
                json!({"all": [[1, 0], {"var": ""}]}),
                json!({}),
                json!(false),
            ),
            (json!({"all": [[], {"var": ""}]}), json!({}), json!(false)),
            (json!({"all": [5, {"var": ""}]}), json!({}), json!(false)),
            (
                json!({"none": [[0, false], {"var": ""}]}),
                json!({}),
                json!(true),
            ),
            (
                json!({"none": [[0, 1], {"var": ""}]}),
                json!({}),
                json!(false),
            ),
            (json!({"none": [5, {"var": ""}]}), json!({}), json!(true)),
            (
                json!({"some": [[0, 1], {"var": ""}]}),
                json!({}),
                json!(true),
            ),
            (json!({"some": [5, {"var": ""}]}), json!({}), json!(false)),
            (
                json!({"reduce": [[1, 2, 3], {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]}),
                json!({}),
                json!(6),
            ),
            (
                json!({"merge": [[1], 2, [3, [4]]]}),
                json!({}),
                json!([1, 2, 3, [4]]),
            ),
            (
                json!({"in": [1, {"var": "a"}]}),
                json!({"a": ["1"]}),
                json!(false),
            ),
            // Strings.
            (
                json!({"cat": ["a", 1, null, {"var": "a"}]}),
                json!({"a": [1, 2]}),
                json!("a1null1,2"),
            ),
            (json!({"cat": [-0.0]}), json!({}), json!("0")),
            (
                json!({"cat": [18_446_744_073_709_551_615_u64]}),
                json!({}),
                json!("18446744073709551615"),
            ),
            (
                json!({"cat": [1.0e39]}),
                json!({}),
                json!("1000000000000000000000000000000000000000"),
            ),
            (json!({"substr": ["hello", 0, 2]}), json!({}), json!("he")),
            (json!({"substr": ["hello", 1, 3]}), json!({}), json!("ell")),
            (json!({"substr": ["hello", -3]}), json!({}), json!("llo")),
            (json!({"substr": ["hello", 1, -1]}), json!({}), json!("ell")),
            (json!({"substr": ["hello", 1, 0]}), json!({}), json!("")),
            (
                json!({"substr": ["hello", 1, null]}),
                json!({}),
                json!("ello"),
            ),
            (json!({"substr": ["hello", 0, -10]}), json!({}), json!("")),
            (json!({"substr": ["hello", 10]}), json!({}), json!("")),
            // `missing` and `missing_some`: absent, null and "" are missing.
            (
                json!({"missing": ["a", "b"]}),
                json!({"a": 1}),
                json!(["b"]),
            ),
            (
                json!({"missing": [["a", "b"]]}),
                json!({"b": 1}),
                json!(["a"]),
            ),
            (json!({"missing": ["a"]}), json!({"a": ""}), json!(["a"])),
            (
                json!({"missing_some": [1, ["a", "b"]]}),
                json!({"a": 1}),
                json!([]),
            ),
            (
                json!({"missing_some": [2, ["a", "b", "c"]]}),
                json!({"a": 1}),
                json!(["b", "c"]),
            ),
            (
                json!({"missing_some": [1, ["a", "b"]]}),
                json!({"a": ""}),
                json!(["a", "b"]),
            ),
            (json!({"missing_some": [1, "x"]}), json!({}), json!([])),
            // `var`: a number is an index; null and "" are the whole data.
            (json!({"var": 1}), json!(["zero", "one"]), json!("one")),
            (json!({"var": null}), json!({"a": 1}), json!({"a": 1})),
            (json!({"var": ""}), json!({"a": 1}), json!({"a": 1})),
            (
                json!({"var": "$flagdx"}),
                json!({"$flagdx": 3, "$flagd": {"flagKey": "f"}}),
                json!(3),
            ),
        ];
        for (rule, data, want) in rows {
            assert_eq!(run(rule.clone(), data.clone()), want, "{rule} on {data}");
        }
    }

    #[test]
    fn what_rules_read_and_compare() {
        let paths = |rule: Value| {
            let mut seen = Vec::new();
            let all = compile(&rule)
                .unwrap()
                .read_paths(&mut |p| seen.push(p.to_owned()));
            (all, seen)
        };
        let t = |v: &[&str]| (true, v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(paths(json!([{"var": "a"}, {"var": "b"}])), t(&["a", "b"]));
        assert_eq!(paths(json!({"var": 1})), t(&["1"]));
        assert_eq!(paths(json!({"missing": ["a", "b"]})), t(&["a", "b"]));
        assert_eq!(paths(json!({"missing": [["a", "b"]]})), t(&["a", "b"]));
        assert_eq!(
            paths(json!({"missing_some": [1, ["a", "b"]]})),
            t(&["a", "b"])
        );
        assert!(
            !paths(json!({"var": {"cat": ["a", "b"]}})).0,
            "a computed path"
        );
        let mut strings = Vec::new();
        compile(&json!({"in": ["x", ["a", ["b"], {"k": "c", "l": 1}]]}))
            .unwrap()
            .constant_strings(&mut |s| strings.push(s.to_owned()));
        strings.sort();
        assert_eq!(strings, ["a", "b", "c", "x"]);
        // An object of more than one key is data, not an operation.
        assert_eq!(
            run(json!({"if": [true, {"a": 1, "b": 2}]}), json!({})),
            json!({"a": 1, "b": 2})
        );
        assert_eq!(
            run(
                json!({"+": [{"var": "e"}, {"var": "one"}]}),
                json!({"e": [], "one": [5]})
            ),
            json!(5)
        );
    }

    #[test]
    fn fractional_reads_the_flag_key_from_a_flat_context_too() {
        let d = json!({"targetingKey": "user-7", "$flagd": {"flagKey": "f"}});
        let rule = compile(&json!({"fractional": [["a", 50], ["b", 50]]})).unwrap();
        let with_built_ins = run(json!({"fractional": [["a", 50], ["b", 50]]}), d.clone());
        let from_data = rule.eval(&Scope {
            data: Data::Json(&d),
            flagd: None,
            fractional: FractionalVersion::V2,
        });
        assert!(from_data.is_string());
        assert_eq!(from_data, with_built_ins);
    }

    #[test]
    fn flagd_built_ins_under_var() {
        let d = json!({"$flagd": {"flagKey": "f", "other": 5}});
        assert_eq!(
            run(json!({"var": "$flagd"}), d.clone()),
            json!({"flagKey": "f", "timestamp": 0})
        );
        assert_eq!(run(json!({"var": "$flagd.other"}), d.clone()), json!(null));
        assert_eq!(run(json!({"var": "$flagd.flagKey"}), d), json!("f"));
    }

    #[test]
    fn bucket_weights_and_their_limits() {
        let w = |b: Value| bucket(&b).map(|(_, w)| w);
        assert_eq!(w(json!(["a", 2_147_483_647_u64])), Some(2_147_483_647));
        assert_eq!(w(json!(["a", 2_147_483_648_u64])), None);
        assert_eq!(w(json!(["a", 2_147_483_647.0])), Some(2_147_483_647));
        assert_eq!(w(json!(["a", 2_147_483_648.0])), None);
        assert_eq!(w(json!(["a", 3.0])), Some(3));
        assert_eq!(w(json!(["a", -2.0])), Some(0));
        assert_eq!(w(json!(["a"])), Some(1));
        // Weights that sum past 2³¹ − 1 make the operation null; exactly that much is fine.
        let over = [json!(["a", 2_147_483_647_u64]), json!(["b", 1])];
        assert_eq!(
            buckets_pick(7, &over.iter().collect::<Vec<_>>(), FractionalVersion::V2),
            None
        );
        let full = [json!(["a", 2_147_483_647_u64])];
        assert_eq!(
            buckets_pick(7, &full.iter().collect::<Vec<_>>(), FractionalVersion::V2),
            Some(0)
        );
    }

    #[test]
    fn pick_never_lands_in_an_empty_bucket_and_uses_the_top_of_the_range() {
        for v in [FractionalVersion::V1, FractionalVersion::V2] {
            assert_eq!(pick(0, [0, 1].into_iter(), 1, v), Some(1), "{v:?}");
        }
        assert_eq!(
            pick(u32::MAX, [1, 1].into_iter(), 2, FractionalVersion::V2),
            Some(1)
        );
        assert_eq!(
            pick(0x8000_0000, [1, 1].into_iter(), 2, FractionalVersion::V2),
            Some(1)
        );
        assert_eq!(
            pick(0x7fff_ffff, [1, 1].into_iter(), 2, FractionalVersion::V2),
            Some(0)
        );
    }

    #[test]
    fn long_keys_hash_as_their_concatenation() {
        let (flag, target) = ([b'f'; 100], [b't'; 100]);
        assert_eq!(
            default_bucketing_hash(&flag, &target),
            murmur3_x86_32(&[&flag[..], &target[..]].concat(), 0)
        );
    }

    #[test]
    fn fractional_with_a_null_first_operand_or_many_buckets() {
        let d = json!({"targetingKey": "user-7", "$flagd": {"flagKey": "f"}});
        let plain = run(json!({"fractional": [["a", 50], ["b", 50]]}), d.clone());
        assert!(plain.is_string(), "{plain}");
        assert_eq!(
            run(
                json!({"fractional": [null, ["a", 50], ["b", 50]]}),
                d.clone()
            ),
            plain
        );
        // Nine buckets: more than are read in place.
        let nine: Vec<Value> = (0..9).map(|i| json!([format!("v{i}"), 1])).collect();
        let picked = run(json!({"fractional": nine}), d);
        assert!(
            picked.as_str().is_some_and(|v| v.starts_with('v')),
            "{picked}"
        );
    }

    #[test]
    fn core_operators_follow_jsonlogic() {
        let d = json!({"user": {"name": "jack", "age": 30, "tags": ["a", "b"]}, "n": "5"});
        assert_eq!(run(json!({"var": "user.name"}), d.clone()), json!("jack"));
        assert_eq!(
            run(json!({"var": ["user.missing", "dflt"]}), d.clone()),
            json!("dflt")
        );
        assert_eq!(run(json!({"var": "user.tags.1"}), d.clone()), json!("b"));
        assert_eq!(
            run(json!({"==": [{"var": "n"}, 5]}), d.clone()),
            json!(true)
        );
        assert_eq!(
            run(json!({"===": [{"var": "n"}, 5]}), d.clone()),
            json!(false)
        );
        assert_eq!(
            run(json!({"<": [1, {"var": "user.age"}, 40]}), d.clone()),
            json!(true)
        );
        assert_eq!(run(json!({"if": [false, "a"]}), d.clone()), Value::Null);
        assert_eq!(
            run(json!({"if": [false, "a", true, "b", "c"]}), d.clone()),
            json!("b")
        );
        assert_eq!(run(json!({"or": [0, "", "x"]}), d.clone()), json!("x"));
        assert_eq!(run(json!({"and": [1, 0, 2]}), d.clone()), json!(0));
        assert_eq!(run(json!({"+": ["1", 2]}), d.clone()), json!(3));
        assert_eq!(run(json!({"/": [1, 4]}), d.clone()), json!(0.25));
        assert_eq!(run(json!({"-": [5]}), d.clone()), json!(-5));
        assert_eq!(run(json!({"max": [1, 3, 2]}), d.clone()), json!(3));
        assert_eq!(run(json!({"in": ["ac", "jacket"]}), d.clone()), json!(true));
        assert_eq!(
            run(json!({"in": ["b", {"var": "user.tags"}]}), d.clone()),
            json!(true)
        );
        assert_eq!(
            run(json!({"cat": ["a", 1, true]}), d.clone()),
            json!("a1true")
        );
        assert_eq!(
            run(json!({"substr": ["jsonlogic", -5, 2]}), d.clone()),
            json!("lo")
        );
        assert_eq!(
            run(json!({"merge": [[1], 2, [3, [4]]]}), d.clone()),
            json!([1, 2, 3, [4]])
        );
        assert_eq!(
            run(json!({"missing": ["user.name", "x"]}), d.clone()),
            json!(["x"])
        );
        assert_eq!(
            run(
                json!({"map": [{"var": "user.tags"}, {"cat": [{"var": ""}, "!"]}]}),
                d.clone()
            ),
            json!(["a!", "b!"])
        );
        assert_eq!(
            run(
                json!({"reduce": [[1, 2, 3], {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]}),
                d.clone()
            ),
            json!(6)
        );
        assert_eq!(
            run(
                json!({"some": [[1, 2], {">": [{"var": ""}, 1]}]}),
                d.clone()
            ),
            json!(true)
        );
        assert_eq!(run(json!({"!!": [[]]}), d), json!(false));
        assert!(
            compile(&json!({"nope": [1]})).is_err(),
            "unknown operators do not compile"
        );
    }

    #[test]
    fn string_operators_are_strict_about_arguments() {
        assert_eq!(
            run(
                json!({"starts_with": ["user@example.com", "user"]}),
                json!({})
            ),
            json!(true)
        );
        assert_eq!(
            run(
                json!({"ends_with": ["user@example.com", ".org"]}),
                json!({})
            ),
            json!(false)
        );
        assert_eq!(
            run(json!({"starts_with": [1, "1"]}), json!({})),
            Value::Null
        );
        assert_eq!(run(json!({"ends_with": ["a"]}), json!({})), Value::Null);
    }

    #[test]
    fn fractional_buckets_like_flagd() {
        let rule = json!({"fractional": [
            {"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]},
            ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]
        ]});
        let data = json!({"user": {"name": "jack"}, "$flagd": {"flagKey": "fractional-flag"}});
        assert_eq!(
            run_v(rule.clone(), data.clone(), FractionalVersion::V2),
            json!("hearts")
        );
        assert_eq!(
            run_v(rule.clone(), data.clone(), FractionalVersion::V1),
            json!("spades")
        );
        assert_eq!(run_v(rule, data, FractionalVersion::V3), json!("diamonds"));
        // The shorthand buckets flagKey + targetingKey.
        let rule = json!({"fractional": [["v2", 10], ["v1", 90]]});
        let ctx = |k: &str| json!({"targetingKey": k, "$flagd": {"flagKey": "checkout-version"}});
        assert_eq!(run(rule.clone(), ctx("user-7")), json!("v2"));
        assert_eq!(run(rule.clone(), ctx("user-42")), json!("v1"));
        assert_eq!(
            run(rule.clone(), json!({"$flagd": {"flagKey": "x"}})),
            Value::Null
        );
        assert_eq!(run(json!({"fractional": []}), ctx("a")), Value::Null);
        assert_eq!(
            run(json!({"fractional": ["k", ["a", 1.5]]}), ctx("a")),
            Value::Null
        );
        assert_eq!(
            run(json!({"fractional": ["k", ["a", 0]]}), ctx("a")),
            Value::Null
        );
        assert_eq!(
            run(json!({"fractional": ["k", ["a"], ["b", -3]]}), ctx("a")),
            json!("a")
        );
    }
}
