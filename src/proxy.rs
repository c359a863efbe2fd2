//! Client proxies without I/O: parsing a proxy setting ([`Proxy`]), choosing one
//! from the environment the way curl does ([`Proxy::from_env`]), and the negotiation
//! that opens a tunnel through it ([`ProxyHandshake`]): HTTP `CONNECT` (RFC 9110
//! §9.3.6, with `Proxy-Authorization: Basic`) and SOCKS5 (RFC 1928, with the
//! username/password method of RFC 1929).
//!
//! This module owns the bytes of the negotiation and nothing else: no socket, no
//! clock, no DNS. The driver connects to [`Proxy::host`]:[`Proxy::port`], writes
//! [`ProxyHandshake::output`], feeds what it reads to
//! [`ProxyHandshake::handle_bytes`] until [`ProxyStep::Done`], and then runs TLS (for
//! `wss://`) and the WebSocket handshake over the same stream, starting with the
//! `leftover` bytes that followed the proxy's answer in the last read. Timeouts
//! are the driver's too (the handshake timeout should cover the proxy step).
//!
//! Name resolution: for `socks5://` the client resolves the target itself and passes
//! [`Target::Addr`]; for `socks5h://` and `http://` the proxy resolves it, so pass
//! [`Target::Name`] ([`ProxyKind::resolves_names`] tells which).
//!
//! ```
//! use rfc6455::proxy::{Proxy, ProxyHandshake, ProxyStep, Target};
//!
//! // HTTP CONNECT with Basic credentials.
//! let proxy = Proxy::parse("http://ann:open%20sesame@proxy.example:3128").unwrap();
//! let mut hs = ProxyHandshake::new(&proxy, Target::Name("example.com".into(), 443)).unwrap();
//! assert_eq!(
//!     hs.output(),
//!     b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
//!       Proxy-Authorization: Basic YW5uOm9wZW4gc2VzYW1l\r\n\r\n"
//! );
//! hs.consume_output(hs.output().len()); // the socket took it all
//!
//! // The answer arrives in two reads; the second also carries the server's first bytes.
//! assert_eq!(hs.handle_bytes(b"HTTP/1.1 200 Connection estab").unwrap(), ProxyStep::NeedMore);
//! let read = b"lished\r\n\r\n\x16\x03\x01";
//! let ProxyStep::Done { leftover } = hs.handle_bytes(read).unwrap() else { panic!() };
//! assert_eq!(&read[read.len() - leftover..], b"\x16\x03\x01"); // the start of TLS
//!
//! // SOCKS5 with the name resolved at the proxy.
//! let proxy = Proxy::parse("socks5h://proxy.example").unwrap();
//! assert_eq!(proxy.port(), 1080);
//! let mut hs = ProxyHandshake::new(&proxy, Target::Name("example.com".into(), 80)).unwrap();
//! assert_eq!(hs.output(), b"\x05\x01\x00"); // version 5, one method: no authentication
//! hs.consume_output(3);
//! assert_eq!(hs.handle_bytes(b"\x05\x00").unwrap(), ProxyStep::NeedMore); // "no authentication"
//! assert_eq!(hs.output(), b"\x05\x01\x00\x03\x0bexample.com\x00\x50"); // CONNECT example.com:80
//! hs.consume_output(hs.output().len());
//! let reply = b"\x05\x00\x00\x01\x0a\x00\x00\x01\x1f\x90"; // succeeded, bound to 10.0.0.1:8080
//! assert_eq!(hs.handle_bytes(reply).unwrap(), ProxyStep::Done { leftover: 0 });
//! assert!(hs.is_done());
//!
//! // A refusal is one clear line.
//! let mut hs = ProxyHandshake::new(&proxy, Target::Name("example.com".into(), 80)).unwrap();
//! hs.handle_bytes(b"\x05\x00").unwrap();
//! let err = hs.handle_bytes(b"\x05\x05\x00\x01\0\0\0\0\0\0").unwrap_err();
//! assert_eq!(err.to_string(), "SOCKS5 proxy could not open the tunnel: connection refused (reply 5)");
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The largest response head (status line and header lines) accepted from an HTTP
/// proxy; a longer one is [`ProxyError::ResponseTooLarge`].
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Header lines parsed in an HTTP proxy's response; more is malformed.
const MAX_HEADERS: usize = 64;

/// The longest SOCKS5 message we read: a CONNECT reply with a 255-byte domain.
const MAX_SOCKS_MESSAGE: usize = 4 + 1 + 255 + 2;

/// Characters of text from the network kept in an error message.
const MAX_QUOTED: usize = 200;

/// The protocol spoken to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `http://`: an HTTP proxy, tunnel opened with `CONNECT`.
    Http,
    /// `socks5://`: SOCKS5, the client resolves the target's name.
    Socks5,
    /// `socks5h://`: SOCKS5, the proxy resolves the target's name.
    Socks5h,
}

