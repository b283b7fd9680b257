//! Reading the configured username and groups claims, with dot paths
//! (`metadata.name`, `realm_access.roles`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The value at a dot path, e.g. `user.name`.
pub fn at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return None;
    }
    // A literal key with dots (some IdPs use URLs as claim names) wins over a path.
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

pub fn username(claims: &Value, path: &str) -> Option<String> {
    match at(claims, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Groups as strings; a single string counts as one group. `None` when absent.
pub fn groups(claims: &Value, path: &str) -> Option<Vec<String>> {
    match at(claims, path)? {
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str())
                // Keycloak's full group paths ("/team/dev") keep their slashes; the
                // label file names them the same way.
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        Value::String(s) if !s.is_empty() => Some(vec![s.clone()]),
        _ => None,
    }
}

/// The registered claims a token's validation reads (RFC 7519 §4.1), as the JSON
/// text of their values, found in the same pass as the claims the login reads.
#[derive(Default)]
pub struct Registered<'a> {
    pub exp: Option<&'a RawValue>,
    pub nbf: Option<&'a RawValue>,
    pub sub: Option<&'a RawValue>,
    pub iss: Option<&'a RawValue>,
    pub aud: Option<&'a RawValue>,
}

const REGISTERED: [&str; 5] = ["exp", "nbf", "sub", "iss", "aud"];

impl<'a> Registered<'a> {
    fn slot(&mut self, i: usize) -> &mut Option<&'a RawValue> {
        match i {
            0 => &mut self.exp,
            1 => &mut self.nbf,
            2 => &mut self.sub,
            3 => &mut self.iss,
            _ => &mut self.aud,
        }
    }
}

/// Reads a verified token's payload `json` (a JSON object) once: the claims that
/// [`at`] can reach with `paths` — for each path, the claim named by the whole path
/// and the one named by its first segment — as a JSON object, and the
/// [`Registered`] claims for validation. The claims the login does not look at
/// (`scope`, `jti`, …) are skipped, not allocated and freed on every login. A
/// registered claim given twice is refused, as jsonwebtoken's own reading does.
pub fn read<'a, P: AsRef<str>>(
    json: &'a str,
    paths: &[P],
) -> Result<(Value, Registered<'a>), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let (claims, registered) = Reachable(paths).deserialize(&mut de)?;
    de.end()?;
    Ok((Value::Object(claims), registered))
}

struct Reachable<'p, P>(&'p [P]);

impl<P: AsRef<str>> Reachable<'_, P> {
    fn wants(&self, key: &str) -> bool {
        self.0
            .iter()
            .map(AsRef::as_ref)
            .any(|p: &str| p == key || p.split('.').next() == Some(key))
    }
}

impl<'de, P: AsRef<str>> DeserializeSeed<'de> for Reachable<'_, P> {
    type Value = (Map<String, Value>, Registered<'de>);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, P: AsRef<str>> Visitor<'de> for Reachable<'_, P> {
    type Value = (Map<String, Value>, Registered<'de>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        let mut registered = Registered::default();
        while let Some(key) = map.next_key_seed(Key(&self))? {
            match key {
                Kept::Registered(i, wanted) => {
                    let raw: &'de RawValue = map.next_value()?;
                    let slot = registered.slot(i);
                    if slot.is_some() {
                        return Err(A::Error::duplicate_field(REGISTERED[i]));
                    }
                    *slot = Some(raw);
                    if wanted {
                        let value = serde_json::from_str(raw.get()).map_err(A::Error::custom)?;
                        out.insert(REGISTERED[i].to_string(), value);
                    }
                }
                Kept::Wanted(k) => {
                    out.insert(k, map.next_value()?);
                }
                Kept::Skipped => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((out, registered))
    }
}

/// What becomes of a claim, by its name.
enum Kept {
    /// A registered claim (its index in [`REGISTERED`]), and whether a path wants it.
    Registered(usize, bool),
    Wanted(String),
    Skipped,
}

struct Key<'a, 'p, P>(&'a Reachable<'p, P>);

impl<'de, P: AsRef<str>> DeserializeSeed<'de> for Key<'_, '_, P> {
    type Value = Kept;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, P: AsRef<str>> Visitor<'de> for Key<'_, '_, P> {
    type Value = Kept;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a claim name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        let wanted = self.0.wants(key);
        Ok(match REGISTERED.iter().position(|r| *r == key) {
            Some(i) => Kept::Registered(i, wanted),
            None if wanted => Kept::Wanted(key.to_string()),
            None => Kept::Skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dot_paths_and_literal_keys() {
        let c = json!({"preferred_username": "alice", "metadata": {"name": "bob"},
                       "realm_access": {"roles": ["a", "b"]}, "https://x/groups": ["g"],
                       "groups": "solo", "empty": ""});
        assert_eq!(username(&c, "preferred_username").as_deref(), Some("alice"));
        assert_eq!(username(&c, "metadata.name").as_deref(), Some("bob"));
        assert_eq!(username(&c, "metadata.nope"), None);
        assert_eq!(username(&c, "empty"), None);
        assert_eq!(username(&c, "realm_access"), None);
        assert_eq!(groups(&c, "realm_access.roles").unwrap(), ["a", "b"]);
        assert_eq!(groups(&c, "https://x/groups").unwrap(), ["g"]);
        assert_eq!(groups(&c, "groups").unwrap(), ["solo"]);
        assert_eq!(groups(&c, ""), None);
    }

    /// What the reachable claims answer for the paths asked is what the whole
    /// claims answer; everything else is left out.
    #[test]
    fn read_claims_answer_as_the_whole_claims_do() {
        let text = r#"{"preferred_username": "alice", "metadata": {"name": "bob", "x": [1]},
                       "realm_access": {"roles": ["a", "b"]}, "https://x/groups": ["g"],
                       "https://x": {"groups": ["not this one"]}, "aud": ["a", "b"],
                       "g\u0072oups": "solo", "scope": "openid", "jti": "j"}"#;
        let whole: Value = serde_json::from_str(text).unwrap();
        let paths = [
            "preferred_username",
            "metadata.name",
            "realm_access.roles",
            "https://x/groups",
            "groups",
            "nope.deeper",
        ];
        let (some, registered) = read(text, &paths).unwrap();
        assert_eq!(registered.aud.map(RawValue::get), Some(r#"["a", "b"]"#));
        assert!(registered.exp.is_none() && registered.sub.is_none());
        for p in paths {
            assert_eq!(at(&some, p), at(&whole, p), "{p}");
            assert_eq!(username(&some, p), username(&whole, p), "{p}");
            assert_eq!(groups(&some, p), groups(&whole, p), "{p}");
        }
        let mut kept: Vec<&str> = some
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            [
                "groups",
                "https://x/groups",
                "metadata",
                "preferred_username",
                "realm_access"
            ]
        );
        for not_an_object in ["[1, 2]", "\"alice\"", "null"] {
            assert!(read(not_an_object, &paths).is_err(), "{not_an_object}");
        }
    }
}
