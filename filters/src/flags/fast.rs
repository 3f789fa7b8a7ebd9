//! Targeting rules of the common shapes, compiled for one plan's flat context (§13): an `if`
//! chain of comparisons, `in`, `starts_with`/`ends_with` and `and`/`or`/`!` over `var`s and
//! constants, whose branches are constants naming variants, and `fractional` over constant
//! buckets with flagd's default bucketing (flag key + targeting key).
//!
//! The general evaluator ([`super::logic`]) finds each `var`'s field by searching the plan's
//! slots, dispatches on every node, wraps each value in a `Cow`, and turns the result back
//! into a variant by name; `fractional` parses its buckets on every call. Here each `var` is
//! a field index, each branch a variant index and each bucket list a list of weights, all
//! worked out when the plan is built, so a request runs only the comparisons themselves.
//!
//! A rule of any other shape, or one whose answer the general evaluator would turn into an
//! error (a branch naming no variant, malformed buckets), is not compiled: it keeps the
//! general path. Both answer alike for every context; the operators' own semantics
//! (JavaScript's `==`, strict `in`, …) are [`super::logic`]'s functions, called as they are,
//! and `a_compiled_rule_answers_as_the_general_evaluator` checks whole decisions against the
//! general path over generated rules and contexts (as the `fast_rules` fuzz target in `fuzz/`
//! does, coverage-guided).

use serde_json::Value;

use super::eval::{Decision, Flag, Reason};
use super::logic::{self, Field, FractionalVersion, Op, Place, Rule};

/// A compiled targeting rule.
#[derive(Debug)]
pub struct Fast {
    root: Target,
    /// The flag's default variant, by index (`None`: the flag has none).
    default: Option<usize>,
}

#[derive(Debug)]
enum Target {
    /// `if`: the first condition that holds picks its outcome, else the last one.
    If(Vec<(Cond, Outcome)>, Box<Outcome>),
    Fractional(Fractional),
}

#[derive(Debug)]
enum Outcome {
    /// This variant, with reason `TARGETING_MATCH`.
    Variant(usize),
    /// Null: the default variant, with reason `DEFAULT`.
    Default,
    Nested(Target),
}

#[derive(Debug)]
struct Fractional {
    /// The flat context's field holding `targetingKey`, if it has one.
    targeting_key: Option<usize>,
    weights: Vec<u64>,
    total: u64,
    /// Per bucket, the variant it names.
    outcomes: Vec<usize>,
    version: FractionalVersion,
}

#[derive(Debug)]
enum Operand {
    Field(usize),
    Const(Value),
}

#[derive(Debug)]
enum Cond {
    Const(bool),
    Truthy(Operand),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    /// `==`, `!=`, `===`, `!==`, and `<`, `<=`, `>`, `>=` of two operands.
    Compare(Op, Operand, Operand),
    /// `in` with a constant list.
    In(Operand, Vec<Value>),
    /// `starts_with` (true) or `ends_with` (false).
    Affix(bool, Operand, Operand),
}

static NULL: Value = Value::Null;

impl Operand {
    #[inline]
    fn get<'v>(&'v self, fields: &'v [Field<'_>]) -> &'v Value {
        match self {
            Operand::Field(i) => fields
                .get(*i)
                .and_then(|f| f.value.as_deref())
                .unwrap_or(&NULL),
            Operand::Const(v) => v,
        }
    }
}

