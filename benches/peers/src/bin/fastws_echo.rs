//! fastwebsockets echo server on a single-threaded tokio runtime.
//! Usage: fastws_echo ADDR

use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn handle(mut stream: TcpStream) -> Option<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    stream.write_all(&rfc6455_peers::response_for(&head)?).await.ok()?;
    let mut ws = WebSocket::after_handshake(stream, Role::Server);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    loop {
        let frame = ws.read_frame().await.ok()?;
        match frame.opcode {
            OpCode::Close => return Some(()),
            // A new frame: the one read still carries the client's mask, and a server
            // frame must not be masked (RFC 6455 §5.1).
            OpCode::Text | OpCode::Binary => ws.write_frame(Frame::new(true, frame.opcode, None, frame.payload)).await.ok()?,
            _ => {}
        }
    }
}

fn main() {
    let addr = rfc6455_peers::addr_arg("127.0.0.1:9103");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await.unwrap();
        eprintln!("fastwebsockets echo on {addr}");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(handle(stream));
        }
    });
}
