//! Filter criteria: Lambda's event-filter patterns, checked by the host on
//! every received message before any processor runs. A binding with
//! filters runs only the messages that match at least one of them; the
//! rest are deleted, and counted, as Lambda does.
//!
//! A pattern is a JSON object over the message as Lambda's SQS record
//! shows it: `body` (matched as JSON when it is a JSON object),
//! `messageAttributes.NAME.stringValue` (or `messageAttributes.NAME`),
//! `attributes.ApproximateReceiveCount`, `attributes.SentTimestamp`,
//! `attributes.MessageGroupId`, and `messageId`. Every key of a pattern
//! must match (and); the values in a key's list are alternatives (or), as
//! are the patterns of a binding and the branches of `$or`. Arrays in a
//! body are flattened: a leaf matches when any of its elements does.
//!
//! Conditions: exact values (strings, numbers, booleans, `null`),
//! `prefix`, `suffix`, `equals-ignore-case` (prefix and suffix may take an
//! `equals-ignore-case` object too), `anything-but` (a value, a list, or a
//! prefix, suffix, equals-ignore-case or wildcard object), `numeric`
//! (`=`, `<`, `<=`, `>`, `>=`, one or a lower and an upper bound),
//! `exists`, and `wildcard` (`*` for any run of characters; `\*` and
//! `\\` for themselves).
//!
//! Past Lambda: any number of patterns, and message attributes and the
//! system attributes may be filtered on; their values are strings, which
//! `numeric` reads as numbers.

use serde_json::{Map, Value};
use sparse::Sparse;
use std::cell::OnceCell;
use std::fmt;

/// A pattern that cannot be used, and where in which pattern it fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {number}: {problem}")]
pub struct FilterError {
    /// Which pattern, counted from 1.
    pub number: usize,
    pub problem: String,
}

/// A binding's filters, compiled. No filters lets every message through.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    patterns: Vec<Pattern>,
    /// The patterns as given, for display and comparison.
    sources: Vec<String>,
    /// Whether any pattern reads the body as JSON.
    reads_body: bool,
    /// The places in the body the patterns read; the rest is skipped.
    wanted: sparse::Wanted,
}

impl PartialEq for Filters {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources
    }
}

/// What a filter sees of a message.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub id: &'a str,
    pub body: &'a str,
    pub attributes: &'a [(String, String)],
    pub receive_count: u32,
    pub sent_at_ms: u64,
    pub group_id: Option<&'a str>,
}

impl Filters {
    /// Compiles each pattern (JSON text). An error names the pattern by
    /// its number and the place in it: a line and column for bad JSON, a
    /// path such as `body.price[1]` for a bad condition.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Filters, FilterError> {
        let mut patterns = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let text = text.as_ref();
            let fail = |problem: String| FilterError {
                number: i + 1,
                problem,
            };
            let value: Value =
                serde_json::from_str(text).map_err(|err| fail(format!("is not JSON: {err}")))?;
            let Value::Object(map) = value else {
                return Err(fail("must be a JSON object, e.g. {\"body\": {...}}".into()));
            };
            patterns.push(Pattern::compile(&map, &[]).map_err(fail)?);
        }
        let mut wanted = sparse::Wanted::default();
        for pattern in &patterns {
            pattern.want(&mut wanted);
        }
        Ok(Filters {
            reads_body: patterns.iter().any(Pattern::reads_body),
            wanted,
            sources: texts.iter().map(|t| t.as_ref().to_string()).collect(),
            patterns,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns as given.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// Whether the message may run: no filters, or one of them matches.
    pub fn admits(&self, subject: &Subject<'_>) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let record = Record {
            subject,
            body: OnceCell::new(),
            wanted: &self.wanted,
        };
        if self.reads_body {
            // Parsed once for every pattern.
            record.json_body();
        }
        self.patterns.iter().any(|p| p.matches(&record))
    }
}

impl fmt::Display for Filters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sources.join(" or "))
    }
}

