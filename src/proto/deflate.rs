//! permessage-deflate (RFC 7692): the extension header grammar, negotiation on both
//! sides, and the per-connection compressor and (bomb-safe) decompressor.
//!
//! The header parser is a single forward pass over the bytes (no backtracking, no
//! regular expressions), so any input costs linear time. Parameters are strict
//! (§7.1): only the four defined names, each at most once, window bits `8`-`15` as
//! plain digits, no value on the `*_no_context_takeover` flags. An invalid offer is
//! declined; an invalid response fails the client's handshake.
//!
//! zlib (and so flate2) cannot produce raw deflate with an 8-bit window; we never
//! agree to compress with one. Decompression always uses a 15-bit window, which reads
//! streams made with any smaller window.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::proto::error::HandshakeError;

/// The extension token.
pub const NAME: &str = "permessage-deflate";

/// What we offer (client) or accept (server). Part of [`crate::Config`]; `None` there
/// means the extension is off, the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Compression level 0-9. Default 6: zlib's default balance of speed and ratio.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed (compression is per message).
    /// Default 64 bytes: below it the deflate overhead outweighs the gain.
    pub min_size: usize,
    /// Ask for (server: impose) `server_no_context_takeover`: the server's compressor
    /// starts fresh for every message. Saves the server's compressor memory between
    /// messages and lets a relay compress a message once for many recipients.
    /// Default false.
    pub server_no_context_takeover: bool,
    /// Ask for (server: impose) `client_no_context_takeover`. Default false.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window (9-15 bits) the server may compress with; smaller saves
    /// memory at some cost in ratio. Default 15.
    pub server_max_window_bits: u8,
    /// Largest window (9-15 bits) the client may compress with. Default 15.
    pub client_max_window_bits: u8,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            level: 6,
            min_size: 64,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

/// Negotiated parameters of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// The server compresses with at most this window.
    pub server_max_window_bits: u8,
    /// The client compresses with at most this window.
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// The header value that states these parameters (the server's response).
    pub fn to_header(&self) -> String {
        let below_max = |b: u8| (b < MAX_WINDOW_BITS).then_some(b);
        format_header(
            self.server_no_context_takeover,
            self.client_no_context_takeover,
            below_max(self.server_max_window_bits),
            below_max(self.client_max_window_bits).map(Some),
        )
    }
}

/// The largest LZ77 window, and the default (RFC 7692 §7.1.2).
pub const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window a peer may name (RFC 7692 §7.1.2.1).
pub const MIN_WINDOW_BITS: u8 = 8;
/// The smallest window our compressor can use: zlib cannot produce raw deflate with 8.
pub const MIN_COMPRESS_WINDOW_BITS: u8 = 9;

/// A window size we may compress with, from a configured one.
fn compress_bits(bits: u8) -> u8 {
    bits.clamp(MIN_COMPRESS_WINDOW_BITS, MAX_WINDOW_BITS)
}

/// Formats the parameters of a permessage-deflate offer or answer: the one formatter
/// for both sides. Window bits: `None` leaves the parameter out; for the client's,
/// `Some(None)` is the bare `client_max_window_bits` of an offer.
fn format_header(server_nct: bool, client_nct: bool, server_bits: Option<u8>, client_bits: Option<Option<u8>>) -> String {
    let mut s = String::from(NAME);
    if server_nct {
        s.push_str("; server_no_context_takeover");
    }
    if client_nct {
        s.push_str("; client_no_context_takeover");
    }
    if let Some(b) = server_bits {
        s.push_str(&format!("; server_max_window_bits={b}"));
    }
    match client_bits {
        Some(Some(b)) => s.push_str(&format!("; client_max_window_bits={b}")),
        Some(None) => s.push_str("; client_max_window_bits"),
        None => {}
    }
    s
}

/// One extension of a `Sec-WebSocket-Extensions` list: name and parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// The extension token.
    pub name: String,
    /// Parameters, with their values (quoted strings unquoted).
    pub params: Vec<(String, Option<String>)>,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a `Sec-WebSocket-Extensions` value (RFC 6455 §9.1) in one pass. `None` if
