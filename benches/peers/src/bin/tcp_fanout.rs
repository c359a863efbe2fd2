//! The fan-out floor: answers the WebSocket handshake, then writes every byte read
//! from one connection, unchanged, to every other open connection (no frame work at
//! all, so its receivers see the sender's masked client frames: `rfc6455 bench relay
//! --accept-masked`). One read per readable event (until a short read), then for each
//! other connection one write of what it has pending plus the new bytes; what the
//! socket does not take waits in that connection's pending buffer for WRITABLE.
//! Single thread, mio.
//!
//! Bytes are not frames: with more than one sender, a read that ends inside a frame
//! would interleave with another sender's bytes, so this floor is for one sender (the
//! load generator's default). Connections that join while a sender is mid-frame would
//! likewise start inside a frame; the load generator opens all of them first.
//! Usage: tcp_fanout ADDR

use std::io::{ErrorKind, Read};

use mio::{Events, Token};
use rfc6455_peers::Conn;

fn main() {
    let addr = rfc6455_peers::addr_arg("127.0.0.1:9105").parse().unwrap();
    let (mut poll, listener) = rfc6455_peers::floor_listener(addr, "tcp fan-out");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut dead = Vec::new();
    loop {
        poll.poll(&mut events, None).unwrap();
        for ev in events.iter() {
            if ev.token() == Token(usize::MAX) {
                rfc6455_peers::accept_into(&listener, &poll, &mut conns, Conn::new);
                continue;
            }
            let i = ev.token().0;
            let Some(c) = conns[i].as_mut() else { continue };
            if ev.is_writable() && !c.flush() {
                dead.push(i);
            }
            while ev.is_readable() && !dead.contains(&i) {
                let Some(c) = conns[i].as_mut() else { break };
                let n = match c.stream.read(&mut buf) {
                    Ok(0) => {
                        dead.push(i);
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        dead.push(i);
                        break;
                    }
                };
                if c.open {
                    for (j, other) in conns.iter_mut().enumerate() {
                        if let Some(o) = other.as_mut().filter(|o| j != i && o.open)
                            && !o.send(&buf[..n])
                        {
                            dead.push(j);
                        }
                    }
                } else {
                    c.head.extend_from_slice(&buf[..n]);
                    if let Some(end) = c.head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let Some(resp) = rfc6455_peers::response_for(&c.head[..end + 4]) else {
                            dead.push(i);
                            break;
                        };
                        // Frames sent right behind the request head are not relayed: the
                        // load generator sends none before it has the response.
                        c.head = Vec::new();
                        c.open = true;
                        if !c.send(&resp) {
                            dead.push(i);
                        }
                    }
                }
                // A short read emptied the socket; an edge comes with the next bytes
                // (unless the peer's FIN came with this one: read on to the end).
                if n < buf.len() && !ev.is_read_closed() {
                    break;
                }
            }
            for j in dead.drain(..) {
                conns[j] = None;
            }
        }
    }
}
