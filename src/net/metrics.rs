//! What a server counts and how operators read it: [`ServerStats`] (atomics any
//! thread may read), the per-turn counters the loop keeps without atomics on the
//! per-message path, and the Prometheus text exposition ([`Metrics`]) served at
//! `/metrics` on the admin address.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::{CloseCode, Closed};

/// HTTP statuses counted one by one; any other falls in the last slot.
const STATUSES: [u16; 14] = [200, 400, 401, 403, 404, 405, 408, 426, 429, 431, 500, 503, 505, 0];

/// Counts per HTTP status.
#[derive(Debug, Default)]
pub(crate) struct StatusCounts([AtomicU64; STATUSES.len()]);

impl StatusCounts {
    pub(crate) fn add(&self, status: u16) {
        let i = STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len() - 1);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// `(status label, count)` for every status counted at least once.
    fn samples(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        STATUSES.iter().zip(&self.0).filter_map(|(&s, n)| {
            let n = n.load(Ordering::Relaxed);
            let label = if s == 0 { "other".to_owned() } else { s.to_string() };
            (n > 0).then_some((label, n))
        })
    }

    fn absorb(&self, other: &Self) {
        add_all(&self.0, &other.0);
    }

    /// The count for `status`.
    pub(crate) fn get(&self, status: u16) -> u64 {
        STATUSES.iter().position(|&s| s == status).map_or(0, |i| self.0[i].load(Ordering::Relaxed))
    }
}

/// Close codes 1000-1015 one by one, then the registered (3000-3999) and private
/// (4000-4999) ranges as one each, then anything else: a bounded set of labels
/// whatever peers send.
const CLOSE_SLOTS: usize = 16 + 3;

#[derive(Debug, Default)]
pub(crate) struct CloseCounts([AtomicU64; CLOSE_SLOTS]);

impl CloseCounts {
    fn slot(code: u16) -> usize {
        match code {
            1000..=1015 => usize::from(code - 1000),
            3000..=3999 => 16,
            4000..=4999 => 17,
            _ => 18,
        }
    }

    fn label(slot: usize) -> String {
        match slot {
            0..=15 => (1000 + slot).to_string(),
            16 => "3xxx".to_owned(),
            17 => "4xxx".to_owned(),
            _ => "other".to_owned(),
        }
    }

    fn absorb(&self, other: &Self) {
        add_all(&self.0, &other.0);
    }

    pub(crate) fn add(&self, code: CloseCode) {
        self.0[Self::slot(code.0)].fetch_add(1, Ordering::Relaxed);
    }

    fn samples(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.0.iter().enumerate().filter_map(|(i, n)| {
            let n = n.load(Ordering::Relaxed);
            (n > 0).then(|| (Self::label(i), n))
        })
    }
}

/// Upper bounds of the handshake-latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A latency histogram (cumulative buckets are computed when rendered).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Per bucket (not cumulative), then the overflow (+Inf only).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    fn absorb(&self, other: &Self) {
        add_all(&self.buckets, &other.buckets);
        add(&self.sum_micros, &other.sum_micros);
    }

    /// Observations so far.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Writes the histogram as the family `name` (cumulative buckets, sum, count).
    pub(crate) fn write(&self, m: &mut Metrics, name: &str, help: &str) {
        if !m.family(name, MetricKind::Histogram, help) {
            return;
        }
        let mut cumulative = 0;
        for (bound, b) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += b.load(Ordering::Relaxed);
            m.sample(&format!("{name}_bucket"), &[("le", &bound.to_string())], cumulative);
        }
        cumulative += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        m.sample(&format!("{name}_bucket"), &[("le", "+Inf")], cumulative);
        m.sample(&format!("{name}_sum"), &[], self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        m.sample(&format!("{name}_count"), &[], cumulative);
    }
}

