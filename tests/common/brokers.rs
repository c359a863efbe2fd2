//! Real brokers for the tests: Debian's `redis-server` and `nats-server`, each on a
//! free 127.0.0.1 port with its own temporary directory, killed on drop; and what the
//! tests ask them (subscriptions, command counts, killing clients).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{WAIT, http_exchange};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A directory of its own under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("rfc6455-{what}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to `child`.
pub fn signal(child: &Child, signal: &str) {
    let ok = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap().success();
    assert!(ok, "kill -{signal} {}", child.id());
}

fn spawn(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): tests/deps.sh installs it"))
}

/// `redis-server` on 127.0.0.1, without persistence.
pub struct Redis {
    pub port: u16,
    pub child: Option<Child>,
    /// `requirepass`, if any.
    password: Option<String>,
    dir: TempDir,
}

impl Redis {
    /// Starts it on a free port and waits (bounded) until it answers.
    pub fn start() -> Redis {
        Redis::on(free_port())
    }

    /// Starts it on `port` and waits (bounded) until it answers.
    pub fn on(port: u16) -> Redis {
        let mut r = Redis { port, child: None, password: None, dir: TempDir::new("redis") };
        r.launch();
        r
    }

    /// Starts it on a free port with `requirepass`.
    pub fn with_password(password: &str) -> Redis {
        let mut r = Redis { port: free_port(), child: None, password: Some(password.to_owned()), dir: TempDir::new("redis") };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.0.to_str().unwrap().to_owned();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", &dir];
        if let Some(p) = &self.password {
            args.extend(["--requirepass", p]);
        }
        self.child = Some(spawn("redis-server", &args));
        let deadline = Instant::now() + WAIT;
        while self.try_con().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_err() {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_con(&self) -> redis::RedisResult<redis::Connection> {
        let url = match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// A connection for the test's own commands.
    pub fn con(&self) -> redis::Connection {
        self.try_con().unwrap()
    }

    /// Kills it (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (after [`Redis::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> i64 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query(&mut self.con()).unwrap();
        n
    }

    /// Channels with at least one subscriber that match `pattern` (`PUBSUB CHANNELS`).
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        redis::cmd("PUBSUB").arg("CHANNELS").arg(pattern).query(&mut self.con()).unwrap()
    }

    /// `PUBLISH` commands it has run (`INFO commandstats`).
    pub fn publish_calls(&self) -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut self.con()).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    }

    /// Publishes `message` on `channel`; returns the subscribers that got it.
    pub fn publish(&self, channel: &str, message: &[u8]) -> i64 {
        redis::cmd("PUBLISH").arg(channel).arg(message).query(&mut self.con()).unwrap()
    }

    /// `CLIENT KILL TYPE pubsub`: every subscriber link drops; returns how many.
    pub fn kill_subscribers(&self) -> i64 {
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut self.con()).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `nats-server` on 127.0.0.1, with its monitoring port and payloads up to 8 MiB.
pub struct Nats {
    pub port: u16,
    monitor: u16,
    pub child: Child,
    dir: TempDir,
}

impl Nats {
    /// Starts it on free ports and waits (bounded) until it answers.
    pub fn start() -> Nats {
        let (port, monitor) = (free_port(), free_port());
        let dir = TempDir::new("nats");
        let conf = dir.0.join("nats.conf");
        let text = format!("listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\nmax_payload: 8388608\n");
        std::fs::write(&conf, text).unwrap();
        let child = spawn("nats-server", &["-c", conf.to_str().unwrap()]);
        let n = Nats { port, monitor, child, dir };
        n.wait_answering();
        n
    }

    fn wait_answering(&self) {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.monitor)).is_err() || TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server on port {} did not answer", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports (after [`Nats::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn("nats-server", &["-c", self.dir.0.join("nats.conf").to_str().unwrap()]);
        self.wait_answering();
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A monitoring page as JSON (HTTP/1.0: the body is neither chunked nor kept open).
    fn monitor(&self, path: &str) -> serde_json::Value {
        let addr: SocketAddr = ([127, 0, 0, 1], self.monitor).into();
        let (status, _, body) = http_exchange(addr, &format!("GET {path} HTTP/1.0\r\n\r\n"));
        assert_eq!(status, 200, "nats {path}");
        serde_json::from_slice(&body).unwrap()
    }

    /// The subjects subscribed (once per subscription) that start with `prefix`.
    pub fn subjects(&self, prefix: &str) -> Vec<String> {
        let json = self.monitor("/subsz?subs=1&limit=100000");
        let list = json["subscriptions_list"].as_array().cloned().unwrap_or_default();
        list.iter().filter_map(|s| s["subject"].as_str()).filter(|s| s.starts_with(prefix)).map(str::to_owned).collect()
    }

    /// Messages the server has received from clients (`/varz` `in_msgs`).
    pub fn in_msgs(&self) -> u64 {
        self.monitor("/varz")["in_msgs"].as_u64().unwrap()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