impl ProxyKind {
    /// The URL scheme: `http`, `socks5` or `socks5h`.
    pub fn scheme(self) -> &'static str {
        match self {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        }
    }

    /// The port used when the URL has none: 80 for `http://` (the scheme's port, as
    /// browsers, Python's urllib and websockets use; curl assumes 1080 for every
    /// scheme, so write the port explicitly), 1080 for SOCKS.
    pub fn default_port(self) -> u16 {
        match self {
            ProxyKind::Http => 80,
            ProxyKind::Socks5 | ProxyKind::Socks5h => 1080,
        }
    }

    /// Whether the proxy resolves the target's name (`http`, `socks5h`): pass
    /// [`Target::Name`]. For `socks5` the client resolves it and passes
    /// [`Target::Addr`].
    pub fn resolves_names(self) -> bool {
        !matches!(self, ProxyKind::Socks5)
    }

    fn from_scheme(scheme: &str) -> Result<ProxyKind, ProxyError> {
        match scheme.to_ascii_lowercase().as_str() {
            "http" => Ok(ProxyKind::Http),
            "socks5" => Ok(ProxyKind::Socks5),
            "socks5h" => Ok(ProxyKind::Socks5h),
            "https" => Err(invalid_url("https:// proxies (TLS to the proxy) are not supported; use http://, socks5:// or socks5h://")),
            other => Err(invalid_url(&format!("unsupported scheme {:?}; use http://, socks5:// or socks5h://", printable(other)))),
        }
    }
}

/// A proxy setting: kind, host, port and optional credentials. Its `Debug` and
/// `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    kind: ProxyKind,
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    username: String,
    password: String,
}

impl Proxy {
    /// Parses `http://[user[:pass]@]host[:port]`, `socks5://...` or `socks5h://...`
    /// (scheme case-insensitive; default ports in [`ProxyKind::default_port`]). The
    /// host is a name, an IPv4 address or an IPv6 address in brackets; user and
    /// password are percent-decoded (`%40` for `@`, `%3A` for `:`) and must be UTF-8.
    /// Only an empty path or `/` may follow the authority. For SOCKS5 the user name
    /// and the password must each be 1 to 255 bytes (RFC 1929), and for HTTP the user
    /// name may not contain `:` (RFC 7617): both are checked here, so a parsed proxy
    /// always makes a valid handshake. Errors are [`ProxyError::InvalidUrl`] and never
    /// quote the credentials.
    pub fn parse(url: &str) -> Result<Proxy, ProxyError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid_url("missing scheme (http://, socks5:// or socks5h://)"))?;
        let kind = ProxyKind::from_scheme(scheme)?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        check_tail(tail)?;
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = parse_host_port(host_port, kind.default_port())?;
        let credentials = userinfo.map(parse_userinfo).transpose()?;
        if let Some(c) = &credentials {
            check_credentials(kind, c)?;
        }
        Ok(Proxy { kind, host, port, credentials })
    }

    /// The proxy to use for a connection to `target_host:target_port`, from the
    /// process environment (see [`Proxy::from_env_with`]).
    pub fn from_env(secure: bool, target_host: &str, target_port: u16) -> Result<Option<Proxy>, ProxyError> {
        Proxy::from_env_with(secure, target_host, target_port, |name| std::env::var(name).ok())
    }

    /// The proxy to use for a connection to `target_host:target_port` (`secure` for
    /// `wss://`), from environment variables read through `lookup`, the way curl does:
    ///
    /// * `no_proxy` (else `NO_PROXY`) lists hosts reached directly; see
    ///   [`no_proxy_matches`]. A match gives `Ok(None)`.
    /// * For `wss://`: `https_proxy`, else `HTTPS_PROXY`; for `ws://`: `http_proxy`
    ///   only. Upper-case `HTTP_PROXY` is ignored on purpose, as curl does: a CGI
    ///   program gets the request's `Proxy:` header as `HTTP_PROXY` ("httpoxy"), so a
    ///   client could pick the proxy.
    /// * Then `all_proxy`, else `ALL_PROXY`.
    ///
    /// Lower case is read before upper case; an empty (or blank) value counts as
    /// unset. A value without a scheme is taken as `http://` (as curl does). A value
    /// that does not parse is [`ProxyError::InvalidUrl`] naming the variable.
    pub fn from_env_with(
        secure: bool,
        target_host: &str,
        target_port: u16,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Proxy>, ProxyError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if let Some(list) = get("no_proxy").or_else(|| get("NO_PROXY")) {
            if no_proxy_matches(&list, target_host, target_port) {
                return Ok(None);
            }
        }
        let names: &[&str] =
            if secure { &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] } else { &["http_proxy", "all_proxy", "ALL_PROXY"] };
        let Some((name, value)) = names.iter().find_map(|&n| get(n).map(|v| (n, v))) else {
            return Ok(None);
        };
        let url = if value.contains("://") { value } else { format!("http://{value}") };
        match Proxy::parse(&url) {
            Ok(proxy) => Ok(Some(proxy)),
            Err(ProxyError::InvalidUrl(why)) => Err(ProxyError::InvalidUrl(format!("{name}: {why}"))),
            Err(e) => Err(e),
        }
    }

    /// The protocol spoken to the proxy.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The proxy's host: a name (lower case), an IPv4 address, or an IPv6 address
    /// without brackets. Connect to it (resolving the name is the driver's job).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name, percent-decoded, if the URL has credentials.
    pub fn username(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.username.as_str())
    }

    /// The password, percent-decoded, if the URL has credentials (empty for
    /// `http://user@host`).
    pub fn password(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.password.as_str())
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username())
            .field("password", &self.credentials.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// The URL with the password replaced by `***`, e.g. `socks5h://ann:***@proxy:1080`.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.kind.scheme())?;
        if let Some(user) = self.username() {
            write!(f, "{}:***@", percent_encode_userinfo(user))?;
        }
        write!(f, "{}:{}", bracket_ipv6(&self.host), self.port)
    }
}

