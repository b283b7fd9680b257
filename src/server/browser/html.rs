//! The pages: small, server-rendered, no script. Everything that did not come from
//! this file is escaped with [`esc`].

use crate::auth::{Prompt, PromptStyle};

/// HTML-escape text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}\
main{max-width:24rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002}\
h1{font-size:1.4rem;margin:0 0 1rem}label{display:block;margin:.8rem 0 .3rem;font-weight:600}\
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem;border:1px solid #8a93a6;border-radius:4px}\
button,.button{display:inline-block;margin-top:1rem;padding:.55rem 1.1rem;font-size:1rem;border:0;border-radius:4px;background:#1f5fbf;color:#fff;text-decoration:none;cursor:pointer}\
.secondary{background:#e3e7ee;color:#1d2330}.error{background:#fde8e8;color:#8a1c1c;padding:.6rem;border-radius:4px}\
.info{background:#e8f0fd;padding:.6rem;border-radius:4px}hr{border:0;border-top:1px solid #dde;margin:1.5rem 0}";

/// A whole page around `body` (already HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"same-origin\">\
<title>{t} · portcullis</title><style>{STYLE}</style></head>\
<body><main>\n<h1>{t}</h1>\n{body}\n</main></body></html>\n",
        t = esc(title)
    )
}

/// A message box: `error` (role=alert) or `info`.
pub fn notice(class: &str, text: &str) -> String {
    let role = if class == "error" {
        " role=\"alert\""
    } else {
        ""
    };
    format!("<p class=\"{class}\"{role}>{}</p>\n", esc(text))
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
        esc(value)
    )
}

/// What the login page offers.
pub struct LoginPage<'a> {
    pub csrf: &'a str,
    pub rd: &'a str,
    pub error: Option<&'a str>,
    pub username: &'a str,
    pub password: bool,
    /// ("Sign in with <name>", the link) when the IdP sign-in is configured.
    pub idp: Option<(&'a str, &'a str)>,
    pub kerberos: bool,
}

pub fn login(p: &LoginPage) -> String {
    let mut b = String::new();
    if let Some(e) = p.error {
        b.push_str(&notice("error", e));
    }
    if p.password {
        b.push_str(&format!(
            "<form method=\"post\" action=\"/login\">{}{}\
<label for=\"username\">User name</label>\
<input type=\"text\" id=\"username\" name=\"username\" value=\"{}\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required autofocus>\
<label for=\"password\">Password</label>\
<input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\" id=\"sign-in\">Sign in</button></form>\n",
            hidden("csrf", p.csrf),
            hidden("rd", p.rd),
            esc(p.username),
        ));
    }
    if let Some((name, href)) = p.idp {
        if p.password {
            b.push_str("<hr>");
        }
        b.push_str(&format!(
            "<p><a class=\"button secondary\" id=\"sign-in-idp\" href=\"{}\">Sign in with {}</a></p>\n",
            esc(href),
            esc(name)
        ));
    }
    if p.kerberos {
        b.push_str(
            "<p class=\"info\">A browser set up for Kerberos (SPNEGO) signs in without this form.</p>\n",
        );
    }
    if !p.password && p.idp.is_none() && !p.kerberos {
        b.push_str(&notice(
            "error",
            "No browser sign-in method is enabled on this server.",
        ));
    }
    page("Sign in", &b)
}

/// The next step of a PAM conversation: every prompt in order, an input for each
/// one that wants an answer (echo_off → a password field).
pub fn prompts(csrf: &str, rd: &str, conversation: &str, prompts: &[Prompt]) -> String {
    let mut b = format!(
        "<form method=\"post\" action=\"/login\">{}{}{}",
        hidden("csrf", csrf),
        hidden("rd", rd),
        hidden("conversation", conversation)
    );
    let mut n = 0;
    for p in prompts {
        match p.style {
            PromptStyle::Info => b.push_str(&notice("info", &p.text)),
            PromptStyle::Error => b.push_str(&notice("error", &p.text)),
            PromptStyle::EchoOn | PromptStyle::EchoOff => {
                let (kind, complete) = if p.style == PromptStyle::EchoOff {
                    ("password", "one-time-code")
                } else {
                    ("text", "off")
                };
                b.push_str(&format!(
                    "<label for=\"answer{n}\">{}</label>\
<input type=\"{kind}\" id=\"answer{n}\" name=\"answer\" autocomplete=\"{complete}\"{}>",
                    esc(p.text.trim()),
                    if n == 0 { " autofocus" } else { "" }
                ));
                n += 1;
            }
        }
    }
    b.push_str("<button type=\"submit\" id=\"continue\">Continue</button></form>\n");
    b.push_str("<p><a href=\"/login\">Start again</a></p>\n");
    page("Sign in", &b)
}

pub fn logout_confirm(csrf: &str, signed_in_as: Option<&str>) -> String {
    let who = match signed_in_as {
        Some(u) => format!("<p>Signed in as <strong>{}</strong>.</p>", esc(u)),
        None => String::new(),
    };
    page(
        "Sign out",
        &format!(
            "{who}<form method=\"post\" action=\"/logout\">{}\
<button type=\"submit\" id=\"sign-out\">Sign out</button></form>\n",
            hidden("csrf", csrf)
        ),
    )
}

pub fn signed_out() -> String {
    page(
        "Signed out",
        "<p class=\"info\" id=\"signed-out\">You are signed out.</p>\n<p><a href=\"/login\">Sign in again</a></p>\n",
    )
}

/// An error a person can read, with a way back.
pub fn error(title: &str, message: &str) -> String {
    page(
        title,
        &format!(
            "{}<p><a href=\"/login\">Back to sign in</a></p>\n",
            notice("error", message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_user_supplied_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&</a>\n"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&lt;/a&gt; "
        );
        let p = login(&LoginPage {
            csrf: "c\"><script>",
            rd: "/x\"onmouseover=\"alert(1)",
            error: Some("<img src=x>"),
            username: "\"><script>alert(1)</script>",
            password: true,
            idp: Some(("<b>idp</b>", "/login/oidc?rd=%2F&x=\"")),
            kerberos: false,
        });
        assert!(!p.contains("<script>"), "{p}");
        assert!(!p.contains("<img"), "{p}");
        assert!(!p.contains("<b>idp"), "{p}");
        assert!(!p.contains("\"onmouseover"), "{p}");
        let q = prompts(
            "c",
            "/",
            "id\"x",
            &[
                Prompt {
                    style: PromptStyle::Info,
                    text: "<i>".into(),
                },
                Prompt {
                    style: PromptStyle::EchoOff,
                    text: "Code <b>".into(),
                },
            ],
        );
        assert!(!q.contains("<i>") && !q.contains("<b>") && !q.contains("id\"x"));
        assert!(q.contains("type=\"password\""));
    }
}
