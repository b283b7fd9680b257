//! The policy of the forward-auth front (SPEC §12), in ARLAS's terms: public URIs
//! need no identity; `r:<resource regex>:<verbs>` permissions of a label or group
//! let its members through, `h:<header>:<value>` permissions add headers to the
//! request the backend receives.
//!
//! Regexes match the whole path of the original request (not its query string), as
//! ARLAS matches resources; verbs are comma-separated or `*`. The rules file:
//!
//! ```text
//! # <label or group>: r:<regex>:<verbs>  |  <label or group>: h:<header>:<value>
//! analysts: r:/api/.*:GET,HEAD
//! ops:      rule:/api/admin/.*:*
//! apple:    h:arlas-org-filter:h:org1:apple     (a value may contain ':')
//! ```

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;

/// Methods a permission covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verbs {
    Any,
    Only(Vec<String>),
}

impl Verbs {
    fn parse(text: &str) -> Result<Verbs, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Verbs::Any);
        }
        let verbs: Vec<String> = text
            .split(',')
            .map(|v| v.trim().to_ascii_uppercase())
            .filter(|v| !v.is_empty())
            .collect();
        if verbs.is_empty()
            || verbs
                .iter()
                .any(|v| !v.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(format!(
                "\"{text}\" is not a list of HTTP methods (GET,POST,… or *)"
            ));
        }
        Ok(Verbs::Only(verbs))
    }

    fn allows(&self, method: &str) -> bool {
        match self {
            Verbs::Any => true,
            Verbs::Only(v) => v.iter().any(|m| m.eq_ignore_ascii_case(method)),
        }
    }
}

/// A resource pattern with the methods it allows.
#[derive(Debug, Clone)]
pub struct Resource {
    regex: Regex,
    verbs: Verbs,
}

impl Resource {
    /// `<regex>:<verbs>`; the verbs follow the last `:`, the regex may hold `:`.
    pub fn parse(text: &str) -> Result<Resource, String> {
        let (pattern, verbs) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("\"{text}\" is not <regex>:<verbs>"))?;
        let regex = Regex::new(&format!("^(?:{})$", pattern.trim()))
            .map_err(|e| format!("bad regex \"{}\": {e}", pattern.trim()))?;
        Ok(Resource {
            regex,
            verbs: Verbs::parse(verbs)?,
        })
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.verbs.allows(method) && self.regex.is_match(path)
    }
}

/// The permissions of one label or group.
#[derive(Debug, Clone, Default)]
struct Grants {
    resources: Vec<Resource>,
    headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    public: Vec<Resource>,
    /// Label or group name → its permissions.
    grants: HashMap<String, Grants>,
    /// Every header name an `h:` permission sets (lower case, once each), made at
    /// load time: each allowed request answers all of them.
    header_names: Vec<String>,
}

/// What `/v1/authorize` answers for an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: the extra headers (`h:` permissions), same names merged.
    Allow(Vec<(String, String)>),
    Deny,
}

impl Policy {
    /// `forward.public_uris` and `forward.rules_file`; errors name the key or the
    /// file and line.
    pub fn load(public_uris: &[String], rules_file: Option<&Path>) -> Result<Policy, String> {
        let mut policy = Policy::default();
        for (i, p) in public_uris.iter().enumerate() {
            policy
                .public
                .push(Resource::parse(p).map_err(|e| format!("forward.public_uris[{i}]: {e}"))?);
        }
        if let Some(path) = rules_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("forward.rules_file {}: cannot read: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                policy
                    .add_line(line)
                    .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
            }
        }
        policy.index_headers();
        Ok(policy)
    }

    fn add_line(&mut self, line: &str) -> Result<(), String> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let (subject, permission) = line
            .split_once(':')
            .ok_or("expected <label or group>: r:<regex>:<verbs> or h:<header>:<value>")?;
        let subject = subject.trim();
        if subject.is_empty() {
            return Err("the label or group before ':' is empty".into());
        }
        let permission = permission.trim();
        let (kind, rest) = permission
            .split_once(':')
            .ok_or("expected r:<regex>:<verbs> or h:<header>:<value> after the label or group")?;
        let grants = self.grants.entry(subject.to_string()).or_default();
        match kind.trim() {
            "r" | "rule" => grants.resources.push(Resource::parse(rest)?),
            "h" | "header" => {
                let (name, value) = rest
                    .split_once(':')
                    .ok_or("a header permission is h:<header>:<value>")?;
                let name = name.trim();
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(format!("\"{name}\" is not a header name"));
                }
                if value.chars().any(char::is_control) {
                    return Err("a header value cannot hold control characters".into());
                }
                grants
                    .headers
                    .push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
            other => {
                return Err(format!(
                    "\"{other}:\" is neither r:/rule: (a resource) nor h:/header: (a header)"
                ));
            }
        }
        Ok(())
    }

    fn index_headers(&mut self) {
        let mut names: Vec<String> = self
            .grants
            .values()
            .flat_map(|g| g.headers.iter().map(|(n, _)| n.clone()))
            .collect();
        names.sort();
        names.dedup();
        self.header_names = names;
    }

    /// Every header name an `h:` permission sets (lower case, once each).
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// Whether `method path` needs no identity.
    pub fn is_public(&self, method: &str, path: &str) -> bool {
        self.public.iter().any(|r| r.matches(method, path))
    }

    /// The decision for someone with these labels and groups.
    pub fn decide<'a>(
        &self,
        subjects: impl Iterator<Item = &'a str> + Clone,
        method: &str,
        path: &str,
    ) -> Decision {
        let mine = || subjects.clone().filter_map(|s| self.grants.get(s));
        if !mine().any(|g| g.resources.iter().any(|r| r.matches(method, path))) {
            return Decision::Deny;
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        for g in mine() {
            for (name, value) in &g.headers {
                match headers.iter_mut().find(|(n, _)| n == name) {
                    Some((_, v)) => {
                        if !v.split(',').any(|x| x == value) {
                            v.push(',');
                            v.push_str(value);
                        }
                    }
                    None => headers.push((name.clone(), value.clone())),
                }
            }
        }
        Decision::Allow(headers)
    }
}

