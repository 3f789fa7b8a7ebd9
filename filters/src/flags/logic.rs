//! JsonLogic, compiled once per flag set, with flagd's operator set and attache's own custom
//! operators (specs/feature-flags.md §3–§4). Coercion and truthiness follow jsonlogic.com
//! (JavaScript's rules); an unknown operator is a compile error.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use super::murmur3::murmur3_x86_32;

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

/// What a rule runs against.
pub struct Scope<'a> {
    pub data: &'a Value,
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
        var(self.data, path).map(Cow::Borrowed)
    }

    /// `$flagd.flagKey` as `fractional` reads it, without building a path.
    fn flag_key(&self) -> Option<Cow<'a, str>> {
        match self.flagd {
            Some(f) => Some(Cow::Borrowed(f.flag_key)),
            None => match var_str(self.data, "$flagd.flagKey")? {
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

/// The shortest decimal of a number, without `.0`.
pub fn number_text(n: &Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{}", f as i128)
    } else {
        format!("{f}")
    }
}

/// JavaScript's `==` on JSON values.
fn loose_eq(a: &Value, b: &Value) -> bool {
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

fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(_) | Value::Object(_), _) => false,
        _ => a == b,
    }
}

/// JavaScript's relational comparison: strings compare as strings, anything else as numbers.
fn less(a: &Value, b: &Value, or_equal: bool) -> bool {
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

fn var<'a>(data: &'a Value, path: &Value) -> Option<&'a Value> {
    match path {
        Value::Null => Some(data),
        Value::String(s) => var_str(data, s),
        Value::Number(n) => var_str(data, &number_text(n)),
        _ => None,
    }
}

/// A dotted path into `data`; the empty path is `data` itself.
fn var_str<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(data);
    }
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

    /// Evaluates the rule, borrowing constants and context values instead of copying them:
    /// `var`, `if`, `and`, `or` and the comparisons copy nothing.
    pub fn eval_ref<'r>(&'r self, s: &Scope<'r>) -> Cow<'r, Value> {
        match self {
            Rule::Literal(v) => Cow::Borrowed(v),
            Rule::Array(items) => {
                Cow::Owned(Value::Array(items.iter().map(|r| r.eval(s)).collect()))
            }
            Rule::Op(op, args) => eval_op(*op, args, s),
        }
    }

    pub fn eval(&self, s: &Scope<'_>) -> Value {
        self.eval_ref(s).into_owned()
    }
}

fn eval_op<'r>(op: Op, args: &'r [Rule], s: &Scope<'r>) -> Cow<'r, Value> {
    let arg = |i: usize| {
        args.get(i)
            .map_or(Cow::Owned(Value::Null), |r| r.eval_ref(s))
    };
    let all = || args.iter().map(|r| r.eval(s)).collect::<Vec<_>>();
    Cow::Owned(match op {
        Op::Var => {
            let path = arg(0);
            return match s.lookup(&path).filter(|v| !v.is_null()) {
                Some(v) => v,
                None => arg(1),
            };
        }
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
        Op::If => {
            let mut i = 0;
            while i + 1 < args.len() {
                if truthy(&args[i].eval_ref(s)) {
                    return args[i + 1].eval_ref(s);
                }
                i += 2;
            }
            return match args.get(i) {
                Some(r) => r.eval_ref(s),
                None => Cow::Owned(Value::Null),
            };
        }
        Op::Eq => Value::Bool(loose_eq(&arg(0), &arg(1))),
        Op::Ne => Value::Bool(!loose_eq(&arg(0), &arg(1))),
        Op::StrictEq => Value::Bool(strict_eq(&arg(0), &arg(1))),
        Op::StrictNe => Value::Bool(!strict_eq(&arg(0), &arg(1))),
        Op::Not => Value::Bool(!truthy(&arg(0))),
        Op::NotNot => Value::Bool(truthy(&arg(0))),
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
        Op::Lt | Op::Le => {
            let eq = op == Op::Le;
            let ok = match args.len() {
                2 => less(&arg(0), &arg(1), eq),
                n if n > 2 => {
                    let b = arg(1);
                    less(&arg(0), &b, eq) && less(&b, &arg(2), eq)
                }
                _ => false,
            };
            Value::Bool(ok)
        }
        Op::Gt => Value::Bool(less(&arg(1), &arg(0), false)),
        Op::Ge => Value::Bool(less(&arg(1), &arg(0), true)),
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
                    data: item,
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
                    data: &Value::Object(ctx),
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
        Op::In => {
            let needle = arg(0);
            let hay = arg(1);
            match &*hay {
                Value::Array(hay) => Value::Bool(hay.iter().any(|h| strict_eq(h, &needle))),
                Value::String(hay) => Value::Bool(hay.contains(&to_text(&needle))),
                _ => Value::Bool(false),
            }
        }
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
        Op::StartsWith | Op::EndsWith if args.len() == 2 => match (&*arg(0), &*arg(1)) {
            (Value::String(a), Value::String(b)) => Value::Bool(if op == Op::StartsWith {
                a.starts_with(b.as_str())
            } else {
                a.ends_with(b.as_str())
            }),
            _ => Value::Null,
        },
        Op::StartsWith | Op::EndsWith => Value::Null,
        Op::SemVer => super::semver::evaluate(&all()),
        Op::Fractional => {
            let v: Vec<Cow<'_, Value>> = args.iter().map(|r| r.eval_ref(s)).collect();
            let refs: Vec<&Value> = v.iter().map(|c| &**c).collect();
            fractional(&refs, s)
        }
    })
}

