//! wss:// over loopback: our mio server and client under rustls, with certificates
//! made in the test by `rcgen` (a CA and leaves for localhost and 127.0.0.1). Messages
//! from 1 byte to 16 MiB, the certificate errors a client reports (unknown issuer,
//! name mismatch, expired, a CA used as a server certificate), `insecure`, client
//! certificates required and missing, a reload picked up by new connections only,
//! and the command line's answers to bad files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::net::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rfc6455::net::{Client, ClientError, ClientOptions, Echo, ServerConfig, TlsAcceptor, TlsClientOptions, TlsConnector, TlsFiles};
use rfc6455::{ClientRequest, CloseCode, MessageKind};
use rustls::CertificateError;

/// A CA that signs test certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A leaf for `names` (DNS names, or IP addresses), signed by this CA.
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for n in names {
            params.subject_alt_names.push(match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            });
        }
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A directory of PEM files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("rfc6455-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An echo server on 127.0.0.1 under TLS with `files`.
fn tls_echo(files: TlsFiles) -> (Running, TlsAcceptor) {
    let acceptor = TlsAcceptor::from_files(files).unwrap();
    let cfg = ServerConfig { tls: Some(acceptor.clone()), ..ServerConfig::default() };
    (Running::start(cfg, Echo), acceptor)
}

fn connect(url: &str, tls: TlsClientOptions) -> Result<Client, ClientError> {
    let mut opts = ClientOptions::new(ClientRequest::new(url).unwrap());
    opts.tls = Some(TlsConnector::new(&tls.no_system_roots(true)).unwrap());
    Client::connect(opts)
}

/// The standard setup: a CA, a server leaf for localhost and 127.0.0.1, its files.
fn standard(dir: &Dir) -> (Ca, PathBuf, TlsFiles) {
    let ca = Ca::new("test CA");
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"], false);
    let ca_file = dir.write("ca.pem", &ca.cert.pem());
    let files = TlsFiles::new(dir.write("cert.pem", &cert), dir.write("key.pem", &key));
    (ca, ca_file, files)
}

fn certificate_error(e: ClientError) -> CertificateError {
    match e {
        ClientError::Tls(rustls::Error::InvalidCertificate(c)) => c,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn messages_from_one_byte_to_16_mib_cross_tls_both_ways() {
    let dir = Dir::new("sizes");
    let (_ca, ca_file, files) = standard(&dir);
    let (server, _) = tls_echo(files);
    let mut c = connect(&format!("wss://localhost:{}/", server.addr.port()), TlsClientOptions::new().ca_file(&ca_file)).unwrap();
    for len in [1usize, 125, 126, 16 * 1024 - 1, 16 * 1024 + 1, 1 << 20, 16 << 20] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        c.send_binary(&payload).unwrap();
        let (kind, back) = next_message(&mut c);
        assert_eq!(kind, MessageKind::Binary);
        assert!(back == payload, "{len}-byte message came back changed");
    }
    c.send_text("by IP too").unwrap();
    assert_eq!(next_message(&mut c).1, b"by IP too");
    c.close(CloseCode::NORMAL, "done").unwrap();
    let closed = next_closed(&mut c);
    assert!(closed.clean, "{closed:?}");
    // The same server by its IP address (the leaf names 127.0.0.1 too).
    let mut by_ip = connect(&format!("wss://127.0.0.1:{}/", server.addr.port()), TlsClientOptions::new().ca_file(&ca_file)).unwrap();
    by_ip.send_text("ip").unwrap();
    assert_eq!(next_message(&mut by_ip).1, b"ip");
}

#[test]
fn each_certificate_problem_is_reported_as_what_it_is() {
    let dir = Dir::new("errors");
    let (ca, ca_file, files) = standard(&dir);
    let (server, _) = tls_echo(files);
    let port = server.addr.port();

    // Signed by a CA the client does not trust.
    let other = dir.write("other-ca.pem", &Ca::new("other CA").cert.pem());
    let e = connect(&format!("wss://localhost:{port}/"), TlsClientOptions::new().ca_file(&other)).unwrap_err();
    assert_eq!(certificate_error(e), CertificateError::UnknownIssuer);

    // A name the certificate does not carry.
    let wrong_name = {
        let (cert, key) = ca.leaf(&["example.com"], false);
        let (srv, _) = tls_echo(TlsFiles::new(dir.write("wn.pem", &cert), dir.write("wn.key", &key)));
        let e = connect(&format!("wss://localhost:{}/", srv.addr.port()), TlsClientOptions::new().ca_file(&ca_file)).unwrap_err();
        let message = e.to_string();
        assert!(message.contains("name mismatch"), "{message}");
        certificate_error(e)
    };
    assert!(matches!(wrong_name, CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }), "{wrong_name:?}");

    // Expired.
    let (cert, key) = ca.leaf(&["localhost"], true);
    let (srv, _) = tls_echo(TlsFiles::new(dir.write("old.pem", &cert), dir.write("old.key", &key)));
    let e = connect(&format!("wss://localhost:{}/", srv.addr.port()), TlsClientOptions::new().ca_file(&ca_file)).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    assert!(matches!(certificate_error(e), CertificateError::Expired | CertificateError::ExpiredContext { .. }));

    // The CA's own certificate used as the server's.
    let ca_key = dir.write("ca.key", &ca.key.serialize_pem());
    let (srv, _) = tls_echo(TlsFiles::new(&ca_file, &ca_key));
    let e = connect(&format!("wss://localhost:{}/", srv.addr.port()), TlsClientOptions::new().ca_file(&ca_file)).unwrap_err();
    assert!(e.to_string().contains("CA certificate used as a server certificate"), "{e}");

    // --insecure accepts every one of them.
    let mut c = connect(&format!("wss://localhost:{}/", srv.addr.port()), TlsClientOptions::new().insecure(true)).unwrap();
    c.send_text("anyway").unwrap();
    assert_eq!(next_message(&mut c).1, b"anyway");
}

#[test]
fn a_required_client_certificate_is_checked() {
    let dir = Dir::new("mtls");
    let (ca, ca_file, files) = standard(&dir);
    let (server, _) = tls_echo(files.client_ca(&ca_file));
    let url = format!("wss://localhost:{}/", server.addr.port());
    // Without one the server refuses the handshake, and the client says why.
    let e = connect(&url, TlsClientOptions::new().ca_file(&ca_file)).unwrap_err();
    assert!(matches!(e, ClientError::Tls(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired))), "{e:?}");
    assert!(e.to_string().contains("requires a client certificate"), "{e}");
    // With one signed by the CA it opens.
    let (cert, key) = ca.leaf(&["client"], false);
    let identity = TlsClientOptions::new().ca_file(&ca_file).identity(dir.write("client.pem", &cert), dir.write("client.key", &key));
    let mut c = connect(&url, identity).unwrap();
    c.send_text("mutual").unwrap();
    assert_eq!(next_message(&mut c).1, b"mutual");
}

