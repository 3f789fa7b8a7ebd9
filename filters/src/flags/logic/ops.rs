//! The operators: each evaluated over its operand rules in a scope, borrowing what it can.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::data::{Data, Scope};
use super::fractional::fractional_op;
use super::values::*;
use super::{Op, Rule};

/// `var`: the value at a path (a literal one is not copied), or the default when it is
/// missing or null.
pub(super) fn var_op<'r>(args: &'r [Rule], s: &Scope<'r>) -> Cow<'r, Value> {
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
pub(super) fn if_branch<'r>(args: &'r [Rule], s: &Scope<'r>) -> Option<&'r Rule> {
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
pub(super) fn affix_op<'r>(op: Op, args: &'r [Rule], s: &Scope<'r>) -> Option<bool> {
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

/// An operand that needs no evaluation: a constant, or a `var` with a constant path, no
/// default and no built-in, borrowed from the rule or the context (null when the path finds
/// nothing, as `var` gives). `None` for any other rule. Nearly every targeting condition
/// compares such operands, and this skips the evaluator's dispatch, `var`'s general form and
/// a `Cow` per operand.
#[inline]
pub(super) fn quick<'r>(r: &'r Rule, s: &Scope<'r>) -> Option<&'r Value> {
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
pub(super) fn operand<'r>(args: &'r [Rule], i: usize, s: &Scope<'r>) -> Cow<'r, Value> {
    match args.get(i) {
        None => Cow::Borrowed(&NULL),
        Some(r) => match quick(r, s) {
            Some(v) => Cow::Borrowed(v),
            None => r.eval_ref(s),
        },
    }
}

/// The operators whose value is always a boolean: that boolean; `None` for the others.
pub(super) fn boolean_op<'r>(op: Op, args: &'r [Rule], s: &Scope<'r>) -> Option<bool> {
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
pub(super) fn eval_op<'r>(op: Op, args: &'r [Rule], s: &Scope<'r>) -> Cow<'r, Value> {
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
        Op::SemVer => crate::flags::semver::evaluate(&all()),
        Op::Fractional => return fractional_op(args, s),
    })
}
