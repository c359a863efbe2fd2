//! A minimal Chrome DevTools Protocol client for the browser tests: launches a headless
//! Chromium on a fresh profile, speaks CDP over the crate's own blocking WebSocket
//! client (one connection to the browser; pages are flattened sessions on it), and
//! drives pages: evaluate JavaScript, wait for a condition, type into the chat page,
//! take screenshots.
//!
//! Every wait is bounded: a CDP call by [`CALL_TIMEOUT`], the launch by
//! [`LAUNCH_TIMEOUT`], [`Page::wait_for`] by its argument. Failures panic with what
//! was seen (the CDP error, the JavaScript exception, the browser's log).
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rfc6455::blocking::{self, WebSocket};
use rfc6455::{Config, DriverError, Event};
use serde_json::{Value, json};

/// Longest wait for Chromium to start and open its DevTools endpoint.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the answer to one CDP command (a page load included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How often [`Page::wait_for`] evaluates its condition.
const POLL: Duration = Duration::from_millis(50);
/// Most events, exceptions and console lines kept (oldest dropped first).
const MAX_KEPT: usize = 10_000;

/// The one DevTools connection, shared by the browser and its pages.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Events read while waiting for answers, for [`Cdp::wait_event`].
    events: VecDeque<Value>,
    /// (session, text) of uncaught exceptions (`Runtime.exceptionThrown`).
    exceptions: VecDeque<(String, String)>,
    /// (session, text) of console calls and browser log entries (CSP violations,
    /// failed connections ...).
    console: VecDeque<(String, String)>,
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() == MAX_KEPT {
        queue.pop_front();
    }
    queue.push_back(item);
}

impl Cdp {
    /// Sends `method` (to `session`, or to the browser) and reads until its answer:
    /// the `result`, or the CDP error as `Err`.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value, timeout: Duration) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        self.ws.send_text(&command.to_string()).map_err(|e| format!("sending {method}: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let Some(message) = self.next_message(deadline)? else {
                return Err(format!("no answer to {method} within {timeout:?}"));
            };
            if message.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(error) = message.get("error") {
                    return Err(format!("{method} failed: {error}"));
                }
                return Ok(message.get("result").cloned().unwrap_or(Value::Null));
            }
            self.record(message);
        }
    }

    /// Sends a command without waiting for its answer.
    fn send(&mut self, method: &str, params: Value) -> Result<(), DriverError> {
        self.next_id += 1;
        self.ws.send_text(&json!({ "id": self.next_id, "method": method, "params": params }).to_string())
    }

    /// The next message, or `None` once `deadline` passes.
    fn next_message(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.ws.set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(Event::Text(text)) => {
                    return serde_json::from_str(&text).map(Some).map_err(|e| format!("bad CDP message ({e}): {text}"));
                }
                Ok(Event::Closed(closed)) => return Err(format!("the browser closed the DevTools connection: {closed:?}")),
                Ok(_) => {}
                Err(DriverError::Io(e)) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => return Ok(None),
                Err(e) => return Err(format!("DevTools connection failed: {e}")),
            }
        }
    }

    /// Keeps an event (answers to commands no longer awaited are dropped).
    fn record(&mut self, event: Value) {
        let Some(method) = event.get("method").and_then(Value::as_str) else { return };
        let session = event.get("sessionId").and_then(Value::as_str).unwrap_or_default().to_owned();
        let params = &event["params"];
        match method {
            "Runtime.exceptionThrown" => push_bounded(&mut self.exceptions, (session, describe_exception(&params["exceptionDetails"]))),
            "Runtime.consoleAPICalled" => {
                let args: Vec<String> = params["args"].as_array().into_iter().flatten().map(remote_object_text).collect();
                push_bounded(
                    &mut self.console,
                    (session, format!("console.{}: {}", params["type"].as_str().unwrap_or("?"), args.join(" "))),
                );
            }
            "Log.entryAdded" => {
                let entry = &params["entry"];
                let (level, text) = (entry["level"].as_str().unwrap_or("?"), entry["text"].as_str().unwrap_or_default());
                push_bounded(&mut self.console, (session, format!("log.{level}: {text}")));
            }
            _ => push_bounded(&mut self.events, event),
        }
    }

    /// Drops the kept events `method` of `session`.
    fn forget_events(&mut self, session: &str, method: &str) {
        self.events.retain(|e| !is_event(e, session, method));
    }

    /// The first event `method` of `session` (kept or arriving within `timeout`).
    fn wait_event(&mut self, session: &str, method: &str, timeout: Duration) -> Result<Value, String> {
        if let Some(i) = self.events.iter().position(|e| is_event(e, session, method)) {
            return Ok(self.events.remove(i).expect("position found"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let Some(message) = self.next_message(deadline)? else {
                return Err(format!("no {method} event within {timeout:?}"));
            };
            if is_event(&message, session, method) {
                return Ok(message);
            }
            self.record(message);
        }
    }
}

fn is_event(event: &Value, session: &str, method: &str) -> bool {
    event["method"] == method && event.get("sessionId").and_then(Value::as_str).unwrap_or_default() == session
}

/// A `Runtime.RemoteObject` as text: its value, or its description.
fn remote_object_text(object: &Value) -> String {
    match object.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => object["description"].as_str().or(object["unserializableValue"].as_str()).unwrap_or("undefined").to_owned(),
    }
}

