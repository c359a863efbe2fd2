//! The opening handshake (RFC 6455 §4): the accept key, reading an HTTP head that
//! arrives in pieces, the server's view of a request and its answers, and the client's
//! request and its check of the response.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

use crate::proto::config::Config;
#[cfg(feature = "deflate")]
use crate::proto::deflate::{DeflateConfig, DeflateParams};
use crate::proto::error::{HandshakeError, UsageError};

/// The GUID appended to the key (§1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§1.3, §4.2.2):
/// base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    BASE64.encode(sha.finalize())
}

/// Collects an HTTP head that arrives in pieces. Each byte is scanned once for the
/// blank line that ends the head, so trickling bytes one at a time costs linear work.
#[derive(Debug, Default)]
pub(crate) struct HeadReader {
    buf: Vec<u8>,
    /// Bytes examined so far, for the test that proves the work is linear.
    #[cfg(test)]
    scanned: usize,
}

impl HeadReader {
    /// Appends `data`. Returns `Ok(Some(rest))` once the head is complete, where
    /// `rest` is what followed it in `data` (a pipelined first frame); `Ok(None)` for
    /// "need more"; `Err` when the head would exceed `limit` bytes.
    pub(crate) fn push<'a>(&mut self, data: &'a [u8], limit: usize) -> Result<Option<&'a [u8]>, HandshakeError> {
        let old = self.buf.len();
        let take = data.len().min(limit.saturating_sub(old));
        self.buf.extend_from_slice(&data[..take]);
        // Only the new bytes, plus three before them, can complete the blank line.
        let from = old.saturating_sub(3);
        #[cfg(test)]
        {
            self.scanned += self.buf.len() - from;
        }
        match self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            Some(p) => {
                let end = from + p + 4;
                self.buf.truncate(end);
                Ok(Some(&data[end - old..]))
            }
            None if self.buf.len() >= limit => Err(HandshakeError::HeadTooLarge),
            None => Ok(None),
        }
    }

    /// The complete head.
    pub(crate) fn head(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes held.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Header lines of a head, names as sent, values as raw bytes.
pub type Headers = Vec<(String, Vec<u8>)>;

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

/// Every value of header `name` that is UTF-8.
fn header_values<'a>(headers: &'a Headers, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).filter_map(|(_, v)| std::str::from_utf8(v).ok())
}

/// All comma-separated tokens of every header `name`, trimmed and non-empty.
fn tokens<'a>(headers: &'a Headers, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    header_values(headers, name).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
}

