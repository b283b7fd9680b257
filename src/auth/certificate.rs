//! The certificate mechanism: the chain, expiry and CRLs were checked at this login
//! (`server::tls::TlsSetup::check_chain`); what is left is reading the user from the
//! subject.
//!
//! Exactly one value is required. Two `UID` attributes would let whoever wrote the
//! certificate request choose which one a sloppy reader picks. With
//! `pki_user_field = email` the address's domain must be one of
//! `security.pki_email_domains`: a CA that also certifies addresses of other domains
//! must not make `alice@elsewhere.org` the local `alice`.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{
    AuthError, Authenticator, BoxFuture, Credentials, Identity, LoginContext, Mechanism, Outcome,
    valid_username,
};

const OID_UID: &str = "0.9.2342.19200300.100.1.1";
const OID_CN: &str = "2.5.4.3";

/// Where the user name is read from (`security.pki_user_field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PkiUserField {
    /// OID 0.9.2342.19200300.100.1.1 in the subject.
    Uid,
    Cn,
    /// The rfc822Name subject alternative name.
    Email,
}

pub struct CertificateAuthenticator {
    field: PkiUserField,
    /// Lower-case domains whose addresses name local users (`email` field only).
    email_domains: Vec<String>,
}

impl CertificateAuthenticator {
    /// `email_domains` as configured: `@example.com` and `Example.COM` mean `example.com`.
    pub fn new(field: PkiUserField, email_domains: Vec<String>) -> Self {
        CertificateAuthenticator {
            field,
            email_domains: email_domains
                .into_iter()
                .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
                .collect(),
        }
    }

    /// The user named by a DER certificate, per `security.pki_user_field`.
    pub fn user_of(&self, der: &[u8]) -> Result<String, AuthError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| {
            AuthError::rejected(
                "certificate_unparsable",
                "the client certificate could not be parsed",
            )
        })?;
        let (what, values) = match self.field {
            PkiUserField::Uid => (
                "UID attribute in its subject",
                subject_values(&cert, OID_UID),
            ),
            PkiUserField::Cn => ("CN attribute in its subject", subject_values(&cert, OID_CN)),
            PkiUserField::Email => ("rfc822Name (email) subject alternative name", emails(&cert)),
        };
        let value = match values.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(AuthError::rejected(
                    "certificate_no_user",
                    format!("the client certificate has no {what}; exactly one is required"),
                ));
            }
            many => {
                return Err(AuthError::rejected(
                    "certificate_ambiguous_user",
                    format!(
                        "the client certificate has {} values for the {what}; exactly one is required",
                        many.len()
                    ),
                ));
            }
        };
        let user = match self.field {
            PkiUserField::Email => self.email_user(&value)?,
            _ => value,
        };
        if !valid_username(&user) {
            return Err(AuthError::rejected(
                "certificate_bad_user",
                "the user named by the client certificate is not a valid user name",
            ));
        }
        Ok(user)
    }
}

