//! Where a browser may be sent after a login (`rd`, SPEC §12): a path on this
//! daemon, or an `https://` URL whose host is listed in
//! `forward.allowed_redirect_hosts`. Everything else goes to `/`.
//!
//! The check is on the text as the browser will read it from `Location`, and it is
//! strict rather than clever: no parsing library decides what a host is, because
//! browsers repair `https:\\evil`, `/\evil` or `https:evil` into other hosts.

/// The target of `rd` (already percent-decoded once, as a query or form value), or
/// `/` when it is not one we may send a browser to.
pub fn safe_redirect(rd: Option<&str>, allowed_hosts: &[String]) -> String {
    match rd {
        Some(rd) if is_safe(rd, allowed_hosts) => rd.to_string(),
        _ => "/".to_string(),
    }
}

fn is_safe(rd: &str, allowed_hosts: &[String]) -> bool {
    if rd.is_empty()
        || rd.len() > 2048
        // Controls (browsers strip tabs and newlines out of URLs), spaces, non-ASCII
        // and backslashes (read as `/` by browsers) are never needed in a target.
        || !rd.bytes().all(|b| b.is_ascii_graphic())
        || rd.contains('\\')
    {
        return false;
    }
    if let Some(path) = rd.strip_prefix('/') {
        // `//host` and `/\host` are network paths; their encoded forms are refused
        // too, in case something on the way decodes once more.
        let lower = path.to_ascii_lowercase();
        return !path.starts_with('/') && !lower.starts_with("%2f") && !lower.starts_with("%5c");
    }
    // Exactly `https://`, lower- or upper-case: not `https:evil`, `https:/evil`, `http://`.
    if rd.len() < 8 || !rd[..8].eq_ignore_ascii_case("https://") {
        return false;
    }
    let rest = &rd[8..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // No userinfo (`allowed@evil`), no encoded characters in the host.
    if authority.is_empty() || authority.contains(['@', '%']) {
        return false;
    }
    // The whole authority must be a listed host; `host:port` only when listed so.
    allowed_hosts
        .iter()
        .any(|h| !h.is_empty() && h.trim_end_matches('.').eq_ignore_ascii_case(authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["app.example.com".into(), "grafana.example.com:8443".into()]
    }

    fn rd(s: &str) -> String {
        safe_redirect(Some(s), &allowed())
    }

    #[test]
    fn local_paths_are_kept() {
        for ok in ["/", "/app", "/app/x?y=1&z=%2F#frag", "/a//b", "/%41"] {
            assert_eq!(rd(ok), ok, "{ok}");
        }
        assert_eq!(safe_redirect(None, &allowed()), "/");
    }

    #[test]
    fn listed_https_hosts_are_kept() {
        for ok in [
            "https://app.example.com",
            "https://app.example.com/",
            "https://APP.example.com/x?rd=https://evil.com",
            "https://app.example.com?x",
            "https://app.example.com#x",
            "HTTPS://app.example.com/x",
            "https://grafana.example.com:8443/d/1",
        ] {
            assert_eq!(rd(ok), ok, "{ok}");
        }
    }

    #[test]
    fn everything_else_goes_home() {
        for bad in [
            "",
            "//evil.com",
            "//evil.com/x",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "\\/evil.com",
            "/%2F%2Fevil.com",
            "/%2fevil.com",
            "/%5Cevil.com",
            "/%5cevil.com",
            "https:evil.com",
            "https:/evil.com",
            "https:\\\\evil.com",
            "https:/\\evil.com",
            "https://evil.com",
            "https://evil.com/https://app.example.com",
            "http://app.example.com/",
            "ftp://app.example.com/",
            "javascript:alert(1)",
            "JavaScript://app.example.com/%0aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "https://app.example.com@evil.com/",
            "https://user:pw@app.example.com/",
            "https://app.example.com:pw@evil.com/",
            "https://evil.com\\@app.example.com/",
            "https://evil.com#@app.example.com",
            "https://app.example.com.evil.com/",
            "https://evil.com?.app.example.com",
            "https://app.example.com:443/",
            "https://app.example.com:8443/",
            "https://grafana.example.com/",
            "https://grafana.example.com:84431/",
            "https://app%2eexample.com/",
            "https://app.example.com%2f@evil.com/",
            "https://%61pp.example.com/",
            "https://",
            "https:///app.example.com",
            "/app\nLocation: https://evil.com",
            "/app\r\nSet-Cookie: x=y",
            "/\t/evil.com",
            "\t//evil.com",
            " //evil.com",
            "/ /evil.com",
            "/\u{0}",
            "https://app.example.com/\u{7f}",
            "https://аpp.example.com/",
            "/ünïcode",
            "evil.com",
            "app.example.com",
            ".",
            "?x=1",
            "#x",
        ] {
            assert_eq!(rd(bad), "/", "{bad:?}");
        }
        assert_eq!(
            safe_redirect(Some(&format!("/{}", "a".repeat(3000))), &[]),
            "/"
        );
    }

    #[test]
    fn no_allowed_hosts_means_paths_only() {
        assert_eq!(safe_redirect(Some("https://app.example.com/"), &[]), "/");
        assert_eq!(safe_redirect(Some("https://x/"), &["".to_string()]), "/");
        assert_eq!(safe_redirect(Some("/ok"), &[]), "/ok");
    }
}
