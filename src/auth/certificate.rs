//! The certificate mechanism: the chain, expiry and CRLs were checked at this login
//! (`server::tls::TlsSetup::check_chain`); what is left is reading the user from the
//! subject.
//!
//! Exactly one value is required. Two `UID` attributes would let whoever wrote the
//! certificate request choose which one a sloppy reader picks.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{
    AuthError, Authenticator, BoxFuture, Credentials, Identity, LoginContext, Outcome,
    valid_username,
};
use crate::config::{Mechanism, PkiUserField};

const OID_UID: &str = "0.9.2342.19200300.100.1.1";
const OID_CN: &str = "2.5.4.3";

pub struct CertificateAuthenticator {
    field: PkiUserField,
}

impl CertificateAuthenticator {
    pub fn new(field: PkiUserField) -> Self {
        CertificateAuthenticator { field }
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
            // The local part names the account; the domain is the CA's business.
            PkiUserField::Email => value.split('@').next().unwrap_or_default().to_string(),
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
        let a = CertificateAuthenticator::new(PkiUserField::Uid);
        assert_eq!(
            a.user_of(&cert(&["alice"], Some("Alice A"), None)).unwrap(),
            "alice"
        );
    }

    #[test]
    fn missing_or_repeated_uid_is_refused() {
        let a = CertificateAuthenticator::new(PkiUserField::Uid);
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
            CertificateAuthenticator::new(PkiUserField::Cn)
                .user_of(&c)
                .unwrap(),
            "carol"
        );
        assert_eq!(
            CertificateAuthenticator::new(PkiUserField::Email)
                .user_of(&c)
                .unwrap(),
            "carol"
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        let a = CertificateAuthenticator::new(PkiUserField::Uid);
        let e = a.user_of(&cert(&["../root"], None, None)).unwrap_err();
        assert_eq!(e.reason(), "certificate_bad_user");
        assert!(a.user_of(b"not a certificate").is_err());
    }
}