#[test]
fn a_reload_gives_new_connections_the_new_certificate_and_keeps_open_ones() {
    let dir = Dir::new("reload");
    let (_ca, ca_file, files) = standard(&dir);
    let (cert_path, key_path) = (files.cert.clone(), files.key.clone());
    let (server, acceptor) = tls_echo(files);
    let url = format!("wss://localhost:{}/", server.addr.port());
    let mut old = connect(&url, TlsClientOptions::new().ca_file(&ca_file)).unwrap();

    // New files from another CA; a client trusting only the first fails after reload.
    let ca2 = Ca::new("second CA");
    let (cert, key) = ca2.leaf(&["localhost"], false);
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    acceptor.reload().unwrap();
    let ca2_file = dir.write("ca2.pem", &ca2.cert.pem());
    let e = connect(&url, TlsClientOptions::new().ca_file(&ca_file)).unwrap_err();
    assert_eq!(certificate_error(e), CertificateError::UnknownIssuer);
    let mut new = connect(&url, TlsClientOptions::new().ca_file(&ca2_file)).unwrap();
    new.send_text("new").unwrap();
    assert_eq!(next_message(&mut new).1, b"new");
    // The connection opened before the reload carries on.
    old.send_text("old").unwrap();
    assert_eq!(next_message(&mut old).1, b"old");

    // A broken file is refused and the current certificate stays.
    std::fs::write(&key_path, "not a key").unwrap();
    assert!(acceptor.reload().is_err());
    connect(&url, TlsClientOptions::new().ca_file(&ca2_file)).unwrap();
}

fn rfc6455_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rfc6455"))
}