fn has_token(headers: &Headers, name: &str, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

fn count(headers: &Headers, name: &str) -> usize {
    headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
}

/// Header lines handed over by another stack, held to what httparse accepts from the
/// wire: names are tokens, values carry no CR, LF, NUL or other control characters.
fn collect_parts<N: AsRef<str>, V: AsRef<[u8]>>(headers: impl IntoIterator<Item = (N, V)>) -> Result<Headers, HandshakeError> {
    headers
        .into_iter()
        .map(|(n, v)| {
            let (n, v) = (n.as_ref(), v.as_ref());
            let value_ok = v.iter().all(|&b| b == b'\t' || b >= 0x20 && b != 0x7F);
            if !is_token(n) || !value_ok {
                return Err(HandshakeError::Malformed("header line"));
            }
            Ok((n.to_owned(), v.to_vec()))
        })
        .collect()
}

fn collect_headers(raw: &[httparse::Header<'_>]) -> Headers {
    raw.iter().map(|h| (h.name.to_owned(), h.value.to_owned())).collect()
}

/// A client's opening handshake as the server received it (§4.2.1), valid per RFC 6455.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The request target: path and query, e.g. `/lobby?name=ann`.
    pub target: String,
    /// Every header line, in order.
    pub headers: Headers,
    pub(crate) key: Vec<u8>,
}

impl Request {
    /// A request that another HTTP/1.1 stack (hyper, axum, actix ...) has parsed:
    /// its method, target (path and query) and header lines. It gets the checks of a
    /// request this crate reads itself (§4.2.1), with the same errors, and header lines
    /// are held to what the wire allows (token names, no control characters in
    /// values); [`HandshakeError::rejection`] gives the refusal to answer with. The
    /// HTTP version is the caller's to check: WebSocket needs HTTP/1.1 or later
    /// (`HandshakeError::HttpVersion.rejection()` is the 505 answer).
    ///
    /// ```
    /// use rfc6455::{Accept, Config, Request};
    ///
    /// let headers = [
    ///     ("Host", "example.com"),
    ///     ("Upgrade", "websocket"),
    ///     ("Connection", "Upgrade"),
    ///     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ///     ("Sec-WebSocket-Version", "13"),
    ///     ("Sec-WebSocket-Protocol", "chat, superchat"),
    /// ];
    /// let req = Request::from_parts("GET", "/chat", headers).unwrap();
    /// let accepted = req.negotiate(&Config::default(), Accept::new().subprotocol("chat")).unwrap();
    /// assert!(accepted.headers().contains(&("Sec-WebSocket-Accept".into(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())));
    /// assert_eq!(accepted.negotiated().subprotocol.as_deref(), Some("chat"));
    /// ```
    pub fn from_parts<N: AsRef<str>, V: AsRef<[u8]>>(
        method: &str,
        target: &str,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Request, HandshakeError> {
        let headers = collect_parts(headers)?;
        if !target.bytes().all(|b| b > 0x20 && b < 0x7F) {
            return Err(HandshakeError::Malformed("request target"));
        }
        validate_request(method, target, headers)
    }

    /// Decides the server's answer without I/O: checks `accept` against the request
    /// (the subprotocol must be one offered, extra headers must be valid), negotiates
    /// permessage-deflate when `config` enables it, and returns the 101 response's
    /// headers with the parameters the connection opens with
    /// ([`crate::Connection::upgraded`]).
    pub fn negotiate(&self, config: &Config, accept: Accept) -> Result<Accepted, UsageError> {
        if let Some(p) = &accept.subprotocol {
            if !is_token(p) {
                return Err(UsageError::InvalidSubprotocol(p.clone()));
            }
            if !self.subprotocols().any(|o| o == p) {
                return Err(UsageError::SubprotocolNotOffered(p.clone()));
            }
        }
        for (n, v) in &accept.headers {
            check_header(n, v)?;
            check_not_reserved(n)?;
        }
        let negotiated = Negotiated { subprotocol: accept.subprotocol, ..Negotiated::default() };
        #[cfg(feature = "deflate")]
        let negotiated = Negotiated {
            deflate: config.deflate.as_ref().and_then(|cfg| {
                let offers = header_values(&self.headers, "sec-websocket-extensions");
                crate::proto::deflate::negotiate_server(offers, cfg)
            }),
            ..negotiated
        };
        #[cfg(not(feature = "deflate"))]
        let _ = config;
        let mut headers = vec![
            ("Upgrade".to_owned(), "websocket".to_owned()),
            ("Connection".to_owned(), "Upgrade".to_owned()),
            ("Sec-WebSocket-Accept".to_owned(), accept_key(&self.key)),
        ];
        if let Some(p) = &negotiated.subprotocol {
            headers.push(("Sec-WebSocket-Protocol".to_owned(), p.clone()));
        }
        #[cfg(feature = "deflate")]
        if let Some(params) = &negotiated.deflate {
            headers.push(("Sec-WebSocket-Extensions".to_owned(), params.to_header()));
        }
        headers.extend(accept.headers);
        Ok(Accepted { headers, negotiated })
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        target_path(&self.target)
    }

    /// The query part of the target (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        target_query(&self.target)
    }

    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }

    /// The `Host` header.
    pub fn host(&self) -> Option<&str> {
        self.header("host").and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The `Origin` header (sent by browsers, §10.2).
    pub fn origin(&self) -> Option<&str> {
        self.header("origin").and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Subprotocols offered in `Sec-WebSocket-Protocol`, in the client's order of preference.
    pub fn subprotocols(&self) -> impl Iterator<Item = &str> {
        tokens(&self.headers, "sec-websocket-protocol")
    }

    /// Extensions offered in `Sec-WebSocket-Extensions` (each with its parameters).
    pub fn extensions(&self) -> impl Iterator<Item = &str> {
        tokens(&self.headers, "sec-websocket-extensions")
    }
}

fn target_path(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

fn target_query(target: &str) -> Option<&str> {
    target.split_once('?').map(|(_, q)| q)
}

/// A plain HTTP request: no `Sec-WebSocket-Key` and no `websocket` upgrade asked (a
/// browser opening the address, a health check, a crawler). A server engine whose
/// [`Config::plain_http`] is on hands it over as [`crate::Event::HttpRequest`], to be
/// answered with [`crate::Connection::respond`]; the connection then ends. A request
/// body is not read (it is discarded with whatever else follows the head).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpRequest {
    /// The method (`GET`, `HEAD`, `POST` ...).
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Every header line, in order.
    pub headers: Headers,
}

impl HttpRequest {
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        target_path(&self.target)
    }

    /// The query part of the target (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        target_query(&self.target)
    }

    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }

    /// `GET` or `HEAD`: the methods that read a resource (a `HEAD` answer carries no body).
    pub fn is_read(&self) -> bool {
        self.method == "GET" || self.method == "HEAD"
    }

    /// The answer of a server that serves no plain HTTP: `426 Upgrade Required` (this
    /// is a WebSocket endpoint) to `GET` and `HEAD`, `405 Method Not Allowed` to others.
    pub fn default_response(&self) -> Reject {
        let e = if self.is_read() { HandshakeError::NotWebSocket } else { HandshakeError::MethodNotAllowed };
        e.rejection().unwrap_or_else(|| Reject::new(400))
    }
}

/// A complete request head, as a server engine reads it.
#[derive(Debug)]
pub(crate) enum RequestHead {
    /// A valid opening handshake.
    Upgrade(Request),
    /// A plain HTTP request (only when the engine takes them).
    Plain(HttpRequest),
}

/// No key and no `websocket` in `Upgrade`: a plain HTTP request, not a failed
/// handshake. An upgrade to something else (`Upgrade: h2c` from `curl --http2`) may
/// be ignored (RFC 9110 §7.8).
fn is_plain(headers: &Headers) -> bool {
    header(headers, "sec-websocket-key").is_none() && !has_token(headers, "upgrade", "websocket")
}

