//! An echo server on the blocking driver, one thread per connection: every text and
//! binary message comes back to its sender.
//!
//! ```sh
//! cargo run --release --example blocking_echo -- 127.0.0.1:9002
//! ```
//!
//! The first argument is the listen address (default `127.0.0.1:9002`; port 0 picks
//! a free one); the startup line `listening on ws://ADDR` says where it listens.
//! permessage-deflate is accepted when the client offers it (feature `deflate`), so
//! Autobahn's compression cases run too. A connection's error goes to stderr; the
//! server goes on.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use rfc6455::blocking::WebSocket;
use rfc6455::{Config, DriverError, Event, Message};

fn config() -> Config {
    #[cfg(feature = "deflate")]
    return Config { deflate: Some(rfc6455::DeflateConfig::default()), ..Config::default() };
    #[cfg(not(feature = "deflate"))]
    Config::default()
}

/// Echoes one connection's messages until it closes.
fn echo(tcp: TcpStream, config: Arc<Config>) -> Result<(), DriverError> {
    tcp.set_nodelay(true)?;
    let mut ws = WebSocket::accept(tcp, config)?;
    loop {
        // The payload is moved back out: nothing is copied.
        match ws.read()? {
            Event::Text(text) => ws.send(Message::Text(text))?,
            Event::Binary(data) => ws.send(Message::Binary(data))?,
            Event::Closed(_) => return Ok(()),
            _ => {}
        }
    }
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(bound) => println!("listening on ws://{bound}"),
        Err(_) => println!("listening on ws://{addr}"),
    }
    let config = Arc::new(config());
    for tcp in listener.incoming() {
        let tcp = match tcp {
            Ok(tcp) => tcp,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let peer = tcp.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let config = config.clone();
        std::thread::spawn(move || {
            if let Err(e) = echo(tcp, config) {
                eprintln!("{peer}: {e}");
            }
        });
    }
}