impl Cond {
    fn test(&self, fields: &[Field<'_>]) -> bool {
        match self {
            Cond::Const(b) => *b,
            Cond::Truthy(o) => logic::truthy(o.get(fields)),
            Cond::And(cs) => cs.iter().all(|c| c.test(fields)),
            Cond::Or(cs) => cs.iter().any(|c| c.test(fields)),
            Cond::Not(c) => !c.test(fields),
            Cond::Compare(op, a, b) => {
                let (a, b) = (a.get(fields), b.get(fields));
                match op {
                    Op::Eq => logic::loose_eq(a, b),
                    Op::Ne => !logic::loose_eq(a, b),
                    Op::StrictEq => logic::strict_eq(a, b),
                    Op::StrictNe => !logic::strict_eq(a, b),
                    Op::Lt => logic::less(a, b, false),
                    Op::Le => logic::less(a, b, true),
                    Op::Gt => logic::less(b, a, false),
                    Op::Ge => logic::less(b, a, true),
                    _ => false,
                }
            }
            Cond::In(needle, hay) => {
                let needle = needle.get(fields);
                hay.iter().any(|h| logic::strict_eq(h, needle))
            }
            Cond::Affix(starts, a, b) => match (a.get(fields), b.get(fields)) {
                (Value::String(a), Value::String(b)) if *starts => a.starts_with(b.as_str()),
                (Value::String(a), Value::String(b)) => a.ends_with(b.as_str()),
                _ => false,
            },
        }
    }
}

impl Target {
    /// The chosen variant's index (`None`: the default).
    fn run(&self, key: &str, fields: &[Field<'_>]) -> Option<usize> {
        match self {
            Target::If(branches, otherwise) => {
                let outcome = branches
                    .iter()
                    .find(|(c, _)| c.test(fields))
                    .map_or(&**otherwise, |(_, o)| o);
                match outcome {
                    Outcome::Variant(i) => Some(*i),
                    Outcome::Default => None,
                    Outcome::Nested(t) => t.run(key, fields),
                }
            }
            Target::Fractional(f) => f.run(key, fields),
        }
    }
}

impl Fractional {
    fn run(&self, key: &str, fields: &[Field<'_>]) -> Option<usize> {
        let target = match fields.get(self.targeting_key?)?.value.as_deref() {
            Some(Value::String(t)) if !t.is_empty() => t.as_bytes(),
            _ => return None,
        };
        let h = logic::default_bucketing_hash(key.as_bytes(), target);
        let bucket = logic::pick(h, self.weights.iter().copied(), self.total, self.version)?;
        self.outcomes.get(bucket).copied()
    }
}

impl Fast {
    /// `rule` compiled for a flat context whose fields are at `layout`, for `flag`; `None`
    /// when the rule has another shape (the general evaluator runs it).
    pub fn compile(
        rule: &Rule,
        flag: &Flag,
        layout: &[String],
        version: FractionalVersion,
    ) -> Option<Fast> {
        let default = match &flag.default_variant {
            Some(name) => Some(flag.variant(name)?.0),
            None => None,
        };
        let c = Compiler {
            flag,
            layout,
            version,
        };
        Some(Fast {
            root: c.target(rule)?,
            default,
        })
    }

    /// The decision for the request whose context is `fields`, as
    /// [`Flag::decide_in`] would make it (untyped).
    pub fn decide<'a>(&self, key: &str, flag: &'a Flag, fields: &[Field<'_>]) -> Decision<'a> {
        let (index, reason) = match self.root.run(key, fields) {
            Some(i) => (Some(i), Reason::TargetingMatch),
            None => (self.default, Reason::Default),
        };
        match index.and_then(|i| Decision::by_index(flag, i, reason)) {
            Some(d) => d,
            None => Decision::no_value(flag, reason),
        }
    }
}

struct Compiler<'c> {
    flag: &'c Flag,
    layout: &'c [String],
    version: FractionalVersion,
}

impl Compiler<'_> {
    fn target(&self, rule: &Rule) -> Option<Target> {
        match rule {
            Rule::Op(Op::If, args) => {
                let mut branches = Vec::new();
                let mut i = 0;
                while i + 1 < args.len() {
                    branches.push((self.cond(&args[i])?, self.outcome(&args[i + 1])?));
                    i += 2;
                }
                let otherwise = match args.get(i) {
                    Some(r) => self.outcome(r)?,
                    None => Outcome::Default,
                };
                Some(Target::If(branches, Box::new(otherwise)))
            }
            Rule::Op(Op::Fractional, args) => self.fractional(args).map(Target::Fractional),
            _ => None,
        }
    }

    fn outcome(&self, rule: &Rule) -> Option<Outcome> {
        match rule {
            Rule::Literal(Value::Null) => Some(Outcome::Default),
            Rule::Literal(v) => Some(Outcome::Variant(self.variant(v)?)),
            other => self.target(other).map(Outcome::Nested),
        }
    }

    /// The index of the variant a targeting result names; `None` when it names none (the
    /// general path reports that error).
    fn variant(&self, v: &Value) -> Option<usize> {
        let name = super::eval::variant_name(v)?;
        Some(self.flag.variant(&name)?.0)
    }