/// A message under evaluation; its body is parsed at most once.
struct Record<'s, 'a> {
    subject: &'s Subject<'a>,
    body: OnceCell<Option<Sparse<'a, 's>>>,
    wanted: &'s sparse::Wanted,
}

impl<'s, 'a> Record<'s, 'a> {
    /// The body as JSON, with only the places some pattern reads; `None`
    /// when it is not JSON.
    fn json_body(&self) -> Option<&Sparse<'a, 's>> {
        self.body
            .get_or_init(|| self.wanted.parse(self.subject.body))
            .as_ref()
    }
}

/// One pattern object: every field must match, and one branch of each
/// `$or`.
#[derive(Debug, Clone)]
struct Pattern {
    fields: Vec<Field>,
    any_of: Vec<Vec<Pattern>>,
}

/// Conditions at one place in the record; any of them may match.
#[derive(Debug, Clone)]
struct Field {
    at: Target,
    conditions: Vec<Condition>,
}

/// Where a field's values come from.
#[derive(Debug, Clone)]
enum Target {
    /// The body itself, when it is not a JSON object.
    BodyText,
    /// A path inside a JSON object body.
    Body(Vec<String>),
    /// A message attribute's value.
    Attribute(String),
    ReceiveCount,
    SentTimestamp,
    GroupId,
    MessageId,
}

const SYSTEM_ATTRIBUTES: &str = "ApproximateReceiveCount, SentTimestamp, MessageGroupId";

impl Pattern {
    /// `prefix` is the path of this object within the record.
    fn compile(map: &Map<String, Value>, prefix: &[String]) -> Result<Pattern, String> {
        let mut pattern = Pattern {
            fields: Vec::new(),
            any_of: Vec::new(),
        };
        if map.is_empty() {
            return Err(format!(
                "at {}: an empty object matches nothing",
                place(prefix)
            ));
        }
        for (key, value) in map {
            if key == "$or" {
                let Some(branches) = value.as_array().filter(|b| !b.is_empty()) else {
                    return Err(format!(
                        "at {}: `$or` takes a list of patterns",
                        place(prefix)
                    ));
                };
                let mut compiled = Vec::with_capacity(branches.len());
                for (i, branch) in branches.iter().enumerate() {
                    let Value::Object(branch) = branch else {
                        return Err(format!(
                            "at {}.$or[{i}]: each branch of `$or` is an object",
                            place(prefix)
                        ));
                    };
                    compiled.push(Pattern::compile(branch, prefix)?);
                }
                pattern.any_of.push(compiled);
                continue;
            }
            let mut path = prefix.to_vec();
            path.push(key.clone());
            match value {
                Value::Object(inner) => {
                    let nested = Pattern::compile(inner, &path)?;
                    pattern.fields.extend(nested.fields);
                    pattern.any_of.extend(nested.any_of);
                }
                Value::Array(list) => {
                    let at = target(&path)?;
                    if list.is_empty() {
                        return Err(format!(
                            "at {}: an empty list matches nothing",
                            place(&path)
                        ));
                    }
                    let conditions = list
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            Condition::compile(c)
                                .map_err(|what| format!("at {}[{i}]: {what}", place(&path)))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    pattern.fields.push(Field { at, conditions });
                }
                _ => {
                    return Err(format!(
                        "at {}: a value to match goes in a list, e.g. [{value}]",
                        place(&path)
                    ));
                }
            }
        }
        Ok(pattern)
    }

    /// Adds the places in the body this pattern reads.
    fn want(&self, wanted: &mut sparse::Wanted) {
        for field in &self.fields {
            match &field.at {
                Target::BodyText => wanted.leaf(&[]),
                Target::Body(path) => wanted.leaf(path),
                _ => {}
            }
        }
        for branch in self.any_of.iter().flatten() {
            branch.want(wanted);
        }
    }

    fn reads_body(&self) -> bool {
        self.fields
            .iter()
            .any(|f| matches!(f.at, Target::Body(_) | Target::BodyText))
            || self.any_of.iter().flatten().any(Pattern::reads_body)
    }

