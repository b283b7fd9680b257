//! Reading the configured username and groups claims, with dot paths
//! (`metadata.name`, `realm_access.roles`).

use serde_json::Value;

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
}