/// it does not follow the grammar.
pub fn parse_extensions(value: &str) -> Option<Vec<Extension>> {
    let b = value.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> Option<String> {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        (*i > start).then(|| value[start..*i].to_owned())
    };
    let mut out = Vec::new();
    loop {
        skip_ws(&mut i);
        if i == b.len() {
            // Empty list elements are allowed by the #rule; an empty value is none.
            return Some(out);
        }
        if b[i] == b',' {
            i += 1;
            continue;
        }
        let name = token(&mut i)?;
        let mut params = Vec::new();
        loop {
            skip_ws(&mut i);
            if i == b.len() || b[i] == b',' {
                break;
            }
            if b[i] != b';' {
                return None;
            }
            i += 1;
            skip_ws(&mut i);
            let pname = token(&mut i)?;
            skip_ws(&mut i);
            let mut pvalue = None;
            if i < b.len() && b[i] == b'=' {
                i += 1;
                skip_ws(&mut i);
                if i < b.len() && b[i] == b'"' {
                    // quoted-string; §9.1 requires its content to be a token.
                    i += 1;
                    let v = token(&mut i)?;
                    if i >= b.len() || b[i] != b'"' {
                        return None;
                    }
                    i += 1;
                    pvalue = Some(v);
                } else {
                    pvalue = Some(token(&mut i)?);
                }
            }
            params.push((pname, pvalue));
        }
        out.push(Extension { name, params });
    }
}

/// Window bits given as a parameter value: plain digits 8-15.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|c| c.is_ascii_digit()) || v.starts_with('0') {
        return None;
    }
    v.parse().ok().filter(|n| (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(n))
}

/// The parameters of one permessage-deflate element, checked strictly.
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (a client's offer only).
    client_max_window_bits: Option<Option<u8>>,
}

fn check_params(ext: &Extension, is_offer: bool) -> Option<Offer> {
    let mut o = Offer::default();
    let mut seen = [false; 4];
    for (name, value) in &ext.params {
        let idx = match name.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[idx], true) {
            return None;
        }
        match idx {
            0 | 1 if value.is_some() => return None,
            0 => o.server_no_context_takeover = true,
            1 => o.client_no_context_takeover = true,
            2 => o.server_max_window_bits = Some(window_bits(value.as_deref()?)?),
            _ => {
                o.client_max_window_bits = Some(match value {
                    Some(v) => Some(window_bits(v)?),
                    // §7.1.2.2: only an offer may carry it without a value.
                    None if is_offer => None,
                    None => return None,
                })
            }
        }
    }
    Some(o)
}

/// Server side: picks the first acceptable permessage-deflate offer among the
/// `Sec-WebSocket-Extensions` values and returns the agreed parameters. Invalid offers
/// are skipped (declined); `None` means the connection goes without compression.
pub fn negotiate_server<'a>(values: impl Iterator<Item = &'a str>, cfg: &DeflateConfig) -> Option<DeflateParams> {
    for value in values {
        let Some(exts) = parse_extensions(value) else { continue };
        for ext in exts.iter().filter(|e| e.name.eq_ignore_ascii_case(NAME)) {
            let Some(offer) = check_params(ext, true) else { continue };
            // The client limits our window; we cannot compress with 8 bits.
            let server_bits = offer.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS).min(compress_bits(cfg.server_max_window_bits));
            if server_bits < MIN_COMPRESS_WINDOW_BITS {
                continue;
            }
            // We may limit the client's window only if it said it supports that.
            let client_bits = match offer.client_max_window_bits {
                None => MAX_WINDOW_BITS,
                Some(None) => compress_bits(cfg.client_max_window_bits),
                Some(Some(n)) => n.min(compress_bits(cfg.client_max_window_bits)),
            };
            return Some(DeflateParams {
                server_no_context_takeover: offer.server_no_context_takeover || cfg.server_no_context_takeover,
                client_no_context_takeover: offer.client_no_context_takeover || cfg.client_no_context_takeover,
                server_max_window_bits: server_bits,
                client_max_window_bits: client_bits,
            });
        }
    }
    None
}

