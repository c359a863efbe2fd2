//! An echo server on tokio: every text and binary message comes back to its sender.
//!
//! ```sh
//! cargo run --release --example tokio_echo -- 127.0.0.1:9002
//! ```
//!
//! The first argument is the listen address (default `127.0.0.1:9002`; port 0 picks
//! a free one); the startup line says where it listens. permessage-deflate is
//! accepted when the client offers it. With `--single-thread` it runs on a
//! current-thread runtime (as the benchmark peers do).

use rfc6455::{Config, Event, Message};
use tokio::net::{TcpListener, TcpStream};

fn config() -> Config {
    Config { deflate: Some(Default::default()), ..Config::default() }
}

async fn echo(tcp: TcpStream, config: std::sync::Arc<Config>) -> Result<(), rfc6455::DriverError> {
    tcp.set_nodelay(true)?;
    let mut ws = rfc6455::tokio::WebSocket::accept(tcp, config).await?;
    while let Some(event) = ws.next().await {
        // `feed` queues; the next `next()` writes every answer to one read at once.
        match event? {
            Event::Text(text) => ws.feed(Message::Text(text)).await?,
            Event::Binary(data) => ws.feed(Message::Binary(data)).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn serve(addr: String) -> std::io::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on ws://{}", listener.local_addr()?);
    let config = std::sync::Arc::new(config());
    loop {
        let (tcp, peer) = listener.accept().await?;
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = echo(tcp, config).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9002".to_owned();
    let mut single = false;
    for arg in args.by_ref() {
        match arg.as_str() {
            "--single-thread" => single = true,
            a if a.starts_with('-') => {
                eprintln!("error: unknown option {a} (usage: tokio_echo [ADDR] [--single-thread])");
                std::process::exit(2);
            }
            a => addr = a.to_owned(),
        }
    }
    let runtime = if single { tokio::runtime::Builder::new_current_thread() } else { tokio::runtime::Builder::new_multi_thread() }
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(serve(addr.clone())) {
        eprintln!("error: {addr}: {e}");
        std::process::exit(1);
    }
}
