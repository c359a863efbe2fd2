//! TLS (rustls, ring provider) as a transport under the WebSocket engine: the
//! server's certificate (loaded from PEM files, reloadable), the client's trust
//! anchors and identity, and the per-connection record layer that the loop's
//! [`crate::net::conn::Socket`] reads and writes through. No WebSocket logic here.
//!
//! Edge-triggered polling needs care that the rustls examples do not take: the
//! socket is read until it would block, decrypted plaintext is drained before the
//! next `read_tls` (rustls refuses more once 16 KiB sit unread), and TLS records are
//! written until the socket would block; the loop asks for writability only while
//! records or engine output wait. Plaintext is copied once each way (into rustls on
//! the way out, out of it on the way in).
//!
//! Without the `tls` feature [`Tls`] is uninhabited and every method unreachable, so
//! the socket code carries no `cfg`.

#[cfg(feature = "tls")]
pub use enabled::*;

#[cfg(feature = "tls")]
mod enabled {
    use std::fmt;
    use std::io::{self, IoSlice, Read, Write};
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use mio::net::TcpStream;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};

    use crate::Connection;
    use crate::net::conn::Read1;

    /// At most this many engine output slices go to rustls in one call.
    const MAX_SLICES: usize = 64;
    /// Plaintext rustls buffers before the peer's records are read: our output waits
    /// in the engine (bounded by the server's policies), not in rustls.
    const SEND_BUFFER_LIMIT: usize = 64 * 1024;

    /// Why a certificate, key or trust store could not be loaded.
    #[derive(Debug)]
    #[non_exhaustive]
    pub enum TlsError {
        /// A file could not be read.
        Read {
            /// The file.
            path: PathBuf,
            /// The error.
            source: io::Error,
        },
        /// A file has no PEM certificate.
        NoCertificate(PathBuf),
        /// A file has no PEM private key (PKCS#8, PKCS#1 or SEC1).
        NoPrivateKey(PathBuf),
        /// A file is not valid PEM.
        InvalidPem {
            /// The file.
            path: PathBuf,
            /// What the parser said.
            reason: String,
        },
        /// rustls refused the configuration (a key that does not match the
        /// certificate, an unsupported key type, an unusable CA certificate ...).
        Config(rustls::Error),
        /// No trust anchor at all: the system store is empty and no `--ca` was given.
        NoTrustAnchors,
    }

    impl fmt::Display for TlsError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                TlsError::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
                TlsError::NoCertificate(p) => write!(f, "{}: no PEM certificate found", p.display()),
                TlsError::NoPrivateKey(p) => write!(f, "{}: no PEM private key found", p.display()),
                TlsError::InvalidPem { path, reason } => write!(f, "{}: invalid PEM: {reason}", path.display()),
                TlsError::Config(e) => write!(f, "TLS configuration refused: {}", describe(e)),
                TlsError::NoTrustAnchors => f.write_str("no trusted CA certificates (the system store is empty; pass --ca FILE)"),
            }
        }
    }

    impl std::error::Error for TlsError {}

    /// A certificate error in words, for one line of output: what is wrong with the
    /// peer's certificate rather than rustls' debug names.
    pub fn describe(e: &rustls::Error) -> String {
        match e {
            rustls::Error::InvalidCertificate(c) => format!("certificate rejected: {}", describe_certificate(c)),
            rustls::Error::AlertReceived(a) => format!("the peer refused the TLS handshake (alert {a:?})"),
            rustls::Error::NoCertificatesPresented => "the peer presented no certificate".to_owned(),
            other => other.to_string(),
        }
    }

    fn describe_certificate(c: &CertificateError) -> String {
        match c {
            CertificateError::UnknownIssuer => "unknown issuer (not signed by a trusted CA; --ca FILE adds one)".to_owned(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("name mismatch ({c:?})")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".to_owned(),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not valid yet".to_owned(),
            CertificateError::Revoked => "revoked".to_owned(),
            CertificateError::BadSignature => "bad signature".to_owned(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "not valid for this purpose (a CA certificate used as a server certificate?)".to_owned()
            }
            CertificateError::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
                "a CA certificate used as a server certificate".to_owned()
            }
            other => format!("{other:?}"),
        }
    }

    fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
    }

    /// Every certificate in a PEM file, in order (a chain: leaf first).
    pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = read_file(path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::InvalidPem { path: path.to_owned(), reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate(path.to_owned()));
        }
        Ok(certs)
    }

    /// The first private key in a PEM file.
    pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
        let pem = read_file(path)?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey(path.to_owned()),
            e => TlsError::InvalidPem { path: path.to_owned(), reason: e.to_string() },
        })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Where a server's certificate comes from: PEM files, read again on reload.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct TlsFiles {
        /// The certificate chain, leaf first.
        pub cert: PathBuf,
        /// The private key of the leaf.
        pub key: PathBuf,
        /// With a CA file, clients must present a certificate it signed.
        pub client_ca: Option<PathBuf>,
    }

    impl TlsFiles {
        /// A certificate chain and its key.
        pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
            Self { cert: cert.into(), key: key.into(), client_ca: None }
        }

        /// Requires client certificates signed by the CAs in `ca`.
        pub fn client_ca(mut self, ca: impl Into<PathBuf>) -> Self {
            self.client_ca = Some(ca.into());
            self
        }

        /// Reads the files and builds a rustls server configuration (ALPN `http/1.1`).
        pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
            let chain = load_certificates(&self.cert)?;
            let key = load_private_key(&self.key)?;
            let builder =
                ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(TlsError::Config)?;
            let builder = match &self.client_ca {
                None => builder.with_no_client_auth(),
                Some(ca) => {
                    let roots = root_store(&load_certificates(ca)?)?;
                    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
                    builder.with_client_cert_verifier(verifier)
                }
            };
            let mut config = builder.with_single_cert(chain, key).map_err(TlsError::Config)?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        }
    }

    fn root_store(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert.clone()).map_err(TlsError::Config)?;
        }
        Ok(roots)
    }

    /// The server side's TLS: the configuration new connections get. Cloning shares
    /// it; [`TlsAcceptor::reload`] replaces it for connections accepted afterwards
    /// (connections already open keep theirs).
    #[derive(Clone)]
    pub struct TlsAcceptor {
        current: Arc<Mutex<Arc<ServerConfig>>>,
        files: Option<TlsFiles>,
    }

    impl fmt::Debug for TlsAcceptor {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TlsAcceptor").field("files", &self.files).finish_non_exhaustive()
        }
    }

    impl TlsAcceptor {
        /// Loads `files` (see [`TlsFiles::load`]); [`TlsAcceptor::reload`] reads them again.
        pub fn from_files(files: TlsFiles) -> Result<Self, TlsError> {
            let config = files.load()?;
            Ok(Self { current: Arc::new(Mutex::new(config)), files: Some(files) })
        }

        /// A fixed rustls configuration (built by the caller).
        pub fn from_config(config: Arc<ServerConfig>) -> Self {
            Self { current: Arc::new(Mutex::new(config)), files: None }
        }

        /// Reads the files again; on success new connections get the new certificate.
        /// On error the current one stays in use.
        pub fn reload(&self) -> Result<(), TlsError> {
            let Some(files) = &self.files else { return Ok(()) };
            let config = files.load()?;
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = config;
            Ok(())
        }

        /// The record layer for a newly accepted connection.
        pub(crate) fn accept(&self) -> Result<Tls, rustls::Error> {
            let config = self.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Ok(Tls::new(rustls::ServerConnection::new(config)?.into()))
        }
    }

    /// What a client trusts and presents.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct TlsClientOptions {
        /// Extra trust anchors (PEM files), beside the system store.
        pub ca_files: Vec<PathBuf>,
        /// Accept any certificate (Qt's `ignoreSslErrors()`): no protection against a
        /// man in the middle. For tests and debugging only.
        pub insecure: bool,
        /// A client certificate chain and key, for servers that ask for one.
        pub identity: Option<(PathBuf, PathBuf)>,
        /// Leave out the system store (trust only `ca_files`).
        pub no_system_roots: bool,
    }

    impl TlsClientOptions {
        /// System roots, no client certificate.
        pub fn new() -> Self {
            Self::default()
        }

        /// Adds a CA file to trust.
        pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
            self.ca_files.push(path.into());
            self
        }

        /// Accepts any server certificate (see [`TlsClientOptions::insecure`]).
        pub fn insecure(mut self, insecure: bool) -> Self {
            self.insecure = insecure;
            self
        }

        /// Trusts only the CA files, not the system store.
        pub fn no_system_roots(mut self, no_system_roots: bool) -> Self {
            self.no_system_roots = no_system_roots;
            self
        }

        /// Presents a client certificate.
        pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
            self.identity = Some((cert.into(), key.into()));
            self
        }
    }

    /// The client side's TLS configuration (cheap to clone).
    #[derive(Clone)]
    pub struct TlsConnector {
        config: Arc<ClientConfig>,
    }

    impl fmt::Debug for TlsConnector {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TlsConnector").finish_non_exhaustive()
        }
    }

    impl TlsConnector {
        /// Builds the configuration: the system's roots (unless left out) and the
        /// extra CA files, or no verification with `insecure`; ALPN `http/1.1`.
        pub fn new(opts: &TlsClientOptions) -> Result<Self, TlsError> {
            let builder =
                ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(TlsError::Config)?;
            let builder = if opts.insecure {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnything(provider())))
            } else {
                let mut roots = RootCertStore::empty();
                if !opts.no_system_roots {
                    // Unreadable system certificates are skipped, as curl does.
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                }
                for ca in &opts.ca_files {
                    for cert in load_certificates(ca)? {
                        roots.add(cert).map_err(TlsError::Config)?;
                    }
                }
                if roots.is_empty() {
                    return Err(TlsError::NoTrustAnchors);
                }
                builder.with_root_certificates(roots)
            };
            let mut config = match &opts.identity {
                Some((cert, key)) => {
                    builder.with_client_auth_cert(load_certificates(cert)?, load_private_key(key)?).map_err(TlsError::Config)?
                }
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Self { config: Arc::new(config) })
        }

        /// A fixed rustls configuration (built by the caller).
        pub fn from_config(config: Arc<ClientConfig>) -> Self {
            Self { config }
        }

        /// The rustls configuration, for a driver of its own.
        pub fn rustls_config(&self) -> Arc<ClientConfig> {
            self.config.clone()
        }

        /// The record layer for a connection to `host` (its SNI name and the name the
        /// certificate must carry; an IP address is checked as one).
        pub(crate) fn connect(&self, host: &str) -> Result<Tls, rustls::Error> {
            let name =
                ServerName::try_from(host.to_owned()).map_err(|_| rustls::Error::General(format!("invalid server name {host:?}")))?;
            Ok(Tls::new(rustls::ClientConnection::new(self.config.clone(), name)?.into()))
        }
    }

    /// `--insecure`: every certificate passes, signatures are still checked with the
    /// provider's algorithms (so the handshake itself is sound).
    #[derive(Debug)]
    struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// One connection's TLS record layer.
    pub(crate) struct Tls {
        conn: rustls::Connection,
        /// Why the TLS session failed, once it has.
        error: Option<rustls::Error>,
    }

    impl fmt::Debug for Tls {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Tls").field("handshaking", &self.conn.is_handshaking()).field("error", &self.error).finish()
        }
    }

    impl Tls {
        fn new(mut conn: rustls::Connection) -> Self {
            conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
            Self { conn, error: None }
        }

        /// Decrypted bytes into `buf`: what rustls holds first, then records read from
        /// the socket until it would block.
        pub(crate) fn read(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> Read1 {
            loop {
                match self.conn.reader().read(buf) {
                    Ok(0) => return Read1::Eof, // the peer's close_notify
                    Ok(n) => return Read1::Data(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Read1::Eof, // TCP ended without close_notify
                }
                match self.conn.read_tls(stream) {
                    Ok(0) => return Read1::Eof,
                    Ok(_) => {
                        if let Err(e) = self.conn.process_new_packets() {
                            // The alert rustls queued goes out at the next write.
                            self.error = Some(e);
                            let _ = self.write_records(stream);
                            return Read1::Eof;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read1::WouldBlock,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Read1::Eof,
                }
            }
        }

        /// Encrypts the engine's output and writes records until the socket would
        /// block. `Err` only for a broken socket.
        pub(crate) fn write(&mut self, stream: &mut TcpStream, engine: &mut Connection) -> io::Result<()> {
            loop {
                if !self.write_records(stream)? {
                    return Ok(()); // the socket is full; writability will call again
                }
                if engine.bytes_to_write() == 0 {
                    return Ok(());
                }
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let n = engine.output_vectored(&mut slices);
                let taken = self.conn.writer().write_vectored(&slices[..n])?;
                if taken == 0 {
                    return Ok(()); // rustls is full until its records leave
                }
                engine.consume_output(taken);
            }
        }

        /// Writes pending records; `Ok(false)` when the socket would block first.
        fn write_records(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
            while self.conn.wants_write() {
                match self.conn.write_tls(stream) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        }

        /// Takes records that arrived before the socket was ours (behind a proxy's
        /// answer); they are processed with the next read.
        pub(crate) fn preload(&mut self, mut bytes: &[u8]) {
            while !bytes.is_empty() {
                match self.conn.read_tls(&mut bytes) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Err(e) = self.conn.process_new_packets() {
                            self.error = Some(e);
                            break;
                        }
                    }
                }
            }
        }

        /// Records wait to be written.
        pub(crate) fn wants_write(&self) -> bool {
            self.conn.wants_write()
        }

        /// Ends the TLS session (`close_notify`), written as far as the socket takes it.
        pub(crate) fn close_notify(&mut self, stream: &mut TcpStream) {
            self.conn.send_close_notify();
            let _ = self.write_records(stream);
        }

        /// Why the session failed, if it did.
        pub(crate) fn error(&self) -> Option<&rustls::Error> {
            self.error.as_ref()
        }
    }
}

/// One connection's TLS record layer (never, in this build).
#[cfg(not(feature = "tls"))]
#[derive(Debug)]
pub(crate) enum Tls {}

#[cfg(not(feature = "tls"))]
impl Tls {
    pub(crate) fn read(&mut self, _stream: &mut mio::net::TcpStream, _buf: &mut [u8]) -> crate::net::conn::Read1 {
        match *self {}
    }

    pub(crate) fn write(&mut self, _stream: &mut mio::net::TcpStream, _engine: &mut crate::Connection) -> std::io::Result<()> {
        match *self {}
    }

    pub(crate) fn wants_write(&self) -> bool {
        match *self {}
    }

    pub(crate) fn close_notify(&mut self, _stream: &mut mio::net::TcpStream) {
        match *self {}
    }

    pub(crate) fn preload(&mut self, _bytes: &[u8]) {
        match *self {}
    }
}