fn invalid_url(why: &str) -> ProxyError {
    ProxyError::InvalidUrl(why.to_owned())
}

/// What may follow the authority: nothing or `/`.
fn check_tail(tail: &str) -> Result<(), ProxyError> {
    if tail.is_empty() || tail == "/" {
        return Ok(());
    }
    let why = match tail.as_bytes()[0] {
        b'#' => "fragments are not allowed",
        b'?' => "a proxy URL has no query",
        _ => "a proxy URL has no path",
    };
    if tail.contains('@') {
        return Err(invalid_url(&format!("{why} (percent-encode / ? # @ in a user name or password)")));
    }
    Err(invalid_url(why))
}

/// `host[:port]` or `[v6][:port]`; an empty port is the default (RFC 3986 §3.2.3).
fn parse_host_port(s: &str, default_port: u16) -> Result<(String, u16), ProxyError> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| invalid_url("unclosed [ in the host"))?;
        if h.parse::<Ipv6Addr>().is_err() {
            return Err(invalid_url("invalid IPv6 address in brackets"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| invalid_url("unexpected characters after ]"))?),
        };
        (h, port)
    } else {
        if s.matches(':').count() > 1 {
            return Err(invalid_url("more than one ':' after the host (an IPv6 address goes in brackets)"));
        }
        let (h, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if h.is_empty() {
            return Err(invalid_url("missing host"));
        }
        if !is_host_name(h) {
            return Err(invalid_url("invalid host (an IPv6 address goes in brackets)"));
        }
        (h, port)
    };
    let port = match port {
        None | Some("") => default_port,
        Some(p) => parse_port(p).ok_or_else(|| invalid_url("the port must be a number from 1 to 65535"))?,
    };
    Ok((host.to_ascii_lowercase(), port))
}

