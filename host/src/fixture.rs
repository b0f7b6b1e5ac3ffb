//! Fixture messages for offline testing, read from either of two forms:
//! wasq's own (message fields plus an optional `expect`), one object or a
//! list of them, and the Lambda SQS event (`{"Records": [...]}`) as
//! `sam local generate-event sqs receive-message` writes it.

use crate::runtime::{Message, Outcome};
use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// One message to run, and what should come of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    pub message: Message,
    pub expect: Option<Expect>,
}

/// What a fixture declares should happen.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `done`, `retry`, `reject`, or `filtered` (the filters admit it not).
    pub outcome: Option<String>,
    /// Text the retry or reject reason must contain.
    pub reason: Option<String>,
    /// Fields the result (a JSON object) must have, with these values.
    pub result: Option<BTreeMap<String, Value>>,
    /// For archive results: the archive's entry names, in order.
    pub entries: Option<Vec<String>>,
}

impl Expect {
    /// What was not met by a message the filters kept from running.
    pub fn unmet_filtered(&self) -> Vec<String> {
        let mut unmet = Vec::new();
        match self.outcome.as_deref() {
            None | Some("filtered") => {}
            Some(want) => unmet.push(format!(
                "expected outcome `{want}`, got `filtered` (the message matches none of the filters)"
            )),
        }
        if let Some(want) = &self.reason {
            unmet.push(format!("expected a reason containing `{want}`, got none"));
        }
        if self.result.is_some() || self.entries.is_some() {
            unmet.push("expected a result, got none".to_string());
        }
        unmet
    }

    /// Checks the outcome; `entries` is checked by the caller, which can read
    /// the archive. Returns what was not met.
    pub fn unmet(&self, outcome: &Outcome) -> Vec<String> {
        let mut unmet = Vec::new();
        if let Some(want) = &self.outcome
            && want != outcome.kind()
        {
            unmet.push(format!(
                "expected outcome `{want}`, got `{}`",
                outcome.kind()
            ));
        }
        if let Some(want) = &self.reason {
            match outcome {
                Outcome::Retry { reason, .. } | Outcome::Reject(reason)
                    if reason.contains(want.as_str()) => {}
                Outcome::Retry { reason, .. } | Outcome::Reject(reason) => unmet.push(format!(
                    "expected a reason containing `{want}`, got `{reason}`"
                )),
                Outcome::Done(_) => {
                    unmet.push(format!("expected a reason containing `{want}`, got none"))
                }
            }
        }
        if let Some(fields) = &self.result {
            let result = match outcome {
                Outcome::Done(Some(result)) => serde_json::from_str::<Value>(result).ok(),
                _ => None,
            };
            match result {
                Some(Value::Object(map)) => {
                    for (field, want) in fields {
                        match map.get(field) {
                            Some(got) if got == want => {}
                            Some(got) => {
                                unmet.push(format!("expected result.{field} = {want}, got {got}"))
                            }
                            None => unmet.push(format!(
                                "expected result.{field} = {want}, but it is missing"
                            )),
                        }
                    }
                }
                _ => unmet.push("expected a JSON object as the result".to_string()),
            }
        }
        unmet
    }
}

/// A fixture in wasq's form. The body may be a string, or any JSON value,
/// which is sent as its JSON text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WasqFixture {
    id: Option<String>,
    body: Value,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    receive_count: Option<u32>,
    sent_at_ms: Option<u64>,
    group_id: Option<String>,
    queue: Option<String>,
    expect: Option<Expect>,
}

/// One record of a Lambda SQS event. Fields wasq has no use for
/// (`receiptHandle`, `md5OfBody`, …) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LambdaRecord {
    message_id: String,
    body: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    message_attributes: BTreeMap<String, LambdaAttribute>,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: Option<String>,
    /// Not part of Lambda's shape: lets a Lambda fixture declare an
    /// expectation too.
    expect: Option<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LambdaAttribute {
    string_value: Option<String>,
    binary_value: Option<String>,
}

/// Reads every fixture in a file.
pub fn load(path: &Path) -> anyhow::Result<Vec<Fixture>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading fixture {}", path.display()))?;
    parse(&text, &default_id(path)).with_context(|| format!("fixture {}", path.display()))
}

fn default_id(path: &Path) -> String {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or("fixture")
        .to_string()
}

