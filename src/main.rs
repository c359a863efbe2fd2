//! The `rfc6455` command line: argument parsing only; the work is in `rfc6455::net`.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod loadgen;
use log::{error, info, warn};
use rfc6455::net::{
    BROKER_PASSWORD_ENV, Bridge, BrokerConfig, BrokerError, Client, ClientOptions, DEFAULT_MAX_BROKER_MESSAGE, Echo, Handler, Relay,
    ServerConfig, ServerGroup, TlsAcceptor, TlsClientOptions, TlsConnector, TlsFiles,
};
use rfc6455::{ClientRequest, CloseCode, Config, DeflateConfig, Event};

#[derive(Parser)]
#[command(name = "rfc6455", version, about = "WebSocket (RFC 6455) relay, echo server and client")]
struct Cli {
    /// Log level (off, error, warn, info, debug, trace) or module=level filters, as
    /// RUST_LOG takes them; RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", value_parser = parse_log_filter)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat relay: every message goes to all other clients in the same room (the URL path).
    Relay {
        /// Address to listen on: HOST:PORT (a name is resolved) or a bare PORT (127.0.0.1).
        #[arg(long, default_value = "127.0.0.1:9001", value_parser = parse_listen)]
        listen: SocketAddr,
        /// Do not serve the chat page to browsers (plain GETs get 426 Upgrade Required).
        #[arg(long)]
        no_page: bool,
        /// Share rooms with every relay started with the same broker: redis://HOST:PORT
        /// or nats://HOST:PORT (a password in the URL, or in RFC6455_BROKER_PASSWORD: the
        /// Redis password or the NATS token). The relay serves its own rooms while the
        /// broker is unreachable, and retries.
        #[arg(long, value_name = "URL", value_parser = parse_broker)]
        broker: Option<BrokerConfig>,
        /// With --broker: the largest message that crosses it, 1 byte to 1 GiB (larger
        /// ones stay local, counted; at most --max-message-size).
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BROKER_MESSAGE, requires = "broker", value_parser = parse_size)]
        broker_max_message_size: usize,
        /// With --broker: channel names start with this (1-64 letters, digits, - or _),
        /// so several deployments can share one broker.
        #[arg(long, value_name = "PREFIX", default_value = "rfc6455", requires = "broker", value_parser = parse_broker_prefix)]
        broker_prefix: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Echo server: every message goes back to its sender.
    Echo {
        /// Address to listen on: HOST:PORT (a name is resolved) or a bare PORT (127.0.0.1).
        #[arg(long, default_value = "127.0.0.1:9002", value_parser = parse_listen)]
        listen: SocketAddr,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Client: sends each stdin line as a message, prints each message received on a line.
    Client {
        /// Server URL, e.g. ws://127.0.0.1:9001/lobby
        url: String,
        /// Send lines as binary messages instead of text.
        #[arg(long)]
        binary: bool,
        /// Subprotocol to offer (repeatable).
        #[arg(long = "protocol")]
        protocols: Vec<String>,
        /// Extra request header "Name: value" (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Origin header to send.
        #[arg(long)]
        origin: Option<String>,
        /// Send a ping this often and print the round-trip time to stderr (seconds, or
        /// with a unit: 500ms, 30s, 5m; 10ms to 24h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ping_interval: Option<Duration>,
        /// Largest message accepted, in bytes (1 to 1 GiB).
        #[arg(long, default_value_t = 16 << 20, value_parser = parse_size)]
        max_message_size: usize,
        /// Offer permessage-deflate (RFC 7692) compression.
        #[arg(long)]
        deflate: bool,
        #[command(flatten)]
        tls: ClientTlsArgs,
        /// Connect through a proxy: http://[user:pass@]host:port (CONNECT),
        /// socks5://... (we resolve the server's name), socks5h://... (the proxy does),
        /// or `none`. Default: https_proxy (wss), http_proxy (ws), all_proxy, no_proxy.
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
        #[command(flatten)]
        session: Session,
    },
    /// Load generator: echo throughput and round trips, relay fan-out, idle connections.
    Bench {
        #[command(flatten)]
        params: loadgen::Params,
    },
    /// Runs the Autobahn|Testsuite client cases against a `wstest -m fuzzingserver`.
    #[command(hide = true)]
    AutobahnClient {
        /// The fuzzing server's URL.
        #[arg(long, default_value = "ws://127.0.0.1:9001")]
        url: String,
        /// Agent name in the reports.
        #[arg(long, default_value = "rfc6455")]
        agent: String,
        /// Offer permessage-deflate.
        #[arg(long)]
        deflate: bool,
    },
}