    fn matches(&self, record: &Record<'_, '_>) -> bool {
        self.fields.iter().all(|f| f.matches(record))
            && self
                .any_of
                .iter()
                .all(|branches| branches.iter().any(|p| p.matches(record)))
    }
}

/// Where a path in a pattern points, or why it points nowhere.
fn target(path: &[String]) -> Result<Target, String> {
    let keys: Vec<&str> = path.iter().map(String::as_str).collect();
    match keys.as_slice() {
        ["body"] => Ok(Target::BodyText),
        ["body", ..] => Ok(Target::Body(path[1..].to_vec())),
        ["messageAttributes", name] | ["messageAttributes", name, "stringValue"] => {
            Ok(Target::Attribute(name.to_string()))
        }
        ["messageAttributes", name, other] => Err(format!(
            "at {}: a message attribute is matched on `stringValue` (messageAttributes.{name}.stringValue), not `{other}`",
            place(path)
        )),
        ["attributes", "ApproximateReceiveCount"] => Ok(Target::ReceiveCount),
        ["attributes", "SentTimestamp"] => Ok(Target::SentTimestamp),
        ["attributes", "MessageGroupId"] => Ok(Target::GroupId),
        ["attributes", other] => Err(format!(
            "at {}: `{other}` is not an attribute filters can read ({SYSTEM_ATTRIBUTES})",
            place(path)
        )),
        ["messageId"] => Ok(Target::MessageId),
        [first, ..] => Err(format!(
            "at {}: `{first}` is not a field of a message; filters read body, messageAttributes, attributes and messageId",
            place(path)
        )),
        [] => Err("a pattern needs a field".into()),
    }
}

/// A path for messages: `body.order.total`.
fn place(path: &[String]) -> String {
    if path.is_empty() {
        "the top".into()
    } else {
        path.join(".")
    }
}

