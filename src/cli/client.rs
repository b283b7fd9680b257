//! A small HTTPS client for the CLI (and the integration tests): one request per
//! connection over tokio-rustls and hyper, with an optional client certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad flags or files on our side (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached or its certificate is not trusted (exit 3).
    #[error("{0}")]
    Unreachable(String),
    /// The server refused our client certificate during the handshake (exit 1).
    #[error("{0}")]
    Refused(String),
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub struct Client {
    host: String,
    port: u16,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    timeout: Duration,
    local: Option<std::net::IpAddr>,
}

impl Client {
    /// `server` is `https://host:port` (or `http://` for a loopback plaintext daemon).
    pub fn new(
        server: &str,
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, ClientError> {
        let uri: Uri = server
            .parse()
            .map_err(|_| ClientError::Usage(format!("\"{server}\" is not a URL")))?;
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Usage(format!("\"{server}\" has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ClientError::Usage(format!(
                    "\"{server}\" must start with https://"
                )));
            }
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let roots = roots(ca)?;
            let builder = ClientConfig::builder_with_provider(crate::server::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Usage(e.to_string()))?
                .with_root_certificates(roots);
            let config = match identity {
                Some((cert, key)) => {
                    let chain = CertificateDer::pem_file_iter(cert)
                        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| ClientError::Usage(format!("{}: {e}", cert.display())))?;
                    let key = PrivateKeyDer::from_pem_file(key)
                        .map_err(|e| ClientError::Usage(format!("{}: {e}", key.display())))?;
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| ClientError::Usage(format!("{}: {e}", cert.display())))?
                }
                None => builder.with_no_client_auth(),
            };
            let name = ServerName::try_from(host.clone()).map_err(|_| {
                ClientError::Usage(format!("\"{host}\" is not a valid server name"))
            })?;
            Some((Arc::new(config), name))
        } else {
            None
        };
        Ok(Client {
            host,
            port,
            tls,
            timeout: Duration::from_secs(30),
            local: None,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Connect from this local address (tests use 127.0.0.x to act as other hosts).
    pub fn bind_local(mut self, ip: std::net::IpAddr) -> Self {
        self.local = Some(ip);
        self
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let Some(local) = self.local else {
            return TcpStream::connect((self.host.as_str(), self.port)).await;
        };
        let remote = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let socket = if local.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        socket.connect(remote).await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, ClientError> {
        tokio::time::timeout(
            self.timeout,
            self.request_inner(method, path, headers, body),
        )
        .await
        .map_err(|_| {
            ClientError::Unreachable(format!(
                "{}:{} did not answer in time",
                self.host, self.port
            ))
        })?
    }

    async fn request_inner(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, ClientError> {
        let tcp = self.connect().await.map_err(|e| {
            ClientError::Unreachable(format!(
                "cannot connect to {}:{}: {e}",
                self.host, self.port
            ))
        })?;
        match &self.tls {
            Some((config, name)) => {
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(classify)?;
                self.exchange(stream, method, path, headers, body).await
            }
            None => self.exchange(tcp, method, path, headers, body).await,
        }
    }

    async fn exchange<I>(
        &self,
        io: I,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, ClientError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| classify_hyper(&e))?;
        // The connection task sees TLS alerts (a refused client certificate arrives
        // after the TLS 1.3 handshake); keep its result to explain a failed request.
        let conn = tokio::spawn(conn);
        let authority = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority);
        for (k, v) in headers {
            req = req.header(
                *k,
                HeaderValue::from_str(v)
                    .map_err(|_| ClientError::Usage(format!("bad header {k}")))?,
            );
        }
        let payload = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                let conn_error = tokio::time::timeout(Duration::from_secs(2), conn).await;
                return Err(match conn_error {
                    Ok(Ok(Err(ce))) => classify_hyper(&ce),
                    _ => classify_hyper(&e),
                });
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

/// The server refusing our certificate is an authentication answer, not an outage.
fn classify(e: std::io::Error) -> ClientError {
    let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::AlertReceived(alert)) if is_certificate_alert(*alert) => {
            ClientError::Refused(format!(
                "the server refused the client certificate ({alert:?})"
            ))
        }
        Some(rustls::Error::InvalidCertificate(why)) => ClientError::Unreachable(format!(
            "the server's certificate is not trusted ({why:?}); pass --ca with the CA that signed it"
        )),
        _ => ClientError::Unreachable(format!("TLS connection failed: {e}")),
    }
}

fn classify_hyper(e: &hyper::Error) -> ClientError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(rustls::Error::AlertReceived(alert)) =
                io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
            && is_certificate_alert(*alert)
        {
            // TLS 1.3 reports a refused client certificate after the handshake.
            return ClientError::Refused(format!(
                "the server refused the client certificate ({alert:?})"
            ));
        }
        source = s.source();
    }
    ClientError::Unreachable(format!("request failed: {e}"))
}

fn is_certificate_alert(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateRequired
            | A::AccessDenied
    )
}