    fn operand(&self, rule: &Rule) -> Option<Operand> {
        match rule {
            Rule::Literal(v) => Some(Operand::Const(v.clone())),
            Rule::Op(Op::Var, args) => match args.as_slice() {
                [Rule::Literal(Value::String(p))] if !p.is_empty() && !p.starts_with('$') => {
                    match Place::of(self.layout.iter().map(String::as_str), p) {
                        Place::Field(i) => Some(Operand::Field(i)),
                        Place::Nowhere => Some(Operand::Const(Value::Null)),
                        Place::Inside(..) => None,
                    }
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn cond(&self, rule: &Rule) -> Option<Cond> {
        let Rule::Op(op, args) = rule else {
            return match rule {
                Rule::Literal(v) => Some(Cond::Const(logic::truthy(v))),
                _ => None,
            };
        };
        let pair = || -> Option<(Operand, Operand)> {
            match args.as_slice() {
                [a, b] => Some((self.operand(a)?, self.operand(b)?)),
                _ => None,
            }
        };
        Some(match op {
            Op::Var => Cond::Truthy(self.operand(rule)?),
            Op::And => Cond::And(args.iter().map(|a| self.cond(a)).collect::<Option<_>>()?),
            Op::Or => Cond::Or(args.iter().map(|a| self.cond(a)).collect::<Option<_>>()?),
            Op::Not | Op::NotNot => {
                let inner = match args.first() {
                    Some(a) => self.cond(a)?,
                    None => Cond::Const(false),
                };
                if *op == Op::Not {
                    Cond::Not(Box::new(inner))
                } else {
                    inner
                }
            }
            Op::Eq | Op::Ne | Op::StrictEq | Op::StrictNe | Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let (a, b) = pair()?;
                Cond::Compare(*op, a, b)
            }
            Op::In => match args.as_slice() {
                [needle, Rule::Literal(Value::Array(hay))] => {
                    Cond::In(self.operand(needle)?, hay.clone())
                }
                _ => return None,
            },
            Op::StartsWith | Op::EndsWith => {
                let (a, b) = pair()?;
                Cond::Affix(*op == Op::StartsWith, a, b)
            }
            _ => return None,
        })
    }

    /// `fractional` with constant buckets only (flagd's default bucketing), v1 or v2.
    fn fractional(&self, args: &[Rule]) -> Option<Fractional> {
        if self.version == FractionalVersion::V3 || args.is_empty() {
            return None;
        }
        let mut weights = Vec::with_capacity(args.len());
        let mut outcomes = Vec::with_capacity(args.len());
        for a in args {
            let Rule::Literal(b @ Value::Array(_)) = a else {
                return None;
            };
            let (variant, weight) = logic::bucket(b)?;
            outcomes.push(self.variant(variant)?);
            weights.push(weight);
        }
        let total: u64 = weights.iter().sum();
        if total == 0 || total > 2_147_483_647 {
            return None;
        }
        let targeting_key = match Place::of(self.layout.iter().map(String::as_str), "targetingKey")
        {
            Place::Field(i) => Some(i),
            _ => None,
        };
        Some(Fractional {
            targeting_key,
            weights,
            total,
            outcomes,
            version: self.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use serde_json::json;

    use super::*;
    use crate::flags::eval::{FlagSet, Kind};
    use crate::flags::logic::{Data, Flat, Slot};
    use crate::trace_context::ids::{IdGenerator, SeededIds};

    /// Field paths of the tests' flat context.
    fn layout() -> Vec<String> {
        ["targetingKey", "request.method", "plan", "tier", "n"]
            .map(String::from)
            .to_vec()
    }

    /// A small generator of rules of the compiled shapes (and some others), and contexts.
    struct Gen(SeededIds);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0.next_u64()
        }
        fn pick<T: Clone>(&mut self, items: &[T]) -> T {
            items[(self.next() % items.len() as u64) as usize].clone()
        }
        fn value(&mut self) -> Value {
            self.pick(&[
                json!("pro"),
                json!("user-1"),
                json!(""),
                json!("1"),
                json!(1),
                json!(1.5),
                json!(0),
                json!(true),
                json!(null),
                json!("GET"),
                json!(["pro"]),
                json!({"a": 1}),
                json!("user-42"),
            ])
        }
        /// A constant of a rule (an object would be read as an operation).
        fn constant(&mut self) -> Value {
            let v = self.value();
            if v.is_object() { json!("pro") } else { v }
        }
        fn operand(&mut self) -> Value {
            match self.next() % 3 {
                0 => self.constant(),
                _ => {
                    let path = self.pick(&[
                        "plan",
                        "tier",
                        "targetingKey",
                        "request.method",
                        "n",
                        "nowhere",
                    ]);
                    json!({"var": path})
                }
            }
        }
        fn cond(&mut self, depth: u32) -> Value {
            let ops = [
                "==",
                "!=",
                "===",
                "!==",
                "<",
                "<=",
                ">",
                ">=",
                "starts_with",
                "ends_with",
            ];
            match self.next() % if depth > 2 { 4 } else { 7 } {
                0 => json!({"in": [self.operand(), [self.constant(), self.constant(), "pro"]]}),
                1 => self.operand(),
                2 | 3 => json!({self.pick(&ops): [self.operand(), self.operand()]}),
                4 => json!({"and": [self.cond(depth + 1), self.cond(depth + 1)]}),
                5 => json!({"or": [self.cond(depth + 1), self.cond(depth + 1)]}),
                _ => json!({"!": [self.cond(depth + 1)]}),
            }
        }
        fn outcome(&mut self, depth: u32) -> Value {
            match self.next() % if depth > 1 { 5 } else { 7 } {
                0 => json!(null),
                1 => json!("b"),
                2 => json!(true),
                3 => json!(1),
                4 => json!("a"),
                5 => self.rule(depth + 1),
                _ => json!("nope"),
            }
        }
        fn rule(&mut self, depth: u32) -> Value {
            if self.next().is_multiple_of(4) {
                let w =
                    |g: &mut Gen| g.pick(&[json!(0), json!(1), json!(25), json!(50), json!(null)]);
                let mut buckets = vec![json!(["a", w(self)]), json!(["b", w(self)])];
                if self.next().is_multiple_of(2) {
                    buckets.push(json!(["true", w(self)]));
                }
                return json!({"fractional": buckets});
            }
            let mut args = Vec::new();
            for _ in 0..1 + self.next() % 2 {
                args.push(self.cond(0));
                args.push(self.outcome(depth));
            }
            if self.next().is_multiple_of(2) {
                args.push(self.outcome(depth));
            }
            json!({"if": args})
        }
        fn context(&mut self) -> Vec<Option<Value>> {
            (0..5)
                .map(|_| match self.next() % 4 {
                    0 => None,
                    _ => Some(self.value()),
                })
                .collect()
        }
    }

    #[test]
    fn a_compiled_rule_answers_as_the_general_evaluator() {
        let layout = layout();
        let mut g = Gen(SeededIds::new(42));
        let (mut compiled, mut checked) = (0, 0);
        for n in 0..3000 {
            let rule = g.rule(0);
            let default = g.pick(&[json!("a"), json!("b"), json!(null)]);
            let mut flag = json!({"state": "ENABLED", "targeting": rule,
                "variants": {"a": "A", "b": {"x": 1}, "true": true, "1": 1}});
            if !default.is_null() {
                flag["defaultVariant"] = default;
            }
            let set = FlagSet::parse(&json!({"flags": {"f": flag}})).unwrap();
            let f = &set.flags["f"];
            let Some(Ok(rule)) = &f.targeting else {
                panic!("rule {n} did not compile: {:?}", f.targeting);
            };
            for version in [FractionalVersion::V1, FractionalVersion::V2] {
                let Some(fast) = Fast::compile(rule, f, &layout, version) else {
                    continue;
                };
                compiled += 1;
                let slots = Slot::of_rule(rule, &layout);
                for _ in 0..8 {
                    let values = g.context();
                    let fields: Vec<Field<'_>> = layout
                        .iter()
                        .zip(&values)
                        .map(|(path, v)| Field {
                            path,
                            value: v.as_ref().map(Cow::Borrowed),
                        })
                        .collect();
                    let data = Data::Fields(Flat {
                        fields: &fields,
                        slots: &slots,
                    });
                    let want = f.decide_in("f", data, 0, Kind::Any, version);
                    let got = fast.decide("f", f, &fields);
                    assert_eq!(got, want, "rule {n} {:?} on {values:?}", f.targeting);
                    checked += 1;
                }
            }
        }
        // Most generated rules have a compiled form; the rest name no variant somewhere.
        assert!(compiled > 2000, "only {compiled} rules compiled");
        assert!(checked > 16000);
    }

    #[test]
    fn other_shapes_keep_the_general_path() {
        let layout = layout();
        let set = FlagSet::parse(&json!({"flags": {
            "ref": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                    "targeting": {"if": [{"==": [{"var": "$flagd.flagKey"}, "ref"]}, "a"]}},
            "semver": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                    "targeting": {"if": [{"sem_ver": [{"var": "v"}, ">=", "1.0.0"]}, "a"]}},
            "cat": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                    "targeting": {"fractional": [{"cat": [{"var": "plan"}]}, ["a", 1]]}},
            "var": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                    "targeting": {"var": "plan"}},
            "unknown-variant": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                    "targeting": {"if": [true, "zz"]}},
            "ok": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                    "targeting": {"if": [{"in": [{"var": "plan"}, ["pro"]]}, "a"]}}
        }}))
        .unwrap();
        let compiles = |k: &str| {
            let f = &set.flags[k];
            let Some(Ok(rule)) = &f.targeting else {
                return false;
            };
            Fast::compile(rule, f, &layout, FractionalVersion::V2).is_some()
        };
        for k in ["ref", "semver", "cat", "var", "unknown-variant"] {
            assert!(!compiles(k), "{k} compiled");
        }
        assert!(compiles("ok"));
        // v3 hashes a CBOR encoding: not compiled.
        let f = &FlagSet::parse(&json!({"flags": {"f": {"state": "ENABLED",
            "variants": {"a": 1}, "targeting": {"fractional": [["a", 1]]}}}}))
        .unwrap()
        .flags["f"];
        let Some(Ok(rule)) = &f.targeting else {
            panic!("no rule")
        };
        assert!(Fast::compile(rule, f, &layout, FractionalVersion::V2).is_some());
        assert!(Fast::compile(rule, f, &layout, FractionalVersion::V3).is_none());
    }
}
