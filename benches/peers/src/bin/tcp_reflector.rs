//! The syscall floor: answers the WebSocket handshake, then writes back whatever it
//! reads (no frame work at all): one read and one write per batch. Single thread, mio.
//! Usage: tcp_reflector ADDR

use std::io::{ErrorKind, Read, Write};

use mio::{Events, Token};
use rfc6455_peers::Conn;

fn main() {
    let addr = rfc6455_peers::addr_arg("127.0.0.1:9104").parse().unwrap();
    let (mut poll, listener) = rfc6455_peers::floor_listener(addr, "tcp reflector");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None).unwrap();
        for ev in events.iter() {
            if ev.token() == Token(usize::MAX) {
                rfc6455_peers::accept_into(&listener, &poll, &mut conns, Conn::new);
                continue;
            }
            let i = ev.token().0;
            let Some(c) = conns[i].as_mut() else { continue };
            let mut dead = false;
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        dead = true;
                        break;
                    }
                    Ok(n) => {
                        if c.open {
                            c.pending.extend_from_slice(&buf[..n]);
                        } else {
                            c.head.extend_from_slice(&buf[..n]);
                            if let Some(end) = c.head.windows(4).position(|w| w == b"\r\n\r\n") {
                                let Some(resp) = rfc6455_peers::response_for(&c.head[..end + 4]) else {
                                    dead = true;
                                    break;
                                };
                                c.pending.extend_from_slice(&resp);
                                let rest = c.head.split_off(end + 4);
                                c.pending.extend_from_slice(&rest);
                                c.open = true;
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        dead = true;
                        break;
                    }
                }
            }
            while !dead && !c.pending.is_empty() {
                match c.stream.write(&c.pending) {
                    Ok(n) => {
                        c.pending.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => dead = true,
                }
            }
            if dead {
                conns[i] = None;
            }
        }
    }
}