/// Client side: the offer to send.
pub fn client_offer(cfg: &DeflateConfig) -> String {
    let server_bits = (cfg.server_max_window_bits < MAX_WINDOW_BITS).then(|| compress_bits(cfg.server_max_window_bits));
    // We can always honour a limit on our own window (9 and up): say so.
    let client_bits = (cfg.client_max_window_bits < MAX_WINDOW_BITS).then(|| compress_bits(cfg.client_max_window_bits));
    format_header(cfg.server_no_context_takeover, cfg.client_no_context_takeover, server_bits, Some(client_bits))
}

/// Client side: checks the server's `Sec-WebSocket-Extensions` response to our offer.
pub fn accept_response(value: &str, cfg: &DeflateConfig) -> Result<DeflateParams, HandshakeError> {
    let bad = || HandshakeError::UnexpectedExtension(value.to_owned());
    let exts = parse_extensions(value).ok_or_else(bad)?;
    let [ext] = &exts[..] else { return Err(bad()) };
    if !ext.name.eq_ignore_ascii_case(NAME) {
        return Err(bad());
    }
    let o = check_params(ext, false).ok_or_else(bad)?;
    let server_bits = o.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS);
    if cfg.server_max_window_bits < MAX_WINDOW_BITS && server_bits > compress_bits(cfg.server_max_window_bits) {
        return Err(bad());
    }
    let client_bits = o.client_max_window_bits.flatten().unwrap_or(MAX_WINDOW_BITS);
    if client_bits < MIN_COMPRESS_WINDOW_BITS
        || client_bits > compress_bits(cfg.client_max_window_bits) && cfg.client_max_window_bits < MAX_WINDOW_BITS
    {
        // We cannot compress with an 8-bit window; nor with more than we offered.
        return Err(bad());
    }
    if cfg.server_no_context_takeover && !o.server_no_context_takeover {
        return Err(bad());
    }
    Ok(DeflateParams {
        server_no_context_takeover: o.server_no_context_takeover,
        client_no_context_takeover: o.client_no_context_takeover || cfg.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    })
}

/// Bytes a compressor with this window holds (zlib: window, hash chains and pending
/// buffer at the default memory level 8), for memory accounting.
pub fn compressor_footprint(window_bits: u8) -> usize {
    (1 << (window_bits + 2)) + (1 << (8 + 9)) + 6 * 1024
}

/// Bytes a decompressor holds (a 32 KiB window and zlib's tables).
pub const DECOMPRESSOR_FOOTPRINT: usize = 32 * 1024 + 8 * 1024;

/// The RFC 7692 §7.2.1 tail that a sync flush leaves and the sender removes.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compresses messages for one direction.
pub struct Deflater {
    z: Compress,
    reset_each: bool,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").field("reset_each", &self.reset_each).finish_non_exhaustive()
    }
}

impl Deflater {
    /// A compressor with `window_bits` (9-15); `reset_each` for no context takeover.
    pub fn new(level: u32, window_bits: u8, reset_each: bool) -> Self {
        Self { z: Compress::new_with_window_bits(Compression::new(level.min(9)), false, compress_bits(window_bits)), reset_each }
    }

    /// Appends the compressed form of `data` (one whole message) to `out` (§7.2.1).
    pub fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let mut input = data;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve((input.len() / 2).max(256));
            }
            let before = self.z.total_in();
            // A sync flush ends the output on a byte boundary with 00 00 ff ff; with
            // nothing new to flush zlib writes nothing (a BufError, not a failure).
            let _ = self.z.compress_vec(input, out, FlushCompress::Sync);
            input = &input[(self.z.total_in() - before) as usize..];
            // Done once all input is in and zlib stopped short of filling the buffer.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - 4);
        }
        if out.len() == start {
            // An empty message is sent as a single 0x00 (RFC 7692 §7.2.3.6).
            out.push(0x00);
        }
        if self.reset_each {
            self.z.reset();
        }
    }
}

/// Decompresses messages for one direction, incrementally and within a limit.
pub struct Inflater {
    z: Decompress,
    reset_each: bool,
    /// The message ended its deflate stream with a final block (BFINAL).
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("reset_each", &self.reset_each).finish_non_exhaustive()
    }
}

/// Why inflating failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// The output passed the limit (1009).
    TooBig,
    /// The compressed data is not valid deflate (1007).
    Corrupt,
}