/// Parses a fixture file's text; `stem` names messages that carry no id.
pub fn parse(text: &str, stem: &str) -> anyhow::Result<Vec<Fixture>> {
    let value: Value = serde_json::from_str(text).context("not valid JSON")?;
    match value {
        Value::Object(ref map) if map.contains_key("Records") => {
            let records = map["Records"]
                .as_array()
                .context("`Records` is not a list")?;
            records
                .iter()
                .enumerate()
                .map(|(i, record)| {
                    let record: LambdaRecord = serde_deserialize(record)
                        .with_context(|| format!("Records[{i}] is not an SQS event record"))?;
                    Ok(from_lambda(record))
                })
                .collect()
        }
        Value::Object(_) => Ok(vec![from_wasq(
            serde_deserialize(&value)?,
            stem.to_string(),
        )?]),
        Value::Array(items) => {
            if items.is_empty() {
                bail!("the list of fixtures is empty");
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let fixture =
                        serde_deserialize(item).with_context(|| format!("fixture [{i}]"))?;
                    from_wasq(fixture, format!("{stem}-{}", i + 1))
                        .with_context(|| format!("fixture [{i}]"))
                })
                .collect()
        }
        _ => {
            bail!("expected a fixture object, a list of them, or a Lambda SQS event with `Records`")
        }
    }
}

fn serde_deserialize<T: serde::de::DeserializeOwned>(value: &Value) -> anyhow::Result<T> {
    Ok(T::deserialize(value)?)
}

fn from_wasq(fixture: WasqFixture, default_id: String) -> anyhow::Result<Fixture> {
    let body = match fixture.body {
        Value::String(body) => body,
        other => serde_json::to_string(&other)?,
    };
    if let Some(expect) = &fixture.expect {
        check_expect(expect)?;
    }
    Ok(Fixture {
        message: Message {
            id: fixture.id.unwrap_or(default_id),
            body,
            attributes: fixture.attributes.into_iter().collect(),
            receive_count: fixture.receive_count.unwrap_or(1).max(1),
            sent_at_ms: fixture.sent_at_ms.unwrap_or_else(now_ms),
            group_id: fixture.group_id,
            queue: fixture.queue.unwrap_or_else(|| "fixtures".to_string()),
        },
        expect: fixture.expect,
    })
}

fn check_expect(expect: &Expect) -> anyhow::Result<()> {
    if let Some(outcome) = &expect.outcome
        && !matches!(outcome.as_str(), "done" | "retry" | "reject" | "filtered")
    {
        bail!("expect.outcome is `{outcome}`: it must be done, retry, reject or filtered");
    }
    Ok(())
}

