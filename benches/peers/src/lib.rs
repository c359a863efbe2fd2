//! Shared bits of the peer servers: reading an upgrade request and answering 101.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §1.3).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The 101 response for a complete request head, or None if it has no key.
pub fn response_for(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let key = text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_owned())
    })?;
    Some(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&key)
        )
        .into_bytes(),
    )
}

/// The listen address from the first argument.
pub fn addr_arg(default: &str) -> String {
    std::env::args().nth(1).unwrap_or_else(|| default.to_owned())
}
