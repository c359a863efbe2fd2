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

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};

    use crate::Connection;
    use crate::net::conn::Read1;

    /// At most this many engine output slices go to rustls in one call.
    const MAX_SLICES: usize = 64;
    /// Plaintext rustls buffers for sending: our backlog waits in the engine (bounded
    /// by the server's policies), not in rustls.
    const SEND_BUFFER_LIMIT: usize = 16 * 1024;

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

    /// A TLS failure in words, for one line of output: what is wrong with the peer's
    /// certificate rather than rustls' debug names.
    pub fn describe(e: &rustls::Error) -> String {
        match e {
            rustls::Error::InvalidCertificate(c) => format!("certificate rejected: {}", describe_certificate(c)),
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                "the server requires a client certificate".to_owned()
            }
            rustls::Error::AlertReceived(a) => format!("the peer refused the TLS handshake (alert {a:?})"),
            rustls::Error::NoCertificatesPresented => "the peer presented no certificate".to_owned(),
            other => other.to_string(),
        }
    }

    fn describe_certificate(c: &CertificateError) -> String {
        match c {
            CertificateError::UnknownIssuer => "unknown issuer (not signed by a trusted CA)".to_owned(),
            CertificateError::NotValidForNameContext { expected, presented } => {
                format!("name mismatch (it is for {}, not {})", presented.join(", "), expected.to_str())
            }
            CertificateError::NotValidForName => "name mismatch".to_owned(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".to_owned(),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not valid yet".to_owned(),
            CertificateError::Revoked => "revoked".to_owned(),
            CertificateError::BadSignature => "bad signature".to_owned(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "not valid for this purpose (its extended key usage does not allow it)".to_owned()
            }
            // webpki's error (not re-exported by rustls) names this case in its text.
            CertificateError::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
                "a CA certificate used as a server certificate".to_owned()
            }
            other => format!("{other:?}"),
        }
    }

    /// The system's trust anchors, read once per process (unreadable ones skipped, as
    /// curl does).
    fn system_roots() -> &'static [CertificateDer<'static>] {
        static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
        ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
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

    pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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
                    roots.add_parsable_certificates(system_roots().iter().cloned());
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
        pub(crate) fn read(&mut self, stream: &mut impl Read, buf: &mut [u8]) -> Read1 {
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
        pub(crate) fn write(&mut self, stream: &mut impl Write, engine: &mut Connection) -> io::Result<()> {
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
        pub(crate) fn write_records(&mut self, stream: &mut impl Write) -> io::Result<bool> {
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
        pub(crate) fn close_notify(&mut self, stream: &mut impl Write) {
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

#[cfg(all(test, feature = "tls"))]
mod tests {
    //! The record layer pumped through in-memory pipes that take and give a few
    //! bytes at a time (and say "would block" every other call): handshakes and
    //! messages survive any split and short writes, and both endings (with and
    //! without `close_notify`) end the connection.

    use std::collections::VecDeque;
    use std::io::{self, Read, Write};
    use std::sync::Arc;
    use std::time::Instant;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::enabled::provider;
    use super::*;
    use crate::net::conn::Read1;
    use crate::{Accept, ClientRequest, Config, Connection, Event, State};
    use rustls::{ClientConfig, RootCertStore};

    /// One direction of a connection: at most `chunk` bytes per call, and every
    /// other call would block.
    struct Pipe {
        bytes: VecDeque<u8>,
        chunk: usize,
        flip: bool,
        closed: bool,
    }

    impl Pipe {
        fn new(chunk: usize) -> Pipe {
            Pipe { bytes: VecDeque::new(), chunk, flip: false, closed: false }
        }

        fn blocked(&mut self) -> bool {
            self.flip = !self.flip;
            self.flip
        }
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.bytes.is_empty() {
                return if self.closed { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
            if self.blocked() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(self.bytes.len());
            for b in &mut buf[..n] {
                *b = self.bytes.pop_front().unwrap_or_default();
            }
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.blocked() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk);
            self.bytes.extend(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A TLS endpoint with its engine.
    struct End {
        tls: Tls,
        engine: Connection,
        events: Vec<Event>,
        eof: bool,
    }

    impl End {
        /// Writes what it can, reads what it can; a server accepts the request.
        fn step(&mut self, out: &mut Pipe, input: &mut Pipe, now: Instant) {
            self.tls.write(out, &mut self.engine).unwrap();
            let mut buf = [0u8; 4096];
            for _ in 0..64 {
                match self.tls.read(input, &mut buf) {
                    Read1::Data(n) => self.engine.handle_bytes(now, &buf[..n]),
                    Read1::WouldBlock => break,
                    Read1::Eof => {
                        if !self.eof {
                            self.eof = true;
                            self.engine.handle_eof(now);
                        }
                        break;
                    }
                }
            }
            while let Some(e) = self.engine.poll_event() {
                if let Event::Request(_) = e {
                    self.engine.accept(now, Accept::new()).unwrap();
                } else {
                    self.events.push(e);
                }
            }
        }
    }

    /// A connected client and server over pipes of `chunk` bytes.
    fn pair(chunk: usize) -> (End, End, Pipe, Pipe) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(leaf.der().to_vec())], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
        let client_config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let now = Instant::now();
        let request = ClientRequest::new("wss://localhost/").unwrap();
        let client = End {
            tls: TlsConnector::from_config(Arc::new(client_config)).connect("localhost").unwrap(),
            engine: Connection::client(Config::default(), &request, now),
            events: Vec::new(),
            eof: false,
        };
        let server = End {
            tls: TlsAcceptor::from_config(Arc::new(server_config)).accept().unwrap(),
            engine: Connection::server(Config::default(), now),
            events: Vec::new(),
            eof: false,
        };
        (client, server, Pipe::new(chunk), Pipe::new(chunk))
    }

    /// Steps both ends until `done` or too many steps.
    fn run(c: &mut End, s: &mut End, up: &mut Pipe, down: &mut Pipe, done: impl Fn(&End, &End) -> bool) {
        let now = Instant::now();
        for _ in 0..10_000_000 {
            if done(c, s) {
                return;
            }
            c.step(up, down, now);
            s.step(down, up, now);
        }
        panic!("no progress: client {:?}, server {:?}", c.engine.state(), s.engine.state());
    }

    #[test]
    fn handshake_and_messages_survive_one_byte_pieces_and_short_writes() {
        let (mut c, mut s, mut up, mut down) = pair(1);
        run(&mut c, &mut s, &mut up, &mut down, |c, s| c.engine.state() == State::Open && s.engine.state() == State::Open);
        c.engine.send_text("one byte at a time").unwrap();
        c.engine.send_binary(&[7]).unwrap();
        run(&mut c, &mut s, &mut up, &mut down, |_, s| s.events.len() >= 3);
        assert_eq!(s.events[1..], [Event::Text("one byte at a time".into()), Event::Binary(vec![7])]);
    }

    #[test]
    fn a_16_mib_message_crosses_in_short_pieces() {
        let (mut c, mut s, mut up, mut down) = pair(4093);
        let big: Vec<u8> = (0..16 << 20).map(|i: usize| (i % 253) as u8).collect();
        run(&mut c, &mut s, &mut up, &mut down, |c, _| c.engine.state() == State::Open);
        c.engine.send_binary(&big).unwrap();
        run(&mut c, &mut s, &mut up, &mut down, |_, s| s.events.len() >= 2);
        assert!(s.events[1] == Event::Binary(big.clone()));
        s.engine.send_binary(&big).unwrap();
        run(&mut c, &mut s, &mut up, &mut down, |c, _| c.events.len() >= 2);
        assert!(c.events[1] == Event::Binary(big));
    }

    #[test]
    fn the_end_with_and_without_close_notify() {
        for notify in [true, false] {
            let (mut c, mut s, mut up, mut down) = pair(7);
            run(&mut c, &mut s, &mut up, &mut down, |c, s| c.engine.state() == State::Open && s.engine.state() == State::Open);
            c.engine.close(Instant::now(), crate::CloseCode::NORMAL, "bye").unwrap();
            run(&mut c, &mut s, &mut up, &mut down, |_, s| s.engine.state() == State::Closed);
            // The server has closed; its close reply and then the end of its stream reach the client.
            while s.engine.bytes_to_write() > 0 || s.tls.wants_write() {
                s.tls.write(&mut down, &mut s.engine).unwrap();
            }
            if notify {
                s.tls.close_notify(&mut down);
                while s.tls.wants_write() {
                    let _ = s.tls.write_records(&mut down);
                }
            }
            down.closed = true;
            run(&mut c, &mut s, &mut up, &mut down, |c, _| c.engine.state() == State::Closed);
            let Some(Event::Closed(closed)) = c.events.last() else { panic!("{:?}", c.events) };
            assert!(closed.clean, "notify {notify}: {closed:?}");
            assert_eq!(c.tls.error(), None, "notify {notify}");
        }
    }

    #[test]
    fn a_stream_cut_without_close_frames_or_close_notify_is_an_abnormal_end() {
        let (mut c, mut s, mut up, mut down) = pair(5);
        run(&mut c, &mut s, &mut up, &mut down, |c, s| c.engine.state() == State::Open && s.engine.state() == State::Open);
        s.engine.send_text("half").unwrap();
        s.tls.write(&mut down, &mut s.engine).unwrap();
        // The connection is cut in the middle of the records.
        down.bytes.truncate(down.bytes.len() / 2);
        down.closed = true;
        run(&mut c, &mut s, &mut up, &mut down, |c, _| c.engine.state() == State::Closed);
        let Some(Event::Closed(closed)) = c.events.last() else { panic!("{:?}", c.events) };
        assert!(!closed.clean);
        assert_eq!(closed.code(), crate::CloseCode::ABNORMAL);
        assert!(!c.events.iter().any(|e| matches!(e, Event::Text(_))), "no message from a cut record");
    }
}
