//! Development certificates: a CA, a localhost server certificate and client
//! certificates carrying `UID=<name>`.
//!
//! The CA in a directory is reused, never replaced, so `portcullis dev-certs --dir
//! var/portcullis` issues certificates the `--dev` daemon already trusts.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub const UID_OID: &[u64] = &[0, 9, 2342, 19200300, 100, 1, 1];

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevCertError + '_ {
    move |source| DevCertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write a file atomically with the given mode (0600 for keys).
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), DevCertError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

pub fn ensure_dir(dir: &Path) -> Result<(), DevCertError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(io(dir))
}

/// Load `ca.pem`/`ca.key` from `dir`, or create them.
pub fn load_or_create_ca(dir: &Path, hostname: &str) -> Result<(Ca, bool), DevCertError> {
    ensure_dir(dir)?;
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if cert_path.exists() && key_path.exists() {
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| DevCertError::Bad {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| DevCertError::Bad {
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
        return Ok((Ca { issuer, cert_path }, false));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("portcullis dev CA ({hostname})"),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "portcullis development");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    Ok((
        Ca {
            issuer: Issuer::new(params, key),
            cert_path,
        },
        true,
    ))
}

impl Ca {
    /// Sign a leaf certificate and write `<stem>.pem` and `<stem>.key` in `dir`.
    pub fn issue(
        &self,
        dir: &Path,
        stem: &str,
        params: CertificateParams,
    ) -> Result<(PathBuf, PathBuf), DevCertError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        write_file(&key_path, &key.serialize_pem(), 0o600)?;
        write_file(&cert_path, &cert.pem(), 0o644)?;
        Ok((cert_path, key_path))
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

fn leaf_params(days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p
}

/// Server certificate for localhost, the loopback addresses and `hostname`.
pub fn server_params(hostname: &str) -> CertificateParams {
    let mut p = leaf_params(825);
    p.distinguished_name.push(DnType::CommonName, hostname);
    let mut names = vec![
        SanType::DnsName("localhost".try_into().expect("valid")),
        SanType::IpAddress("127.0.0.1".parse().expect("valid")),
        SanType::IpAddress("::1".parse().expect("valid")),
    ];
    if hostname != "localhost"
        && let Ok(n) = hostname.to_string().try_into()
    {
        names.push(SanType::DnsName(n));
    }
    p.subject_alt_names = names;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p
}

/// Client certificate whose subject is `UID=<user>, CN=<user>`.
pub fn client_params(user: &str) -> CertificateParams {
    let mut p = leaf_params(365);
    p.distinguished_name
        .push(DnType::CustomDnType(UID_OID.to_vec()), user);
    p.distinguished_name.push(DnType::CommonName, user);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

/// Make sure `dir` holds a CA and a server certificate; reuse what is there.
pub fn ensure_server(dir: &Path, hostname: &str) -> Result<(Ca, bool), DevCertError> {
    let (ca, created) = load_or_create_ca(dir, hostname)?;
    if created || !dir.join("server.pem").exists() || !dir.join("server.key").exists() {
        ca.issue(dir, "server", server_params(hostname))?;
    }
    Ok((ca, created))
}

/// `portcullis dev-certs`: CA and server certificate (reused if present) plus one
/// client certificate per user.
pub fn dev_certs(
    dir: &Path,
    hostname: &str,
    users: &[String],
) -> Result<Vec<PathBuf>, DevCertError> {
    let (ca, _) = ensure_server(dir, hostname)?;
    let mut made = vec![ca.cert_path.clone(), dir.join("server.pem")];
    for user in users {
        if !crate::auth::valid_username(user) {
            return Err(DevCertError::Bad {
                path: dir.to_path_buf(),
                message: format!("\"{user}\" is not a valid user name"),
            });
        }
        let (cert, key) = ca.issue(dir, user, client_params(user))?;
        made.push(cert);
        made.push(key);
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_reused_and_client_certs_chain_to_it() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path(), "localhost", &["alice".into()]).unwrap();
        let ca1 = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        dev_certs(dir.path(), "localhost", &["bob".into()]).unwrap();
        let ca2 = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        assert_eq!(ca1, ca2);
        let mode = std::fs::metadata(dir.path().join("bob.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Both client certificates verify against the one CA.
        use rustls_pki_types::pem::PemObject;
        let ca =
            rustls_pki_types::CertificateDer::from_pem_file(dir.path().join("ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            crate::server::tls::provider(),
        )
        .build()
        .unwrap();
        for u in ["alice", "bob"] {
            let leaf = rustls_pki_types::CertificateDer::from_pem_file(
                dir.path().join(format!("{u}.pem")),
            )
            .unwrap();
            verifier
                .verify_client_cert(&leaf, &[], rustls_pki_types::UnixTime::now())
                .unwrap_or_else(|e| panic!("{u}: {e}"));
        }
    }
}
