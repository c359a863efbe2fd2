//! A line client on the blocking driver: each line of stdin goes out as a text
//! message, each text message received is printed on its own line (a binary one as
//! `<N bytes>`). At the end of stdin it closes with 1000 and prints what still
//! arrives until the server ends the connection; then it exits 0.
//!
//! ```sh
//! printf 'hello\nworld\n' | cargo run --example blocking_client -- ws://127.0.0.1:9002/
//! ```
//!
//! A blocking WebSocket waits on one stream only, so a thread reads stdin and hands
//! the lines over a channel; the main thread owns the connection and takes turns: it
//! waits for a message at most [`TURN`] ([`WebSocket::set_read_timeout`]; a partial
//! frame stays buffered across turns), then sends the lines that came in meanwhile.
//! A failed connection prints `error: ...` on stderr and exits 1, as does a
//! connection that ends without a closing handshake.

use std::io::{BufRead, ErrorKind};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Duration;

use rfc6455::blocking::{self, WebSocket};
use rfc6455::{CloseCode, Config, DriverError, Event, State};

/// How long one turn waits for a message before it looks at stdin again.
const TURN: Duration = Duration::from_millis(10);
/// Most lines sent in one turn, so that reading keeps up with an echoing server.
const LINES_PER_TURN: usize = 64;

/// Reads stdin on its own thread; the channel ends with stdin.
fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = mpsc::sync_channel(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends the lines waiting on the channel (a bounded batch); at the end of stdin,
/// starts the closing handshake. Returns whether stdin is still open.
fn send_lines(ws: &mut WebSocket<TcpStream>, lines: &Receiver<String>) -> Result<bool, DriverError> {
    for _ in 0..LINES_PER_TURN {
        match lines.try_recv() {
            Ok(line) => ws.send(line)?,
            Err(TryRecvError::Empty) => return Ok(true),
            Err(TryRecvError::Disconnected) => {
                // The server may have started the closing handshake already.
                if ws.connection().state() == State::Open {
                    ws.close(CloseCode::NORMAL, "")?;
                }
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Runs the session; `Ok(true)` when it ended with a closing handshake.
fn run(url: &str) -> Result<bool, DriverError> {
    let mut ws = blocking::connect(url, Config::default())?;
    let lines = stdin_lines();
    let mut stdin_open = true;
    loop {
        if stdin_open {
            stdin_open = send_lines(&mut ws, &lines)?;
            ws.set_read_timeout(stdin_open.then_some(TURN));
        }
        match ws.read() {
            Ok(Event::Text(text)) => println!("{text}"),
            Ok(Event::Binary(data)) => println!("<{} bytes>", data.len()),
            Ok(Event::Closed(closed)) => {
                if !closed.clean {
                    eprintln!("error: connection closed abnormally ({} {})", closed.code(), closed.reason());
                }
                return Ok(closed.clean);
            }
            Ok(_) => {}
            Err(DriverError::Io(e)) if e.kind() == ErrorKind::TimedOut && stdin_open => {}
            Err(e) => return Err(e),
        }
    }
}

fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: blocking_client ws://HOST:PORT/PATH");
        std::process::exit(2);
    };
    match run(&url) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
