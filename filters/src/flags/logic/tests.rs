use super::*;
use crate::flags::logic::fractional::buckets_pick;
use crate::flags::murmur3::murmur3_x86_32;
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
