//! rustls server configuration: certificate chain, client verifier with CRLs,
//! protocol floor, ALPN. Rebuilt whole on SIGHUP and swapped in only when it loads,
//! so a broken new file leaves the old configuration serving.
//!
//! With `ssl.client_auth = optional` the chain of a presented certificate is not
//! checked inside the handshake (possession of the key still is). Like nginx's
//! `ssl_verify_client optional`, this lets the daemon answer a bad certificate with a
//! JSON 401 that says what is wrong (expired, revoked, unknown CA) instead of a bare
//! TLS alert that TLS 1.3 clients often only see as a reset connection. With
//! `required`, nothing unverified gets past the handshake.
//!
//! In both modes the chain is checked again at every certificate login, against the
//! setup loaded *now* ([`TlsSetup::check_chain`]): a connection kept alive across a
//! SIGHUP must not keep the verdict of the CRL it was opened under (SPEC §9).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::config::{ClientAuth, Ssl};

#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct TlsError(pub Vec<String>);

/// A loaded TLS setup: the rustls config plus the verifier every certificate login
/// runs on the presented chain.
pub struct TlsSetup {
    pub config: Arc<ServerConfig>,
    /// Chain, expiry and CRLs (with their nextUpdate unless `ssl.crl_allow_expired`);
    /// `None` without client authentication.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    crls: Vec<CrlInfo>,
    /// What `portcullis admin status` shows: the dates these files carry.
    pub dates: TlsDates,
    /// When the last "CRL expired" error was logged (Unix seconds), so a stream of
    /// refused logins logs it once a minute rather than per request.
    crl_expired_logged: AtomicU64,
}

/// Expiry dates of the loaded files (Unix seconds), for `portcullis admin status`.
#[derive(Debug, Clone, Default)]
pub struct TlsDates {
    /// notAfter of the server certificate (the leaf of `ssl.cert_file`).
    pub server_not_after: Option<u64>,
    /// Subject and notAfter of each certificate in `ssl.client_ca_file`.
    pub client_ca_not_after: Vec<(String, u64)>,
    /// File, issuer and nextUpdate of each loaded CRL.
    pub crl_next_update: Vec<(String, String, Option<u64>)>,
}

fn not_after(der: &CertificateDer<'_>) -> Option<(String, u64)> {
    X509Certificate::from_der(der).ok().map(|(_, c)| {
        (
            crate::logsafe::clean(&c.subject().to_string()),
            c.validity().not_after.timestamp().max(0) as u64,
        )
    })
}

/// A loaded CRL, kept so the log can name the one that expired.
#[derive(Debug)]
struct CrlInfo {
    path: PathBuf,
    issuer: String,
    /// nextUpdate in Unix seconds; `None` when the CRL has none.
    next_update: Option<u64>,
}

/// How often the "CRL expired" error may be logged.
const CRL_EXPIRED_LOG_INTERVAL: u64 = 60;

/// Why a presented client certificate was not accepted; `reason` is the audit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRejection {
    pub reason: &'static str,
    pub message: String,
}

impl TlsSetup {
    /// Verify the chain a client presented (leaf first) against the CA file and CRLs
    /// of this setup. Cheap enough per login: the files were parsed at load time.
    pub fn check_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), CertRejection> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(CertRejection {
                reason: "no_credentials",
                message: "no client certificate was presented".into(),
            });
        };
        let Some(v) = &self.client_verifier else {
            return Err(CertRejection {
                reason: "certificate_untrusted",
                message:
                    "the client certificate cannot be checked: this server trusts no client CA"
                        .into(),
            });
        };
        v.verify_client_cert(leaf, rest, UnixTime::now())
            .map(|_| ())
            .map_err(|e| self.refusal(&e))
    }

    /// The rejection for a verifier error; an expired CRL is also an operator problem,
    /// so it is logged as an error naming the CRL (at most once a minute).
    pub fn refusal(&self, e: &rustls::Error) -> CertRejection {
        let r = rejection(e);
        if r.reason == "crl_expired" {
            self.log_crl_expired(e);
        }
        r
    }

    fn log_crl_expired(&self, e: &rustls::Error) {
        let now = unix_now();
        let last = self.crl_expired_logged.load(Ordering::Relaxed);
        if last != 0 && now < last + CRL_EXPIRED_LOG_INTERVAL {
            return;
        }
        if self
            .crl_expired_logged
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let wanted = match e {
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ExpiredRevocationListContext { next_update, .. },
            ) => Some(next_update.as_secs()),
            _ => None,
        };
        let expired = |c: &&CrlInfo| match wanted {
            Some(n) => c.next_update == Some(n),
            None => c.next_update.is_some_and(|n| n <= now),
        };
        let named: Vec<String> = self
            .crls
            .iter()
            .filter(expired)
            .map(CrlInfo::describe)
            .collect();
        tracing::error!(
            crl = %named.join("; "),
            "a CRL is past its nextUpdate: certificate logins from its CA are refused \
             (crl_expired) until a fresh CRL is installed and portcullis reloaded (SIGHUP); \
             ssl.crl_allow_expired = true accepts the stale CRL meanwhile"
        );
    }
}

