//! Decoding only the parts of a JSON document a caller reads, straight from the bytes.
//!
//! A CronJob in an admission review is mostly what the mutating webhook never looks at:
//! `managedFields` alone is about 40 % of its bytes and, as a `serde_json::Value`, a `BTreeMap`
//! per `f:` key. A [`Keep`] tree names the members to keep; serde skips everything else without
//! building it, and what is kept keeps its exact JSON, so paths into the view are paths into the
//! document (arrays are only ever kept whole, so indices agree too).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Which parts of a JSON value to keep.
#[derive(Clone, Copy, Debug)]
pub enum Keep {
    /// The whole value, whatever it is.
    All,
    /// Of an object, only these members, each kept as its own `Keep` says (`null` is kept as
    /// `null`; any other non-object is an error).
    Members(&'static [(&'static str, Keep)]),
    /// Of nested objects, only the chain of members along this path, and at its end the value
    /// as the `Keep` says (the path's own objects as [`Keep::Members`] treats them).
    Path(&'static [&'static str], &'static Keep),
}

impl Keep {
    /// Decodes `json`, keeping only what `self` names.
    pub fn from_slice(self, json: &[u8]) -> serde_json::Result<Value> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let value = self.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

impl<'de> DeserializeSeed<'de> for Keep {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self {
            Keep::All => Value::deserialize(d),
            Keep::Path([], end) => end.deserialize(d),
            members => d.deserialize_any(MembersOf(members)),
        }
    }
}

impl Keep {
    /// How the member `name` of an object is kept, if at all (`self` is a `Members` or `Path`).
    fn member(self, name: &str) -> Option<(&'static str, Keep)> {
        match self {
            Keep::Members(members) => members.iter().copied().find(|(kept, _)| *kept == name),
            Keep::Path([first, rest @ ..], end) if *first == name => {
                Some((*first, Keep::Path(rest, end)))
            }
            _ => None,
        }
    }
}

/// The visitor of an object whose members are kept as the `Keep` says.
struct MembersOf(Keep);

impl<'de> Visitor<'de> for MembersOf {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object or null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(found) = map.next_key_seed(MemberName(self.0))? {
            match found {
                Some((name, keep)) => {
                    let value = map.next_value_seed(keep)?;
                    kept.insert(name.to_owned(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }
}

/// A member's name, looked up among the kept ones without allocating it.
struct MemberName(Keep);

impl<'de> DeserializeSeed<'de> for MemberName {
    type Value = Option<(&'static str, Keep)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MemberName {
    type Value = Option<(&'static str, Keep)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.member(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VIEW: Keep = Keep::Members(&[
        ("metadata", Keep::Members(&[("labels", Keep::All)])),
        ("list", Keep::All),
        ("deep", Keep::Path(&["a", "b"], &Keep::All)),
    ]);

    fn view(v: &Value) -> serde_json::Result<Value> {
        VIEW.from_slice(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn keeps_only_the_named_members_exactly() {
        let doc = json!({
            "metadata": {"labels": {"a~/b": "c"}, "managedFields": [{"f:x": {}}], "name": "n"},
            "list": [{"name": "x", "deep": {"k": [1, 2.5, null, true]}}],
            "status": {"big": "skipped"},
        });
        assert_eq!(
            view(&doc).unwrap(),
            json!({"metadata": {"labels": {"a~/b": "c"}},
                   "list": [{"name": "x", "deep": {"k": [1, 2.5, null, true]}}]})
        );
    }

    #[test]
    fn a_path_keeps_only_its_chain() {
        let doc = json!({"deep": {"a": {"b": {"x": [1]}, "c": 2}, "z": 3}});
        assert_eq!(
            view(&doc).unwrap(),
            json!({"deep": {"a": {"b": {"x": [1]}}}})
        );
    }

    #[test]
    fn escaped_names_are_matched_and_null_is_kept() {
        let raw = br#"{"meta\u0064ata": null, "li\u0073t": "s"}"#;
        assert_eq!(
            VIEW.from_slice(raw).unwrap(),
            json!({"metadata": null, "list": "s"})
        );
    }

    #[test]
    fn a_non_object_where_members_are_kept_is_an_error() {
        let e = view(&json!({"metadata": "x"})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(r#"invalid type: string "x", expected a JSON object or null"#),
            "{e}"
        );
        assert!(VIEW.from_slice(b"{} trailing").is_err());
    }
}