/// Runs `cmd` to its end, killing it (and failing) if it outlives the test's wait.
fn output_within(cmd: &mut Command) -> std::process::Output {
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not end");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_command_line_refuses_bad_certificate_files_with_one_line() {
    let dir = Dir::new("cli");
    let (_ca, _ca_file, files) = standard(&dir);
    let junk = dir.write("junk.pem", "hello");
    let cases = [
        (
            vec!["echo", "--tls-cert", "/nonexistent/cert.pem", "--tls-key", files.key.to_str().unwrap()],
            "cannot read /nonexistent/cert.pem",
        ),
        (vec!["echo", "--tls-cert", junk.to_str().unwrap(), "--tls-key", files.key.to_str().unwrap()], "no PEM certificate"),
        (vec!["relay", "--tls-cert", files.cert.to_str().unwrap(), "--tls-key", junk.to_str().unwrap()], "no PEM private key"),
    ];
    for (args, expected) in cases {
        let out = output_within(Command::new(rfc6455_bin()).args(&args).args(["--listen", "127.0.0.1:0"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(expected), "{args:?}: {stderr}");
    }
    // A key that does not match the certificate.
    let other_key = dir.write("other.key", &KeyPair::generate().unwrap().serialize_pem());
    let out = output_within(Command::new(rfc6455_bin()).args([
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        other_key.to_str().unwrap(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.starts_with("error: ") && stderr.lines().count() == 1, "{stderr}");
}

/// Python's `websockets` (a third-party client; `.ci/run` installs it with pip),
/// trusting the test CA through an `ssl` context, against our relay over wss://.
#[test]
fn python_websockets_talks_to_our_relay_over_tls() {
    let dir = Dir::new("python");
    let (_ca, ca_file, files) = standard(&dir);
    let acceptor = TlsAcceptor::from_files(files).unwrap();
    let server = Running::start(ServerConfig { tls: Some(acceptor), ..ServerConfig::default() }, rfc6455::net::Relay::new());
    let url = format!("wss://localhost:{}/room", server.addr.port());
    // One of ours in the room, to see what the Python client says and to answer it.
    let mut ours = connect(&url, TlsClientOptions::new().ca_file(&ca_file)).unwrap();
    let present = Command::new("python3").args(["-c", "import websockets"]).status().expect("python3");
    assert!(present.success(), "Python websockets is missing: pip install websockets (.ci/run does)");
    let script = r#"
import asyncio, ssl, sys
import websockets
async def main(url, ca):
    ctx = ssl.create_default_context(cafile=ca)
    async with websockets.connect(url, ssl=ctx, open_timeout=10) as ws:
        await ws.send("hello from python")
        reply = await asyncio.wait_for(ws.recv(), 10)
        print(reply)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;
    let child = Command::new("python3")
        .args(["-c", script, &url, ca_file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    assert_eq!(next_message(&mut ours).1, b"hello from python");
    ours.send_text("hello from rfc6455").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello from rfc6455");
}

/// A client that opens TCP and never starts TLS is dropped at the handshake timeout
/// (a slow-loris on TLS is still one).
#[test]
fn a_silent_tls_client_is_dropped_at_the_handshake_timeout() {
    use std::io::Read;
    let dir = Dir::new("slowloris");
    let (_ca, _ca_file, files) = standard(&dir);
    let acceptor = TlsAcceptor::from_files(files).unwrap();
    let engine = rfc6455::Config { handshake_timeout: Some(std::time::Duration::from_millis(200)), ..rfc6455::Config::default() };
    let server = Running::start(ServerConfig { tls: Some(acceptor), engine, ..ServerConfig::default() }, Echo);
    let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    tcp.read_to_end(&mut got).unwrap();
    // At most a TLS alert record (content type 21: the server's close_notify), then the end.
    assert!(got.is_empty() || got[0] == 21 && got.len() == 7, "{got:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "{:?}", start.elapsed());
    server.wait_connections(0);
}

/// `rfc6455 echo --tls-cert --tls-key` reloads its files on SIGHUP: a client trusting
/// only the new CA gets in after it, one trusting only the old one no longer does.
#[test]
fn sighup_reloads_the_certificate_of_the_running_server() {
    use std::io::BufRead;
    let dir = Dir::new("sighup");
    let (_ca, ca_file, files) = standard(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(rfc6455_bin())
        .args(["--log", "info", "echo", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", files.cert.to_str().unwrap(), "--tls-key", files.key.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = std::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let server = Kill(server);
    let mut wait_for = |what: &str| loop {
        let line = lines.next().expect("the server's log ended").unwrap();
        if line.contains(what) {
            return line;
        }
    };
    assert!(wait_for("listening on").contains(&format!("wss://127.0.0.1:{port}")));
    let url = format!("wss://localhost:{port}/");
    connect(&url, TlsClientOptions::new().ca_file(&ca_file)).unwrap();

    let ca2 = Ca::new("second CA");
    let (cert, key) = ca2.leaf(&["localhost"], false);
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    let ca2_file = dir.write("ca2.pem", &ca2.cert.pem());
    let status = Command::new("kill").args(["-HUP", &server.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for("TLS certificate reloaded");
    let mut c = connect(&url, TlsClientOptions::new().ca_file(&ca2_file)).unwrap();
    c.send_text("reloaded").unwrap();
    assert_eq!(next_message(&mut c).1, b"reloaded");
    assert!(connect(&url, TlsClientOptions::new().ca_file(&ca_file)).is_err());
}

/// `rfc6455 client` says what is wrong with a certificate in one line and exits 1;
/// `--insecure` warns and connects.
#[test]
fn the_command_line_client_reports_certificate_errors_in_one_line() {
    let dir = Dir::new("cli-client");
    let (_ca, ca_file, files) = standard(&dir);
    let (server, _) = tls_echo(files);
    let url = format!("wss://localhost:{}/", server.addr.port());
    let other = dir.write("other.pem", &Ca::new("other").cert.pem());
    let run = |args: &[&str]| {
        let mut child = Command::new(rfc6455_bin())
            .args(["client", &url])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"hi\n").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&["--ca", other.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("unknown issuer"), "{stderr}");
    let out = run(&["--ca", ca_file.to_str().unwrap(), "-q"]);
    assert!(out.status.success() && out.stdout == b"hi\n", "{out:?}");
    let out = run(&["--insecure", "-q"]);
    assert!(out.status.success() && out.stdout == b"hi\n", "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("warning: --insecure"));
}
