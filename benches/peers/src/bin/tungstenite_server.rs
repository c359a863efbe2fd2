//! tokio-tungstenite echo or relay server on a single-threaded runtime. The relay is
//! one room: every text or binary message goes to every other client, through a
//! writer task per client that feeds all its queued messages and flushes once.
//! Usage: tungstenite_server ADDR [echo|relay] [CERT.pem KEY.pem]  (with a certificate:
//! wss:// through tokio-rustls on the ring provider, the way its users serve TLS).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Relay: every client's outbox, by connection id (one room). A std Mutex as in the
/// tokio-tungstenite server example; on one thread it is never contended.
type Peers = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

/// The TLS acceptor for a certificate chain and key in PEM files.
fn tls_acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

fn main() {
    let addr = rfc6455_peers::addr_arg("127.0.0.1:9102");
    let relay = std::env::args().nth(2).as_deref() == Some("relay");
    let tls = match (std::env::args().nth(3), std::env::args().nth(4)) {
        (Some(cert), Some(key)) => Some(tls_acceptor(&cert, &key)),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&addr).await.unwrap();
        eprintln!("tokio-tungstenite {} on {addr}", if relay { "relay" } else { "echo" });
        let peers: Peers = Arc::default();
        let mut next_id = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            next_id += 1;
            let id = next_id;
            let peers = peers.clone();
            if let Some(tls) = tls.clone() {
                // wss:// echo: the same loop over the TLS stream.
                tokio::task::spawn_local(async move {
                    let Ok(stream) = tls.accept(stream).await else { return };
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(msg)) = rx.next().await {
                        if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
                continue;
            }
            tokio::task::spawn_local(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                if !relay {
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(msg)) = rx.next().await {
                        if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
                // The relay as tokio-tungstenite users write it (its own server example:
                // a peer map of unbounded senders, each client's sink fed by its own
                // task): the writer feeds every message already queued, then flushes
                // once, so a burst to one recipient is one write, not one per message.
                let (mut tx, mut rx) = ws.split();
                let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
                peers.lock().unwrap().insert(id, out_tx);
                let writer = tokio::task::spawn_local(async move {
                    while let Some(m) = out_rx.recv().await {
                        if tx.feed(m).await.is_err() {
                            return;
                        }
                        while let Ok(m) = out_rx.try_recv() {
                            if tx.feed(m).await.is_err() {
                                return;
                            }
                        }
                        if tx.flush().await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(msg)) = rx.next().await {
                    if msg.is_text() || msg.is_binary() {
                        // Message payloads are Bytes: a clone per recipient is a
                        // reference count, not a copy.
                        for (other, sender) in peers.lock().unwrap().iter() {
                            if *other != id {
                                let _ = sender.send(msg.clone());
                            }
                        }
                    }
                }
                peers.lock().unwrap().remove(&id);
                writer.abort();
            });
        }
    });
}
