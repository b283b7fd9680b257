//! rustls server configuration: certificate chain, client verifier with CRLs,
//! protocol floor, ALPN. Rebuilt whole on SIGHUP and swapped in only when it loads,
//! so a broken new file leaves the old configuration serving.
//!
//! With `ssl.client_auth = optional` the chain of a presented certificate is checked
//! right after the handshake instead of inside it (possession of the key is still
//! proven in the handshake). Like nginx's `ssl_verify_client optional`, this lets
//! the daemon answer a bad certificate with a JSON 401 that says what is wrong
//! (expired, revoked, unknown CA) instead of a bare TLS alert that TLS 1.3 clients
//! often only see as a reset connection. With `required`, nothing unverified gets
//! past the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use crate::config::{ClientAuth, Ssl};

#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct TlsError(pub Vec<String>);

/// A loaded TLS setup: the rustls config plus, in `optional` mode, the verifier the
/// connection runs on the presented chain after the handshake.
pub struct TlsSetup {
    pub config: Arc<ServerConfig>,
    pub deferred: Option<Arc<dyn ClientCertVerifier>>,
}

/// Why a presented client certificate was not accepted; `reason` is the audit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRejection {
    pub reason: &'static str,
    pub message: String,
}

impl TlsSetup {
    /// Verify the chain a client presented (deferred mode); `Ok` when no check is due.
    pub fn check_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), CertRejection> {
        let (Some(v), Some((leaf, rest))) = (&self.deferred, chain.split_first()) else {
            return Ok(());
        };
        v.verify_client_cert(leaf, rest, UnixTime::now())
            .map(|_| ())
            .map_err(|e| rejection(&e))
    }
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

/// Proves key possession in the handshake; leaves the chain to [`TlsSetup::check_chain`].
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
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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

pub fn load(ssl: &Ssl) -> Result<TlsSetup, TlsError> {
    let mut errors = Vec::new();
    let (Some(cert_file), Some(key_file)) = (&ssl.cert_file, &ssl.key_file) else {
        return Err(TlsError(vec![
            "ssl.cert_file and ssl.key_file are required".into(),
        ]));
    };
    let chain = read_certs(cert_file, "certificate file", &mut errors);
    let key = match PrivateKeyDer::from_pem_file(key_file) {
        Ok(k) => Some(k),
        Err(e) => {
            errors.push(format!("key file {}: {e}", key_file.display()));
            None
        }
    };
    let provider = provider();
    let verifier = match (&ssl.client_ca_file, ssl.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "client CA file", &mut errors) {
                if let Err(e) = roots.add(c) {
                    errors.push(format!("client CA file {}: {e}", ca.display()));
                }
            }
            let crls: Vec<_> = ssl
                .crl_files
                .iter()
                .flat_map(|p| read_crl(p, &mut errors))
                .collect();
            if !errors.is_empty() {
                return Err(TlsError(errors));
            }
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if !crls.is_empty() {
                // Revocation is checked for the client's own certificate against the CRLs
                // the administrator supplied; intermediates without a CRL are not refused.
                builder = builder.with_crls(crls).only_check_end_entity_revocation();
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
    let versions: &[&rustls::SupportedProtocolVersion] = if ssl.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError(vec![e.to_string()]))?;
    let deferred = verifier
        .clone()
        .filter(|_| ssl.client_auth == ClientAuth::Optional);
    let builder = match (verifier, &deferred) {
        (Some(_), Some(d)) => builder.with_client_cert_verifier(Arc::new(DeferredChain(d.clone()))),
        (Some(v), None) => builder.with_client_cert_verifier(v),
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
    Ok(TlsSetup {
        config: Arc::new(config),
        deferred,
    })
}
