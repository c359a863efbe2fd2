//! WebSockets on a hyper 1 server: hyper parses the HTTP upgrade, the sans-IO
//! negotiation of `rfc6455` answers it (subprotocol, permessage-deflate), and the
//! upgraded connection is handed to the tokio driver. Plain HTTP routes live beside it.
//!
//! ```sh
//! cargo run --release --example hyper_echo -- 127.0.0.1:9002
//! ```
//!
//! * `GET /health` answers `ok` (a plain HTTP route).
//! * Any other path with `Upgrade: websocket` is an echo WebSocket (subprotocol
//!   `echo` when offered, permessage-deflate when offered).
//! * Any other plain request gets 426 with a short explanation.
//!
//! The first argument is the listen address (default `127.0.0.1:9002`, port 0 picks
//! a free one); the startup line says where it listens.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request as HttpRequest, Response as HttpResponse, StatusCode, Version};
use hyper_util::rt::TokioIo;
use rfc6455::{Accept, Config, Event, HandshakeError, Message, Negotiated, Reject, Role};
use tokio::net::TcpListener;

type Response = HttpResponse<Full<Bytes>>;

/// A hyper response carrying an `rfc6455` refusal (status, headers, body).
fn refusal(reject: &Reject) -> Response {
    let mut res = HttpResponse::builder().status(reject.status());
    for (name, value) in reject.response_headers().expect("a valid refusal") {
        res = res.header(name, value);
    }
    res.body(Full::new(Bytes::copy_from_slice(reject.body_bytes()))).expect("a valid refusal")
}

/// Answers the upgrade request through the sans-IO negotiation and, once hyper has
/// switched protocols, runs the echo on the upgraded connection.
fn upgrade(mut req: HttpRequest<Incoming>, config: Arc<Config>) -> Response {
    if req.version() != Version::HTTP_11 {
        return refusal(&HandshakeError::HttpVersion.rejection().expect("505"));
    }
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let headers = req.headers().iter().map(|(name, value)| (name.as_str(), value.as_bytes()));
    let ws_request = match rfc6455::Request::from_parts(req.method().as_str(), target, headers) {
        Ok(r) => r,
        Err(e) => return refusal(&e.rejection().unwrap_or_else(|| Reject::new(400))),
    };
    let mut accept = Accept::new();
    if ws_request.subprotocols().any(|p| p == "echo") {
        accept = accept.subprotocol("echo");
    }
    let accepted = match ws_request.negotiate(&config, accept) {
        Ok(a) => a,
        Err(e) => return refusal(&Reject::new(500).body(e.to_string())),
    };
    let negotiated = accepted.negotiated().clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                if let Err(e) = echo(TokioIo::new(upgraded), config, &negotiated).await {
                    eprintln!("websocket: {e}");
                }
            }
            Err(e) => eprintln!("upgrade failed: {e}"),
        }
    });
    let mut res = HttpResponse::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in accepted.headers() {
        res = res.header(name, value);
    }
    res.body(Full::default()).expect("a valid 101 response")
}

async fn echo(io: TokioIo<hyper::upgrade::Upgraded>, config: Arc<Config>, negotiated: &Negotiated) -> Result<(), rfc6455::DriverError> {
    // hyper's `Upgraded` replays any bytes it read past the request head itself.
    let mut ws = rfc6455::tokio::WebSocket::upgraded(io, Role::Server, config, negotiated, &[]);
    while let Some(event) = ws.next().await {
        match event? {
            Event::Text(text) => ws.feed(Message::Text(text)).await?,
            Event::Binary(data) => ws.feed(Message::Binary(data)).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn route(req: HttpRequest<Incoming>, config: Arc<Config>) -> Result<Response, Infallible> {
    if req.headers().contains_key(hyper::header::UPGRADE) {
        return Ok(upgrade(req, config));
    }
    let res = match req.uri().path() {
        "/health" => HttpResponse::new(Full::new(Bytes::from_static(b"ok\n"))),
        _ => refusal(&Reject::new(426).body("This is a WebSocket echo endpoint; GET /health is plain HTTP.\n")),
    };
    Ok(res)
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on ws://{}", listener.local_addr().expect("a bound address"));
    let config = Arc::new(Config { deflate: Some(Default::default()), ..Config::default() });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let config = config.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(req, config.clone()));
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).with_upgrades().await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}
