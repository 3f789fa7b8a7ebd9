//! JsonLogic, compiled once per flag set, with flagd's operator set and attache's own custom
//! operators (specs/feature-flags.md §3–§4). Coercion and truthiness follow jsonlogic.com
//! (JavaScript's rules); an unknown operator is a compile error.

use std::borrow::Cow;

use serde_json::Value;

mod data;
mod fractional;
mod ops;
mod values;

use crate::flags::semver::number_text;
pub use data::{Data, Field, Flagd, Flat, Place, Scope, Slot};
pub(crate) use fractional::{bucket, default_bucketing_hash, pick};
use ops::*;
pub use values::truthy;
use values::{NULL, strings_in};
pub(crate) use values::{less, loose_eq, strict_eq};

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

#[cfg(test)]
mod tests;