/// The path of a request target (`/a/b?x=1` → `/a/b`), or of an absolute URL.
pub fn path_of(uri: &str) -> &str {
    let no_query = uri.split(['?', '#']).next().unwrap_or("");
    match no_query.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => no_query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> Policy {
        let mut p = Policy::load(&["swagger.*:*".into(), "/health:GET".into()], None).unwrap();
        for l in rules.lines() {
            p.add_line(l).unwrap();
        }
        p.index_headers();
        p
    }

    #[test]
    fn public_uris_match_the_whole_path_and_their_verbs() {
        let p = policy("");
        assert!(p.is_public("GET", "swagger.json"));
        assert!(p.is_public("DELETE", "swagger/ui"));
        assert!(p.is_public("GET", "/health"));
        assert!(!p.is_public("POST", "/health"));
        assert!(!p.is_public("GET", "/health/x"), "anchored at both ends");
        assert!(!p.is_public("GET", "/x/swagger.json"));
    }

    #[test]
    fn resources_allow_by_label_or_group_and_headers_merge() {
        let p = policy(
            "# a comment\n\
             analysts: r:/api/.*:GET,head\n\
             ops: rule:/api/admin/.*:*\n\
             apple: h:arlas-org-filter:h:org1:apple\n\
             analysts: header:X-Team:data\n\
             ops: h:x-team:ops\n\
             ops: h:x-team:data\n",
        );
        let s = |v: &'static [&'static str]| v.iter().copied();
        assert_eq!(p.decide(s(&["nobody"]), "GET", "/api/x"), Decision::Deny);
        assert_eq!(
            p.decide(s(&["analysts", "apple"]), "GET", "/api/x"),
            Decision::Allow(vec![
                ("x-team".into(), "data".into()),
                ("arlas-org-filter".into(), "h:org1:apple".into()),
            ])
        );
        assert_eq!(p.decide(s(&["analysts"]), "POST", "/api/x"), Decision::Deny);
        assert_eq!(
            p.decide(s(&["analysts"]), "HEAD", "/api/x"),
            Decision::Allow(vec![("x-team".into(), "data".into())])
        );
        assert_eq!(
            p.decide(s(&["analysts", "ops"]), "DELETE", "/api/admin/1"),
            Decision::Allow(vec![("x-team".into(), "data,ops".into())]),
            "same name merged, a value once"
        );
        assert_eq!(p.decide(s(&["analysts"]), "GET", "/apix"), Decision::Deny);
    }

    #[test]
    fn file_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("rules");
        std::fs::write(&f, "ok: r:/a:GET\nbad: r:/(unclosed:GET\n").unwrap();
        let e = Policy::load(&[], Some(&f)).unwrap_err();
        assert!(e.contains("rules:2: bad regex"), "{e}");
        std::fs::write(&f, "x: q:/a:GET\n").unwrap();
        assert!(
            Policy::load(&[], Some(&f))
                .unwrap_err()
                .contains("rules:1: \"q:\"")
        );
        std::fs::write(&f, "x: r:/a:GE T\n").unwrap();
        assert!(
            Policy::load(&[], Some(&f))
                .unwrap_err()
                .contains("HTTP methods")
        );
        assert!(
            Policy::load(&["nocolon".into()], None)
                .unwrap_err()
                .contains("forward.public_uris[0]")
        );
    }

    #[test]
    fn paths_drop_query_and_origin() {
        assert_eq!(path_of("/a/b?x=1"), "/a/b");
        assert_eq!(path_of("https://h.example/a?x"), "/a");
        assert_eq!(path_of("https://h.example"), "/");
        assert_eq!(path_of("/a#frag"), "/a");
    }
}