fn parse_port(p: &str) -> Option<u16> {
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

/// A registered name or an IPv4 address: letters, digits, `.`, `-`, `_`.
fn is_host_name(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

fn parse_userinfo(userinfo: &str) -> Result<Credentials, ProxyError> {
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let username = percent_decode(user).ok_or_else(|| invalid_url("the user name has invalid percent-encoding or is not UTF-8"))?;
    let password = percent_decode(pass).ok_or_else(|| invalid_url("the password has invalid percent-encoding or is not UTF-8"))?;
    if username.is_empty() {
        return Err(invalid_url("empty user name before @"));
    }
    Ok(Credentials { username, password })
}

fn check_credentials(kind: ProxyKind, c: &Credentials) -> Result<(), ProxyError> {
    match kind {
        ProxyKind::Http if c.username.contains(':') => Err(invalid_url("an HTTP Basic user name cannot contain ':' (RFC 7617)")),
        ProxyKind::Http => Ok(()),
        ProxyKind::Socks5 | ProxyKind::Socks5h => {
            let fits = |s: &str| (1..=255).contains(&s.len());
            if fits(&c.username) && fits(&c.password) {
                Ok(())
            } else {
                Err(invalid_url("a SOCKS5 user name and password must each be 1 to 255 bytes (RFC 1929)"))
            }
        }
    }
}

/// Decodes `%XX` escapes; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = hex_value(bytes.next()?)?;
            let lo = hex_value(bytes.next()?)?;
            out.push((hi << 4) | lo);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Escapes what would end the user name in a URL, for `Display`.
fn percent_encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// Whether `host:port` is reached directly according to a `no_proxy` list, as curl
/// and Python read it: entries separated by commas or white space, compared without
/// regard to case, and
///
/// * `*` matches every host;
/// * a name matches itself and every name under it: `example.com` and `.example.com`
///   (and `*.example.com`) both match `example.com` and `a.example.com`, not
///   `badexample.com`;
/// * an IP address (IPv6 bare or in brackets) matches that address only (no CIDR
///   ranges), and a host that is an IP address is matched by IP entries only;
/// * an entry with `:port` (`example.com:8080`, `[::1]:8080`) matches that port only.
///
/// `host` may be an IPv6 address with or without brackets; a trailing dot is ignored.
pub fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = normalize_host(host);
    let host_ip = host.parse::<IpAddr>().ok();
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .any(|entry| entry == "*" || no_proxy_entry_matches(entry, &host, host_ip, port))
}

fn normalize_host(host: &str) -> String {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn no_proxy_entry_matches(entry: &str, host: &str, host_ip: Option<IpAddr>, port: u16) -> bool {
    let Some((name, entry_port)) = split_no_proxy_entry(entry) else { return false };
    if entry_port.is_some_and(|p| p != port) {
        return false;
    }
    match (name.parse::<IpAddr>().ok(), host_ip) {
        (Some(a), Some(b)) => a == b,
        (Some(_), None) | (None, Some(_)) => false,
        (None, None) => {
            let name = name.trim_start_matches("*.").trim_start_matches('.').trim_end_matches('.').to_ascii_lowercase();
            !name.is_empty() && (host == name || host.strip_suffix(name.as_str()).is_some_and(|rest| rest.ends_with('.')))
        }
    }
}

/// An entry's host and optional port; `None` for an entry that cannot match
/// (bad port, unclosed bracket).
fn split_no_proxy_entry(entry: &str) -> Option<(&str, Option<u16>)> {
    if let Some(v6) = entry.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        return match after {
            "" => Some((h, None)),
            _ => Some((h, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match entry.split_once(':') {
        // More than one colon: a bare IPv6 address, no port.
        Some((_, rest)) if rest.contains(':') => Some((entry, None)),
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((entry, None)),
    }
}

/// Where the tunnel leads: the WebSocket server as the proxy must reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A host name (or an IP address as text, IPv6 with or without brackets) and a
    /// port, for the proxy to resolve. A name given to a `socks5://` proxy is sent
    /// as a domain all the same.
    Name(String, u16),
    /// An address the client resolved (for `socks5://`).
    Addr(SocketAddr),
}

/// The target as it goes on the wire.
enum Destination {
    Ip(IpAddr),
    Domain(String),
}

impl Destination {
    /// Checks a target: an IP address, or a name of 1 to 255 letters, digits, `.`,
    /// `-` and `_` (what fits a SOCKS5 domain and an HTTP request line).
    fn from_target(target: Target) -> Result<(Destination, u16), ProxyError> {
        let (name, port) = match target {
            Target::Addr(addr) => return Ok((Destination::Ip(addr.ip()), addr.port())),
            Target::Name(name, port) => (name, port),
        };
        if let Some(v6) = name.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip = v6.parse::<Ipv6Addr>().map_err(|_| ProxyError::InvalidTarget("invalid IPv6 address in brackets".into()))?;
            return Ok((Destination::Ip(IpAddr::V6(ip)), port));
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok((Destination::Ip(ip), port));
        }
        if !is_host_name(&name) {
            let why = format!("{:?} is not a host name of 1 to 255 letters, digits, '.', '-' or '_'", printable(&name));
            return Err(ProxyError::InvalidTarget(why));
        }
        Ok((Destination::Domain(name), port))
    }

    /// `host:port` for the CONNECT request line (IPv6 in brackets).
    fn authority(&self, port: u16) -> String {
        match self {
            Destination::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            Destination::Ip(ip) => format!("{ip}:{port}"),
            Destination::Domain(name) => format!("{name}:{port}"),
        }
    }
}

/// What [`ProxyHandshake::handle_bytes`] made of the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyStep {
    /// The answer is not complete: write [`ProxyHandshake::output`] (it may hold the
    /// next request) and read more.
    NeedMore,
    /// The tunnel is open. The last `leftover` bytes of the data just fed followed
    /// the proxy's answer: they are the first bytes of the tunnel (TLS or WebSocket)
    /// and must be handed to whatever runs over it.
    Done {
        /// Bytes at the end of the data that were not part of the proxy's answer.
        leftover: usize,
    },
}

/// The negotiation with a proxy, without I/O: bytes to send come out of
/// [`ProxyHandshake::output`], bytes received go into
/// [`ProxyHandshake::handle_bytes`], in pieces of any size, until
/// [`ProxyStep::Done`] or an error. Memory held is bounded:
/// [`MAX_RESPONSE_HEAD`] for an HTTP proxy's answer, 262 bytes for SOCKS5.
pub struct ProxyHandshake {
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    /// The part of the current answer received so far.
    buf: Vec<u8>,
    phase: Phase,
    /// Bytes examined by the HTTP head scan, for the test that proves it linear.
    #[cfg(test)]
    scanned: usize,
}

enum Phase {
    /// HTTP: reading the response head to CONNECT.
    HttpResponse {
        scan: HeadScan,
        credentials_sent: bool,
    },
    /// SOCKS5: the greeting is out, reading the method selection.
    SocksMethod {
        auth_request: Option<Vec<u8>>,
        connect_request: Vec<u8>,
    },
    /// SOCKS5: the RFC 1929 request is out, reading its status.
    SocksAuth {
        connect_request: Vec<u8>,
    },
    /// SOCKS5: the CONNECT request is out, reading the reply.
    SocksReply,
    Done,
    Failed(ProxyError),
}

impl Phase {
    /// The step under way, for messages.
    fn step(&self) -> &'static str {
        match self {
            Phase::HttpResponse { .. } => "the HTTP CONNECT response",
            Phase::SocksMethod { .. } => "the SOCKS5 method selection",
            Phase::SocksAuth { .. } => "the SOCKS5 username/password authentication",
            Phase::SocksReply => "the SOCKS5 CONNECT reply",
            Phase::Done => "the tunnel",
            Phase::Failed(_) => "a failed proxy handshake",
        }
    }
}

impl fmt::Debug for ProxyHandshake {
    /// The phase and sizes only: the output may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match &self.phase {
            Phase::Done => "done",
            Phase::Failed(_) => "failed",
            p => p.step(),
        };
        f.debug_struct("ProxyHandshake")
            .field("phase", &phase)
            .field("output_len", &self.output().len())
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl ProxyHandshake {
    /// A negotiation with `proxy` for a tunnel to `target`, its first request queued
    /// in [`ProxyHandshake::output`]: the HTTP `CONNECT` request, or the SOCKS5
    /// greeting (offering "no authentication", and "username/password" when the
    /// proxy URL has credentials). A target name that is not a valid host name, or
    /// does not fit SOCKS5's 255 bytes, is [`ProxyError::InvalidTarget`].
    pub fn new(proxy: &Proxy, target: Target) -> Result<ProxyHandshake, ProxyError> {
        let (dest, port) = Destination::from_target(target)?;
        let (out, phase) = match proxy.kind {
            ProxyKind::Http => {
                let phase = Phase::HttpResponse { scan: HeadScan::default(), credentials_sent: proxy.credentials.is_some() };
                (http_connect_request(&dest, port, proxy.credentials.as_ref()), phase)
            }
            ProxyKind::Socks5 | ProxyKind::Socks5h => {
                let auth_request = proxy.credentials.as_ref().map(socks_auth_request);
                let greeting = if auth_request.is_some() { vec![5, 2, 0x00, 0x02] } else { vec![5, 1, 0x00] };
                (greeting, Phase::SocksMethod { auth_request, connect_request: socks_connect_request(&dest, port) })
            }
        };
        Ok(ProxyHandshake {
            out,
            sent: 0,
            buf: Vec::new(),
            phase,
            #[cfg(test)]
            scanned: 0,
        })
    }

    /// Bytes to write to the proxy now.
    pub fn output(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// Marks `n` bytes of [`ProxyHandshake::output`] as written (at most all of them).
    pub fn consume_output(&mut self, n: usize) {
        self.sent = self.sent.saturating_add(n).min(self.out.len());
        if self.sent == self.out.len() {
            self.out = Vec::new();
            self.sent = 0;
        }
    }

    /// Feeds bytes read from the proxy. `Ok(NeedMore)`: write the output and read
    /// more; `Ok(Done { leftover })`: the tunnel is open, and the last `leftover`
    /// bytes of `data` belong to it. Once done or failed, every further call is
    /// refused: [`ProxyError::Finished`] after `Done`, the same error after an error.
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<ProxyStep, ProxyError> {
        match &self.phase {
            Phase::Done => return Err(ProxyError::Finished),
            Phase::Failed(e) => return Err(e.clone()),
            _ => {}
        }
        let result = match self.phase {
            Phase::HttpResponse { .. } => self.read_http(data),
            _ => self.read_socks(data),
        };
        match &result {
            Ok(ProxyStep::Done { .. }) => self.buf = Vec::new(),
            Err(e) => self.fail(e.clone()),
            Ok(ProxyStep::NeedMore) => {}
        }
        result
    }

    /// The proxy closed the connection (a read of 0 bytes): the error that says
    /// during which step. The handshake is failed from then on. After `Done`, this is
    /// [`ProxyError::Finished`] (the tunnel's end is not the proxy step's business).
    pub fn handle_eof(&mut self) -> ProxyError {
        let err = match &self.phase {
            Phase::Done => return ProxyError::Finished,
            Phase::Failed(e) => return e.clone(),
            p => ProxyError::UnexpectedEof { step: p.step() },
        };
        self.fail(err.clone());
        err
    }

    /// Whether the tunnel is open.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Bytes of memory held for the proxy's answer: at most [`MAX_RESPONSE_HEAD`].
    pub fn buffered_bytes(&self) -> usize {
        self.buf.capacity()
    }

    fn fail(&mut self, err: ProxyError) {
        self.phase = Phase::Failed(err);
        self.buf = Vec::new();
    }

    /// Reads response heads until a final one; 1xx interim responses are skipped.
    fn read_http(&mut self, data: &[u8]) -> Result<ProxyStep, ProxyError> {
        let mut pos = 0;
        loop {
            let Some(n) = self.read_head(&data[pos..])? else { return Ok(ProxyStep::NeedMore) };
            pos += n;
            let Phase::HttpResponse { credentials_sent, .. } = self.phase else { return Ok(ProxyStep::NeedMore) };
            if check_connect_response(&self.buf, credentials_sent)? == HttpVerdict::Established {
                self.phase = Phase::Done;
                return Ok(ProxyStep::Done { leftover: data.len() - pos });
            }
            self.buf.clear();
            self.phase = Phase::HttpResponse { scan: HeadScan::default(), credentials_sent };
        }
    }

    /// Appends the head's bytes from `data`, each examined once. `Some(n)` once the
    /// head is complete, `n` being the bytes of `data` it took.
    fn read_head(&mut self, data: &[u8]) -> Result<Option<usize>, ProxyError> {
        let Phase::HttpResponse { scan, .. } = &mut self.phase else { return Ok(None) };
        let room = MAX_RESPONSE_HEAD - self.buf.len();
        let window = &data[..data.len().min(room)];
        let end = window.iter().position(|&b| scan.is_end(b));
        #[cfg(test)]
        {
            self.scanned += end.map_or(window.len(), |i| i + 1);
        }
        let take = end.map_or(window.len(), |i| i + 1);
        push_capped(&mut self.buf, &window[..take], MAX_RESPONSE_HEAD);
        match end {
            Some(i) => Ok(Some(i + 1)),
            None if data.len() > room => Err(ProxyError::ResponseTooLarge),
            None => Ok(None),
        }
    }

    /// Reads SOCKS5 messages, each exactly as long as it says, checking every byte
    /// as it arrives.
    fn read_socks(&mut self, data: &[u8]) -> Result<ProxyStep, ProxyError> {
        let mut pos = 0;
        loop {
            let need = self.socks_message_len()?;
            if self.buf.len() < need {
                let take = (need - self.buf.len()).min(data.len() - pos);
                if take == 0 {
                    return Ok(ProxyStep::NeedMore);
                }
                push_capped(&mut self.buf, &data[pos..pos + take], MAX_SOCKS_MESSAGE);
                pos += take;
                continue;
            }
            self.finish_socks_message()?;
            self.buf.clear();
            if self.is_done() {
                return Ok(ProxyStep::Done { leftover: data.len() - pos });
            }
        }
    }

    /// The full length of the SOCKS5 message being read, as far as its bytes so far
    /// tell, after checking them.
    fn socks_message_len(&self) -> Result<usize, ProxyError> {
        let b = &self.buf;
        match self.phase {
            Phase::SocksMethod { .. } => {
                check_socks_version(b)?;
                Ok(2)
            }
            // RFC 1929's version byte (1) is not checked: some servers answer 5.
            Phase::SocksAuth { .. } => Ok(2),
            Phase::SocksReply => socks_reply_len(b),
            _ => Ok(0),
        }
    }

    /// Acts on a complete SOCKS5 message: queues the next request or finishes.
    fn finish_socks_message(&mut self) -> Result<(), ProxyError> {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        self.phase = match phase {
            Phase::SocksMethod { auth_request, connect_request } => {
                let credentials_offered = auth_request.is_some();
                match (self.buf[1], auth_request) {
                    (0x00, _) => self.send(connect_request, Phase::SocksReply),
                    (0x02, Some(auth)) => self.send(auth, Phase::SocksAuth { connect_request }),
                    (0xFF, _) => return Err(ProxyError::NoAcceptableMethod { credentials_offered }),
                    (m, _) => return Err(ProxyError::UnexpectedMethod(m)),
                }
            }
            Phase::SocksAuth { connect_request } => match self.buf[1] {
                0 => self.send(connect_request, Phase::SocksReply),
                status => return Err(ProxyError::AuthFailed { status }),
            },
            // The reply's checks are in `socks_reply_len`: complete means success.
            Phase::SocksReply => Phase::Done,
            other => other,
        };
        Ok(())
    }

    /// Queues `request` and returns `next`.
    fn send(&mut self, request: Vec<u8>, next: Phase) -> Phase {
        self.out.extend_from_slice(&request);
        next
    }
}

/// Appends `bytes`, growing the buffer geometrically but never past `cap`, so that
/// byte-by-byte feeding is linear and the memory held stays within the bound.
fn push_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let needed = buf.len() + bytes.len();
    if needed > buf.capacity() {
        let target = needed.max(2 * buf.capacity()).max(64).min(cap).max(needed);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

/// Finds the blank line that ends an HTTP head, one byte at a time (CRLF or bare LF
/// line ends, as httparse accepts).
#[derive(Debug, Default)]
struct HeadScan {
    /// The current line has a byte other than CR.
    line_has_content: bool,
}

impl HeadScan {
    /// Takes the next byte; `true` if it ends the head.
    fn is_end(&mut self, b: u8) -> bool {
        match b {
            b'\n' if !self.line_has_content => true,
            b'\n' => {
                self.line_has_content = false;
                false
            }
            b'\r' => false,
            _ => {
                self.line_has_content = true;
                false
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HttpVerdict {
    /// 2xx: the tunnel is open.
    Established,
    /// 1xx (not 101): another head follows.
    Interim,
}

/// `CONNECT host:port HTTP/1.1`, `Host`, and `Proxy-Authorization: Basic` with
/// credentials (RFC 9110 §9.3.6, RFC 7617).
fn http_connect_request(dest: &Destination, port: u16, credentials: Option<&Credentials>) -> Vec<u8> {
    let authority = dest.authority(port);
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(c) = credentials {
        let token = BASE64.encode(format!("{}:{}", c.username, c.password));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The proxy's verdict in a complete response head.
fn check_connect_response(head: &[u8], credentials_sent: bool) -> Result<HttpVerdict, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(ProxyError::Malformed("HTTP CONNECT response: incomplete header section".into())),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::Malformed(format!("HTTP CONNECT response: more than {MAX_HEADERS} header lines")));
        }
        Err(e) => return Err(ProxyError::Malformed(format!("HTTP CONNECT response: {e}"))),
    }
    let code = resp.code.unwrap_or(0);
    match code {
        200..=299 => Ok(HttpVerdict::Established),
        100 | 102..=199 => Ok(HttpVerdict::Interim),
        407 => {
            let challenges: Vec<String> = resp
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("proxy-authenticate"))
                .map(|h| printable(&String::from_utf8_lossy(h.value)))
                .collect();
            let challenge = (!challenges.is_empty()).then(|| printable(&challenges.join(", ")));
            Err(ProxyError::AuthRequired { challenge, credentials_sent })
        }
        _ => Err(ProxyError::Status { code, reason: printable(resp.reason.unwrap_or("")) }),
    }
}

/// RFC 1929: version 1, the user name and the password with their lengths (each
/// 1..=255 bytes, checked by [`Proxy::parse`]).
fn socks_auth_request(c: &Credentials) -> Vec<u8> {
    let mut req = Vec::with_capacity(3 + c.username.len() + c.password.len());
    req.push(0x01);
    push_with_length(&mut req, c.username.as_bytes());
    push_with_length(&mut req, c.password.as_bytes());
    req
}

/// A length byte and the bytes (at most 255, checked by the callers).
fn push_with_length(req: &mut Vec<u8>, bytes: &[u8]) {
    req.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    req.extend_from_slice(&bytes[..bytes.len().min(255)]);
}

/// RFC 1928 §4: VER 5, CMD 1 (CONNECT), RSV 0, the address by type, the port.
fn socks_connect_request(dest: &Destination, port: u16) -> Vec<u8> {
    let mut req = vec![0x05, 0x01, 0x00];
    match dest {
        Destination::Ip(IpAddr::V4(ip)) => {
            req.push(0x01);
            req.extend_from_slice(&ip.octets());
        }
        Destination::Ip(IpAddr::V6(ip)) => {
            req.push(0x04);
            req.extend_from_slice(&ip.octets());
        }
        Destination::Domain(name) => {
            req.push(0x03);
            push_with_length(&mut req, name.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    req
}

fn check_socks_version(b: &[u8]) -> Result<(), ProxyError> {
    match b.first() {
        Some(&v) if v != 5 => Err(ProxyError::SocksVersion(v)),
        _ => Ok(()),
    }
}

/// RFC 1928 §6: VER, REP, RSV, ATYP, BND.ADDR (4 or 16 bytes, or a length byte and
/// a domain), BND.PORT. Checks the bytes present in order; returns the full length
/// as far as known.
fn socks_reply_len(b: &[u8]) -> Result<usize, ProxyError> {
    check_socks_version(b)?;
    if let Some(&rep) = b.get(1) {
        if rep != 0 {
            return Err(ProxyError::SocksReply(rep));
        }
    }
    match b.get(3) {
        None => Ok(4),
        Some(0x01) => Ok(4 + 4 + 2),
        Some(0x04) => Ok(4 + 16 + 2),
        Some(0x03) => Ok(b.get(4).map_or(5, |&n| 5 + usize::from(n) + 2)),
        Some(&t) => Err(ProxyError::Malformed(format!("SOCKS5 CONNECT reply: unknown address type {t:#04x}"))),
    }
}

/// Text from the network made fit for a one-line message: control characters become
/// spaces, and it is cut at [`MAX_QUOTED`] characters.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_QUOTED).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if s.chars().nth(MAX_QUOTED).is_some() {
        out.push('…');
    }
    out
}

/// Why a proxy setting was refused or a tunnel could not be opened. `Display` is one
/// line that names the step.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy URL (or environment variable) is not valid; the reason never quotes
    /// the credentials.
    InvalidUrl(String),
    /// The target cannot be sent to the proxy (not a host name, or longer than 255
    /// bytes).
    InvalidTarget(String),
    /// HTTP: the proxy answered `CONNECT` with a status other than 2xx and 407.
    Status {
        /// The HTTP status.
        code: u16,
        /// The reason phrase, made printable.
        reason: String,
    },
    /// HTTP: 407 Proxy Authentication Required.
    AuthRequired {
        /// The `Proxy-Authenticate` values (joined with `, `), made printable.
        challenge: Option<String>,
        /// Whether we sent credentials (so they were refused) or had none.
        credentials_sent: bool,
    },
    /// HTTP: the response head exceeds [`MAX_RESPONSE_HEAD`] bytes.
    ResponseTooLarge,
    /// The proxy's answer is not valid HTTP or SOCKS5; says what is wrong.
    Malformed(String),
    /// SOCKS5: the proxy answered with this version instead of 5.
    SocksVersion(u8),
    /// SOCKS5: the proxy accepts none of the methods offered (0xFF).
    NoAcceptableMethod {
        /// Whether username/password was among them.
        credentials_offered: bool,
    },
    /// SOCKS5: the proxy chose a method we did not offer (0x02, username/password,
    /// when the proxy URL has no credentials).
    UnexpectedMethod(u8),
    /// SOCKS5: username/password authentication failed (RFC 1929 status != 0).
    AuthFailed {
        /// The status byte.
        status: u8,
    },
    /// SOCKS5: the CONNECT reply's code is not "succeeded" (RFC 1928 §6); see
    /// [`ProxyError::socks_reply_text`].
    SocksReply(u8),
    /// The proxy closed the connection before the step was complete.
    UnexpectedEof {
        /// The step under way, e.g. "the SOCKS5 CONNECT reply".
        step: &'static str,
    },
    /// Bytes fed after the handshake finished: they belong to the tunnel.
    Finished,
}

impl ProxyError {
    /// The text RFC 1928 §6 gives for a SOCKS5 reply code.
    pub fn socks_reply_text(code: u8) -> &'static str {
        match code {
            0 => "succeeded",
            1 => "general SOCKS server failure",
            2 => "connection not allowed by ruleset",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => "unassigned reply code",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProxyError::*;
        match self {
            InvalidUrl(why) => write!(f, "invalid proxy URL: {why}"),
            InvalidTarget(why) => write!(f, "invalid target for the proxy: {why}"),
            Status { code, reason } if reason.is_empty() => write!(f, "proxy refused the tunnel: HTTP {code}"),
            Status { code, reason } => write!(f, "proxy refused the tunnel: HTTP {code} {reason}"),
            AuthRequired { challenge, credentials_sent } => {
                if *credentials_sent {
                    write!(f, "proxy refused the credentials: HTTP 407 Proxy Authentication Required")?;
                } else {
                    write!(f, "proxy requires authentication (HTTP 407) and the proxy URL has no user:password")?;
                }
                match challenge {
                    Some(c) => write!(f, " (it asks for: {c})"),
                    None => Ok(()),
                }
            }
            ResponseTooLarge => write!(f, "proxy's answer to CONNECT exceeds {MAX_RESPONSE_HEAD} bytes without ending its header section"),
            Malformed(what) => write!(f, "malformed proxy answer: {what}"),
            SocksVersion(v) => write!(f, "SOCKS5 proxy: the answer has version {v:#04x}, not 5 (is it a SOCKS5 proxy?)"),
            NoAcceptableMethod { credentials_offered: true } => {
                write!(f, "SOCKS5 proxy: accepts neither no authentication nor username/password")
            }
            NoAcceptableMethod { credentials_offered: false } => {
                write!(f, "SOCKS5 proxy: does not accept connections without authentication (add user:password to the proxy URL?)")
            }
            UnexpectedMethod(2) => write!(f, "SOCKS5 proxy: requires username/password authentication, and the proxy URL has none"),
            UnexpectedMethod(m) => write!(f, "SOCKS5 proxy: chose authentication method {m:#04x}, which was not offered"),
            AuthFailed { status } => write!(f, "SOCKS5 proxy: username/password authentication failed (status {status})"),
            SocksReply(code) => {
                write!(f, "SOCKS5 proxy could not open the tunnel: {} (reply {code})", ProxyError::socks_reply_text(*code))
            }
            UnexpectedEof { step } => write!(f, "proxy closed the connection during {step}"),
            Finished => write!(f, "the proxy handshake is finished: further bytes belong to the tunnel"),
        }
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_scan_is_linear_when_fed_byte_by_byte() {
        let proxy = Proxy::parse("http://p:3128").unwrap();
        let mut hs = ProxyHandshake::new(&proxy, Target::Name("h".into(), 80)).unwrap();
        let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..8 {
            answer.extend_from_slice(format!("X-Filler: {}\r\n", "f".repeat(1000)).as_bytes());
        }
        answer.extend_from_slice(b"\r\n");
        assert!(answer.len() <= MAX_RESPONSE_HEAD);
        for (i, b) in answer.iter().enumerate() {
            let step = hs.handle_bytes(std::slice::from_ref(b)).unwrap();
            assert_eq!(step == ProxyStep::NeedMore, i + 1 < answer.len());
        }
        assert!(hs.is_done());
        assert_eq!(hs.scanned, answer.len(), "each byte examined once");
    }

    #[test]
    fn buffer_growth_is_capped_and_geometric() {
        let mut buf = Vec::new();
        let mut reallocs = 0;
        for _ in 0..MAX_RESPONSE_HEAD {
            let cap = buf.capacity();
            push_capped(&mut buf, b"x", MAX_RESPONSE_HEAD);
            reallocs += usize::from(buf.capacity() != cap);
            assert!(buf.capacity() <= MAX_RESPONSE_HEAD);
        }
        assert!(reallocs <= 10, "{reallocs} reallocations");
    }

    #[test]
    fn head_scan_accepts_crlf_and_bare_lf() {
        for (head, end) in [(&b"A\r\n\r\n"[..], 4), (b"A\n\n", 2), (b"A\r\nB\n\r\n", 6), (b"A\r\r\n\r\n", 5)] {
            let mut scan = HeadScan::default();
            assert_eq!(head.iter().position(|&b| scan.is_end(b)), Some(end), "{head:?}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b%3ac").as_deref(), Some("a@b:c"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn printable_strips_controls_and_truncates() {
        assert_eq!(printable("a\r\nb\x1b[31m"), "a  b [31m");
        let long = "x".repeat(MAX_QUOTED + 5);
        assert_eq!(printable(&long).chars().count(), MAX_QUOTED + 1);
    }

    #[test]
    fn socks_reply_length_by_address_type() {
        assert_eq!(socks_reply_len(b""), Ok(4));
        assert_eq!(socks_reply_len(b"\x05\x00\x00"), Ok(4));
        assert_eq!(socks_reply_len(b"\x05\x00\x00\x01"), Ok(10));
        assert_eq!(socks_reply_len(b"\x05\x00\x00\x04"), Ok(22));
        assert_eq!(socks_reply_len(b"\x05\x00\x00\x03"), Ok(5));
        assert_eq!(socks_reply_len(b"\x05\x00\x00\x03\xff"), Ok(MAX_SOCKS_MESSAGE));
        assert_eq!(socks_reply_len(b"\x05\x00\x00\x03\x00"), Ok(7));
        assert_eq!(socks_reply_len(b"\x04"), Err(ProxyError::SocksVersion(4)));
        assert_eq!(socks_reply_len(b"\x05\x03"), Err(ProxyError::SocksReply(3)));
        assert!(matches!(socks_reply_len(b"\x05\x00\x00\x02"), Err(ProxyError::Malformed(_))));
    }
}
