//! The client through proxies, over loopback: proxies written here (HTTP CONNECT and
//! SOCKS5, with and without authentication) and real ones from Debian (`microsocks`,
//! `tinyproxy`; `.ci/run` installs them), to our echo server over ws:// and wss://.
//! Every proxy listens on 127.0.0.1 on a free port and is stopped at the end.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::net::*;
use rfc6455::net::{Client, ClientError, ClientOptions, Echo, ServerConfig};
use rfc6455::proxy::{Proxy, ProxyError};
use rfc6455::{ClientRequest, CloseCode};

/// Copies bytes both ways between two sockets until either side ends.
fn splice(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let (mut a, mut b) = (a, b);
    let t = thread::spawn(move || {
        let _ = io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut b, &mut a);
    let _ = a.shutdown(Shutdown::Write);
    let _ = t.join();
}

/// A test proxy: accepts on 127.0.0.1 and serves each client with `serve` on a thread.
fn spawn_proxy(serve: fn(TcpStream, Option<&'static str>), auth: Option<&'static str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            s.set_read_timeout(Some(WAIT)).unwrap();
            thread::spawn(move || serve(s, auth));
        }
    });
    addr
}

/// HTTP CONNECT (RFC 9110 §9.3.6); with `auth` ("user:pass") it wants Basic credentials.
fn http_connect_proxy(client: TcpStream, auth: Option<&'static str>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line);
    }
    let mut client = client;
    let target = head[0].split_whitespace().nth(1).unwrap().to_owned();
    if let Some(auth) = auth {
        let expected = format!("proxy-authorization: basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(auth)).to_lowercase();
        if !head.iter().any(|l| l.to_lowercase() == expected) {
            let _ = client.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
            );
            return;
        }
    }
    match TcpStream::connect(&target) {
        Ok(server) => {
            client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap();
            splice(client, server);
        }
        Err(_) => {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        }
    }
}

/// SOCKS5 (RFC 1928, RFC 1929 with `auth`), CONNECT only.
fn socks5_proxy(mut client: TcpStream, auth: Option<&'static str>) {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).unwrap();
    let mut methods = vec![0u8; usize::from(greeting[1])];
    client.read_exact(&mut methods).unwrap();
    let wanted = if auth.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        let _ = client.write_all(&[5, 0xFF]);
        return;
    }
    client.write_all(&[5, wanted]).unwrap();
    if let Some(auth) = auth {
        let mut ver_len = [0u8; 2];
        client.read_exact(&mut ver_len).unwrap();
        let mut user = vec![0u8; usize::from(ver_len[1])];
        client.read_exact(&mut user).unwrap();
        let mut plen = [0u8; 1];
        client.read_exact(&mut plen).unwrap();
        let mut pass = vec![0u8; usize::from(plen[0])];
        client.read_exact(&mut pass).unwrap();
        let ok = format!("{}:{}", String::from_utf8_lossy(&user), String::from_utf8_lossy(&pass)) == auth;
        client.write_all(&[1, if ok { 0 } else { 1 }]).unwrap();
        if !ok {
            return;
        }
    }
    let mut req = [0u8; 4];
    client.read_exact(&mut req).unwrap();
    let host = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).unwrap();
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).unwrap();
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).unwrap();
            String::from_utf8(name).unwrap()
        }
        _ => {
            let _ = client.write_all(&[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
            return;
        }
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).unwrap();
    match TcpStream::connect((host.as_str(), u16::from_be_bytes(port))) {
        Ok(server) => {
            // The bound address as a domain, to exercise the variable-length reply.
            let mut reply = vec![5, 0, 0, 3, 9];
            reply.extend_from_slice(b"localhost");
            reply.extend_from_slice(&[0, 0]);
            client.write_all(&reply).unwrap();
            splice(client, server);
        }
        Err(_) => {
            let _ = client.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
        }
    }
}