/// `Runtime.ExceptionDetails` as one line: the message, and where it was thrown.
fn describe_exception(details: &Value) -> String {
    let text = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("exception");
    let url = details["url"].as_str().unwrap_or_default();
    format!("{text} (at {url}:{}:{})", details["lineNumber"], details["columnNumber"])
}

/// The Chromium binary: `$CHROMIUM`, else the first of the usual names on `PATH`.
fn find_chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("Chromium not found (no `chromium` on PATH, CHROMIUM not set): run tests/deps.sh to install it")
}

/// The Chromium process and its temporary directory (profile and log): the process
/// is killed if still running, and the directory removed, on drop.
struct Process {
    child: Child,
    dir: PathBuf,
}

impl Process {
    /// The end of Chromium's log, for error messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The whole group (the wrapper script, the browser, its helpers), whether or
        // not the wrapper has exited.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium's helper processes may write into the profile for a moment longer.
        for _ in 0..20 {
            match fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => std::thread::sleep(Duration::from_millis(50)),
                _ => return,
            }
        }
        eprintln!("cdp: could not remove {}", self.dir.display());
    }
}

/// A headless Chromium and the DevTools connection to it. Dropping it closes the
/// browser (killing it if it does not exit within 5 s) and removes its profile.
pub struct Browser {
    cdp: Rc<RefCell<Cdp>>,
    process: Process,
}

impl Browser {
    /// Starts Chromium headless on a fresh profile and connects to it.
    pub fn launch() -> Browser {
        Self::launch_with(&[])
    }

    /// [`Browser::launch`] with extra command-line switches.
    pub fn launch_with(extra: &[&str]) -> Browser {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let binary = find_chromium();
        let dir = std::env::temp_dir().join(format!("rfc6455-cdp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_dir_all(&dir);
        let profile = dir.join("profile");
        fs::create_dir_all(&profile).unwrap_or_else(|e| panic!("creating {}: {e}", profile.display()));
        let log = File::create(dir.join("chromium.log")).expect("creating the Chromium log");
        // Its own process group: Debian's `chromium` is a shell script that runs the
        // browser as its child, so killing the script alone would orphan the browser.
        let child = Command::new(&binary)
            .process_group(0)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-background-timer-throttling",
                "--disable-backgrounding-occluded-windows",
                "--disable-renderer-backgrounding",
                "--password-store=basic",
                "--mute-audio",
                "--window-size=1024,768",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e} (run tests/deps.sh to install Chromium)", binary.display()));
        let mut process = Process { child, dir };

        // Chromium writes the port it bound and the browser target's path once it listens.
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let endpoint = loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("Chromium ({}) exited during startup with {status}:\n{}", binary.display(), process.log_tail());
            }
            let file = fs::read_to_string(profile.join("DevToolsActivePort")).unwrap_or_default();
            let mut lines = file.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                if let Ok(port) = port.trim().parse::<u16>() {
                    break format!("ws://127.0.0.1:{port}{}", path.trim());
                }
            }
            assert!(Instant::now() < deadline, "Chromium did not open DevTools within {LAUNCH_TIMEOUT:?}:\n{}", process.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        };
        // Screenshots are large single messages.
        let config = Config { max_message_size: 64 << 20, max_frame_size: 64 << 20, ..Config::default() };
        let ws = loop {
            match blocking::connect(&endpoint, config.clone()) {
                Ok(ws) => break ws,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("cdp: connecting to {endpoint}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("connecting to Chromium's DevTools at {endpoint}: {e}\n{}", process.log_tail()),
            }
        };
        let cdp = Cdp { ws, next_id: 0, events: VecDeque::new(), exceptions: VecDeque::new(), console: VecDeque::new() };
        Browser { cdp: Rc::new(RefCell::new(cdp)), process }
    }