impl CrlInfo {
    fn describe(&self) -> String {
        let when = self.next_update.map_or_else(
            || "none".to_string(),
            |n| super::routes::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(n)),
        );
        format!(
            "{} (issuer {}, nextUpdate {when})",
            self.path.display(),
            self.issuer
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn rejection(e: &rustls::Error) -> CertRejection {
    use rustls::CertificateError as C;
    let (reason, what) = match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            ("certificate_expired", "has expired")
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            ("certificate_not_yet_valid", "is not valid yet")
        }
        rustls::Error::InvalidCertificate(C::Revoked) => {
            ("certificate_revoked", "has been revoked")
        }
        // BadSignature: an issuer with a trusted CA's name but another key.
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => (
            "certificate_untrusted",
            "was not issued by a CA this server trusts",
        ),
        rustls::Error::InvalidCertificate(
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. },
        ) => (
            "crl_expired",
            "cannot be checked for revocation: the server's CRL for its CA has expired",
        ),
        rustls::Error::InvalidCertificate(C::UnknownRevocationStatus) => (
            "certificate_revocation_unknown",
            "has no revocation status in the configured CRLs",
        ),
        _ => (
            "certificate_invalid",
            "is not valid for client authentication",
        ),
    };
    CertRejection {
        reason,
        message: format!("the client certificate {what}"),
    }
}

/// Proves key possession in the handshake; leaves the chain to [`TlsSetup::check_chain`]
/// at login.
#[derive(Debug)]
struct DeferredChain(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for DeferredChain {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    // AES-128-GCM first (the server's choice, see `ignore_client_order`): its SHA-256
    // key schedule runs on the CPU's SHA extensions, while aws-lc's SHA-384 (for
    // AES-256-GCM) does not — 9 % of a certificate login's CPU in a profile. Every
    // TLS 1.3 suite is strong; the order only decides which one both sides offer.
    p.cipher_suites
        .sort_by_key(|s| !format!("{:?}", s.suite()).contains("AES_128_GCM"));
    Arc::new(p)
}

fn read_certs(path: &Path, what: &str, errors: &mut Vec<String>) -> Vec<CertificateDer<'static>> {
    match CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<Vec<_>, _>>()) {
        Ok(certs) if certs.is_empty() => {
            errors.push(format!(
                "{what} {}: no PEM certificate found",
                path.display()
            ));
            vec![]
        }
        Ok(certs) => certs,
        Err(e) => {
            errors.push(format!("{what} {}: {e}", path.display()));
            vec![]
        }
    }
}

fn read_crl(path: &Path, errors: &mut Vec<String>) -> Vec<CertificateRevocationListDer<'static>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            errors.push(format!("CRL file {}: {e}", path.display()));
            return vec![];
        }
    };
    if bytes.starts_with(b"-----") {
        match CertificateRevocationListDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(crls) if !crls.is_empty() => crls,
            Ok(_) => {
                errors.push(format!(
                    "CRL file {}: no X509 CRL block found",
                    path.display()
                ));
                vec![]
            }
            Err(e) => {
                errors.push(format!("CRL file {}: {e}", path.display()));
                vec![]
            }
        }
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    }
}

/// Issuer and nextUpdate of a CRL, for the log; an unparsable CRL is reported by
/// the verifier builder, so it is only described vaguely here.
fn crl_info(path: &Path, crl: &CertificateRevocationListDer<'_>) -> CrlInfo {
    let parsed = CertificateRevocationList::from_der(crl).ok();
    CrlInfo {
        path: path.to_path_buf(),
        issuer: parsed.as_ref().map_or_else(
            || "?".into(),
            |(_, c)| crate::logsafe::clean(&c.issuer().to_string()),
        ),
        next_update: parsed
            .and_then(|(_, c)| c.next_update())
            .map(|t| t.timestamp().max(0) as u64),
    }
}