fn connect_via(url: &str, proxy: &str) -> Result<Client, ClientError> {
    let mut opts = ClientOptions::new(ClientRequest::new(url).unwrap());
    opts.proxy = Some(Proxy::parse(proxy).unwrap());
    opts.connect_timeout = WAIT;
    Client::connect(opts)
}

fn echo_through(url: &str, proxy: &str) {
    let mut c = connect_via(url, proxy).unwrap_or_else(|e| panic!("{proxy}: {e}"));
    c.send_text("through the proxy").unwrap();
    assert_eq!(next_message(&mut c).1, b"through the proxy", "{proxy}");
    c.close(CloseCode::NORMAL, "").unwrap();
    assert!(next_closed(&mut c).clean, "{proxy}");
}

#[test]
fn our_test_proxies_with_and_without_credentials() {
    let server = Running::start(ServerConfig::default(), Echo);
    let url = format!("ws://localhost:{}/", server.addr.port());
    let http = spawn_proxy(http_connect_proxy, None);
    let http_auth = spawn_proxy(http_connect_proxy, Some("ann:s3cret"));
    let socks = spawn_proxy(socks5_proxy, None);
    let socks_auth = spawn_proxy(socks5_proxy, Some("ann:s3cret"));
    echo_through(&url, &format!("http://{http}"));
    echo_through(&url, &format!("http://ann:s3cret@{http_auth}"));
    echo_through(&url, &format!("socks5h://{socks}"));
    echo_through(&format!("ws://127.0.0.1:{}/", server.addr.port()), &format!("socks5://{socks}"));
    echo_through(&url, &format!("socks5h://ann:s3cret@{socks_auth}"));

    // Each refusal is what it is.
    let e = connect_via(&url, &format!("http://{http_auth}")).unwrap_err();
    assert!(matches!(e, ClientError::Proxy(ProxyError::AuthRequired { credentials_sent: false, .. })), "{e:?}");
    let e = connect_via(&url, &format!("http://ann:wrong@{http_auth}")).unwrap_err();
    assert!(matches!(e, ClientError::Proxy(ProxyError::AuthRequired { credentials_sent: true, .. })), "{e:?}");
    let e = connect_via(&url, &format!("socks5h://ann:wrong@{socks_auth}")).unwrap_err();
    assert!(matches!(e, ClientError::Proxy(ProxyError::AuthFailed { .. })), "{e:?}");
    let e = connect_via(&url, &format!("socks5h://{socks_auth}")).unwrap_err();
    assert!(matches!(e, ClientError::Proxy(ProxyError::NoAcceptableMethod { .. })), "{e:?}");
    // The target refuses: 502 from HTTP, "connection refused" from SOCKS5.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = format!("ws://127.0.0.1:{}/", closed.port());
    let e = connect_via(&dead, &format!("http://{http}")).unwrap_err();
    assert!(matches!(e, ClientError::Proxy(ProxyError::Status { code: 502, .. })), "{e:?}");
    let e = connect_via(&dead, &format!("socks5h://{socks}")).unwrap_err();
    assert!(matches!(e, ClientError::Proxy(ProxyError::SocksReply(5))), "{e:?}");
    assert!(e.to_string().contains("refused"), "{e}");
}

/// A program from Debian, stopped when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on port {port}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn daemon(program: &str, args: &[&str]) -> Daemon {
    match Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(c) => Daemon(c),
        Err(e) => panic!("{program} is missing ({e}): apt-get install microsocks tinyproxy (.ci/run does)"),
    }
}

#[test]
fn microsocks_from_debian_with_and_without_credentials() {
    let server = Running::start(ServerConfig::default(), Echo);
    let url = format!("ws://localhost:{}/", server.addr.port());
    let (open, locked) = (free_port(), free_port());
    let _a = daemon("microsocks", &["-i", "127.0.0.1", "-p", &open.to_string()]);
    let _b = daemon("microsocks", &["-i", "127.0.0.1", "-p", &locked.to_string(), "-u", "ann", "-P", "s3cret"]);
    wait_listening(open, "microsocks");
    wait_listening(locked, "microsocks");
    echo_through(&format!("ws://127.0.0.1:{}/", server.addr.port()), &format!("socks5://127.0.0.1:{open}"));
    echo_through(&url, &format!("socks5h://127.0.0.1:{open}"));
    echo_through(&url, &format!("socks5h://ann:s3cret@127.0.0.1:{locked}"));
    let e = connect_via(&url, &format!("socks5h://ann:nope@127.0.0.1:{locked}")).unwrap_err();
    assert!(matches!(e, ClientError::Proxy(ProxyError::AuthFailed { .. })), "{e:?}");
}

