//! Groups → security labels, from `security.labelfile` and `security.grouplabelfile`.
//!
//! Labels are fixed when a session is created, so the map is an immutable value
//! swapped whole on SIGHUP: a request never sees half a reload.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// A label file problem, with the file and line it came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", .0.join("; "))]
pub struct LabelError(pub Vec<String>);

#[derive(Debug, Default, Clone)]
pub struct LabelMap {
    defaults: Vec<Arc<str>>,
    by_group: HashMap<String, Vec<Arc<str>>>,
    /// Per group, each label with every `file:line` that grants it, for
    /// `portcullis admin explain` only: the login path reads `by_group`.
    granted_by: HashMap<String, Vec<Grant>>,
}

/// A label and the `file:line` places that grant it to one group.
type Grant = (Arc<str>, Vec<Arc<str>>);

/// Where a label comes from, as `admin explain` shows it.
pub const DEFAULTS_SOURCE: &str = "security.default_labels";

/// One label a user would get and every place that grants it (`file:line`, or
/// [`DEFAULTS_SOURCE`]), each with the group it came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSource {
    pub label: Arc<str>,
    /// `(group, "file:line")`; the group is empty for [`DEFAULTS_SOURCE`].
    pub granted_by: Vec<(String, String)>,
}

/// Labels travel in JSON, HTTP headers and CSV, so keep them to a safe alphabet.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 128 {
        return Err(format!("label \"{label}\" must be 1 to 128 characters"));
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.:/@".contains(c))
    {
        return Err(format!(
            "label \"{label}\" may only contain letters, digits and _ - . : / @"
        ));
    }
    Ok(())
}

fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// The grouplabel file as RFC 4180 CSV, so SSSD/AD group names with spaces or commas
/// can be written quoted (`"Domain Users",public`); `#` starts a comment line, blank
/// lines are skipped, fields are trimmed. Each row with its line number.
fn grouplabel_rows(name: &str, text: &str) -> Vec<Result<(u64, Vec<String>), String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    // The csv reader reports where it began reading a record, comment and blank
    // lines before it included; the line an operator wants is the record's own.
    let lines: Vec<&str> = text.lines().collect();
    let own_line = |pos: Option<&csv::Position>| {
        let mut line = pos.map_or(0, csv::Position::line);
        while line >= 1
            && (line as usize) < lines.len()
            && lines
                .get(line as usize - 1)
                .is_some_and(|l| l.trim().is_empty() || l.starts_with('#'))
        {
            line += 1;
        }
        line
    };
    reader
        .records()
        .map(|r| match r {
            Ok(rec) => Ok((
                own_line(rec.position()),
                rec.iter().map(str::to_string).collect(),
            )),
            Err(e) => Err(format!(
                "{name}:{}: not valid CSV ({e})",
                own_line(e.position())
            )),
        })
        .collect()
}