fn from_lambda(record: LambdaRecord) -> Fixture {
    let number = |name: &str| {
        record
            .attributes
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
    };
    let queue = record
        .event_source_arn
        .as_deref()
        .and_then(|arn| arn.rsplit(':').next())
        .unwrap_or("fixtures")
        .to_string();
    let attributes = record
        .message_attributes
        .iter()
        .filter_map(|(name, attr)| {
            let value = attr.string_value.as_ref().or(attr.binary_value.as_ref())?;
            Some((name.clone(), value.clone()))
        })
        .collect();
    Fixture {
        message: Message {
            id: record.message_id,
            body: record.body,
            attributes,
            receive_count: number("ApproximateReceiveCount")
                .unwrap_or(1)
                .clamp(1, u64::from(u32::MAX)) as u32,
            sent_at_ms: number("SentTimestamp").unwrap_or_else(now_ms),
            group_id: record.attributes.get("MessageGroupId").cloned(),
            queue,
        },
        expect: record.expect,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wasq_fixture_with_an_object_body_and_expectation() {
        let fixtures = parse(
            r#"{"body": {"job_id": "j"}, "attributes": {"k": "v"}, "expect": {"outcome": "reject", "reason": "files"}}"#,
            "bad-job",
        )
        .unwrap();
        assert_eq!(fixtures.len(), 1);
        let f = &fixtures[0];
        assert_eq!(f.message.id, "bad-job");
        assert_eq!(f.message.body, r#"{"job_id":"j"}"#);
        assert_eq!(
            f.message.attributes,
            vec![("k".to_string(), "v".to_string())]
        );
        assert_eq!(f.message.receive_count, 1);
        assert_eq!(
            f.expect.as_ref().unwrap().outcome.as_deref(),
            Some("reject")
        );
    }

    #[test]
    fn a_lambda_event_as_sam_writes_it() {
        let event = r#"{"Records":[{"messageId":"059f36b4-87a3-44ab-83d2-661975830a7d",
            "receiptHandle":"AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...","body":"Test message.",
            "attributes":{"ApproximateReceiveCount":"3","SentTimestamp":"1545082649183",
              "SenderId":"AIDAIENQZJOLO23YVJ4VO","ApproximateFirstReceiveTimestamp":"1545082649185",
              "MessageGroupId":"g1"},
            "messageAttributes":{"Name":{"stringValue":"x","stringListValues":[],"binaryListValues":[],"dataType":"String"},
                                 "Blob":{"binaryValue":"AAE=","dataType":"Binary"}},
            "md5OfBody":"e4e68fb7bd0e697a0ae8f1bb342846b3","eventSource":"aws:sqs",
            "eventSourceARN":"arn:aws:sqs:us-east-2:123456789012:my-queue","awsRegion":"us-east-2"}]}"#;
        let fixtures = parse(event, "event").unwrap();
        let m = &fixtures[0].message;
        assert_eq!(m.id, "059f36b4-87a3-44ab-83d2-661975830a7d");
        assert_eq!(m.body, "Test message.");
        assert_eq!(m.receive_count, 3);
        assert_eq!(m.sent_at_ms, 1545082649183);
        assert_eq!(m.group_id.as_deref(), Some("g1"));
        assert_eq!(m.queue, "my-queue");
        assert_eq!(
            m.attributes,
            vec![
                ("Blob".to_string(), "AAE=".to_string()),
                ("Name".to_string(), "x".to_string())
            ]
        );
        assert_eq!(fixtures[0].expect, None);
    }

    #[test]
    fn lists_number_their_messages_and_bad_input_is_named() {
        let fixtures = parse(r#"[{"body":"a"},{"body":"b","id":"mine"}]"#, "batch").unwrap();
        assert_eq!(fixtures[0].message.id, "batch-1");
        assert_eq!(fixtures[1].message.id, "mine");

        let err = format!(
            "{:#}",
            parse(r#"[{"body":"a","expect":{"outcome":"maybe"}}]"#, "x").unwrap_err()
        );
        assert!(err.contains("expect.outcome is `maybe`"), "{err}");
        let err = format!(
            "{:#}",
            parse(r#"{"Records":[{"body":"a"}]}"#, "x").unwrap_err()
        );
        assert!(
            err.contains("Records[0]") && err.contains("messageId"),
            "{err}"
        );
        let err = format!("{:#}", parse("42", "x").unwrap_err());
        assert!(err.contains("expected a fixture object"), "{err}");
    }

    #[test]
    fn expectations_report_what_was_not_met() {
        let expect = Expect {
            outcome: Some("done".into()),
            result: Some([("files".to_string(), Value::from(2))].into()),
            ..Expect::default()
        };
        assert!(
            expect
                .unmet(&Outcome::Done(Some(r#"{"files":2}"#.into())))
                .is_empty()
        );
        let unmet = expect.unmet(&Outcome::Done(Some(r#"{"files":3}"#.into())));
        assert_eq!(unmet, ["expected result.files = 2, got 3"]);
        let unmet = expect.unmet(&Outcome::Reject("nope".into()));
        assert_eq!(unmet.len(), 2);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any file text is parsed or refused with an error; never a
            /// panic.
            #[test]
            fn any_text_is_parsed_or_refused(text in any::<String>()) {
                let _ = parse(&text, "f");
            }

            /// Any JSON-ish text too, closer to the shapes the parser
            /// expects.
            #[test]
            fn any_json_shape_is_parsed_or_refused(text in r#"[\[\]{}":,0-9a-zA-Z ]{0,80}"#) {
                let _ = parse(&text, "f");
            }

            /// A message in wasq's form comes through as written.
            #[test]
            fn a_wasq_fixture_keeps_its_message(
                id in any::<String>(),
                body in any::<String>(),
                count in any::<u32>(),
                attributes in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4),
            ) {
                let text = serde_json::json!({
                    "id": id, "body": body, "receive_count": count, "attributes": attributes,
                }).to_string();
                let parsed = parse(&text, "f").unwrap();
                prop_assert_eq!(parsed.len(), 1);
                let message = &parsed[0].message;
                prop_assert_eq!(&message.id, &id);
                prop_assert_eq!(&message.body, &body);
                prop_assert_eq!(message.receive_count, count.max(1));
                prop_assert_eq!(message.attributes.clone(), attributes.into_iter().collect::<Vec<_>>());
            }

            /// A Lambda record keeps its body; counts outside a u32 are
            /// clamped, never wrapped.
            #[test]
            fn a_lambda_record_keeps_its_body_and_a_sane_count(
                body in any::<String>(),
                count in any::<u64>(),
                arn in "[a-z:0-9-]{0,40}",
            ) {
                let text = serde_json::json!({"Records": [{
                    "messageId": "m", "body": body, "eventSourceARN": arn,
                    "attributes": {"ApproximateReceiveCount": count.to_string()},
                }]}).to_string();
                let parsed = parse(&text, "f").unwrap();
                let message = &parsed[0].message;
                prop_assert_eq!(&message.body, &body);
                prop_assert!(message.receive_count >= 1);
                prop_assert_eq!(u64::from(message.receive_count), count.clamp(1, u64::from(u32::MAX)));
            }
        }
    }
}
