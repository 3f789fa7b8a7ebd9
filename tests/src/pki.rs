//! Certificates made up per test with rcgen (a CA, servers and clients signed by it, SPIFFE
//! IDs as URI SANs), and a TLS client that keeps one connection open and reports what the
//! handshake settled (ALPN, the server's certificate).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::client::Got;

/// A certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub pem: String,
}

/// A certificate signed by a [`Ca`], with its key.
pub struct Leaf {
    pub pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        Self::with_uri(name, None)
    }

    /// A CA naming `uri` in its URI SAN (a trust domain's ID, `spiffe://partner.example`, as
    /// SPIRE's CAs do).
    pub fn with_uri(name: &str, uri: Option<&str>) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().expect("an IA5 URI")));
        }
        let cert = params.self_signed(&key).expect("self-signed");
        let pem = cert.pem();
        Ca { cert, key, pem }
    }

    /// A certificate for `names` (DNS names or IP addresses), with `cn` as its common name and
    /// `uri` (a SPIFFE ID, say) as a URI SAN.
    pub fn issue(&self, cn: &str, names: &[&str], uri: Option<&str>) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().expect("an IA5 URI")));
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed");
        Leaf {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

impl Ca {
    /// A client certificate with `uris` as its URI SANs (none, one or more, valid SPIFFE IDs or
    /// not), marked as a CA when `ca`: the SVIDs authorization accepts and those it refuses.
    pub fn issue_uris(&self, cn: &str, uris: &[&str], ca: bool) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().expect("an IA5 URI")));
        }
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed");
        Leaf {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// An HTTPS server on a free loopback port, with `leaf` as its certificate, that answers
/// every request with `tls ok <the ALPN protocol>` (offering `http/1.1`).
pub async fn https_server(leaf: &Leaf) -> SocketAddr {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key())
        .expect("certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let alpn = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let body = Bytes::from(format!("tls ok {alpn}"));
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// Replaces a file's content at once (a rename), as a Secret's update or an ACME client does.
pub fn replace(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Connects to `addr` (trusting `ca`, for `localhost`) until the server presents `cert`;
/// fails the test after 15 s.
pub async fn wait_for_certificate(addr: SocketAddr, ca: &str, cert: &CertificateDer<'static>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let c = TlsConn::connect(addr, ca, "localhost", &["http/1.1"], None)
            .await
            .expect("a handshake while the certificate changes");
        if c.server_cert == *cert {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// rustls's ring provider, as attache uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One TLS connection to a server, kept open for as many requests as a test sends.
pub struct TlsConn {
    /// The protocol ALPN settled on (`h2`, `http/1.1`), if any.
    pub alpn: Option<String>,
    /// The certificate the server presented (its leaf).
    pub server_cert: CertificateDer<'static>,
    sender: Sender,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl TlsConn {
    /// Connects to `addr`, trusting `ca`, verifying `server_name`, offering `alpn`, and
    /// presenting `client` when given. An error is the handshake's (or the socket's), or
    /// `timed out` after 10 s.
    pub async fn connect(
        addr: SocketAddr,
        ca: &str,
        server_name: &str,
        alpn: &[&str],
        client: Option<&Leaf>,
    ) -> Result<TlsConn, String> {
        let connecting = Self::connect_now(addr, ca, server_name, alpn, client);
        tokio::time::timeout(std::time::Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    async fn connect_now(
        addr: SocketAddr,
        ca: &str,
        server_name: &str,
        alpn: &[&str],
        client: Option<&Leaf>,
    ) -> Result<TlsConn, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match client {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.der.clone()], leaf.key.clone_key())
                .map_err(|e| e.to_string())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let session = tls.get_ref().1;
        let alpn = session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let server_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no server certificate")?;
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some("h2") {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(TlsConn {
            alpn,
            server_cert,
            sender,
        })
    }

    /// A GET of `path` with `headers` on this connection.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Got, String> {
        self.request("GET", path, headers, Bytes::new()).await
    }

    /// Any request on this connection; `timed out` after 10 s.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Got, String> {
        let sending = self.request_now(method, path, headers, body);
        tokio::time::timeout(std::time::Duration::from_secs(10), sending)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    async fn request_now(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Got, String> {
        let h2 = matches!(self.sender, Sender::H2(_));
        let uri = if h2 {
            format!("https://localhost{path}")
        } else {
            path.to_owned()
        };
        let mut req = Request::builder().method(method).uri(uri);
        if !h2 {
            req = req.header("host", "localhost");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let res = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        crate::client::collect(res).await
    }
}