impl CertificateAuthenticator {
    /// The local part of an address in an allowed domain (compared case-insensitively).
    ///
    /// A foreign domain is `403 account_unavailable`, as a foreign Kerberos realm is
    /// (SPEC §4): the certificate is genuine, but its holder is not one of our users.
    fn email_user(&self, address: &str) -> Result<String, AuthError> {
        let Some((local, domain)) = address
            .split_once('@')
            .filter(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        else {
            return Err(AuthError::rejected(
                "certificate_bad_user",
                "the client certificate's email address is not of the form user@domain",
            ));
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if !self.email_domains.contains(&domain) {
            return Err(AuthError::AccountUnavailable {
                reason: "email_domain_not_allowed",
                message: format!(
                    "addresses of the domain {} may not log in here (security.pki_email_domains)",
                    crate::logsafe::clean(&domain)
                ),
            });
        }
        Ok(local.to_string())
    }
}

fn subject_values(cert: &X509Certificate<'_>, oid: &str) -> Vec<String> {
    cert.subject()
        .iter_attributes()
        .filter(|a| a.attr_type().to_id_string() == oid)
        .map(|a| a.as_str().map(str::to_string).unwrap_or_default())
        .collect()
}

fn emails(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::RFC822Name(e) => Some(e.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl Authenticator for CertificateAuthenticator {
    fn mechanism(&self) -> Mechanism {
        Mechanism::Certificate
    }

    fn authenticate<'a>(
        &'a self,
        credentials: Credentials,
        _ctx: &'a LoginContext,
    ) -> BoxFuture<'a, Result<Outcome, AuthError>> {
        Box::pin(async move {
            let leaf = match &credentials {
                Credentials::Certificate(chain) => chain.first(),
                _ => None,
            };
            let Some(leaf) = leaf else {
                return Err(AuthError::rejected(
                    "wrong_mechanism",
                    "no client certificate",
                ));
            };
            let user = self.user_of(leaf)?;
            Ok(Outcome::Authenticated(Identity {
                user,
                mechanism: Mechanism::Certificate,
                groups: None,
                response_token: None,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(uids: &[&str], cn: Option<&str>, email: Option<&str>) -> Vec<u8> {
        let mut p = CertificateParams::default();
        for u in uids {
            p.distinguished_name.push(
                DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 1]),
                *u,
            );
        }
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        if let Some(e) = email {
            p.subject_alt_names
                .push(SanType::Rfc822Name(e.try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    /// rcgen keeps one value per attribute type, so repeated UIDs come from openssl.
    fn openssl_cert(subject: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("c.der");
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args([
                "-keyout",
                "/dev/null",
                "-subj",
                subject,
                "-outform",
                "DER",
                "-out",
            ])
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed (scripts/test installs it)");
        assert!(status.success());
        std::fs::read(out).unwrap()
    }

    #[test]
    fn the_single_uid_names_the_user() {
        let a = CertificateAuthenticator::new(PkiUserField::Uid, vec![]);
        assert_eq!(
            a.user_of(&cert(&["alice"], Some("Alice A"), None)).unwrap(),
            "alice"
        );
    }

    #[test]
    fn missing_or_repeated_uid_is_refused() {
        let a = CertificateAuthenticator::new(PkiUserField::Uid, vec![]);
        let e = a.user_of(&cert(&[], Some("alice"), None)).unwrap_err();
        assert_eq!(e.reason(), "certificate_no_user");
        let e = a
            .user_of(&openssl_cert("/UID=alice/UID=bob/CN=x"))
            .unwrap_err();
        assert_eq!(e.reason(), "certificate_ambiguous_user");
        assert!(e.to_string().contains("2 values"));
    }

    #[test]
    fn cn_and_email_fields() {
        let c = cert(&[], Some("carol"), Some("carol@example.com"));
        assert_eq!(
            CertificateAuthenticator::new(PkiUserField::Cn, vec![])
                .user_of(&c)
                .unwrap(),
            "carol"
        );
        assert_eq!(
            CertificateAuthenticator::new(PkiUserField::Email, vec!["example.com".into()])
                .user_of(&c)
                .unwrap(),
            "carol"
        );
    }

    #[test]
    fn email_domains_must_be_listed() {
        let a = CertificateAuthenticator::new(PkiUserField::Email, vec!["example.com".into()]);
        let user = |e: &str| a.user_of(&cert(&[], None, Some(e)));
        assert_eq!(user("carol@Example.COM").unwrap(), "carol");
        let e = user("carol@example.org").unwrap_err();
        assert_eq!(e.reason(), "email_domain_not_allowed");
        assert!(matches!(e, AuthError::AccountUnavailable { .. }));
        assert_eq!(
            user("carol@evil.org@example.com").unwrap_err().reason(),
            "certificate_bad_user"
        );
        assert_eq!(user("carol").unwrap_err().reason(), "certificate_bad_user");
    }

    #[test]
    fn hostile_names_are_refused() {
        let a = CertificateAuthenticator::new(PkiUserField::Uid, vec![]);
        let e = a.user_of(&cert(&["../root"], None, None)).unwrap_err();
        assert_eq!(e.reason(), "certificate_bad_user");
        assert!(a.user_of(b"not a certificate").is_err());
    }
}