/// One value found at a field's place.
#[derive(Debug, Clone, Copy)]
enum Leaf<'a> {
    /// A JSON string.
    Str(&'a str),
    /// An attribute's value: a string `numeric` may read as a number.
    Text(&'a str),
    Num(f64),
    Bool(bool),
    Null,
}

impl<'a> Leaf<'a> {
    fn text(self) -> Option<&'a str> {
        match self {
            Leaf::Str(s) | Leaf::Text(s) => Some(s),
            _ => None,
        }
    }

    fn number(self) -> Option<f64> {
        match self {
            Leaf::Num(n) => Some(n),
            Leaf::Text(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
            _ => None,
        }
    }

    fn from_json(value: &'a Sparse<'_, '_>) -> Option<Leaf<'a>> {
        Some(match value {
            Sparse::Str(s) => Leaf::Str(s),
            Sparse::Num(n) => Leaf::Num(*n),
            Sparse::Bool(b) => Leaf::Bool(*b),
            Sparse::Null => Leaf::Null,
            Sparse::Unread | Sparse::List(_) | Sparse::Object(_) => return None,
        })
    }
}

impl Field {
    fn matches(&self, record: &Record<'_, '_>) -> bool {
        let subject = record.subject;
        let number;
        let leaf = match &self.at {
            Target::BodyText => match record.json_body() {
                // A pattern on the body itself is for bodies that are not
                // JSON objects or lists; Lambda drops those that are.
                Some(Sparse::Object(_) | Sparse::List(_)) => return false,
                Some(value) => Leaf::from_json(value),
                // An object or list this parser refuses (nested past 128
                // levels, a number past f64) is no plain text either: it
                // matches nothing, so that a sender cannot slip a JSON body
                // past an object pattern as text.
                None if subject.body.trim_start().starts_with(['{', '[']) => return false,
                None => Some(Leaf::Str(subject.body)),
            },
            Target::Body(path) => {
                // A pattern into the body needs a JSON object body; any
                // other is dropped, `exists: false` or not, as Lambda does.
                let Some(body @ Sparse::Object(_)) = record.json_body() else {
                    return false;
                };
                return self.matches_json(body, path);
            }
            Target::Attribute(name) => subject
                .attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| Leaf::Text(v)),
            Target::ReceiveCount => {
                number = subject.receive_count.to_string();
                Some(Leaf::Text(&number))
            }
            Target::SentTimestamp => {
                number = subject.sent_at_ms.to_string();
                Some(Leaf::Text(&number))
            }
            Target::GroupId => subject.group_id.map(Leaf::Text),
            Target::MessageId => Some(Leaf::Str(subject.id)),
        };
        match leaf {
            Some(leaf) => self.conditions.iter().any(|c| c.matches(leaf)),
            None => self.conditions.iter().any(Condition::matches_absent),
        }
    }

    /// Every leaf at `path` in `body`, arrays flattened; true when a
    /// condition matches one of them (or, with none, matches absence).
    fn matches_json(&self, body: &Sparse<'_, '_>, path: &[String]) -> bool {
        let mut seen = false;
        let matched = visit(body, path, &mut |leaf| {
            seen = true;
            self.conditions.iter().any(|c| c.matches(leaf))
        });
        matched || (!seen && self.conditions.iter().any(Condition::matches_absent))
    }
}

/// Calls `each` on every leaf at `path` until it returns true.
fn visit<'v>(
    value: &'v Sparse<'_, '_>,
    path: &[String],
    each: &mut impl FnMut(Leaf<'v>) -> bool,
) -> bool {
    match (value, path.split_first()) {
        (Sparse::List(items), _) => items.iter().any(|item| visit(item, path, each)),
        (object @ Sparse::Object(_), Some((key, rest))) => {
            object.get(key).is_some_and(|v| visit(v, rest, each))
        }
        (_, Some(_)) => false,
        (leaf, None) => Leaf::from_json(leaf).is_some_and(each),
    }
}

/// One alternative in a field's list.
#[derive(Debug, Clone)]
enum Condition {
    Exact(Literal),
    Prefix(Text),
    Suffix(Text),
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    AnythingBut(Vec<Condition>),
    Numeric(Vec<(Op, f64)>),
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// Text compared exactly, or ignoring case (then kept lowercased).
#[derive(Debug, Clone)]
struct Text {
    text: String,
    ignore_case: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Condition {
    fn compile(value: &Value) -> Result<Condition, String> {
        match value {
            Value::Object(map) => {
                let mut entries = map.iter();
                let (Some((op, arg)), None) = (entries.next(), entries.next()) else {
                    return Err(
                        "a condition object has exactly one operator, e.g. {\"prefix\": \"us-\"}"
                            .into(),
                    );
                };
                match op.as_str() {
                    "prefix" => Ok(Condition::Prefix(Text::compile(op, arg)?)),
                    "suffix" => Ok(Condition::Suffix(Text::compile(op, arg)?)),
                    "equals-ignore-case" => Ok(Condition::EqualsIgnoreCase(
                        string_arg(op, arg)?.to_lowercase(),
                    )),
                    "wildcard" => Ok(Condition::Wildcard(Wildcard::compile(string_arg(
                        op, arg,
                    )?)?)),
                    "anything-but" => anything_but(arg),
                    "numeric" => numeric(arg),
                    "exists" => match arg {
                        Value::Bool(b) => Ok(Condition::Exists(*b)),
                        _ => Err("`exists` takes true or false".into()),
                    },
                    other => Err(format!(
                        "`{other}` is not an operator (prefix, suffix, equals-ignore-case, wildcard, anything-but, numeric, exists)"
                    )),
                }
            }
            Value::Array(_) => Err("lists do not nest; put the alternatives in one list".into()),
            literal => Ok(Condition::Exact(Literal::compile(literal)?)),
        }
    }

    fn matches(&self, leaf: Leaf<'_>) -> bool {
        match self {
            Condition::Exact(literal) => literal.matches(leaf),
            Condition::Prefix(t) => leaf.text().is_some_and(|s| t.starts(s)),
            Condition::Suffix(t) => leaf.text().is_some_and(|s| t.ends(s)),
            Condition::EqualsIgnoreCase(want) => leaf.text().is_some_and(|s| same_folded(s, want)),
            Condition::Wildcard(w) => leaf.text().is_some_and(|s| w.matches(s)),
            Condition::AnythingBut(not) => !not.iter().any(|c| c.matches(leaf)),
            Condition::Numeric(bounds) => leaf.number().is_some_and(|n| {
                bounds.iter().all(|&(op, bound)| match op {
                    Op::Eq => n == bound,
                    Op::Lt => n < bound,
                    Op::Le => n <= bound,
                    Op::Gt => n > bound,
                    Op::Ge => n >= bound,
                })
            }),
            Condition::Exists(exists) => *exists,
        }
    }

    /// Whether the condition holds for a field that is not there.
    fn matches_absent(&self) -> bool {
        matches!(self, Condition::Exists(false))
    }
}

impl Literal {
    fn compile(value: &Value) -> Result<Literal, String> {
        Ok(match value {
            Value::String(s) => Literal::Str(s.clone()),
            Value::Number(n) => Literal::Num(
                n.as_f64()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| format!("{n} is not a number filters can compare"))?,
            ),
            Value::Bool(b) => Literal::Bool(*b),
            Value::Null => Literal::Null,
            _ => return Err("a value to match is a string, number, boolean or null".into()),
        })
    }

    fn matches(&self, leaf: Leaf<'_>) -> bool {
        match (self, leaf) {
            (Literal::Str(want), Leaf::Str(s) | Leaf::Text(s)) => want == s,
            (Literal::Num(want), Leaf::Num(n)) => *want == n,
            (Literal::Bool(want), Leaf::Bool(b)) => *want == b,
            (Literal::Null, Leaf::Null) => true,
            _ => false,
        }
    }
}

impl Text {
    /// A string, or `{"equals-ignore-case": "..."}`.
    fn compile(op: &str, arg: &Value) -> Result<Text, String> {
        match arg {
            Value::String(s) => Ok(Text {
                text: s.clone(),
                ignore_case: false,
            }),
            Value::Object(map) if map.len() == 1 => match map.get("equals-ignore-case") {
                Some(Value::String(s)) => Ok(Text {
                    text: s.to_lowercase(),
                    ignore_case: true,
                }),
                _ => Err(format!(
                    "`{op}` takes a string or {{\"equals-ignore-case\": \"...\"}}"
                )),
            },
            _ => Err(format!(
                "`{op}` takes a string or {{\"equals-ignore-case\": \"...\"}}"
            )),
        }
    }

    fn starts(&self, s: &str) -> bool {
        if self.ignore_case {
            fold(s).starts_with(&self.text)
        } else {
            s.starts_with(&self.text)
        }
    }

    fn ends(&self, s: &str) -> bool {
        if self.ignore_case {
            fold(s).ends_with(&self.text)
        } else {
            s.ends_with(&self.text)
        }
    }
}

/// Lowercased, without copying text that is lowercase already (title-case
/// letters such as `ǅ` count as not lowercase).
fn fold(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(|c| c.to_lowercase().ne(std::iter::once(c))) {
        s.to_lowercase().into()
    } else {
        s.into()
    }
}

fn same_folded(s: &str, lowered: &str) -> bool {
    if s.is_ascii() && lowered.is_ascii() {
        s.eq_ignore_ascii_case(lowered)
    } else {
        fold(s) == lowered
    }
}

fn string_arg<'v>(op: &str, arg: &'v Value) -> Result<&'v str, String> {
    arg.as_str().ok_or_else(|| format!("`{op}` takes a string"))
}