#[test]
fn tinyproxy_from_debian_tunnels_with_connect() {
    let server = Running::start(ServerConfig::default(), Echo);
    let url = format!("ws://localhost:{}/", server.addr.port());
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("rfc6455-tinyproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("tinyproxy.conf");
    // Loopback only; no ConnectPort line: CONNECT to any port.
    std::fs::write(&conf, format!("Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nMaxClients 16\nLogLevel Error\n")).unwrap();
    let _p = daemon("tinyproxy", &["-d", "-c", conf.to_str().unwrap()]);
    wait_listening(port, "tinyproxy");
    echo_through(&url, &format!("http://127.0.0.1:{port}"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "tls")]
#[test]
fn wss_through_a_socks5_proxy_checks_the_server_name_end_to_end() {
    // A self-signed certificate for localhost, trusted with --insecure off: the name
    // checked is the server's, not the proxy's.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
    let dir = std::env::temp_dir().join(format!("rfc6455-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let acceptor = rfc6455::net::TlsAcceptor::from_files(rfc6455::net::TlsFiles::new(&cert_file, &key_file)).unwrap();
    let server = Running::start(ServerConfig { tls: Some(acceptor), ..ServerConfig::default() }, Echo);
    let socks = spawn_proxy(socks5_proxy, None);
    let mut opts = ClientOptions::new(ClientRequest::new(&format!("wss://localhost:{}/", server.addr.port())).unwrap());
    opts.proxy = Some(Proxy::parse(&format!("socks5h://{socks}")).unwrap());
    opts.tls =
        Some(rfc6455::net::TlsConnector::new(&rfc6455::net::TlsClientOptions::new().ca_file(&cert_file).no_system_roots(true)).unwrap());
    let mut c = Client::connect(opts).unwrap();
    c.send_text("tls in a tunnel").unwrap();
    assert_eq!(next_message(&mut c).1, b"tls in a tunnel");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The command line: `--proxy`, the environment (`all_proxy`, `no_proxy`), and one
/// clear line for a bad proxy URL or a refusal.
#[test]
fn the_command_line_takes_the_proxy_from_the_flag_or_the_environment() {
    let server = Running::start(ServerConfig::default(), Echo);
    let url = format!("ws://localhost:{}/", server.addr.port());
    let locked = spawn_proxy(socks5_proxy, Some("ann:s3cret"));
    let open = spawn_proxy(socks5_proxy, None);
    let run = |args: &[&str], env: &[(&str, String)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rfc6455"));
        cmd.args(["client", "-q"]).args(args).arg(&url);
        for var in ["all_proxy", "ALL_PROXY", "http_proxy", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = |out: &std::process::Output| out.status.success() && String::from_utf8_lossy(&out.stdout) == "hi\n";
    assert!(ok(&run(&["--proxy", &format!("socks5h://{open}")], &[])));
    // The environment: a proxy that refuses us proves it was used; no_proxy bypasses it.
    let env_proxy = ("all_proxy", format!("socks5h://{locked}"));
    let refused = run(&[], std::slice::from_ref(&env_proxy));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("SOCKS5") && stderr.lines().count() == 1, "{stderr}");
    assert!(ok(&run(&[], &[env_proxy.clone(), ("no_proxy", "localhost".to_owned())])));
    assert!(ok(&run(&["--proxy", "none"], &[env_proxy])));
    let bad = run(&["--proxy", "ftp://127.0.0.1:1"], &[]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.starts_with("error: ") && stderr.lines().count() == 1, "{stderr}");
}
