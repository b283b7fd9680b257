//! rustls server configuration: certificate chain, client verifier with CRLs,
//! protocol floor, ALPN. Rebuilt whole on SIGHUP and swapped in only when it loads,
//! so a broken new file leaves the old configuration serving.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{ClientAuth, Ssl};

#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct TlsError(pub Vec<String>);

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

pub fn load(ssl: &Ssl) -> Result<Arc<ServerConfig>, TlsError> {
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
            if auth == ClientAuth::Optional {
                builder = builder.allow_unauthenticated();
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
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
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
    Ok(Arc::new(config))
}