/// Counters a running server publishes, readable from any thread.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// Sockets currently held (any state).
    pub connections: AtomicUsize,
    /// TCP connections accepted (before any limit or handshake).
    pub accepted: AtomicU64,
    /// Connections whose handshake completed.
    pub opened: AtomicU64,
    /// TCP connections refused at the connection limit.
    pub refused: AtomicU64,
    /// Handshakes refused because their `Origin` is not allowed (403).
    pub rejected_origin: AtomicU64,
    /// Connections closed under the slow-consumer policy.
    pub slow_consumers: AtomicU64,
    /// Connections closed for passing the per-connection memory budget.
    pub over_budget: AtomicU64,
    /// Bytes all connections pin now (see [`crate::net::ServerConfig::max_total_memory`]).
    pub pinned_bytes: AtomicUsize,
    /// The most bytes all connections pinned at once.
    pub peak_pinned_bytes: AtomicUsize,
    /// Jobs refused because the server's [`crate::net::Inbox`] was full.
    pub inbox_overflows: AtomicU64,
    /// Whole messages received (text and binary).
    pub messages_received: AtomicU64,
    /// Payload bytes of the messages received.
    pub bytes_received: AtomicU64,
    /// Messages queued to connections: a message relayed to 99 recipients counts 99
    /// (deliveries).
    pub messages_sent: AtomicU64,
    /// Bytes of the messages queued: their payloads, or a shared frame's encoded size
    /// (header included, compressed if it is).
    pub bytes_sent: AtomicU64,
    /// Handshakes the engine refused (bad request, limits, timeout), by status.
    pub(crate) rejected_handshake: StatusCounts,
    /// Handshakes the handler refused, by status.
    pub(crate) rejected_handler: StatusCounts,
    /// Plain HTTP answers (page, health, metrics, 404 ...), by status.
    pub(crate) http_responses: StatusCounts,
    /// Close codes in the close frames we sent.
    pub(crate) close_sent: CloseCounts,
    /// Close codes in the close frames we received.
    pub(crate) close_received: CloseCounts,
    /// From TCP accept to open (TLS and HTTP included).
    pub(crate) handshake_latency: Histogram,
}

impl ServerStats {
    /// Sockets currently held.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Handshakes refused with `status`, by the engine (a bad or slow request) or by
    /// the handler.
    pub fn rejected(&self, status: u16) -> u64 {
        self.rejected_handshake.get(status) + self.rejected_handler.get(status)
    }

    /// Plain HTTP requests answered with `status`.
    pub fn http_responses(&self, status: u16) -> u64 {
        self.http_responses.get(status)
    }

    /// Handshakes completed and timed (the latency histogram's count).
    pub fn handshakes_timed(&self) -> u64 {
        self.handshake_latency.count()
    }

    /// Adds `other`'s counts (and gauges) to these: the counters of a process whose
    /// loops each keep their own. Peaks add up too (an upper bound of the process's peak).
    pub(crate) fn absorb(&self, other: &ServerStats) {
        for (a, b) in [
            (&self.connections, &other.connections),
            (&self.pinned_bytes, &other.pinned_bytes),
            (&self.peak_pinned_bytes, &other.peak_pinned_bytes),
        ] {
            a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (a, b) in [
            (&self.accepted, &other.accepted),
            (&self.opened, &other.opened),
            (&self.refused, &other.refused),
            (&self.rejected_origin, &other.rejected_origin),
            (&self.slow_consumers, &other.slow_consumers),
            (&self.over_budget, &other.over_budget),
            (&self.inbox_overflows, &other.inbox_overflows),
            (&self.messages_received, &other.messages_received),
            (&self.bytes_received, &other.bytes_received),
            (&self.messages_sent, &other.messages_sent),
            (&self.bytes_sent, &other.bytes_sent),
        ] {
            add(a, b);
        }
        self.rejected_handshake.absorb(&other.rejected_handshake);
        self.rejected_handler.absorb(&other.rejected_handler);
        self.http_responses.absorb(&other.http_responses);
        self.close_sent.absorb(&other.close_sent);
        self.close_received.absorb(&other.close_received);
        self.handshake_latency.absorb(&other.handshake_latency);
    }

    /// The sum of several loops' counters.
    pub fn sum<'a>(loops: impl IntoIterator<Item = &'a ServerStats>) -> ServerStats {
        let total = ServerStats::default();
        for s in loops {
            total.absorb(s);
        }
        total
    }

    /// Counts the close frames of a connection that opened.
    pub(crate) fn count_closes(&self, closed: &Closed) {
        if let Some(f) = &closed.sent {
            self.close_sent.add(f.code);
        }
        if let Some(f) = &closed.received {
            self.close_received.add(f.code);
        }
    }