impl LabelMap {
    /// Read the configured files; a missing or malformed file is an error naming it.
    pub fn load(
        labelfile: Option<&Path>,
        grouplabelfile: Option<&Path>,
        defaults: &[String],
    ) -> Result<Self, LabelError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| LabelError(vec![format!("cannot read {}: {e}", p.display())]))
        };
        let labels = labelfile.map(|p| read(p).map(|t| (p, t))).transpose()?;
        let groups = grouplabelfile
            .map(|p| read(p).map(|t| (p, t)))
            .transpose()?;
        Self::parse(
            labels
                .as_ref()
                .map(|(p, t)| (p.display().to_string(), t.as_str())),
            groups
                .as_ref()
                .map(|(p, t)| (p.display().to_string(), t.as_str())),
            defaults,
        )
    }

    /// Parse file contents; `(name, text)` pairs so errors read `file:line: …`.
    pub fn parse(
        labelfile: Option<(String, &str)>,
        grouplabelfile: Option<(String, &str)>,
        defaults: &[String],
    ) -> Result<Self, LabelError> {
        let mut errors = Vec::new();
        let defined: Option<HashSet<String>> = labelfile.map(|(name, text)| {
            let mut set = HashSet::new();
            for (n, line) in content_lines(text) {
                match check_label(line) {
                    Ok(()) => {
                        set.insert(line.to_string());
                    }
                    Err(e) => errors.push(format!("{name}:{n}: {e}")),
                }
            }
            set
        });
        let undefined = |l: &str| defined.as_ref().is_some_and(|d| !d.contains(l));

        let mut interned: HashMap<String, Arc<str>> = HashMap::new();
        let mut intern = |l: &str| {
            interned
                .entry(l.to_string())
                .or_insert_with(|| Arc::from(l))
                .clone()
        };
        let mut by_group: HashMap<String, Vec<Arc<str>>> = HashMap::new();
        let mut granted_by: HashMap<String, Vec<Grant>> = HashMap::new();
        let mut places: HashMap<String, Arc<str>> = HashMap::new();
        if let Some((name, text)) = grouplabelfile {
            for row in grouplabel_rows(&name, text) {
                let (n, fields) = match row {
                    Ok(r) => r,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let group = fields.first().map(String::as_str).unwrap_or_default();
                if fields.iter().any(|f| f.contains('"')) {
                    errors.push(format!(
                        "{name}:{n}: a quoted field must begin with its quote (no space before it), as in \"Domain Users\",label"
                    ));
                    continue;
                }
                if group.is_empty() || group.chars().any(char::is_control) {
                    errors.push(format!("{name}:{n}: \"{group}\" is not a group name"));
                    continue;
                }
                let labels = &fields[1..];
                if labels.is_empty() || labels.iter().any(String::is_empty) {
                    errors.push(format!(
                        "{name}:{n}: expected group,label[,label…] with no empty label"
                    ));
                    continue;
                }
                for l in labels {
                    if let Err(e) = check_label(l) {
                        errors.push(format!("{name}:{n}: {e}"));
                    } else if undefined(l) {
                        errors.push(format!(
                            "{name}:{n}: label \"{l}\" is not defined in the label file"
                        ));
                    } else {
                        let entry = by_group.entry(group.to_string()).or_default();
                        let l = intern(l);
                        if !entry.contains(&l) {
                            entry.push(l.clone());
                        }
                        let place = format!("{name}:{n}");
                        let place = places
                            .entry(place.clone())
                            .or_insert_with(|| Arc::from(place))
                            .clone();
                        let sources = granted_by.entry(group.to_string()).or_default();
                        match sources.iter_mut().find(|(label, _)| *label == l) {
                            Some((_, at)) if !at.contains(&place) => at.push(place),
                            Some(_) => {}
                            None => sources.push((l, vec![place])),
                        }
                    }
                }
            }
        }
        let mut default_set = Vec::new();
        for l in defaults {
            if undefined(l) {
                errors.push(format!(
                    "security.default_labels: label \"{l}\" is not defined in the label file"
                ));
            } else {
                default_set.push(intern(l));
            }
        }
        if errors.is_empty() {
            Ok(LabelMap {
                defaults: default_set,
                by_group,
                granted_by,
            })
        } else {
            Err(LabelError(errors))
        }
    }

    /// `default_labels` ∪ the labels of every group, sorted and without repeats.
    pub fn labels_for<S: AsRef<str>>(&self, groups: &[S]) -> Vec<Arc<str>> {
        let mut out: BTreeSet<&Arc<str>> = self.defaults.iter().collect();
        for g in groups {
            if let Some(ls) = self.by_group.get(g.as_ref()) {
                out.extend(ls.iter());
            }
        }
        out.into_iter().cloned().collect()
    }

    /// [`LabelMap::labels_for`] with, for each label, the file lines (or
    /// `security.default_labels`) that grant it. For the operator, not for logins.
    pub fn explain<S: AsRef<str>>(&self, groups: &[S]) -> Vec<LabelSource> {
        let mut out: std::collections::BTreeMap<Arc<str>, Vec<(String, String)>> =
            std::collections::BTreeMap::new();
        for l in &self.defaults {
            out.entry(l.clone())
                .or_default()
                .push((String::new(), DEFAULTS_SOURCE.to_string()));
        }
        for g in groups {
            for (l, places) in self.granted_by.get(g.as_ref()).into_iter().flatten() {
                let entry = out.entry(l.clone()).or_default();
                for p in places {
                    entry.push((g.as_ref().to_string(), p.to_string()));
                }
            }
        }
        out.into_iter()
            .map(|(label, granted_by)| LabelSource { label, granted_by })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: Vec<Arc<str>>) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn groups_map_to_sorted_unique_labels_plus_defaults() {
        let m = LabelMap::parse(
            None,
            Some((
                "gl.csv".into(),
                "# comment\nanalysts, banana ,apple\n\nops,cherry,apple\n",
            )),
            &["public".into()],
        )
        .unwrap();
        assert_eq!(
            names(m.labels_for(&["analysts", "ops", "nobody"])),
            vec!["apple", "banana", "cherry", "public"]
        );
        assert_eq!(names(m.labels_for::<&str>(&[])), vec!["public"]);
    }

    #[test]
    fn errors_carry_file_and_line() {
        let err = LabelMap::parse(
            Some(("l.csv".into(), "apple\nbad label\n")),
            Some((
                "gl.csv".into(),
                "# a comment\nanalysts,apple\n\nops,pear\nlonely\n,apple\n",
            )),
            &["kiwi".into()],
        )
        .unwrap_err();
        let all = err.0.join("\n");
        assert!(all.contains("l.csv:2: label \"bad label\""), "{all}");
        assert!(
            all.contains("gl.csv:4: label \"pear\" is not defined"),
            "{all}"
        );
        assert!(all.contains("gl.csv:5: expected group,label"), "{all}");
        assert!(all.contains("gl.csv:6: \"\" is not a group name"), "{all}");
        assert!(all.contains("default_labels: label \"kiwi\""), "{all}");
    }

    #[test]
    fn group_names_may_be_quoted_csv_fields() {
        let m = LabelMap::parse(
            None,
            Some((
                "gl.csv".into(),
                "# AD groups\n\"Domain Users\",public\n\"Sales, EMEA\" , apple, banana\nDomain Admins,cherry\n",
            )),
            &[],
        )
        .unwrap();
        assert_eq!(names(m.labels_for(&["Domain Users"])), vec!["public"]);
        assert_eq!(
            names(m.labels_for(&["Sales, EMEA"])),
            vec!["apple", "banana"]
        );
        assert_eq!(names(m.labels_for(&["Domain Admins"])), vec!["cherry"]);
        let err = LabelMap::parse(
            None,
            Some(("gl.csv".into(), "ok,apple\n\"unterminated,apple\n")),
            &[],
        )
        .unwrap_err();
        assert!(err.0.join("\n").contains("gl.csv:2"), "{err}");
        let err = LabelMap::parse(
            None,
            Some(("gl.csv".into(), "ok,apple\n \"Domain Users\",apple\n")),
            &[],
        )
        .unwrap_err();
        assert!(
            err.0
                .join("\n")
                .contains("gl.csv:2: a quoted field must begin"),
            "{err}"
        );
    }

    #[test]
    fn explain_names_the_file_and_line_of_each_label() {
        let m = LabelMap::parse(
            None,
            Some((
                "gl.csv".into(),
                "# comment\nanalysts,banana,apple\n\nops,cherry,apple\nanalysts,apple\n",
            )),
            &["public".into()],
        )
        .unwrap();
        let e = m.explain(&["analysts", "ops", "nobody"]);
        let shown: Vec<(String, Vec<String>)> = e
            .iter()
            .map(|s| {
                (
                    s.label.to_string(),
                    s.granted_by
                        .iter()
                        .map(|(g, p)| format!("{g}@{p}"))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                (
                    "apple".into(),
                    vec![
                        "analysts@gl.csv:2".into(),
                        "analysts@gl.csv:5".into(),
                        "ops@gl.csv:4".into()
                    ]
                ),
                ("banana".into(), vec!["analysts@gl.csv:2".into()]),
                ("cherry".into(), vec!["ops@gl.csv:4".into()]),
                ("public".into(), vec!["@security.default_labels".into()]),
            ]
        );
        // The same labels a login gets, in the same order.
        let labels: Vec<Arc<str>> = e.into_iter().map(|s| s.label).collect();
        assert_eq!(labels, m.labels_for(&["analysts", "ops", "nobody"]));
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = LabelMap::load(None, Some(Path::new("/nonexistent/gl.csv")), &[]).unwrap_err();
        assert!(err.to_string().contains("cannot read /nonexistent/gl.csv"));
    }
}
