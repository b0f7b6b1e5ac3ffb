use super::*;
use serde_json::json;

fn subject<'a>(body: &'a str, attributes: &'a [(String, String)]) -> Subject<'a> {
    Subject {
        id: "m-1",
        body,
        attributes,
        receive_count: 2,
        sent_at_ms: 1_700_000_000_000,
        group_id: None,
    }
}

fn admits(pattern: Value, body: &str, attributes: &[(String, String)]) -> bool {
    Filters::parse(&[pattern.to_string()])
        .unwrap()
        .admits(&subject(body, attributes))
}

/// The documentation's examples, kept as a fixture file that `wasq test`
/// users can read too.
#[test]
fn the_documented_examples_hold() {
    let file: Value = serde_json::from_str(include_str!(
        "../../../tests/fixtures/filters/aws-examples.json"
    ))
    .unwrap();
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let body = match &case["body"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let attributes: Vec<(String, String)> = case["attributes"]
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let want = case["admitted"].as_bool().unwrap();
        assert_eq!(
            admits(case["pattern"].clone(), &body, &attributes),
            want,
            "{}: {} on {body}",
            case["rule"],
            case["pattern"]
        );
    }
}

#[test]
fn patterns_are_ored_and_none_admits_everything() {
    let filters = Filters::parse(&[
        json!({"body": {"kind": ["a"]}}).to_string(),
        json!({"body": {"kind": ["b"]}}).to_string(),
    ])
    .unwrap();
    assert!(filters.admits(&subject(r#"{"kind":"b"}"#, &[])));
    assert!(!filters.admits(&subject(r#"{"kind":"c"}"#, &[])));
    assert!(Filters::default().admits(&subject("anything", &[])));
    // More than Lambda's five (or ten) patterns.
    let many: Vec<String> = (0..50)
        .map(|i| json!({"body": {"n": [i]}}).to_string())
        .collect();
    let filters = Filters::parse(&many).unwrap();
    assert!(filters.admits(&subject(r#"{"n": 49}"#, &[])));
    assert!(!filters.admits(&subject(r#"{"n": 50}"#, &[])));
}

#[test]
fn system_attributes_and_the_id_can_be_matched() {
    let attrs = [];
    assert!(admits(
        json!({"attributes": {"ApproximateReceiveCount": [{"numeric": ["<", 3]}]}}),
        "x",
        &attrs
    ));
    assert!(!admits(
        json!({"attributes": {"ApproximateReceiveCount": [{"numeric": [">=", 3]}]}}),
        "x",
        &attrs
    ));
    assert!(admits(
        json!({"messageId": [{"prefix": "m-"}]}),
        "x",
        &attrs
    ));
    assert!(admits(
        json!({"attributes": {"MessageGroupId": [{"exists": false}]}}),
        "x",
        &attrs
    ));
}

#[test]
fn nested_or_and_and_combine() {
    let pattern = json!({"body": {
        "type": ["order"],
        "$or": [{"total": [{"numeric": [">", 100]}]}, {"vip": [true]}]
    }});
    assert!(admits(
        pattern.clone(),
        r#"{"type":"order","total":150}"#,
        &[]
    ));
    assert!(admits(
        pattern.clone(),
        r#"{"type":"order","total":5,"vip":true}"#,
        &[]
    ));
    assert!(!admits(
        pattern.clone(),
        r#"{"type":"order","total":5}"#,
        &[]
    ));
    assert!(!admits(pattern, r#"{"type":"refund","total":500}"#, &[]));
}

#[test]
fn anything_but_takes_lists_and_operators() {
    let body = |v: &str| format!(r#"{{"f": "{v}"}}"#);
    let p = json!({"body": {"f": [{"anything-but": {"suffix": [".tmp", ".bak"]}}]}});
    assert!(admits(p.clone(), &body("a.txt"), &[]));
    assert!(!admits(p, &body("a.bak"), &[]));
    let p = json!({"body": {"f": [{"anything-but": {"equals-ignore-case": "DRAFT"}}]}});
    assert!(!admits(p.clone(), &body("draft"), &[]));
    assert!(admits(p, &body("final"), &[]));
    let p = json!({"body": {"f": [{"anything-but": {"wildcard": "*/lib/*"}}]}});
    assert!(!admits(p.clone(), &body("src/lib/a.rs"), &[]));
    assert!(admits(p, &body("src/bin/a.rs"), &[]));
    let p = json!({"body": {"n": [{"anything-but": [1, 2]}]}});
    assert!(admits(p.clone(), r#"{"n": 3}"#, &[]));
    assert!(!admits(p, r#"{"n": 2}"#, &[]));
}

#[test]
fn ignore_case_folds_title_case_letters_too() {
    let p = json!({"body": {"n": [{"equals-ignore-case": "ǆemal"}]}});
    assert!(admits(p.clone(), r#"{"n": "ǅemal"}"#, &[]));
    assert!(admits(p, r#"{"n": "ǄEMAL"}"#, &[]));
}

#[test]
fn wildcards_escape_and_anchor() {
    let w = |p: &str, s: &str| Wildcard::compile(p).unwrap().matches(s);
    assert!(w("*", ""));
    assert!(w("a*", "abc"));
    assert!(!w("a*", "bac"));
    assert!(w("*.png", "x.png"));
    assert!(!w("*.png", "x.png.gz"));
    assert!(w("a*b*c", "a-b-b-c"));
    assert!(!w("a*b*c", "a-c"));
    assert!(!w("ab*ba", "aba"));
    assert!(w(r"a\*b", "a*b"));
    assert!(!w(r"a\*b", "axb"));
    assert!(w(r"a\\*", r"a\anything"));
    assert!(Wildcard::compile("a**b").is_err());
    assert!(Wildcard::compile(r"a\b").is_err());
}

#[test]
fn bad_patterns_name_the_pattern_and_the_place() {
    let cases = [
        (
            r#"{"body": {"a": ["x"]}"#,
            "filter 2: is not JSON: EOF while parsing an object at line 1 column 21",
        ),
        (r#"["x"]"#, "filter 2: must be a JSON object"),
        (
            r#"{"body": {"price": [{"numeric": [">", "ten"]}]}}"#,
            "filter 2: at body.price[0]: \"ten\" is not a number",
        ),
        (
            r#"{"body": {"price": [{"numeric": [">", 1, ">", 2]}]}}"#,
            "filter 2: at body.price[0]: two comparisons are a lower and an upper bound",
        ),
        (
            r#"{"body": {"price": [1, {"numerc": ["<", 2]}]}}"#,
            "filter 2: at body.price[1]: `numerc` is not an operator",
        ),
        (
            r#"{"body": {"kind": "order"}}"#,
            "filter 2: at body.kind: a value to match goes in a list, e.g. [\"order\"]",
        ),
        (
            r#"{"bdy": {"kind": ["order"]}}"#,
            "filter 2: at bdy.kind: `bdy` is not a field of a message",
        ),
        (
            r#"{"attributes": {"SenderId": ["x"]}}"#,
            "filter 2: at attributes.SenderId: `SenderId` is not an attribute",
        ),
        (
            r#"{"messageAttributes": {"t": {"dataType": ["String"]}}}"#,
            "filter 2: at messageAttributes.t.dataType: a message attribute is matched on `stringValue`",
        ),
        (
            r#"{"body": {"k": []}}"#,
            "filter 2: at body.k: an empty list matches nothing",
        ),
        (
            r#"{"body": {"k": [{"exists": "yes"}]}}"#,
            "filter 2: at body.k[0]: `exists` takes true or false",
        ),
        (
            r#"{"body": {"k": [{"prefix": "a", "suffix": "b"}]}}"#,
            "filter 2: at body.k[0]: a condition object has exactly one operator",
        ),
        (
            r#"{"body": {"k": [{"wildcard": "a**"}]}}"#,
            "filter 2: at body.k[0]: a wildcard may not have `**`",
        ),
        (
            r#"{"body": {"$or": {"a": ["x"]}}}"#,
            "filter 2: at body: `$or` takes a list of patterns",
        ),
        (
            r#"{"body": {"k": [["x"]]}}"#,
            "filter 2: at body.k[0]: lists do not nest",
        ),
    ];
    for (text, want) in cases {
        let good = json!({"body": {"ok": ["yes"]}}).to_string();
        let err = Filters::parse(&[good.as_str(), text])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(want),
            "{text}:\n  got  {err}\n  want {want}"
        );
    }
}

#[test]
fn only_patterns_that_read_the_body_have_it_parsed() {
    let filters = Filters::parse(&[
        json!({"body": {"a": ["x"]}}).to_string(),
        json!({"messageAttributes": {"t": ["y"]}}).to_string(),
    ])
    .unwrap();
    assert!(filters.reads_body);
    let only_attributes =
        Filters::parse(&[json!({"messageAttributes": {"t": ["y"]}}).to_string()]).unwrap();
    assert!(!only_attributes.reads_body);
    let attrs = [("t".to_string(), "y".to_string())];
    // A body that is not JSON does not stop an attribute pattern matching.
    assert!(filters.admits(&subject("not json", &attrs)));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the body, evaluation ends with an answer: no panic on
        /// hostile text, deep nesting, or numbers past f64.
        #[test]
        fn any_body_is_answered(body in ".{0,200}", deep in 0usize..300) {
            let filters = Filters::parse(&[
                json!({"body": {"a": {"b": [{"numeric": [">", 0]}, {"exists": false}]}}}).to_string(),
                json!({"body": [{"wildcard": "*x*"}]}).to_string(),
            ]).unwrap();
            let _ = filters.admits(&subject(&body, &[]));
            // A list, parsed or too deep to parse, is no plain text: the
            // wildcard on the body's text never sees it.
            let nested = format!("[{}\"x\"{}", "[".repeat(deep), "]".repeat(deep + 1));
            prop_assert!(!filters.admits(&subject(&nested, &[])));
            let huge = r#"{"a": {"b": 1e999}, "x": "x"}"#;
            prop_assert!(!filters.admits(&subject(huge, &[])));
        }

        /// A prefix condition agrees with `str::starts_with`.
        #[test]
        fn prefix_agrees_with_starts_with(value in "[a-c]{0,6}", prefix in "[a-c]{0,3}") {
            let pattern = json!({"body": {"v": [{"prefix": prefix.clone()}]}});
            let body = json!({"v": value.clone()}).to_string();
            prop_assert_eq!(admits(pattern, &body, &[]), value.starts_with(&prefix));
        }
    }
}