    /// Writes every server metric, in the Prometheus text format.
    pub(crate) fn write_metrics(&self, m: &mut Metrics) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let n = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
        m.gauge("rfc6455_connections", "Sockets held now (any state).", n(&self.connections));
        m.counter("rfc6455_accepted_total", "TCP connections accepted.", get(&self.accepted));
        m.counter("rfc6455_opened_total", "WebSocket handshakes completed.", get(&self.opened));
        m.family("rfc6455_rejected_total", MetricKind::Counter, "Connections refused, by reason and HTTP status.");
        m.sample("rfc6455_rejected_total", &[("reason", "limit"), ("status", "503")], get(&self.refused));
        m.sample("rfc6455_rejected_total", &[("reason", "origin"), ("status", "403")], get(&self.rejected_origin));
        for (reason, counts) in [("handshake", &self.rejected_handshake), ("handler", &self.rejected_handler)] {
            for (status, v) in counts.samples() {
                m.sample("rfc6455_rejected_total", &[("reason", reason), ("status", &status)], v);
            }
        }
        m.family("rfc6455_http_responses_total", MetricKind::Counter, "Plain HTTP requests answered, by status.");
        for (status, v) in self.http_responses.samples() {
            m.sample("rfc6455_http_responses_total", &[("status", &status)], v);
        }
        m.counter("rfc6455_messages_received_total", "Whole messages received.", get(&self.messages_received));
        m.counter("rfc6455_received_bytes_total", "Payload bytes of messages received.", get(&self.bytes_received));
        m.counter("rfc6455_messages_sent_total", "Messages queued to connections (deliveries).", get(&self.messages_sent));
        m.counter("rfc6455_sent_bytes_total", "Bytes of messages queued (payloads; shared frames as encoded).", get(&self.bytes_sent));
        m.counter("rfc6455_slow_consumer_closes_total", "Connections closed as slow consumers.", get(&self.slow_consumers));
        m.counter("rfc6455_over_budget_closes_total", "Connections closed over their memory budget.", get(&self.over_budget));
        m.counter("rfc6455_inbox_overflows_total", "Jobs refused by a full loop inbox.", get(&self.inbox_overflows));
        m.gauge("rfc6455_pinned_bytes", "Bytes all connections pin now.", n(&self.pinned_bytes));
        m.family("rfc6455_close_codes_total", MetricKind::Counter, "Close frames, by direction and code.");
        for (direction, counts) in [("sent", &self.close_sent), ("received", &self.close_received)] {
            for (code, v) in counts.samples() {
                m.sample("rfc6455_close_codes_total", &[("direction", direction), ("code", &code)], v);
            }
        }
        self.write_latency(m);
    }

    fn write_latency(&self, m: &mut Metrics) {
        self.handshake_latency.write(m, "rfc6455_handshake_seconds", "Time from TCP accept to an open WebSocket.");
    }
}

fn add(a: &AtomicU64, b: &AtomicU64) {
    a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
}

fn add_all(a: &[AtomicU64], b: &[AtomicU64]) {
    for (x, y) in a.iter().zip(b) {
        add(x, y);
    }
}

/// Counts the loop keeps per turn without atomics (they change per message and per
/// recipient), added to [`ServerStats`] once per turn.
#[derive(Debug, Default)]
pub(crate) struct TurnCounts {
    pub(crate) messages_received: u64,
    pub(crate) bytes_received: u64,
    pub(crate) messages_sent: u64,
    pub(crate) bytes_sent: u64,
}

impl TurnCounts {
    pub(crate) fn received(&mut self, bytes: usize) {
        self.messages_received += 1;
        self.bytes_received += bytes as u64;
    }

    /// Payload bytes of a frame ([`crate::Delivery::Frames`]); its message is counted
    /// once, with its last frame.
    pub(crate) fn received_bytes(&mut self, bytes: usize) {
        self.bytes_received += bytes as u64;
    }

    pub(crate) fn sent(&mut self, messages: usize, bytes: usize) {
        self.messages_sent += messages as u64;
        self.bytes_sent += bytes as u64;
    }

    /// Adds the turn's counts to `stats` and starts again from zero.
    pub(crate) fn publish(&mut self, stats: &ServerStats) {
        if self.messages_received + self.messages_sent + self.bytes_received == 0 {
            return;
        }
        let add = |a: &AtomicU64, v: u64| {
            if v > 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&stats.messages_received, self.messages_received);
        add(&stats.bytes_received, self.bytes_received);
        add(&stats.messages_sent, self.messages_sent);
        add(&stats.bytes_sent, self.bytes_sent);
        *self = Self::default();
    }
}