    /// A browser-level command (no session); panics on a CDP error.
    pub fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.borrow_mut().call(None, method, params, CALL_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Chromium's product string, e.g. `Chrome/156.0.8078.114` (new headless mode
    /// reports itself as plain Chrome).
    pub fn version(&self) -> String {
        self.call("Browser.getVersion", json!({}))["product"].as_str().unwrap_or_default().to_owned()
    }

    /// Opens a new page (its own window, so it is never a hidden tab) on `url` and
    /// waits for its load event. The `Page`, `Runtime` and `Log` domains are enabled
    /// before the navigation, so nothing the page logs or throws is missed.
    pub fn new_page(&self, url: &str) -> Page {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank", "newWindow": true }));
        let target_id = target["targetId"].as_str().expect("Target.createTarget: no targetId").to_owned();
        let attached = self.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }));
        let session_id = attached["sessionId"].as_str().expect("Target.attachToTarget: no sessionId").to_owned();
        let page = Page { cdp: Rc::clone(&self.cdp), target_id, session_id };
        for domain in ["Page", "Runtime", "Log"] {
            page.call(&format!("{domain}.enable"), json!({}));
        }
        page.navigate(url);
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask Chromium to close (it then shuts its helper processes down); the
        // process's own drop kills it if it is still running after this.
        let asked = self.cdp.try_borrow_mut().map(|mut cdp| cdp.send("Browser.close", json!({})).is_ok()).unwrap_or(false);
        let deadline = Instant::now() + Duration::from_secs(5);
        while asked && Instant::now() < deadline {
            if !matches!(self.process.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One page (a target attached as a flattened session on the browser's connection).
pub struct Page {
    cdp: Rc<RefCell<Cdp>>,
    pub target_id: String,
    pub session_id: String,
}

impl Page {
    /// A command to this page's session; panics on a CDP error.
    pub fn call(&self, method: &str, params: Value) -> Value {
        self.try_call(method, params).unwrap_or_else(|e| panic!("{e}{}", self.context()))
    }

    fn try_call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.cdp.borrow_mut().call(Some(&self.session_id), method, params, CALL_TIMEOUT)
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value as JSON
    /// (`undefined` as `null`; NaN, Infinity, -0 and bigints as strings). Panics on a
    /// JavaScript exception, with its message.
    pub fn eval(&self, js: &str) -> Value {
        self.try_eval(js).unwrap_or_else(|e| panic!("evaluating `{js}`: {e}{}", self.context()))
    }

    /// [`Page::eval`], with the exception or CDP error as `Err`.
    pub fn try_eval(&self, js: &str) -> Result<Value, String> {
        let params = json!({ "expression": js, "returnByValue": true, "awaitPromise": true, "userGesture": true });
        let answer = self.try_call("Runtime.evaluate", params)?;
        if let Some(details) = answer.get("exceptionDetails") {
            return Err(format!("JavaScript exception: {}", describe_exception(details)));
        }
        let result = &answer["result"];
        Ok(match (result.get("value"), result.get("unserializableValue")) {
            (Some(value), _) => value.clone(),
            (None, Some(unserializable)) => unserializable.clone(),
            (None, None) => Value::Null,
        })
    }

    /// Evaluates the expression `condition` (awaited) every 50 ms until it is truthy,
    /// and returns its value. An exception counts as not yet (so conditions may
    /// touch elements that do not exist yet). Panics after `timeout` with the
    /// condition and the last value or error.
    pub fn wait_for(&self, condition: &str, timeout: Duration) -> Value {
        let js = format!("(async () => {{ const value = await (\n{condition}\n); return [!!value, value ?? null]; }})()");
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_eval(&js) {
                Ok(Value::Array(mut pair)) if pair.len() == 2 => {
                    if pair[0] == Value::Bool(true) {
                        return pair.pop().expect("two elements");
                    }
                    format!("value {}", pair[1])
                }
                Ok(other) => format!("value {other}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for `{condition}`; last {last}{}", self.context());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Types `text` into the chat page's `#message` box and submits its form (as
    /// Enter does: `form.requestSubmit()`, which runs the page's submit handler).
    pub fn type_and_send(&self, text: &str) {
        let text = serde_json::to_string(text).expect("a string serializes");
        self.eval(&format!(
            "(() => {{
                const box = document.getElementById('message');
                if (!box || !box.form) throw new Error('no #message inside a form');
                box.value = {text};
                box.dispatchEvent(new Event('input', {{ bubbles: true }}));
                box.form.requestSubmit();
            }})()"
        ));
    }

    /// Saves a PNG screenshot of the viewport to `path` (creating its directory).
    pub fn screenshot(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("Page.captureScreenshot: no data"))
            .expect("Page.captureScreenshot: bad base64");
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Navigates to `url` and waits for the load event; panics if the navigation fails.
    pub fn navigate(&self, url: &str) {
        self.cdp.borrow_mut().forget_events(&self.session_id, "Page.loadEventFired");
        let answer = self.call("Page.navigate", json!({ "url": url }));
        if let Some(error) = answer.get("errorText").and_then(Value::as_str) {
            panic!("navigating to {url}: {error}{}", self.context());
        }
        self.wait_load(&format!("navigating to {url}"));
    }

    /// Reloads the page and waits for the load event.
    pub fn reload(&self) {
        self.cdp.borrow_mut().forget_events(&self.session_id, "Page.loadEventFired");
        self.call("Page.reload", json!({}));
        self.wait_load("reloading");
    }

    fn wait_load(&self, what: &str) {
        let loaded = self.cdp.borrow_mut().wait_event(&self.session_id, "Page.loadEventFired", CALL_TIMEOUT);
        if let Err(e) = loaded {
            panic!("{what}: {e}{}", self.context());
        }
    }

    /// The uncaught exceptions thrown in this page so far.
    pub fn exceptions(&self) -> Vec<String> {
        self.cdp.borrow().exceptions.iter().filter(|(s, _)| *s == self.session_id).map(|(_, text)| text.clone()).collect()
    }

    /// Console calls and browser log entries (CSP violations, failed connections) of
    /// this page so far, as `console.TYPE: args` and `log.LEVEL: text`.
    pub fn console(&self) -> Vec<String> {
        self.cdp.borrow().console.iter().filter(|(s, _)| *s == self.session_id).map(|(_, text)| text.clone()).collect()
    }

    /// Closes the page's target.
    pub fn close(self) {
        let closed = self.cdp.borrow_mut().call(None, "Target.closeTarget", json!({ "targetId": self.target_id }), CALL_TIMEOUT);
        closed.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Exceptions and recent console lines, appended to panic messages.
    fn context(&self) -> String {
        let Ok(cdp) = self.cdp.try_borrow() else { return String::new() };
        let mine = |q: &VecDeque<(String, String)>| -> Vec<String> {
            q.iter().filter(|(s, _)| *s == self.session_id).map(|(_, t)| t.clone()).collect()
        };
        let (exceptions, console) = (mine(&cdp.exceptions), mine(&cdp.console));
        let mut out = String::new();
        if !exceptions.is_empty() {
            out += &format!("\npage exceptions:\n  {}", exceptions.join("\n  "));
        }
        if !console.is_empty() {
            out += &format!("\npage console (last 20):\n  {}", console[console.len().saturating_sub(20)..].join("\n  "));
        }
        out
    }
}
