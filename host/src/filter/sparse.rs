//! Parsing a body for filters: the whole text is checked as JSON, but only
//! the places some pattern reads are kept, borrowing the body's text where
//! it can; every other value is skipped without being built, which is most
//! of a body's parse time.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The places patterns read, as a tree of keys.
#[derive(Debug, Clone, Default)]
pub(super) struct Wanted {
    children: Vec<(String, Wanted)>,
    /// Whether a pattern reads the values here (else only deeper keys).
    leaves: bool,
}

/// A body as the patterns see it: the places they read, nothing else.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Sparse<'b, 'w> {
    Str(Cow<'b, str>),
    Num(f64),
    Bool(bool),
    Null,
    /// A string no pattern reads as a value.
    Unread,
    List(Vec<Sparse<'b, 'w>>),
    /// The object's keys that patterns read.
    Object(Vec<(&'w str, Sparse<'b, 'w>)>),
}

impl Sparse<'_, '_> {
    pub(super) fn get(&self, key: &str) -> Option<&Self> {
        match self {
            // The last of a repeated key counts, as for JSON readers that
            // keep one.
            Sparse::Object(entries) => entries
                .iter()
                .rev()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

impl Wanted {
    /// Marks `path` (below the body) as read.
    pub(super) fn leaf(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.leaves = true,
            Some((key, rest)) => {
                let at = match self.children.iter().position(|(k, _)| k == key) {
                    Some(at) => at,
                    None => {
                        self.children.push((key.clone(), Wanted::default()));
                        self.children.len() - 1
                    }
                };
                self.children[at].1.leaf(rest);
            }
        }
    }

    /// The body's wanted places, or `None` if it is not JSON.
    pub(super) fn parse<'b>(&self, body: &'b str) -> Option<Sparse<'b, '_>> {
        let mut de = serde_json::Deserializer::from_str(body);
        let value = self.deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(value)
    }
}

impl<'de, 'w> DeserializeSeed<'de> for &'w Wanted {
    type Value = Sparse<'de, 'w>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, 'w> Visitor<'de> for &'w Wanted {
    type Value = Sparse<'de, 'w>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Sparse::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Sparse::Num(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Sparse::Num(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Sparse::Num(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(if self.leaves {
            Sparse::Str(Cow::Borrowed(v))
        } else {
            Sparse::Unread
        })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        // A string with escapes is built, only where a pattern reads it.
        Ok(if self.leaves {
            Sparse::Str(Cow::Owned(v.to_string()))
        } else {
            Sparse::Unread
        })
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Sparse::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Sparse::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = Vec::new();
        while let Some(key) = map.next_key_seed(Key(self))? {
            match key {
                Some((name, child)) => kept.push((name, map.next_value_seed(child)?)),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Sparse::Object(kept))
    }
}

/// A key of an object: the wanted child it names, or `None` to skip it.
struct Key<'w>(&'w Wanted);

impl<'de, 'w> DeserializeSeed<'de> for Key<'w> {
    type Value = Option<(&'w str, &'w Wanted)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, 'w> Visitor<'de> for Key<'w> {
    type Value = Option<(&'w str, &'w Wanted)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .children
            .iter()
            .find(|(k, _)| k == key)
            .map(|(k, child)| (k.as_str(), child)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wanted_places_are_kept_and_bad_json_is_none() {
        let mut wanted = Wanted::default();
        wanted.leaf(&["a".into(), "b".into()]);
        wanted.leaf(&["c".into()]);
        let body = r#"{"a": {"b": "x\ny", "z": "skipped"}, "c": ["p", 2], "d": {"deep": [1, 2]}}"#;
        let sparse = wanted.parse(body).unwrap();
        assert_eq!(
            sparse,
            Sparse::Object(vec![
                ("a", Sparse::Object(vec![("b", Sparse::Str("x\ny".into()))])),
                (
                    "c",
                    Sparse::List(vec![Sparse::Str("p".into()), Sparse::Num(2.0)])
                ),
            ])
        );
        // Text past a skipped value is still checked as JSON.
        assert_eq!(wanted.parse(r#"{"d": [1, }"#), None);
        assert_eq!(wanted.parse(r#"{"c": 1} trailing"#), None);
    }
}