/// Parses a complete request head: a plain HTTP request when `plain_http` and it asks
/// for no upgrade, else an opening handshake, validated (§4.2.1).
pub(crate) fn parse_request(head: &[u8], max_headers: usize, plain_http: bool) -> Result<RequestHead, HandshakeError> {
    let mut raw = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HandshakeError::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(_) => return Err(HandshakeError::Malformed("request")),
    }
    let (method, target, headers) = (req.method.unwrap_or(""), req.path.unwrap_or("/"), collect_headers(req.headers));
    if plain_http && is_plain(&headers) {
        return Ok(RequestHead::Plain(HttpRequest { method: method.to_owned(), target: target.to_owned(), headers }));
    }
    // §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if req.version != Some(1) && method == "GET" {
        return Err(HandshakeError::HttpVersion);
    }
    validate_request(method, target, headers).map(RequestHead::Upgrade)
}

/// The checks of §4.2.1 on a request's method, target and headers, however parsed.
fn validate_request(method: &str, target: &str, headers: Headers) -> Result<Request, HandshakeError> {
    // Item 1: a GET request.
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    // Item 2: a Host header.
    if count(&headers, "host") != 1 {
        return Err(HandshakeError::BadHeader("Host"));
    }
    // Item 3: Upgrade includes "websocket" (case-insensitive). Neither Upgrade nor a
    // key is a plain HTTP request (a browser opening the address): it is told what this is.
    if is_plain(&headers) {
        return Err(HandshakeError::NotWebSocket);
    }
    if !has_token(&headers, "upgrade", "websocket") {
        return Err(HandshakeError::BadHeader("Upgrade"));
    }
    // Item 4: Connection includes the token "Upgrade".
    if !has_token(&headers, "connection", "upgrade") {
        return Err(HandshakeError::BadHeader("Connection"));
    }
    // Item 6: Sec-WebSocket-Version is 13 (§4.2.2: otherwise 426 listing 13).
    if count(&headers, "sec-websocket-version") != 1 || header(&headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    // Item 5: Sec-WebSocket-Key is base64 of 16 bytes, exactly once.
    if count(&headers, "sec-websocket-key") != 1 {
        return Err(HandshakeError::BadHeader("Sec-WebSocket-Key"));
    }
    let key = header(&headers, "sec-websocket-key").unwrap_or_default().trim_ascii().to_vec();
    match BASE64.decode(&key) {
        Ok(k) if k.len() == 16 => {}
        _ => return Err(HandshakeError::BadHeader("Sec-WebSocket-Key")),
    }
    Ok(Request { target: target.to_owned(), headers, key })
}

/// Is `s` an HTTP token (RFC 7230 §3.2.6)? Subprotocols and header names must be.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value may not contain CR, LF or NUL (header injection) nor other controls.
fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7F))
}

/// Headers the handshake itself writes (either side): an extra one would contradict it.
const HANDSHAKE_HEADERS: [&str; 8] = [
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

fn check_not_reserved(name: &str) -> Result<(), UsageError> {
    if HANDSHAKE_HEADERS.iter().any(|r| name.eq_ignore_ascii_case(r)) {
        return Err(UsageError::ReservedHeader(name.to_owned()));
    }
    Ok(())
}

fn check_header(name: &str, value: &str) -> Result<(), UsageError> {
    if !is_token(name) {
        return Err(UsageError::InvalidHeaderName(name.to_owned()));
    }
    if !is_field_value(value) {
        return Err(UsageError::InvalidHeaderValue { name: name.to_owned() });
    }
    Ok(())
}

/// The server's answer to a [`Request`]: an optional subprotocol and extra headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accept {
    pub(crate) subprotocol: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
}

impl Accept {
    /// Accept with no subprotocol and no extra headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Choose a subprotocol (it must be one the client offered).
    pub fn subprotocol(mut self, subprotocol: impl Into<String>) -> Self {
        self.subprotocol = Some(subprotocol.into());
        self
    }

    /// Add a header to the 101 response.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What a connection agreed on in its opening handshake: the parameters a
/// connection opened by another HTTP stack starts with ([`crate::Connection::upgraded`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// The subprotocol chosen by the server, if any.
    pub subprotocol: Option<String>,
    /// The permessage-deflate parameters, when compression was agreed.
    #[cfg(feature = "deflate")]
    pub deflate: Option<DeflateParams>,
}

impl Negotiated {
    /// No subprotocol, no compression.
    pub fn new() -> Self {
        Self::default()
    }

    /// With a subprotocol.
    pub fn subprotocol(mut self, subprotocol: impl Into<String>) -> Self {
        self.subprotocol = Some(subprotocol.into());
        self
    }

    /// With permessage-deflate agreed on `params`.
    #[cfg(feature = "deflate")]
    pub fn deflate(mut self, params: DeflateParams) -> Self {
        self.deflate = Some(params);
        self
    }
}

/// The server's 101 answer to a [`Request`], decided without I/O by
/// [`Request::negotiate`]: the response headers and the negotiated parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    headers: Vec<(String, String)>,
    negotiated: Negotiated,
}