/// wss:// settings of the client.
#[derive(Args)]
struct ClientTlsArgs {
    /// Trust the CA certificates in this PEM file, beside the system's (repeatable).
    #[arg(long = "ca", value_name = "FILE")]
    ca_files: Vec<PathBuf>,
    /// Accept any server certificate: no protection against a man in the middle.
    #[arg(long)]
    insecure: bool,
    /// Present this client certificate chain (PEM; needs --client-key).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The TLS connector these settings describe, if they say anything.
    fn connector(&self, secure: bool) -> Result<Option<TlsConnector>, String> {
        if self.ca_files.is_empty() && !self.insecure && self.client_cert.is_none() {
            return Ok(None);
        }
        if !secure {
            return Err("--ca, --insecure, --client-cert and --client-key are for wss:// URLs".to_owned());
        }
        if self.insecure && !self.ca_files.is_empty() {
            return Err("--insecure accepts any certificate: it does not go with --ca".to_owned());
        }
        if self.insecure {
            eprintln!(
                "warning: --insecure: the server's certificate is not checked; anyone on the path can read and change this connection"
            );
        }
        let mut opts = TlsClientOptions::new().insecure(self.insecure);
        for ca in &self.ca_files {
            opts = opts.ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            opts = opts.identity(cert, key);
        }
        TlsConnector::new(&opts).map(Some).map_err(|e| e.to_string())
    }
}

#[derive(Args)]
struct ServerArgs {
    /// Event loops, one per thread, 1 to 64 (default: the cores available). Rooms span
    /// them; 1 is a single loop.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: Option<u32>,
    /// Serve /metrics (Prometheus) and /healthz on this address, e.g. 127.0.0.1:9090
    /// (HOST:PORT or a bare PORT on 127.0.0.1); keep it off the public network.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    admin_listen: Option<SocketAddr>,
    /// Largest message accepted, in bytes, 1 to 1 GiB (larger ones are closed with 1009).
    #[arg(long, default_value_t = 16 << 20, value_parser = parse_size)]
    max_message_size: usize,
    /// Most simultaneous connections; more are refused with 503.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Ping every client this often; drop those that do not answer in time (seconds,
    /// or with a unit: 500ms, 30s, 5m; 10ms to 24h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keepalive: Option<Duration>,
    /// Drop clients that send nothing for this long (as --keepalive).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Accept only these Origin values (repeatable); others get 403.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// Outgoing bytes queued per client before it counts as a slow consumer (closed with
    /// 1008), 1 to 1 GiB.
    #[arg(long, default_value_t = 8 << 20, value_parser = parse_size)]
    high_water_mark: usize,
    /// Size of the shared read buffer, in bytes (1 to 1 GiB; at least 1 KiB is used).
    #[arg(long, default_value_t = 64 * 1024, value_parser = parse_size)]
    read_buffer_size: usize,
    /// Accept permessage-deflate (RFC 7692) compression when clients offer it.
    #[arg(long)]
    deflate: bool,
    /// With --deflate: the largest LZ77 window (9-15 bits) either side may use;
    /// smaller windows use less memory per connection.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u8).range(9..=15))]
    deflate_window_bits: u8,
    /// Serve wss://: the certificate chain (PEM, leaf first). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by the CAs in this PEM file.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl ServerArgs {
    /// The permessage-deflate settings; a relay imposes no server context takeover so
    /// that it can compress each message once for all recipients.
    fn deflate_config(&self, relay: bool) -> DeflateConfig {
        DeflateConfig {
            server_no_context_takeover: relay,
            server_max_window_bits: self.deflate_window_bits,
            client_max_window_bits: self.deflate_window_bits,
            ..DeflateConfig::default()
        }
    }