/// `anything-but`: a value, a list of values, or one prefix, suffix,
/// equals-ignore-case or wildcard object (each taking a string or a list).
fn anything_but(arg: &Value) -> Result<Condition, String> {
    let none_of = match arg {
        Value::Array(values) if !values.is_empty() => values
            .iter()
            .map(|v| match v {
                Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => {
                    Literal::compile(v).map(Condition::Exact)
                }
                _ => Err("`anything-but` takes values, a list of values, or one operator".into()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Object(map) => {
            let mut entries = map.iter();
            let (Some((op, inner)), None) = (entries.next(), entries.next()) else {
                return Err("`anything-but` takes one operator object".into());
            };
            let args: Vec<&Value> = match inner {
                Value::Array(list) if !list.is_empty() => list.iter().collect(),
                single => vec![single],
            };
            args.into_iter()
                .map(|a| {
                    let s = string_arg(op, a)?;
                    Ok(match op.as_str() {
                        "prefix" => Condition::Prefix(Text {
                            text: s.to_string(),
                            ignore_case: false,
                        }),
                        "suffix" => Condition::Suffix(Text {
                            text: s.to_string(),
                            ignore_case: false,
                        }),
                        "equals-ignore-case" => Condition::EqualsIgnoreCase(s.to_lowercase()),
                        "wildcard" => Condition::Wildcard(Wildcard::compile(s)?),
                        other => {
                            return Err(format!(
                                "`anything-but` takes prefix, suffix, equals-ignore-case or wildcard, not `{other}`"
                            ));
                        }
                    })
                })
                .collect::<Result<Vec<_>, String>>()?
        }
        Value::Array(_) => return Err("`anything-but` needs at least one value".into()),
        literal => vec![Condition::Exact(Literal::compile(literal)?)],
    };
    Ok(Condition::AnythingBut(none_of))
}

/// `numeric`: `["=", 5]`, `["<", 5]`, or a lower and an upper bound such
/// as `[">", 0, "<=", 5]`.
fn numeric(arg: &Value) -> Result<Condition, String> {
    let usage = "`numeric` takes [\"<\", 5], [\"=\", 5] or a lower and an upper bound such as [\">\", 0, \"<=\", 5]";
    let Some(items) = arg.as_array().filter(|a| matches!(a.len(), 2 | 4)) else {
        return Err(usage.into());
    };
    let mut bounds = Vec::new();
    for pair in items.chunks(2) {
        let op = match pair[0].as_str() {
            Some("=") => Op::Eq,
            Some("<") => Op::Lt,
            Some("<=") => Op::Le,
            Some(">") => Op::Gt,
            Some(">=") => Op::Ge,
            _ => {
                return Err(format!(
                    "{} is not a comparison (=, <, <=, >, >=); {usage}",
                    pair[0]
                ));
            }
        };
        let bound = pair[1]
            .as_f64()
            .filter(|n| n.is_finite())
            .ok_or_else(|| format!("{} is not a number; {usage}", pair[1]))?;
        bounds.push((op, bound));
    }
    if let [(a, _), (b, _)] = bounds.as_slice() {
        let lower = |op: &Op| matches!(op, Op::Gt | Op::Ge);
        let upper = |op: &Op| matches!(op, Op::Lt | Op::Le);
        if !((lower(a) && upper(b)) || (upper(a) && lower(b))) {
            return Err(format!(
                "two comparisons are a lower and an upper bound; {usage}"
            ));
        }
    }
    Ok(Condition::Numeric(bounds))
}

/// A `wildcard` pattern: literal pieces between `*`s.
#[derive(Debug, Clone)]
struct Wildcard {
    pieces: Vec<String>,
}

impl Wildcard {
    fn compile(text: &str) -> Result<Wildcard, String> {
        let mut pieces = vec![String::new()];
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '\\')) => pieces.last_mut().unwrap().push(escaped),
                    _ => return Err("in a wildcard, `\\` escapes only `*` and `\\`".into()),
                },
                '*' => {
                    if pieces.len() > 1 && pieces.last().is_some_and(String::is_empty) {
                        return Err("a wildcard may not have `**`".into());
                    }
                    pieces.push(String::new());
                }
                c => pieces.last_mut().unwrap().push(c),
            }
        }
        Ok(Wildcard { pieces })
    }

    fn matches(&self, s: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("one piece at least");
        let Some(mut s) = s.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return s.is_empty();
        };
        for piece in middle {
            match s.find(piece.as_str()) {
                Some(at) => s = &s[at + piece.len()..],
                None => return false,
            }
        }
        s.ends_with(last.as_str())
    }
}

mod sparse;
#[cfg(test)]
mod tests;
