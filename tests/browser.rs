//! Browser tests: a headless Chromium, driven over the DevTools protocol by
//! `tests/common/cdp.rs` (which speaks it with this crate's own blocking client), runs
//! the relay's chat page, `src/net/chat.html`.
//!
//! They need Chromium: `chromium` on `PATH` (tests/deps.sh installs it) or the binary
//! named by `CHROMIUM`. Every test that launches a browser holds [`browser_lock`], so
//! one Chromium runs at a time however many test threads there are.

mod common;

#[path = "common/cdp.rs"]
mod cdp;

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cdp::Browser;
use serde_json::json;

/// Serializes the tests that launch Chromium (a poisoned lock, from a failed test,
/// still serializes).
fn browser_lock() -> MutexGuard<'static, ()> {
    static BROWSER: Mutex<()> = Mutex::new(());
    BROWSER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A `file://` URL of the chat page in the source tree.
fn chat_file_url() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/net/chat.html");
    let path = path.to_str().expect("a UTF-8 path");
    let mut url = String::from("file://");
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => url.push(byte as char),
            _ => url += &format!("%{byte:02X}"),
        }
    }
    url
}

/// The chat page opened from disk: the DOM contract is there, the page keeps to what
/// its Content-Security-Policy allows (one attribute-less inline style and script, no
/// inline handlers, nothing external), it has no relay to connect to and says so, and
/// a message typed meanwhile stays in the box.
#[test]
fn cdp_runs_a_page() {
    let _lock = browser_lock();
    let started = Instant::now();
    let browser = Browser::launch();
    let launched = started.elapsed();
    let page = browser.new_page(&chat_file_url());
    let loaded = started.elapsed();

    let dom = page.eval(
        r#"({
            composer: !!document.querySelector('form#composer input#message'),
            send: document.querySelector('#composer [type=submit]')?.disabled ?? 'missing',
            messages: document.getElementById('messages')?.childElementCount ?? 'missing',
            nick: document.getElementById('nick')?.value ?? 'missing',
            stored: localStorage.getItem('rfc6455.nick'),
            styles: [...document.querySelectorAll('style')].map(e => e.attributes.length),
            scripts: [...document.querySelectorAll('script')].map(e => e.attributes.length),
            inline: [...document.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))
                .filter(name => name.startsWith('on') || name === 'style'),
            external: document.querySelectorAll('link, img, iframe, object, embed, [src], [href]').length,
            title: document.title,
            hooks: typeof window.chat === 'object' && typeof window.chat.socket === 'function' && 'chatSocket' in window,
        })"#,
    );
    assert_eq!(dom["composer"], true, "{dom}");
    assert_eq!(dom["send"], true, "the send button is disabled while not open: {dom}");
    assert_eq!(dom["messages"], 0, "{dom}");
    let nick = dom["nick"].as_str().unwrap();
    assert!(!nick.is_empty() && nick != "missing", "{dom}");
    assert_eq!(dom["stored"], nick, "the nickname is remembered: {dom}");
    assert_eq!(dom["styles"], json!([0]), "one inline <style> without attributes: {dom}");
    assert_eq!(dom["scripts"], json!([0]), "one inline <script> without attributes: {dom}");
    assert_eq!(dom["inline"], json!([]), "no inline handlers or style attributes: {dom}");
    assert_eq!(dom["external"], 0, "nothing external: {dom}");
    assert!(dom["title"].as_str().unwrap().contains("chat.html"), "the room (the path) is in the title: {dom}");
    assert_eq!(dom["hooks"], true, "{dom}");

    // A page from disk has no relay to connect to: it says so at once and tries nothing.
    let settled =
        page.wait_for("document.body.dataset.state === 'closed' && document.getElementById('status').textContent", Duration::from_secs(5));
    assert_eq!(settled, "closed");
    assert_eq!(page.eval("window.chatSocket"), serde_json::Value::Null, "no connection was attempted");

    // Typed while not open: not sent, not shown, not lost.
    page.type_and_send("typed <b>offline</b>");
    let after = page.eval(
        "({ box: document.getElementById('message').value, shown: document.getElementById('messages').childElementCount,
            sent: window.chat.sent, state: document.body.dataset.state })",
    );
    assert_ne!(after["state"], "open", "{after}");
    assert_eq!(after["box"], "typed <b>offline</b>", "the text stays in the box: {after}");
    assert_eq!(after["shown"], 0, "{after}");
    assert_eq!(after["sent"], 0, "{after}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser/chat-file.png");
    page.screenshot(&shot);
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"), "{}", shot.display());

    assert_eq!(page.exceptions(), Vec::<String>::new(), "no uncaught exceptions");
    page.close();
    drop(browser);
    eprintln!("cdp_runs_a_page: launch {launched:?}, page loaded {loaded:?}, whole test with browser exit {:?}", started.elapsed());
}

