//! The Autobahn|Testsuite client cases run with the tokio driver: `autobahn/run.sh
//! tokio-client` starts `wstest -m fuzzingserver` and runs this against it.
//!
//! ```sh
//! cargo run --release --example tokio_autobahn_client -- ws://127.0.0.1:9001 rfc6455-tokio
//! ```
//!
//! It asks for the case count, runs each case echoing every message back (whole
//! messages, permessage-deflate offered, the engine's default limits), then asks the
//! server to write its reports.

use std::time::Duration;

use rfc6455::{CloseCode, Config, DeflateConfig, Event, Message};

fn config() -> Config {
    Config { deflate: Some(DeflateConfig::default()), ..Config::default() }
}

/// Runs one connection to its end, echoing messages; returns the texts received.
async fn run(url: &str, echo: bool) -> Result<Vec<String>, rfc6455::DriverError> {
    let mut ws = rfc6455::tokio::connect(url, config()).await?;
    let mut texts = Vec::new();
    while let Some(event) = ws.next().await {
        match event? {
            Event::Text(t) if echo => ws.feed(Message::Text(t)).await?,
            Event::Text(t) => texts.push(t),
            Event::Binary(b) if echo => ws.feed(Message::Binary(b)).await?,
            _ => {}
        }
    }
    Ok(texts)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(base), agent) = (args.next(), args.next().unwrap_or_else(|| "rfc6455-tokio".to_owned())) else {
        eprintln!("error: usage: tokio_autobahn_client URL [AGENT]");
        std::process::exit(2);
    };
    let base = base.trim_end_matches('/');
    let count: u32 = match run(&format!("{base}/getCaseCount"), false).await {
        Ok(texts) => match texts.first().and_then(|t| t.trim().parse().ok()) {
            Some(n) => n,
            None => {
                eprintln!("error: no case count from {base}");
                std::process::exit(1);
            }
        },
        Err(e) => {
            eprintln!("error: cannot reach the fuzzing server at {base}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("running {count} cases");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        match tokio::time::timeout(Duration::from_secs(120), run(&url, true)).await {
            Ok(Ok(_)) => {}
            // A case that fails the connection on purpose ends in an error here; the
            // fuzzing server's report is the verdict.
            Ok(Err(e)) => eprintln!("case {case}: {e}"),
            Err(_) => eprintln!("case {case}: timed out"),
        }
    }
    let url = format!("{base}/updateReports?agent={agent}");
    let updated = async {
        let mut ws = rfc6455::tokio::connect(&url, config()).await?;
        // The server may have closed first: then the close is not ours to send.
        match ws.close(CloseCode::NORMAL, "").await {
            Ok(()) | Err(rfc6455::DriverError::Usage(_)) => {}
            Err(e) => return Err(e),
        }
        while ws.next().await.is_some() {}
        Ok::<_, rfc6455::DriverError>(())
    };
    if let Err(e) = updated.await {
        eprintln!("error: cannot update reports: {e}");
        std::process::exit(1);
    }
}