/// The type of a metric family (`# TYPE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets (`_bucket{le=..}`), `_sum` and `_count`.
    Histogram,
    /// No type stated.
    Untyped,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Untyped => "untyped",
        }
    }
}

/// A Prometheus text-format (version 0.0.4) page being written: families with their
/// `# HELP` and `# TYPE` lines, then samples. A [`crate::net::Handler`] adds its own
/// metrics through [`crate::net::Handler::metrics`]. A family whose name is already on
/// the page, or is not a valid name, is left out with its samples (a scrape with a
/// repeated family would be refused whole).
#[derive(Debug, Default)]
pub struct Metrics {
    out: String,
    families: std::collections::HashSet<String>,
    /// The current family was left out: so are its samples.
    skipping: bool,
}

/// The `Content-Type` of a metrics page.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Metrics {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family. Names follow Prometheus rules (`[a-zA-Z_:][a-zA-Z0-9_:]*`);
    /// returns false (and leaves the family out) for an invalid or repeated name.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) -> bool {
        self.skipping = !valid_name(name) || !self.families.insert(name.to_owned());
        if self.skipping {
            return false;
        }
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
        true
    }

    /// One sample of the current family (`name` is the family's, or for a histogram
    /// its `_bucket`, `_sum` or `_count`); label values are escaped, a sample with an
    /// invalid metric or label name is left out.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        if self.skipping || !valid_name(name) || labels.iter().any(|(k, _)| !valid_name(k)) {
            return;
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.out, "{}{k}=\"{v}\"", if i > 0 { "," } else { "" });
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, MetricKind::Counter, help);
        self.sample(name, &[], value);
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, MetricKind::Gauge, help);
        self.sample(name, &[], value);
    }

    /// The page so far.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The page.
    pub fn into_string(self) -> String {
        self.out
    }
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut m = Metrics::new();
        m.family("x_total", MetricKind::Counter, "help with \\ and\nnewline");
        m.sample("x_total", &[("room", "a\"b\\c\nd")], 3);
        assert_eq!(
            m.as_str(),
            "# HELP x_total help with \\\\ and\\nnewline\n# TYPE x_total counter\nx_total{room=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }

    #[test]
    fn repeated_or_invalid_families_are_left_out() {
        let mut m = Metrics::new();
        m.counter("a_total", "first", 1);
        assert!(!m.family("a_total", MetricKind::Gauge, "again"));
        m.sample("a_total", &[], 2);
        assert!(!m.family("bad name", MetricKind::Gauge, "x"));
        m.sample("bad name", &[], 3);
        assert!(m.family("b", MetricKind::Gauge, "x"));
        m.sample("b", &[("bad label", "v")], 4);
        assert_eq!(m.as_str(), "# HELP a_total first\n# TYPE a_total counter\na_total 1\n# HELP b x\n# TYPE b gauge\n");
    }

    #[test]
    fn close_codes_have_bounded_labels() {
        let c = CloseCounts::default();
        for code in [1000, 1001, 1015, 3000, 3999, 4000, 4999, 1016, 2999, 5000] {
            c.add(CloseCode(code));
        }
        let labels: Vec<(String, u64)> = c.samples().collect();
        let want = [("1000", 1), ("1001", 1), ("1015", 1), ("3xxx", 2), ("4xxx", 2), ("other", 3)];
        assert_eq!(labels, want.map(|(l, n)| (l.to_owned(), n)));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let s = ServerStats::default();
        s.handshake_latency.observe(Duration::from_micros(300));
        s.handshake_latency.observe(Duration::from_millis(3));
        s.handshake_latency.observe(Duration::from_secs(9));
        let mut m = Metrics::new();
        s.write_latency(&mut m);
        let text = m.into_string();
        assert!(text.contains("rfc6455_handshake_seconds_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("rfc6455_handshake_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("rfc6455_handshake_seconds_bucket{le=\"2.5\"} 2\n"), "{text}");
        assert!(text.contains("rfc6455_handshake_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("rfc6455_handshake_seconds_count 3\n"), "{text}");
    }
}