impl Accepted {
    /// The response's header lines (status 101 is implied): `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Accept`, the subprotocol and extension answers, then the extra
    /// headers of the [`Accept`].
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// What the connection opens with.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The whole response head, `HTTP/1.1 101 Switching Protocols` to the blank line.
    pub fn write_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (n, v) in &self.headers {
            write_header_line(out, n, v);
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn write_header_line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        100..=399 => "",
        _ => "Error",
    }
}

/// A server's refusal of a handshake: an HTTP status other than 101, extra headers
/// (`WWW-Authenticate`, `Retry-After` ...) and a body. The same answer in the core
/// ([`crate::Connection::reject`]) and in the server's handler API. It is also the
/// answer to a plain [`HttpRequest`] ([`crate::Connection::respond`]), where a 200
/// with a page is as good as a 404.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reject {
    /// A refusal with `status` (200-599, not 101; checked when it is written), no
    /// extra headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new() }
    }

    /// Adds a header to the response.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the response body (sent with `Content-Length`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The extra headers.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The refusal's header lines, checked, as this crate writes them (before its own
    /// `Connection: close` and `Content-Length`): those the status calls for (426:
    /// `Sec-WebSocket-Version: 13` (§4.2.2) and `Upgrade: websocket`; 405: `Allow:
    /// GET`; each unless [`Reject::headers`] has its own), then [`Reject::headers`],
    /// then `Content-Type: text/plain` for a body that names no type. Another HTTP
    /// stack writing the refusal sends these.
    pub fn response_headers(&self) -> Result<Vec<(String, String)>, UsageError> {
        if !(200..=599).contains(&self.status) {
            return Err(UsageError::InvalidStatus(self.status));
        }
        for (n, v) in &self.headers {
            check_header(n, v)?;
            // The response frames itself: a second Content-Length would smuggle a body.
            if ["content-length", "transfer-encoding", "connection"].iter().any(|r| n.eq_ignore_ascii_case(r)) {
                return Err(UsageError::ReservedHeader(n.clone()));
            }
        }
        let implied: &[(&str, &str)] = match self.status {
            426 => &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")],
            405 => &[("Allow", "GET")],
            _ => &[],
        };
        let explicit = |name: &str| self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut lines: Vec<(String, String)> =
            implied.iter().filter(|(n, _)| !explicit(n)).map(|&(n, v)| (n.to_owned(), v.to_owned())).collect();
        lines.extend(self.headers.iter().cloned());
        if self.has_content() && !explicit("content-type") {
            lines.push(("Content-Type".to_owned(), "text/plain; charset=utf-8".to_owned()));
        }
        Ok(lines)
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Whether a body goes out: not for 204 and 304, which have no content (RFC 9110
    /// §6.4.1); their body is ignored.
    fn has_content(&self) -> bool {
        !self.body.is_empty() && self.status != 204 && self.status != 304
    }
}

/// Writes a non-101 HTTP response that ends the connection; `with_body: false` answers
/// a `HEAD` (the same head, `Content-Length` included, and no body).
pub(crate) fn write_response(out: &mut Vec<u8>, reject: &Reject, with_body: bool) -> Result<(), UsageError> {
    let lines = reject.response_headers()?;
    let status = reject.status;
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    for (n, v) in &lines {
        write_header_line(out, n, v);
    }
    // RFC 9110 §7.8: a response that names an Upgrade lists it in Connection too.
    let connection = if status == 426 { "Upgrade, close" } else { "close" };
    out.extend_from_slice(format!("Connection: {connection}\r\n").as_bytes());
    // RFC 9110 §8.6: no Content-Length on a 204 (a 304 is not expected to carry one).
    if status != 204 && status != 304 {
        out.extend_from_slice(format!("Content-Length: {}\r\n", reject.body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if with_body && reject.has_content() {
        out.extend_from_slice(&reject.body);
    }
    Ok(())
}

/// A parsed `ws://` or `wss://` URL (§3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `true` for `wss://`.
    pub secure: bool,
    /// The host: a name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    /// The port (default 80 for ws, 443 for wss).
    pub port: u16,
    /// Path and query, at least `/`.
    pub resource: String,
}

impl Url {
    /// Parses a WebSocket URL. Fragments and user info are refused (§3).
    pub fn parse(url: &str) -> Result<Url, UsageError> {
        let bad = |why: &str| UsageError::InvalidUrl(format!("{url}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("missing scheme"))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" => false,
            "wss" => true,
            _ => return Err(bad("scheme must be ws or wss")),
        };
        if rest.contains('#') {
            return Err(bad("fragments are not allowed"));
        }
        let (authority, resource) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after {
                "" => (h, None),
                _ => (h, Some(after.strip_prefix(':').ok_or_else(|| bad("invalid port"))?)),
            }
        } else {
            // Without brackets a host has no colon: `h:9001:9` is a bad port, not a host.
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:%".contains(&b)) {
            return Err(bad("invalid host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
            None if secure => 443,
            None => 80,
        };
        if !resource.bytes().all(|b| b > 0x20 && b < 0x7F) {
            return Err(bad("invalid characters in path"));
        }
        Ok(Url { secure, host: host.to_owned(), port, resource })
    }

    /// The `Host` header value: the host, and the port unless it is the default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.secure { 443 } else { 80 };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

/// What a client sends to open a connection: URL, subprotocols, origin, extra headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    pub(crate) url: Url,
    pub(crate) subprotocols: Vec<String>,
    pub(crate) headers: Vec<(String, String)>,
}

impl ClientRequest {
    /// A request for `url` (`ws://host[:port]/path?query` or `wss://...`). TLS is the
    /// transport's business: the engine writes the same request for both schemes.
    pub fn new(url: &str) -> Result<Self, UsageError> {
        Ok(Self { url: Url::parse(url)?, subprotocols: Vec::new(), headers: Vec::new() })
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Offer a subprotocol (must be an HTTP token).
    pub fn subprotocol(mut self, subprotocol: impl Into<String>) -> Result<Self, UsageError> {
        let p = subprotocol.into();
        if !is_token(&p) {
            return Err(UsageError::InvalidSubprotocol(p));
        }
        self.subprotocols.push(p);
        Ok(self)
    }

    /// The subprotocols offered, in order of preference.
    pub fn subprotocols(&self) -> &[String] {
        &self.subprotocols
    }

    /// The extra headers (`Origin` among them).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Send an `Origin` header.
    pub fn origin(self, origin: impl Into<String>) -> Result<Self, UsageError> {
        self.header("Origin", origin)
    }

    /// Add a header. Names must be tokens; values may not contain CR, LF or NUL.
    /// Headers the handshake itself sets are refused.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Result<Self, UsageError> {
        let (name, value) = (name.into(), value.into());
        check_header(&name, &value)?;
        check_not_reserved(&name)?;
        self.headers.push((name, value));
        Ok(self)
    }

    /// The request's header lines with `key` (16 random bytes), `Host` first.
    pub(crate) fn header_lines(&self, key: [u8; 16], extensions: Option<&str>) -> Vec<(String, String)> {
        let mut lines = vec![
            ("Host".to_owned(), self.url.host_header()),
            ("Upgrade".to_owned(), "websocket".to_owned()),
            ("Connection".to_owned(), "Upgrade".to_owned()),
            ("Sec-WebSocket-Version".to_owned(), "13".to_owned()),
            ("Sec-WebSocket-Key".to_owned(), BASE64.encode(key)),
        ];
        if !self.subprotocols.is_empty() {
            lines.push(("Sec-WebSocket-Protocol".to_owned(), self.subprotocols.join(", ")));
        }
        if let Some(e) = extensions {
            lines.push(("Sec-WebSocket-Extensions".to_owned(), e.to_owned()));
        }
        lines.extend(self.headers.iter().cloned());
        lines
    }
}

/// The server's 101 response as the client received it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// Always 101 once the connection is open.
    pub status: u16,
    /// Every header line, in order.
    pub headers: Headers,
    /// The subprotocol the server chose, if any.
    pub subprotocol: Option<String>,
}

impl Response {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        header(&self.headers, name)
    }
}

/// Parses a response head into its status and header lines.
fn parse_response_head(head: &[u8], max_headers: usize) -> Result<(u16, Headers), HandshakeError> {
    let mut raw = vec![httparse::EMPTY_HEADER; max_headers];
    let mut resp = httparse::Response::new(&mut raw);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HandshakeError::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(_) => return Err(HandshakeError::Malformed("response")),
    }
    Ok((resp.code.unwrap_or(0), collect_headers(resp.headers)))
}

/// The client's checks of the server's response (§4.1), however it was parsed.
fn validate_response(
    status: u16,
    headers: Headers,
    expected_accept: &str,
    offered: &[String],
    check_extensions: &mut dyn FnMut(&str) -> Result<(), HandshakeError>,
) -> Result<Response, HandshakeError> {
    if status != 101 {
        return Err(HandshakeError::Status { status, headers });
    }
    if !has_token(&headers, "upgrade", "websocket") {
        return Err(HandshakeError::BadHeader("Upgrade"));
    }
    if !has_token(&headers, "connection", "upgrade") {
        return Err(HandshakeError::BadHeader("Connection"));
    }
    if count(&headers, "sec-websocket-accept") != 1
        || header(&headers, "sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(expected_accept.as_bytes())
    {
        return Err(HandshakeError::BadAccept);
    }
    // Every extension header value, joined as one list (it may be split over lines).
    let ext: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|(_, v)| std::str::from_utf8(v).unwrap_or("\u{fffd}"))
        .collect();
    if !ext.is_empty() {
        check_extensions(&ext.join(", "))?;
    }
    let chosen: Vec<&str> = tokens(&headers, "sec-websocket-protocol").collect();
    let subprotocol = match chosen[..] {
        [] => None,
        [p] if offered.iter().any(|o| o == p) => Some(p.to_owned()),
        _ => return Err(HandshakeError::UnexpectedSubprotocol(chosen.join(", "))),
    };
    Ok(Response { status, headers, subprotocol })
}

/// The client side of the opening handshake (§4.1) without I/O, for any driver: it
/// writes the request, then reads the server's response in pieces of any size and
/// checks it (status 101, `Upgrade`, `Connection`, `Sec-WebSocket-Accept` against our
/// key, the subprotocol and the extensions).
///
/// ```
/// use rfc6455::ClientRequest;
/// use rfc6455::ClientHandshake;
///
/// let req = ClientRequest::new("ws://server.example.com/chat").unwrap();
/// // The RFC 6455 §1.3 sample key; use `with_random_key` for real connections.
/// let mut hs = ClientHandshake::new(&req, *b"the sample nonce");
/// let mut out = Vec::new();
/// hs.write_request(&mut out);
/// assert!(out.starts_with(b"GET /chat HTTP/1.1\r\n"));
/// // ... write `out` to the socket, then feed what comes back:
/// let input = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
///               Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
/// let done = hs.push(input).unwrap().expect("a complete head");
/// assert_eq!(done.response.status, 101);
/// // The bytes behind the head are the first frames.
/// assert_eq!(&input[input.len() - done.rest..], b"\x81\x02hi");
/// ```
#[derive(Debug)]
pub struct ClientHandshake {
    request: ClientRequest,
    key: [u8; 16],
    expected_accept: String,
    #[cfg(feature = "deflate")]
    deflate: Option<DeflateConfig>,
    head: HeadReader,
    max_head: usize,
    max_headers: usize,
    finished: bool,
}

/// A completed client handshake: what [`ClientHandshake::push`] returns once the
/// server's response is complete and valid.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientHandshakeDone {
    /// The server's 101 response.
    pub response: Response,
    /// The permessage-deflate parameters agreed, `None` when the server declined the
    /// offer (or none was made).
    #[cfg(feature = "deflate")]
    pub deflate: Option<DeflateParams>,
    /// How many bytes at the end of the last input followed the head: the first
    /// frames, to be handed to the frame reader.
    pub rest: usize,
}

impl ClientHandshakeDone {
    /// What the connection opens with ([`crate::Connection::upgraded`]).
    pub fn negotiated(&self) -> Negotiated {
        Negotiated {
            subprotocol: self.response.subprotocol.clone(),
            #[cfg(feature = "deflate")]
            deflate: self.deflate,
        }
    }
}

impl ClientHandshake {
    /// A handshake for `request` with `key`, the 16 bytes whose base64 form is sent
    /// as `Sec-WebSocket-Key`. They must be random for each connection (§4.1); this
    /// constructor is for tests and drivers that bring their own randomness.
    pub fn new(request: &ClientRequest, key: [u8; 16]) -> Self {
        let expected_accept = accept_key(BASE64.encode(key).as_bytes());
        let defaults = crate::proto::config::Config::default();
        Self {
            request: request.clone(),
            key,
            expected_accept,
            #[cfg(feature = "deflate")]
            deflate: None,
            head: HeadReader::default(),
            max_head: defaults.max_handshake_size,
            max_headers: defaults.max_headers,
            finished: false,
        }
    }

    /// A handshake with a fresh key drawn from `rand`'s thread-local CSPRNG (seeded
    /// from the operating system).
    pub fn with_random_key(request: &ClientRequest) -> Self {
        let mut key = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        Self::new(request, key)
    }

    /// Offers permessage-deflate with `cfg` (RFC 7692); the server's answer is
    /// checked against it and the agreed parameters come back in
    /// [`ClientHandshakeDone::deflate`]. Call before [`ClientHandshake::write_request`].
    #[cfg(feature = "deflate")]
    pub fn offer_deflate(mut self, cfg: &DeflateConfig) -> Self {
        self.deflate = Some(cfg.clone());
        self
    }

    /// Bytes held while reading the response head.
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.head.capacity()
    }

    /// Sets the largest response head (bytes) and the most header lines accepted;
    /// the defaults are those of [`crate::Config`].
    pub fn limits(mut self, max_handshake_size: usize, max_headers: usize) -> Self {
        self.max_head = max_handshake_size;
        self.max_headers = max_headers;
        self
    }

    /// The request's header lines, `Host` first, for an HTTP client that writes the
    /// request itself (the request line is `GET` with [`crate::Url::resource`]).
    /// Check its response with [`ClientHandshake::check_response`].
    pub fn request_headers(&self) -> Vec<(String, String)> {
        self.request.header_lines(self.key, self.offer().as_deref())
    }

    /// Appends the request head to `out`.
    pub fn write_request(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("GET {} HTTP/1.1\r\n", self.request.url.resource).as_bytes());
        for (n, v) in self.request_headers() {
            write_header_line(out, &n, &v);
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The permessage-deflate offer, if one is made.
    fn offer(&self) -> Option<String> {
        #[cfg(feature = "deflate")]
        return self.deflate.as_ref().map(crate::proto::deflate::client_offer);
        #[cfg(not(feature = "deflate"))]
        None
    }

    /// The `Sec-WebSocket-Accept` value the server must answer with.
    pub fn expected_accept(&self) -> &str {
        &self.expected_accept
    }

    /// Takes the next bytes of the response. Returns `Ok(None)` while the head is
    /// incomplete, then the checked response once, with [`ClientHandshakeDone::rest`]
    /// counting the bytes of `data` behind the head. Bytes after completion or after
    /// an error are refused with [`HandshakeError::Malformed`].
    pub fn push(&mut self, data: &[u8]) -> Result<Option<ClientHandshakeDone>, HandshakeError> {
        if self.finished {
            return Err(HandshakeError::Malformed("handshake already finished"));
        }
        let rest = match self.head.push(data, self.max_head) {
            Ok(None) => return Ok(None),
            Ok(Some(rest)) => rest.len(),
            Err(e) => {
                self.finish();
                return Err(e);
            }
        };
        let parsed = parse_response_head(self.head.head(), self.max_headers);
        self.finish();
        let (status, headers) = parsed?;
        let mut done = self.check(status, headers)?;
        done.rest = rest;
        Ok(Some(done))
    }

    /// Checks a response that another HTTP client received and parsed: its status
    /// and header lines. The same checks as [`ClientHandshake::push`]; `rest` is 0
    /// (bytes the client read past the head go to the connection's `handle_bytes`).
    pub fn check_response<N: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        status: u16,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> Result<ClientHandshakeDone, HandshakeError> {
        self.check(status, collect_parts(headers)?)
    }

    fn check(&self, status: u16, headers: Headers) -> Result<ClientHandshakeDone, HandshakeError> {
        #[cfg(feature = "deflate")]
        let mut negotiated: Option<DeflateParams> = None;
        // Any extension in the response must be one we offered (§4.1).
        let mut check_ext = |value: &str| -> Result<(), HandshakeError> {
            #[cfg(feature = "deflate")]
            if let Some(cfg) = &self.deflate {
                negotiated = Some(crate::proto::deflate::accept_response(value, cfg)?);
                return Ok(());
            }
            Err(HandshakeError::UnexpectedExtension(value.to_owned()))
        };
        let response = validate_response(status, headers, &self.expected_accept, &self.request.subprotocols, &mut check_ext)?;
        Ok(ClientHandshakeDone {
            response,
            #[cfg(feature = "deflate")]
            deflate: negotiated,
            rest: 0,
        })
    }

    fn finish(&mut self) {
        self.finished = true;
        self.head = HeadReader::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_1_3_accept_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn head_reader_finds_end_across_pieces_and_keeps_the_rest() {
        let msg = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x81\x00";
        for split in 0..msg.len() {
            let mut r = HeadReader::default();
            let first = r.push(&msg[..split], 1024).unwrap();
            let rest = match first {
                Some(rest) => rest.iter().copied().chain(msg[split..].iter().copied()).collect::<Vec<_>>(),
                None => r.push(&msg[split..], 1024).unwrap().unwrap().to_vec(),
            };
            assert_eq!(r.head(), &msg[..msg.len() - 2], "split {split}");
            assert_eq!(rest, b"\x81\x00");
        }
    }

    #[test]
    fn trickled_heads_cost_linear_work() {
        // CVE-2023-43669 class: one byte per read must not rescan the whole head.
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.resize(8000, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        let mut r = HeadReader::default();
        for (i, b) in head.iter().enumerate() {
            let done = r.push(std::slice::from_ref(b), 8192).unwrap();
            assert_eq!(done.is_some(), i + 1 == head.len());
        }
        assert!(r.scanned <= 4 * head.len(), "{} bytes scanned for {}", r.scanned, head.len());
    }

    #[test]
    fn head_reader_limit() {
        let mut r = HeadReader::default();
        assert_eq!(r.push(&[b'a'; 100], 64), Err(HandshakeError::HeadTooLarge));
        let mut r = HeadReader::default();
        // A head of exactly 63 bytes fits in a limit of 64.
        let mut head = vec![b'a'; 59];
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(r.push(&head, 64), Ok(Some(&[][..])));
    }

    #[test]
    fn urls() {
        let u = Url::parse("ws://example.com/chat?x=1").unwrap();
        assert_eq!((u.secure, u.host.as_str(), u.port, u.resource.as_str()), (false, "example.com", 80, "/chat?x=1"));
        assert_eq!(u.host_header(), "example.com");
        let u = Url::parse("ws://[::1]:9001").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.resource.as_str()), ("::1", 9001, "/"));
        assert_eq!(u.host_header(), "[::1]:9001");
        assert_eq!(Url::parse("wss://h?q").unwrap().resource, "/?q");
        assert!(Url::parse("wss://h").unwrap().secure);
        for bad in
            ["http://h/", "ws://h/#f", "ws://u@h/", "ws://:80/", "ws://h:99999/", "ws://h/a b", "h/", "ws://h:9001:9/", "ws://[::1]9001/"]
        {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_injection_is_refused() {
        let r = ClientRequest::new("ws://h/").unwrap();
        assert!(r.clone().header("X-A", "1\r\nEvil: 1").is_err());
        assert!(r.clone().header("X-A", "a\0").is_err());
        assert!(r.clone().header("X\nA", "1").is_err());
        assert!(r.clone().subprotocol("chat\r\n").is_err());
        assert!(r.clone().subprotocol("a,b").is_err());
        assert!(r.clone().origin("http://o\n").is_err());
        assert!(r.header("X-Ok", "fine value").is_ok());
    }

    /// A 101 response head for the accept value `accept`, with `extra` header lines.
    fn response_head(accept: &str, extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn sample_handshake() -> ClientHandshake {
        ClientHandshake::new(&ClientRequest::new("ws://server.example.com/chat").unwrap(), *b"the sample nonce")
    }

    #[test]
    fn client_handshake_rfc_1_3_sample_key() {
        let hs = sample_handshake();
        assert_eq!(hs.expected_accept(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut out = Vec::new();
        hs.write_request(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /chat HTTP/1.1\r\nHost: server.example.com\r\n"), "{text}");
        assert!(text.contains("\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
        // The server side computes the same accept from what we sent.
        let RequestHead::Upgrade(req) = parse_request(text.as_bytes(), 64, false).unwrap() else { panic!("not an upgrade") };
        assert_eq!(accept_key(&req.key), hs.expected_accept());
    }

    #[test]
    fn client_handshake_rejects_a_wrong_accept() {
        let mut hs = sample_handshake();
        // The accept of another key.
        let wrong = accept_key(b"AAAAAAAAAAAAAAAAAAAAAA==");
        assert_eq!(hs.push(&response_head(&wrong, "")), Err(HandshakeError::BadAccept));
        // Missing, or sent twice, is as bad.
        let mut hs = sample_handshake();
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(hs.push(head), Err(HandshakeError::BadAccept));
        let mut hs = sample_handshake();
        let twice = response_head("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
        assert_eq!(hs.push(&twice), Err(HandshakeError::BadAccept));
        // Nothing more is taken after a failure.
        assert!(hs.push(b"\x81\x00").is_err());
    }

    #[test]
    fn client_handshake_reports_status_and_unoffered_extensions() {
        let mut hs = sample_handshake();
        let err = hs.push(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert!(matches!(err, HandshakeError::Status { status: 403, .. }), "{err:?}");
        let mut hs = sample_handshake();
        let head = response_head("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert!(matches!(hs.push(&head), Err(HandshakeError::UnexpectedExtension(_))));
        let mut hs = sample_handshake();
        let head = response_head("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "Sec-WebSocket-Protocol: chat\r\n");
        assert!(matches!(hs.push(&head), Err(HandshakeError::UnexpectedSubprotocol(_))));
    }

    #[test]
    fn client_handshake_byte_by_byte_matches_one_piece() {
        let head = response_head("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "X-Server: test\r\n");
        let whole = sample_handshake().push(&head).unwrap().unwrap();
        assert_eq!((whole.response.status, whole.rest), (101, 0));
        assert_eq!(whole.response.header("x-server"), Some(&b"test"[..]));
        let mut hs = sample_handshake();
        for (i, b) in head.iter().enumerate() {
            let got = hs.push(std::slice::from_ref(b)).unwrap();
            if i + 1 < head.len() {
                assert_eq!(got, None, "byte {i}");
            } else {
                assert_eq!(got.as_ref(), Some(&whole));
            }
        }
        // A wrong accept is found whatever the split.
        let bad = response_head(&accept_key(b"AAAAAAAAAAAAAAAAAAAAAA=="), "");
        let mut hs = sample_handshake();
        let last = bad.iter().map(|b| hs.push(std::slice::from_ref(b))).find(|r| r != &Ok(None));
        assert_eq!(last, Some(Err(HandshakeError::BadAccept)));
    }

    #[test]
    fn client_handshake_counts_the_frames_behind_the_head() {
        let frames = b"\x81\x05Hello\x89\x00";
        let mut input = response_head("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "");
        input.extend_from_slice(frames);
        for split in 0..input.len() {
            let mut hs = sample_handshake();
            let (first, second) = input.split_at(split);
            let after = match hs.push(first).unwrap() {
                // Complete in the first piece: its tail, then all of the second.
                Some(done) => [&first[first.len() - done.rest..], second].concat(),
                None => {
                    let done = hs.push(second).unwrap().expect("complete");
                    second[second.len() - done.rest..].to_vec()
                }
            };
            assert_eq!(after, frames, "split {split}");
        }
    }

    #[test]
    fn client_handshake_random_keys_differ() {
        let req = ClientRequest::new("ws://h/").unwrap();
        let (a, b) = (ClientHandshake::with_random_key(&req), ClientHandshake::with_random_key(&req));
        assert_ne!(a.expected_accept(), b.expected_accept());
    }

    #[test]
    fn client_handshake_head_limit() {
        let mut hs = sample_handshake().limits(64, 8);
        assert_eq!(hs.push(&[b'a'; 100]), Err(HandshakeError::HeadTooLarge));
    }

    #[cfg(feature = "deflate")]
    #[test]
    fn client_handshake_negotiates_deflate() {
        let cfg = DeflateConfig { client_no_context_takeover: true, ..DeflateConfig::default() };
        let hs = sample_handshake().offer_deflate(&cfg);
        let mut out = Vec::new();
        hs.write_request(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover"), "{text}");
        let mut hs = hs;
        let head = response_head(
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; client_max_window_bits=10\r\n",
        );
        let done = hs.push(&head).unwrap().unwrap();
        let params = done.deflate.expect("negotiated");
        assert!(params.client_no_context_takeover);
        assert_eq!((params.client_max_window_bits, params.server_max_window_bits), (10, 15));
        // A server that ignores the offer: no parameters, no error.
        let mut hs = sample_handshake().offer_deflate(&cfg);
        let done = hs.push(&response_head("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "")).unwrap().unwrap();
        assert_eq!(done.deflate, None);
        // An answer that breaks the offer fails the handshake.
        let mut hs = sample_handshake().offer_deflate(&cfg);
        let head =
            response_head("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=8\r\n");
        assert!(matches!(hs.push(&head), Err(HandshakeError::UnexpectedExtension(_))));
    }
}