// ------------------------------------------------------------ the relay's page, live

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use cdp::Page;
use common::net::{ServerProcess, WAIT, http_get};

/// `rfc6455 relay` on a free loopback port with `extra` arguments.
fn relay(extra: &[&str]) -> ServerProcess {
    let mut args = vec!["relay", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// A JavaScript string literal for `s`.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Opens `url` (a room's page), waits until its socket is open, and sets the nickname.
fn join(browser: &Browser, url: &str, nick: &str) -> Page {
    let page = browser.new_page(url);
    page.wait_for("document.body.dataset.state === 'open'", WAIT);
    page.eval(&format!(
        "(() => {{ const n = document.getElementById('nick'); n.value = {}; n.dispatchEvent(new Event('change')); return true }})()",
        js(nick)
    ));
    page
}

/// The texts of the messages shown, in order.
fn texts(page: &Page) -> Vec<String> {
    let v = page.eval("[...document.querySelectorAll('#messages .text')].map(e => e.textContent)");
    serde_json::from_value(v).unwrap()
}

/// Waits until the page shows at least `n` messages; returns their texts.
fn wait_texts(page: &Page, n: usize) -> Vec<String> {
    page.wait_for(&format!("document.querySelectorAll('#messages .text').length >= {n}"), WAIT);
    texts(page)
}

/// Where a screenshot goes: `RFC6455_SCREENSHOT` if set (the README's image is made
/// this way), else the test's scratch directory.
fn screenshot_path() -> std::path::PathBuf {
    std::env::var_os("RFC6455_SCREENSHOT")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser/chat.png"))
}

/// Two pages in one room see each other's messages (as text, never as HTML); a page in
/// another room sees none of them. The screenshot of the conversation is the README's.
#[test]
fn pages_in_a_room_chat_and_other_rooms_hear_nothing() {
    let _lock = browser_lock();
    let started = Instant::now();
    let relay = relay(&[]);
    let base = format!("http://{}", relay.addr);
    let browser = Browser::launch();
    let ann = join(&browser, &format!("{base}/lobby"), "ann");
    let bob = join(&browser, &format!("{base}/lobby"), "bob");
    let eve = join(&browser, &format!("{base}/elsewhere"), "eve");

    ann.type_and_send("hi bob, this page is served by rfc6455 relay");
    assert_eq!(wait_texts(&bob, 1), ["ann: hi bob, this page is served by rfc6455 relay"]);
    let xss = "<img src=x onerror=\"document.title='pwned'\"> stays text";
    bob.type_and_send(xss);
    let got = wait_texts(&ann, 2);
    assert_eq!(got[1], format!("bob: {xss}"));
    let injected = ann.eval("document.querySelectorAll('#messages img').length + ':' + document.title");
    assert_eq!(injected, "0:/lobby · chat", "the message was rendered as text");
    ann.type_and_send("both tabs see every message; the sender sees its own once");
    wait_texts(&bob, 3);
    assert_eq!(texts(&ann).len(), 3, "no echo of the sender's own message");
    assert_eq!(ann.eval("document.querySelectorAll('#messages .mine').length"), 2);

    // Another room: nothing. (Its socket is open and the lobby's messages are all delivered.)
    eve.type_and_send("anyone?");
    assert_eq!(texts(&eve), ["eve: anyone?"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(texts(&ann).len(), 3, "the lobby does not hear /elsewhere");
    assert_eq!(texts(&eve).len(), 1, "/elsewhere does not hear the lobby");

    ann.screenshot(screenshot_path());
    for page in [&ann, &bob, &eve] {
        assert_eq!(page.exceptions(), Vec::<String>::new());
        let csp = page.console().into_iter().filter(|l| l.contains("Content Security Policy")).collect::<Vec<_>>();
        assert_eq!(csp, Vec::<String>::new(), "no CSP violations");
    }
    eprintln!("pages_in_a_room_chat: {:?}", started.elapsed());
}

/// A page and `rfc6455 client` in a terminal share a room, both ways; the admin
/// address shows them as the room's two members.
#[test]
fn a_page_and_the_terminal_client_chat_both_ways() {
    let _lock = browser_lock();
    let started = Instant::now();
    let relay = relay(&["--admin-listen", "127.0.0.1:0"]);
    let admin = relay.addr_after("metrics: http://");
    let browser = Browser::launch();
    let page = join(&browser, &format!("http://{}/lobby", relay.addr), "ann");
    let mut terminal = Command::new(env!("CARGO_BIN_EXE_rfc6455"))
        .args(["--log", "error", "client", &format!("ws://{}/lobby", relay.addr)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = terminal.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8(http_get(admin, "/metrics").2).unwrap().contains("rfc6455_relay_members 2\n") {
        assert!(Instant::now() < deadline, "the terminal client did not join");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdin = terminal.stdin.take().unwrap();
    writeln!(stdin, "tom: hello from a terminal").unwrap();
    assert_eq!(wait_texts(&page, 1), ["tom: hello from a terminal"]);
    page.type_and_send("hello terminal, from a browser");
    let line = lines.recv_timeout(WAIT).expect("the terminal prints the page's message");
    assert_eq!(line, "ann: hello terminal, from a browser");
    drop(stdin);
    let _ = terminal.kill();
    let _ = terminal.wait();
    eprintln!("a_page_and_the_terminal_client: {:?}", started.elapsed());
}

/// With `--deflate` the relay and Chromium agree on permessage-deflate, and the relay's
/// one shared compressed encoding inflates in the browser.
#[test]
fn chromium_negotiates_permessage_deflate_with_the_relay() {
    let _lock = browser_lock();
    let relay = relay(&["--deflate"]);
    let browser = Browser::launch();
    let url = format!("http://{}/lobby", relay.addr);
    let ann = join(&browser, &url, "ann");
    let bob = join(&browser, &url, "bob");
    let extensions = ann.eval("window.chatSocket.extensions");
    assert!(extensions.as_str().unwrap().starts_with("permessage-deflate"), "{extensions}");
    let long = "compressible ".repeat(200);
    ann.type_and_send(&long);
    assert_eq!(wait_texts(&bob, 1), [format!("ann: {long}")]);
    bob.type_and_send("short");
    assert_eq!(wait_texts(&ann, 2)[1], "bob: short");
}

/// The relay restarts: the page says it is reconnecting, comes back within its backoff
/// cap once the relay is up again, and messages flow again.
#[test]
fn the_page_reconnects_when_the_relay_comes_back() {
    let _lock = browser_lock();
    let first = relay(&[]);
    let addr = first.addr;
    let browser = Browser::launch();
    let url = format!("http://{addr}/lobby");
    let ann = join(&browser, &url, "ann");
    let bob = join(&browser, &url, "bob");
    drop(first);
    ann.wait_for("document.body.dataset.state === 'reconnecting'", WAIT);
    let status = ann.eval("document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().starts_with("reconnecting in "), "{status}");
    // Down long enough for a failed attempt or two.
    std::thread::sleep(Duration::from_millis(1500));
    let _second = ServerProcess::start(&["relay", "--listen", &addr.to_string()]);
    let restarted = Instant::now();
    // The backoff is capped at 10 s.
    let back = Duration::from_secs(12);
    ann.wait_for("document.body.dataset.state === 'open'", back);
    bob.wait_for("document.body.dataset.state === 'open'", back);
    eprintln!("the_page_reconnects: open again {:?} after the restart", restarted.elapsed());
    ann.type_and_send("back again");
    assert_eq!(wait_texts(&bob, 1), ["ann: back again"]);
}

/// A 1 MiB message from one page reaches the other whole; 2,000 small messages from a
/// program arrive in order.
#[test]
fn a_large_message_and_many_small_ones_arrive_whole_and_in_order() {
    let _lock = browser_lock();
    let started = Instant::now();
    let relay = relay(&[]);
    let browser = Browser::launch();
    let url = format!("http://{}/lobby", relay.addr);
    let ann = join(&browser, &url, "ann");
    let bob = join(&browser, &url, "bob");
    ann.eval(
        "(() => { const i = document.getElementById('message'); i.value = 'x'.repeat(1 << 20);
                  document.getElementById('composer').requestSubmit(); return true })()",
    );
    bob.wait_for("document.querySelectorAll('#messages .text').length === 1", WAIT);
    // All of it arrived; the page shows the first 16 KiB and counts the rest.
    let shown = bob.eval(
        "(() => { const m = document.querySelector('#messages .msg'); const t = m.querySelector('.text').textContent;
                  return [Number(m.dataset.length), t.startsWith('ann: xxx'), t.endsWith(' more characters)'), t.length] })()",
    );
    assert_eq!(shown[0], (1 << 20) + "ann: ".len(), "{shown}");
    assert_eq!((&shown[1], &shown[2]), (&json!(true), &json!(true)), "{shown}");
    assert!(shown[3].as_u64().unwrap() < 17_000, "{shown}");

    let mut program = rfc6455::net::Client::connect_url(&format!("ws://{}/lobby", relay.addr)).unwrap();
    for i in 0..2000 {
        program.send_text(&format!("n{i}")).unwrap();
    }
    assert!(program.flush(WAIT).unwrap(), "the 2,000 messages left");
    let check = "(() => { const t = [...document.querySelectorAll('#messages .text')].slice(1).map(e => e.textContent);
                          return t.length === 2000 && t.every((s, i) => s === 'n' + i) })()";
    bob.wait_for(check, WAIT);
    ann.wait_for(check, WAIT);
    eprintln!("a_large_message_and_many_small_ones: {:?}", started.elapsed());
}

/// The same page over `wss://` (a test certificate for 127.0.0.1, trusted by this
/// browser only through `--ignore-certificate-errors`): it connects with `wss:` to its
/// own origin and chats.
#[test]
fn the_page_works_over_wss() {
    let _lock = browser_lock();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("rfc6455-browser-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let relay = relay(&["--tls-cert", cert_file.to_str().unwrap(), "--tls-key", key_file.to_str().unwrap()]);
    assert!(relay.startup.contains(&format!("chat page: https://{}/lobby", relay.addr)), "{}", relay.startup);
    let browser = Browser::launch_with(&["--ignore-certificate-errors"]);
    let url = format!("https://{}/lobby", relay.addr);
    let ann = join(&browser, &url, "ann");
    let bob = join(&browser, &url, "bob");
    assert_eq!(ann.eval("window.chatSocket.url"), format!("wss://{}/lobby", relay.addr));
    ann.type_and_send("over TLS");
    assert_eq!(wait_texts(&bob, 1), ["ann: over TLS"]);
    let _ = std::fs::remove_dir_all(&dir);
}