/// Every certificate of the client CA file must be a CA. A leaf listed there becomes
/// a trust anchor, and whoever holds its key could issue certificates naming any user
/// (the Vault CVE-2024-2048 pattern).
fn check_is_ca(path: &Path, der: &CertificateDer<'_>, errors: &mut Vec<String>) {
    let problem = match X509Certificate::from_der(der) {
        Err(e) => format!("a certificate cannot be parsed: {e}"),
        Ok((_, cert)) => match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => return,
            _ => format!(
                "certificate \"{}\" is not a CA (no basicConstraints CA:TRUE); list only CA \
                 certificates here: whoever holds the key of a listed leaf could issue client \
                 certificates for any user",
                crate::logsafe::clean(&cert.subject().to_string())
            ),
        },
    };
    errors.push(format!("client CA file {}: {problem}", path.display()));
}

/// Warn at load time about a CRL already past its nextUpdate, so a reload says so
/// before the first refused login does.
fn warn_expired(crls: &[CrlInfo], allow_expired: bool) {
    let now = unix_now();
    for c in crls
        .iter()
        .filter(|c| c.next_update.is_some_and(|n| n <= now))
    {
        if allow_expired {
            tracing::warn!(crl = %c.describe(), "CRL is past its nextUpdate; accepted because ssl.crl_allow_expired is true");
        } else {
            tracing::error!(crl = %c.describe(), "CRL is past its nextUpdate; certificate logins from its CA will be refused (crl_expired)");
        }
    }
}

pub fn load(ssl: &Ssl) -> Result<TlsSetup, TlsError> {
    let mut errors = Vec::new();
    let (Some(cert_file), Some(key_file)) = (&ssl.cert_file, &ssl.key_file) else {
        return Err(TlsError(vec![
            "ssl.cert_file and ssl.key_file are required".into(),
        ]));
    };
    let chain = read_certs(cert_file, "certificate file", &mut errors);
    let mut dates = TlsDates {
        server_not_after: chain.first().and_then(not_after).map(|(_, t)| t),
        ..TlsDates::default()
    };
    let key = match PrivateKeyDer::from_pem_file(key_file) {
        Ok(k) => Some(k),
        Err(e) => {
            errors.push(format!("key file {}: {e}", key_file.display()));
            None
        }
    };
    let provider = provider();
    let mut crl_infos = Vec::new();
    let verifier = match (&ssl.client_ca_file, ssl.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "client CA file", &mut errors) {
                check_is_ca(ca, &c, &mut errors);
                dates.client_ca_not_after.extend(not_after(&c));
                if let Err(e) = roots.add(c) {
                    errors.push(format!("client CA file {}: {e}", ca.display()));
                }
            }
            let mut crls = Vec::new();
            for p in &ssl.crl_files {
                for crl in read_crl(p, &mut errors) {
                    crl_infos.push(crl_info(p, &crl));
                    crls.push(crl);
                }
            }
            if !errors.is_empty() {
                return Err(TlsError(errors));
            }
            warn_expired(&crl_infos, ssl.crl_allow_expired);
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if !crls.is_empty() {
                // Revocation is checked for the client's own certificate against the CRLs
                // the administrator supplied; intermediates without a CRL are not refused.
                builder = builder.with_crls(crls).only_check_end_entity_revocation();
                if !ssl.crl_allow_expired {
                    // A CRL past its nextUpdate no longer says what is revoked (SPEC §9).
                    builder = builder.enforce_revocation_expiration();
                }
            }
            match builder.build() {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(format!("client CA file {}: {e}", ca.display()));
                    None
                }
            }
        }
        _ => None,
    };
    if !errors.is_empty() {
        return Err(TlsError(errors));
    }
    let versions: &[&rustls::SupportedProtocolVersion] =
        if ssl.min_version == crate::config::TlsVersion::Tls13 {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError(vec![e.to_string()]))?;
    let builder = match (&verifier, ssl.client_auth) {
        (Some(v), ClientAuth::Optional) => {
            builder.with_client_cert_verifier(Arc::new(DeferredChain(v.clone())))
        }
        (Some(v), _) => builder.with_client_cert_verifier(v.clone()),
        (None, _) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key.expect("checked above"))
        .map_err(|e| {
            TlsError(vec![format!(
                "{} / {}: {e}",
                cert_file.display(),
                key_file.display()
            )])
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    dates.crl_next_update = crl_infos
        .iter()
        .map(|c| {
            (
                c.path.display().to_string(),
                c.issuer.clone(),
                c.next_update,
            )
        })
        .collect();
    Ok(TlsSetup {
        config: Arc::new(config),
        client_verifier: verifier,
        dates,
        crls: crl_infos,
        crl_expired_logged: AtomicU64::new(0),
    })
}