impl Inflater {
    /// A decompressor; `reset_each` when the peer does not take over context.
    pub fn new(reset_each: bool) -> Self {
        Self { z: Decompress::new_with_window_bits(false, MAX_WINDOW_BITS), reset_each, ended: false }
    }

    /// Inflates `input` (part of a message) onto `out`, never letting `out` pass
    /// `limit` bytes: the work done is bounded by the limit, not by the ratio.
    pub fn inflate(&mut self, mut input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        if self.ended {
            // Nothing may follow a final block within the message.
            return if input.is_empty() { Ok(()) } else { Err(InflateError::Corrupt) };
        }
        loop {
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            if out.len() == out.capacity() {
                // Grow by doubling, but never past one byte over the limit (enough to
                // know it was passed): a bomb costs at most the limit.
                let want = (out.capacity() * 2).max(out.len() + 4096).min(limit + 1).max(out.len() + 1);
                out.reserve_exact(want - out.len());
            }
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            let status = self.z.decompress_vec(input, out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
            input = &input[(self.z.total_in() - before_in) as usize..];
            let produced = self.z.total_out() - before_out;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            match status {
                // A final block inside a message is allowed; anything after it is not.
                Status::StreamEnd if !input.is_empty() => return Err(InflateError::Corrupt),
                Status::StreamEnd => {
                    self.ended = true;
                    return Ok(());
                }
                _ => {}
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
            if produced == 0 && self.z.total_in() == before_in && out.len() < out.capacity() {
                return Err(InflateError::Corrupt);
            }
        }
    }

    /// Ends a message: feeds the removed tail (§7.2.2) and resets if required.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        let r = if self.ended { Ok(()) } else { self.inflate(&TAIL, out, limit) };
        // After a final block the next message starts a new stream.
        if self.reset_each || self.ended || r.is_err() {
            self.z.reset(false);
            self.ended = false;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_grammar_and_rejects_garbage() {
        let e = parse_extensions("permessage-deflate; client_max_window_bits, permessage-deflate; server_max_window_bits=\"10\"").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].params, vec![("client_max_window_bits".into(), None)]);
        assert_eq!(e[1].params, vec![("server_max_window_bits".into(), Some("10".into()))]);
        for bad in ["permessage-deflate;", "a;=1", "a; b=", "a b", "a; b=\"1", "a; b=\"x y\"", ";"] {
            assert!(parse_extensions(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn parsing_is_linear_on_hostile_input() {
        // The websocket-extensions ReDoS shape: many separators and quotes.
        let evil = format!("a{}", "; b=\"c\"".repeat(100_000));
        assert!(parse_extensions(&evil).is_some());
        let evil = format!("a{}", ";".repeat(200_000));
        assert!(parse_extensions(&evil).is_none());
    }

    #[test]
    fn server_negotiation() {
        let cfg = DeflateConfig::default();
        let p = negotiate_server(["permessage-deflate; client_max_window_bits"].into_iter(), &cfg).unwrap();
        assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (15, 15));
        assert_eq!(p.to_header(), "permessage-deflate");
        // Invalid offers are declined, the next valid one is taken.
        let p = negotiate_server(
            ["permessage-deflate; server_max_window_bits=16, permessage-deflate; x=1, permessage-deflate; server_max_window_bits=10; client_no_context_takeover"]
                .into_iter(),
            &cfg,
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 10);
        assert!(p.client_no_context_takeover);
        assert_eq!(p.to_header(), "permessage-deflate; client_no_context_takeover; server_max_window_bits=10");
        for bad in [
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=8",
            "x-other",
        ] {
            assert_eq!(negotiate_server([bad].into_iter(), &cfg), None, "{bad}");
        }
        // The server may impose no context takeover and limit a client that allows it.
        let cfg = DeflateConfig { server_no_context_takeover: true, client_max_window_bits: 10, ..DeflateConfig::default() };
        let p = negotiate_server(["permessage-deflate; client_max_window_bits"].into_iter(), &cfg).unwrap();
        assert_eq!(p.to_header(), "permessage-deflate; server_no_context_takeover; client_max_window_bits=10");
        let p = negotiate_server(["permessage-deflate"].into_iter(), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 15, "not limited unless the client offered it");
    }

    #[test]
    fn client_checks_the_response() {
        let cfg = DeflateConfig::default();
        assert_eq!(client_offer(&cfg), "permessage-deflate; client_max_window_bits");
        let p = accept_response("permessage-deflate; server_no_context_takeover; client_max_window_bits=9", &cfg).unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 9);
        for bad in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; foo",
            "x-webkit-deflate-frame",
        ] {
            assert!(accept_response(bad, &cfg).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trip_and_rfc_example() {
        // RFC 7692 §7.2.3.1: "Hello" compressed.
        let mut inf = Inflater::new(false);
        let mut out = Vec::new();
        inf.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], &mut out, 100).unwrap();
        inf.finish(&mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
        let mut def = Deflater::new(6, 15, false);
        for msg in [&b"Hello"[..], b"", &[7u8; 100_000]] {
            let mut c = Vec::new();
            def.compress(msg, &mut c);
            let mut out = Vec::new();
            for piece in c.chunks(3) {
                inf.inflate(piece, &mut out, 1 << 20).unwrap();
            }
            inf.finish(&mut out, 1 << 20).unwrap();
            assert_eq!(out, msg);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let mut def = Deflater::new(9, 15, false);
        let mut c = Vec::new();
        def.compress(&vec![0u8; 10 << 20], &mut c);
        assert!(c.len() < 20 * 1024, "{}", c.len());
        let mut inf = Inflater::new(false);
        let mut out = Vec::new();
        assert_eq!(inf.inflate(&c, &mut out, 1 << 20), Err(InflateError::TooBig));
        assert!(out.capacity() <= (1 << 20) + 1, "{}", out.capacity());
    }
}

/// The compression state of one connection: negotiated parameters, the compressor for
/// what we send and the decompressor for what we receive, each created on first use.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) params: DeflateParams,
    level: u32,
    min_size: usize,
    is_server: bool,
    tx: Option<Deflater>,
    rx: Option<Inflater>,
    /// Compressed bytes: unmasked input on the way in, the encoded message on the way out.
    pub(crate) scratch: Vec<u8>,
}

impl Session {
    pub(crate) fn new(params: DeflateParams, cfg: &DeflateConfig, is_server: bool) -> Self {
        Self { params, level: cfg.level, min_size: cfg.min_size, is_server, tx: None, rx: None, scratch: Vec::new() }
    }

    /// Whether a message of `len` bytes is worth compressing.
    pub(crate) fn wants(&self, len: usize) -> bool {
        len >= self.min_size
    }

    /// Compresses a whole message into `scratch`.
    pub(crate) fn compress(&mut self, data: &[u8]) {
        let (bits, reset) = if self.is_server {
            (self.params.server_max_window_bits, self.params.server_no_context_takeover)
        } else {
            (self.params.client_max_window_bits, self.params.client_no_context_takeover)
        };
        let level = self.level;
        let tx = self.tx.get_or_insert_with(|| Deflater::new(level, bits, reset));
        self.scratch.clear();
        tx.compress(data, &mut self.scratch);
    }

    fn rx(&mut self) -> &mut Inflater {
        let reset = if self.is_server { self.params.client_no_context_takeover } else { self.params.server_no_context_takeover };
        self.rx.get_or_insert_with(|| Inflater::new(reset))
    }

    /// Inflates the (unmasked) compressed bytes in `scratch` onto `out`.
    pub(crate) fn inflate_scratch(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        let input = std::mem::take(&mut self.scratch);
        let r = self.rx().inflate(&input, out, limit);
        self.scratch = input;
        self.scratch.clear();
        r
    }

    /// Ends a compressed message.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        self.rx().finish(out, limit)
    }

    /// Frees the compressor, the decompressor and the scratch buffer (the connection
    /// is over); the agreed parameters stay.
    pub(crate) fn release(&mut self) {
        self.tx = None;
        self.rx = None;
        self.scratch = Vec::new();
    }

    /// Bytes held by the compression state.
    pub(crate) fn footprint(&self) -> usize {
        let bits = if self.is_server { self.params.server_max_window_bits } else { self.params.client_max_window_bits };
        self.tx.as_ref().map_or(0, |_| compressor_footprint(bits))
            + self.rx.as_ref().map_or(0, |_| DECOMPRESSOR_FOOTPRINT)
            + self.scratch.capacity()
    }
}