/// §4.1.
fn fractional(args: &[&Value], s: &Scope<'_>) -> Value {
    if args.is_empty() {
        return Value::Null;
    }
    let (key, buckets): (Vec<u8>, &[&Value]) = if s.fractional == FractionalVersion::V3 {
        match args[0] {
            Value::Array(_) => {
                let (Some(flag), Some(Value::String(target))) =
                    (s.flag_key(), var_str(s.data, "targetingKey"))
                else {
                    return Value::Null;
                };
                let mut key = Vec::new();
                super::cbor::encode(
                    &Value::Array(vec![
                        Value::String(flag.into_owned()),
                        Value::String(target.clone()),
                    ]),
                    &mut key,
                );
                (key, args)
            }
            Value::Null => return Value::Null,
            first => {
                let mut key = Vec::new();
                super::cbor::encode(first, &mut key);
                (key, &args[1..])
            }
        }
    } else {
        match legacy_key(args, s) {
            Some(k) => k,
            None => return Value::Null,
        }
    };
    buckets_pick(&key, buckets, s.fractional)
}

/// v1 and v2: a string first argument is the bucketing value; otherwise flagKey + targetingKey.
fn legacy_key<'a, 'v>(args: &'a [&'v Value], s: &Scope<'_>) -> Option<(Vec<u8>, &'a [&'v Value])> {
    Some(match args[0] {
        Value::String(k) => (k.clone().into_bytes(), &args[1..]),
        first => {
            let (Some(flag), Some(Value::String(target))) =
                (s.flag_key(), var_str(s.data, "targetingKey"))
            else {
                return None;
            };
            if target.is_empty() {
                return None;
            }
            let rest = if first.is_null() { &args[1..] } else { args };
            let mut key = Vec::with_capacity(flag.len() + target.len());
            key.extend_from_slice(flag.as_bytes());
            key.extend_from_slice(target.as_bytes());
            (key, rest)
        }
    })
}

fn buckets_pick(key: &[u8], buckets: &[&Value], version: FractionalVersion) -> Value {
    let mut parsed: Vec<(&Value, u64)> = Vec::with_capacity(buckets.len());
    for b in buckets {
        let Value::Array(pair) = *b else {
            return Value::Null;
        };
        let Some(variant) = pair.first() else {
            return Value::Null;
        };
        if matches!(variant, Value::Array(_) | Value::Object(_)) {
            return Value::Null;
        }
        let weight = match pair.get(1) {
            None | Some(Value::Null) => 1,
            Some(Value::Number(n)) => {
                let f = n.as_f64().unwrap_or(-1.0);
                if f.fract() != 0.0 || f > 2_147_483_647.0 {
                    return Value::Null;
                }
                if f < 0.0 { 0 } else { f as u64 }
            }
            Some(_) => return Value::Null,
        };
        parsed.push((variant, weight));
    }
    let total: u64 = parsed.iter().map(|(_, w)| w).sum();
    if parsed.is_empty() || total == 0 || total > 2_147_483_647 {
        return Value::Null;
    }
    let h = murmur3_x86_32(key, 0);
    match version {
        FractionalVersion::V2 | FractionalVersion::V3 => {
            let bucket = (u64::from(h) * total) >> 32;
            let mut end = 0;
            for (variant, w) in parsed {
                end += w;
                if bucket < end {
                    return variant.clone();
                }
            }
            Value::Null
        }
        FractionalVersion::V1 => {
            let b = f64::from((h as i32).unsigned_abs()) / 2_147_483_647.0 * 100.0;
            let mut end = 0.0;
            for (variant, w) in parsed {
                end += 100.0 * w as f64 / total as f64;
                if b < end {
                    return variant.clone();
                }
            }
            Value::Null
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
            data: &data,
            flagd: key.as_deref().map(|flag_key| Flagd {
                flag_key,
                timestamp: 0,
            }),
            fractional: v,
        })
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
