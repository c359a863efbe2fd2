//! tungstenite (sync) as the third-party peer of the driver tests.

use std::io::{Read, Write};

use tungstenite::Message;

/// Echoes text and binary messages until the close; returns what was received (the
/// close included). The close reply is flushed before returning; the caller drops TCP.
pub fn echo_until_close<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>) -> Vec<Message> {
    let mut seen = Vec::new();
    loop {
        match ws.read() {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                seen.push(msg.clone());
                ws.send(msg).unwrap();
            }
            Ok(Message::Close(frame)) => {
                seen.push(Message::Close(frame));
                let _ = ws.flush();
                return seen;
            }
            Ok(_) => {}
            Err(e) => panic!("tungstenite server: {e}"),
        }
    }
}