    /// The TLS acceptor for --tls-cert and --tls-key, loaded now (a bad file is an error).
    fn tls(&self) -> Result<Option<TlsAcceptor>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let mut files = TlsFiles::new(cert, key);
        if let Some(ca) = &self.tls_client_ca {
            files = files.client_ca(ca);
        }
        TlsAcceptor::from_files(files).map(Some).map_err(|e| e.to_string())
    }

    /// --threads, or the number of cores available.
    fn threads(&self) -> usize {
        self.threads.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(64)), |n| n as usize)
    }

    fn config(&self) -> ServerConfig {
        let keepalive = self.keepalive;
        ServerConfig {
            engine: Config {
                max_message_size: self.max_message_size,
                max_frame_size: self.max_message_size,
                ping_interval: keepalive,
                pong_timeout: keepalive.map_or(Duration::from_secs(20), |k| k.max(Duration::from_secs(1))),
                idle_timeout: self.idle_timeout,
                deflate: self.deflate.then(|| self.deflate_config(false)),
                ..Config::default()
            },
            max_connections: self.max_connections as usize,
            allowed_origins: (!self.allow_origins.is_empty()).then(|| self.allow_origins.clone()),
            high_water_mark: self.high_water_mark,
            read_buffer_size: self.read_buffer_size,
            admin_listen: self.admin_listen,
            ..ServerConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new().parse_filters(&cli.log).parse_default_env().format_timestamp_millis().init();
    match cli.command {
        Command::Relay { listen, no_page, broker, broker_prefix, broker_max_message_size, server } => {
            let mut cfg = server.config();
            cfg.tls = match server.tls() {
                Ok(t) => t,
                Err(e) => return fatal(&e),
            };
            let deflate = server.deflate.then(|| server.deflate_config(true));
            cfg.engine.deflate = deflate.clone();
            // One relay per loop, linked so that rooms span the loops.
            let relay = move |_| {
                let relay = deflate.clone().map_or_else(Relay::new, Relay::with_deflate);
                if no_page { relay } else { relay.with_page() }
            };
            if !no_page && cfg.allowed_origins.is_some() {
                warn!(
                    "--allow-origin is set: the chat page connects only if its own origin (http://HOST:PORT as the browser sees it) is in the list"
                );
            }
            let broker = broker.map(|b| {
                let b = b.max_message_size(broker_max_message_size);
                let b = match std::env::var(BROKER_PASSWORD_ENV) {
                    Ok(p) if !p.is_empty() => b.password(p),
                    _ => b,
                };
                // The prefix was checked when parsed.
                b.clone().prefix(&broker_prefix).unwrap_or(b)
            });
            let link = move |group: &mut ServerGroup<Relay>| match &broker {
                Some(broker) => Relay::link_with_broker(group, broker).map(Some),
                None => {
                    Relay::link(group);
                    Ok(None)
                }
            };
            serve(listen, cfg, server.threads(), relay, link, "relay", !no_page)
        }
        Command::Echo { listen, server } => {
            let mut cfg = server.config();
            cfg.tls = match server.tls() {
                Ok(t) => t,
                Err(e) => return fatal(&e),
            };
            serve(listen, cfg, server.threads(), |_| Echo, |_| Ok(None), "echo", false)
        }
        Command::Client { url, binary, protocols, headers, origin, ping_interval, max_message_size, deflate, tls, proxy, session } => {
            let request = match client_request(&url, protocols, headers, origin) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut opts = ClientOptions::new(request);
            opts.config = Config {
                max_message_size,
                max_frame_size: max_message_size,
                deflate: deflate.then(DeflateConfig::default),
                ..Config::default()
            };
            opts.config.ping_interval = ping_interval;
            opts.tls = match tls.connector(opts.request.url().secure) {
                Ok(t) => t,
                Err(e) => return fatal(&e),
            };
            opts.proxy = match client_proxy(proxy.as_deref(), &opts.request) {
                Ok(p) => p,
                Err(e) => return fatal(&e),
            };
            run_client(&url, opts, binary, session)
        }
        Command::AutobahnClient { url, agent, deflate } => autobahn_client(&url, &agent, deflate),
        Command::Bench { params } => bench(params.resolved()),
    }
}

/// `rfc6455 bench`: runs the load and prints the report.
fn bench(params: loadgen::Params) -> ExitCode {
    match loadgen::run(&params) {
        Ok(mut report) => {
            report.print(&params);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--broker`: a redis:// or nats:// URL this build can use.
fn parse_broker(url: &str) -> Result<BrokerConfig, String> {
    BrokerConfig::parse(url).map_err(|e| e.to_string())
}

/// `--broker-prefix`: checked as the bridge will use it.
fn parse_broker_prefix(prefix: &str) -> Result<String, String> {
    BrokerConfig::parse("redis://127.0.0.1").and_then(|b| b.prefix(prefix)).map(|_| prefix.to_owned()).map_err(|e| e.to_string())
}

/// One clear line on stderr and a nonzero exit.
fn fatal(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// Runs `threads` loops until a signal, each with a `handler(i)`, `link`ed before
/// they start; the startup line gives the addresses (the chat page's when `page`).
fn serve<H: Handler + Send + 'static>(
    listen: SocketAddr,
    cfg: ServerConfig,
    threads: usize,
    handler: impl FnMut(usize) -> H,
    link: impl FnOnce(&mut ServerGroup<H>) -> Result<Option<Bridge>, BrokerError>,
    what: &str,
    page: bool,
) -> ExitCode {
    let tls = cfg.tls.clone();
    let mut server = match ServerGroup::bind(listen, cfg, threads, handler) {
        Ok(s) => s,
        Err(e) => {
            // Fatal: always on stderr, whatever the log level.
            // The error names the admin address when that is the one that failed.
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bridge = match link(&mut server) {
        Ok(bridge) => bridge,
        Err(e) => return fatal(&e.to_string()),
    };
    let handle = server.shutdown_handle();
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                let mut seen = 0;
                for sig in signals.forever() {
                    seen += 1;
                    if seen > 1 {
                        eprintln!("second signal: exiting now");
                        std::process::exit(128 + sig);
                    }
                    handle.shutdown();
                }
            });
        }
        Err(e) => error!("cannot install signal handlers: {e}"),
    }
    if let Some(acceptor) = tls.clone() {
        reload_on_sighup(acceptor);
    }
    let (scheme, http) = if tls.is_some() { ("wss", "https") } else { ("ws", "http") };
    let addr = server.local_addr();
    let mut line = format!("{what} listening on {scheme}://{addr}");
    if threads > 1 {
        line.push_str(&format!(" ({threads} loops)"));
    }
    if page {
        line.push_str(&format!("; chat page: {http}://{addr}/lobby"));
    }
    if let Some(admin) = server.admin_addr() {
        line.push_str(&format!("; metrics: http://{admin}/metrics"));
    }
    if let Some(bridge) = &bridge {
        line.push_str(&format!("; broker: {}", bridge.url()));
    }
    info!("{line}");
    let run = server.run();
    drop(bridge); // unsubscribes
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP reads the certificate and key again: new connections get the new one,
/// open connections keep theirs; a bad file is logged and the old one stays.
fn reload_on_sighup(acceptor: TlsAcceptor) {
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    match acceptor.reload() {
                        Ok(()) => info!("TLS certificate reloaded"),
                        Err(e) => error!("TLS certificate not reloaded (the old one stays): {e}"),
                    }
                }
            });
        }
        Err(e) => error!("cannot install the SIGHUP handler (no certificate reload): {e}"),
    }
}

/// The proxy for the client: `--proxy URL`, `--proxy none`, or the environment.
fn client_proxy(flag: Option<&str>, request: &ClientRequest) -> Result<Option<rfc6455::proxy::Proxy>, String> {
    let url = request.url();
    let proxy = match flag {
        Some("none") => return Ok(None),
        Some(p) => rfc6455::proxy::Proxy::parse(p).map(Some),
        None => rfc6455::proxy::Proxy::from_env(url.secure, &url.host, url.port),
    };
    proxy.map_err(|e| e.to_string())
}

/// The request the client's options describe.
fn client_request(url: &str, protocols: Vec<String>, headers: Vec<String>, origin: Option<String>) -> Result<ClientRequest, String> {
    let mut req = ClientRequest::new(url).map_err(|e| e.to_string())?;
    for p in protocols {
        req = req.subprotocol(p).map_err(|e| e.to_string())?;
    }
    if let Some(o) = origin {
        req = req.origin(o).map_err(|e| e.to_string())?;
    }
    for h in headers {
        let Some((n, v)) = h.split_once(':') else {
            return Err(format!("--header must look like 'Name: value', got {h:?}"));
        };
        req = req.header(n.trim(), v.trim()).map_err(|e| e.to_string())?;
    }
    Ok(req)
}

/// Input lines waiting for the socket, at most.
const INPUT_QUEUE: usize = 256;
/// Input lines sent per loop turn before the socket is read again.
const INPUT_BATCH: usize = 64;

/// How an interactive or scripted client session ends and what it says.
#[derive(Args, Clone, Copy)]
struct Session {
    /// Close (1000) and exit after receiving this many messages (end of input does not
    /// close the connection then; Ctrl-C does).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Print only received messages and errors (no connection, close or pong lines).
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// What the client's input threads report.
enum Input {
    /// A line of standard input (its number, its bytes without the line end).
    Line(usize, Vec<u8>),
    /// End of standard input (or a read error, reported already).
    End,
    /// SIGINT or SIGTERM (Ctrl-C): close with 1000; a second one exits at once.
    Interrupt,
}

/// Reads standard input line by line (as bytes) on its own thread.
fn spawn_stdin_reader(tx: mpsc::SyncSender<Input>, waker: rfc6455::net::ClientWaker) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        for number in 1.. {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("error: reading standard input: {e}");
                    break;
                }
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            if tx.send(Input::Line(number, line)).is_err() {
                return;
            }
            let _ = waker.wake();
        }
        let _ = tx.send(Input::End);
        let _ = waker.wake();
    });
}

/// Turns Ctrl-C into a clean close: the first signal asks for it, a second exits now.
fn spawn_interrupt_watcher(tx: mpsc::SyncSender<Input>, waker: rfc6455::net::ClientWaker) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else { return };
    std::thread::spawn(move || {
        for (seen, sig) in signals.forever().enumerate() {
            if seen > 0 {
                eprintln!("second interrupt: exiting without closing");
                std::process::exit(128 + sig);
            }
            let _ = tx.send(Input::Interrupt);
            let _ = waker.wake();
        }
    });
}

/// Sends one line of input: any bytes with `--binary`, otherwise valid UTF-8 only.
fn send_line(client: &mut Client, binary: bool, number: usize, line: &[u8]) {
    let sent = if binary {
        client.send_binary(line)
    } else {
        match std::str::from_utf8(line) {
            Ok(text) => client.send_text(text),
            Err(_) => {
                eprintln!("error: line {number} is not valid UTF-8: skipped (--binary sends any bytes)");
                return;
            }
        }
    };
    if let Err(e) = sent {
        eprintln!("error: cannot send: {e}");
    }
}

/// Prints a received message on stdout, one per line; on a terminal it is marked so it
/// does not mix with what is being typed.
fn print_message(data: &[u8], marked: bool) {
    let mut out = std::io::stdout().lock();
    if marked {
        let _ = out.write_all(b"< ");
    }
    let _ = out.write_all(data);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn run_client(url: &str, opts: ClientOptions, binary: bool, session: Session) -> ExitCode {
    let mut client = match Client::connect(opts) {
        Ok(c) => c,
        Err(e) => {
            // The message names the HTTP status of a refused handshake.
            eprintln!("error: cannot connect to {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let say = |line: String| {
        if !session.quiet {
            eprintln!("{line}");
        }
    };
    // Bounded: a fast pipe waits for the socket instead of queueing without limit.
    let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE);
    spawn_stdin_reader(tx.clone(), client.waker());
    spawn_interrupt_watcher(tx, client.waker());
    say(format!("connected to {url} ({})", client.peer_addr()));
    let marked = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut received = 0u64;
    let mut closing = false;
    loop {
        // A batch of input per turn, then the socket: replies are read while a large
        // input is still being sent (the server's backlog for us stays small).
        let mut backlog = false;
        for _ in 0..INPUT_BATCH {
            let Ok(input) = rx.try_recv() else { break };
            backlog = true;
            match input {
                Input::Line(number, line) if !closing => send_line(&mut client, binary, number, &line),
                // With --count the messages decide when to stop, not the end of input.
                Input::End if session.count.is_some() => {}
                Input::End | Input::Interrupt if !closing => {
                    // After what was sent; what comes back before the server's close is printed.
                    closing = true;
                    let _ = client.close(CloseCode::NORMAL, "");
                }
                _ => {}
            }
        }
        let wait = if backlog { Some(Duration::from_millis(1)) } else { None };
        match client.next_event(wait) {
            Ok(Some(Event::Text(t))) if session.count.is_none_or(|n| received < n) => {
                print_message(t.as_bytes(), marked);
                received += 1;
            }
            Ok(Some(Event::Binary(b))) if session.count.is_none_or(|n| received < n) => {
                print_message(&b, marked);
                received += 1;
            }
            Ok(Some(Event::Pong { rtt: Some(rtt), .. })) => say(format!("pong: round trip {:.3} ms", rtt.as_secs_f64() * 1e3)),
            Ok(Some(Event::Closed(c))) => {
                let meaning = c.code().meaning().map_or(String::new(), |m| format!(" {m}"));
                let normal = matches!(c.code(), CloseCode::NORMAL | CloseCode::GOING_AWAY | CloseCode::NO_STATUS) && c.error.is_none();
                let line = match &c.error {
                    Some(e) => format!("closed: {}{meaning} {:?} ({e})", c.code(), c.reason()),
                    None => format!("closed: {}{meaning} {:?}", c.code(), c.reason()),
                };
                // An abnormal end is an error: printed even when quiet.
                if normal {
                    say(line)
                } else {
                    eprintln!("{line}")
                }
                return if normal { ExitCode::SUCCESS } else { ExitCode::FAILURE };
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        if session.count.is_some_and(|n| received >= n) && !closing {
            closing = true;
            let _ = client.close(CloseCode::NORMAL, "");
        }
    }
}

/// The Autobahn client runner: asks for the case count, runs each case echoing every
/// message back, then asks the server to write its reports.
fn autobahn_client(base: &str, agent: &str, deflate: bool) -> ExitCode {
    // The engine's default limits (16 MiB messages): what Autobahn's 9.x cases need.
    let connect = |url: &str| -> Result<Client, rfc6455::net::ClientError> {
        let mut opts = ClientOptions::new(ClientRequest::new(url)?);
        opts.config.deflate = deflate.then(DeflateConfig::default);
        opts.connect_timeout = Duration::from_secs(30);
        Client::connect(opts)
    };
    let base = base.trim_end_matches('/');
    let count = match connect(&format!("{base}/getCaseCount")) {
        Ok(mut c) => {
            let mut n = None;
            while let Ok(Some(ev)) = c.next_event(Some(Duration::from_secs(30))) {
                match ev {
                    Event::Text(t) => n = t.trim().parse::<u32>().ok(),
                    Event::Closed(_) => break,
                    _ => {}
                }
            }
            match n {
                Some(n) => n,
                None => {
                    eprintln!("error: no case count from {base}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(e) => {
            eprintln!("error: cannot reach the fuzzing server at {base}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("running {count} cases");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        let mut c = match connect(&url) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("case {case}: connect failed: {e}");
                continue;
            }
        };
        loop {
            match c.next_event(Some(Duration::from_secs(60))) {
                Ok(Some(Event::Text(t))) => {
                    let _ = c.send_text(&t);
                }
                Ok(Some(Event::Binary(b))) => {
                    let _ = c.send_binary(&b);
                }
                Ok(Some(Event::Closed(_))) | Err(_) => break,
                Ok(None) if c.state() == rfc6455::State::Closed => break,
                Ok(_) => {}
            }
        }
    }
    match connect(&format!("{base}/updateReports?agent={agent}")) {
        Ok(mut c) => {
            let _ = c.close(CloseCode::NORMAL, "");
            while let Ok(Some(ev)) = c.next_event(Some(Duration::from_secs(30))) {
                if matches!(ev, Event::Closed(_)) {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot update reports: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------ argument parsers

/// Durations are between these bounds: shorter would ping in a tight loop, longer is a typo.
const MIN_DURATION: Duration = Duration::from_millis(10);
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Sizes are between 1 byte and this.
const MAX_SIZE: usize = 1 << 30;

/// A duration: seconds (`30`, `0.5`) or a number with a unit (`500ms`, `30s`, `5m`, `1h`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration (examples: 30, 0.5, 500ms, 30s, 5m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use ms, s, m or h)")),
    };
    let d = Duration::try_from_secs_f64(seconds).map_err(|_| format!("{s:?} is not a duration"))?;
    if d < MIN_DURATION || d > MAX_DURATION {
        return Err(format!("{s} is out of range: allowed are 10ms to 24h"));
    }
    Ok(d)
}

/// A size in bytes, 1 to 1 GiB.
fn parse_size(s: &str) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if n == 0 || n > MAX_SIZE {
        return Err(format!("{n} is out of range: allowed are 1 to {MAX_SIZE} bytes"));
    }
    Ok(n)
}

/// A listen address: `HOST:PORT` (names resolved, the first address taken) or `PORT`.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not an address to listen on (HOST:PORT or PORT): {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// A log filter: a level, or comma-separated `module=level` directives (as `RUST_LOG`).
fn parse_log_filter(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a log level (off, error, warn, info, debug, trace) or module=level list");
    for directive in s.split(',') {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        level.trim().parse::<log::LevelFilter>().map_err(|_| bad())?;
    }
    Ok(s.to_owned())
}
