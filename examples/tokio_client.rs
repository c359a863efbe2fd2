//! A command-line WebSocket client on tokio: each line of stdin is sent as a text
//! message, each message received is printed on its own line (binary ones as
//! `<N bytes>`). At the end of stdin it closes with 1000, prints what arrives until the
//! server's close, and exits 0; a failed connection exits 1 with `error: ...`.
//!
//! ```sh
//! cargo run --release --example tokio_client -- ws://127.0.0.1:9002/
//! ```
//!
//! Stdin and the socket are waited on together with `select!`, which is safe because
//! `WebSocket::next` is cancel-safe.

use rfc6455::{CloseCode, Config, Event};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

async fn run(url: &str) -> Result<(), rfc6455::DriverError> {
    let mut ws = rfc6455::tokio::connect(url, Config::default()).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut input_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if input_open => match line? {
                Some(line) => ws.send_text(&line).await?,
                None => {
                    input_open = false;
                    ws.close(CloseCode::NORMAL, "").await?;
                }
            },
            event = ws.next() => match event {
                Some(Ok(Event::Text(text))) => {
                    stdout.write_all(text.as_bytes()).await?;
                    stdout.write_all(b"\n").await?;
                }
                Some(Ok(Event::Binary(data))) => stdout.write_all(format!("<{} bytes>\n", data.len()).as_bytes()).await?,
                Some(Ok(Event::Closed(closed))) => {
                    stdout.flush().await?;
                    if closed.code() != CloseCode::NORMAL {
                        eprintln!("closed: {} {}", closed.code(), closed.reason());
                    }
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("error: usage: tokio_client URL");
        std::process::exit(2);
    };
    if let Err(e) = run(&url).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
