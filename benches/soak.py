#!/usr/bin/env python3
"""Soak test of the `rfc6455 relay` chat relay (issue 16).

This module owns the load driver and the verdict of a long, steady run against a relay
that is already listening (benches/soak.sh starts one and stops it):

* Connections: --clients clients (default 1,000) in --rooms rooms (default 10; client
  i joins room i mod rooms, path /soak-room<r>), all from this one process, opened with
  bounded concurrency; the measured phase starts only once every one is open.
* Traffic: in each room, one message every 1/--rate seconds (default 20 msg/s per
  room), sent by the room's members in turn (round robin), scheduled by absolute time
  (message k of a room is due at t0 + phase + k/rate; a late send does not shift the
  ones after it). A message is 64 bytes, binary: magic, room, sender id, the sender's
  sequence number (0, 1, 2, ...), the send time (time.monotonic_ns), padding.
* Delivery checks, per recipient and sender, after a drain period (until every
  expected delivery has arrived, at most --drain seconds, then 1 s more for late
  duplicates): lost (sent by another member of the room, never received), duplicated
  (received twice), reordered (arrived after a later one from the same sender, i.e.
  the per-sender sequence did not strictly increase), from another room, self-echo
  (a client's own message came back), malformed, and never-sent (a sequence number
  its sender had not used). Every kind is counted exactly; any one fails the run.
* Server memory: the relay's VmRSS (/proc/PID/status) every 5 s of the measured phase.
  After the warm-up (the first 60 s or 10 % of the run, whichever is larger; --warmup
  overrides it) RSS must stay flat: the largest sample at most 5 % above the first
  post-warm-up sample.
* Latency (send to receive, both in this process): p50/p99/max per window of
  min(60 s, duration / 10), by send time. p99 must not drift: the last window's p99
  must be at most 2 x the first window's p99 + 1 ms.
* Driver health: its own CPU (resource.getrusage) and event-loop stalls are reported;
  if the send schedule ever lags by more than 1 s the run FAILs with "driver could not
  keep the rate" instead of silently measuring a slower rate. The relay's CPU time comes
  from /proc/PID/stat; its `rfc6455_*` metrics (--metrics-url) are printed with the
  deltas over the run next to the driver's own counts. Per latency window the report
  also shows the CPU of the driver, the relay and every other process (/proc/stat), so
  that a latency spike caused by a neighbour on the machine can be told apart; it lists
  when RSS rose by more than 1 % and when the driver's loop stalled for 100 ms or more
  (after such a stall the schedule catches up, and the relay sees a burst).

The driver is built to stay cheap at ~20,000 deliveries a second: connections use
websockets' Sans-I/O ClientProtocol under a plain asyncio.Protocol (each message is
checked in data_received, with no per-message task wake-up), and uvloop runs the event
loop when it is installed (--loop; it halves the driver's CPU). Latency is stamped when
the bytes are read, so it includes the relay, the loopback TCP and any event-loop delay
of this process, which the stall probe reports.

Output: a human-readable report, then one last line, `SOAK PASS` or
`SOAK FAIL: reason; reason`, and exit code 0 or 1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import resource
import struct
import sys
import time
import urllib.request
from array import array
from dataclasses import dataclass, field

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

# ---------------------------------------------------------------------------------------
# Wire format

MAGIC = b"SOAK"
HEADER = struct.Struct("<4sHIIQ")  # magic, room, sender id, sequence, send time (ns)
MESSAGE_SIZE = 64
PADDING = b"." * (MESSAGE_SIZE - HEADER.size)

RSS_INTERVAL_S = 5.0
RSS_TOLERANCE = 0.05
LAG_LIMIT_NS = 1_000_000_000
LATENCY_WINDOW_MAX_S = 60.0
DRAIN_GRACE_S = 1.0
STALL_PROBE_S = 0.05
LONG_STALL_US = 100_000
RSS_STEP = 0.01  # RSS rises larger than this fraction are listed with their time
DRIVER_BUSY_PCT = 85
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def encode_message(room: int, sender: int, seq: int, sent_ns: int) -> bytes:
    return HEADER.pack(MAGIC, room, sender, seq, sent_ns) + PADDING


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass
class Config:
    url: str
    metrics_url: str | None
    relay_pid: int | None
    clients: int
    rooms: int
    duration_s: float
    rate: float
    warmup_s: float
    drain_s: float
    connect_concurrency: int
    event_loop: str

    @property
    def window_s(self) -> float:
        return min(LATENCY_WINDOW_MAX_S, self.duration_s / 10)


def parse_duration(text: str) -> float:
    """Seconds, or a number with a unit: 90s, 10m, 1h."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="relay base URL, e.g. ws://127.0.0.1:9001")
    p.add_argument("--metrics-url", help="the relay's Prometheus endpoint, e.g. http://127.0.0.1:9090/metrics")
    p.add_argument("--relay-pid", type=int, help="PID of the relay (for RSS and CPU)")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--duration", type=parse_duration, default=600.0, help="measured phase (default 10m)")
    p.add_argument("--rate", type=float, default=20.0, help="messages per second per room (default 20)")
    p.add_argument("--warmup", type=parse_duration, help="RSS warm-up (default max(60 s, 10%% of the run))")
    p.add_argument("--drain", type=parse_duration, default=10.0, help="longest wait for late deliveries (default 10 s)")
    p.add_argument("--connect-concurrency", type=int, default=32, help="handshakes in flight (default 32)")
    p.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop (about half the driver CPU), asyncio's own, or auto: uvloop if installed",
    )
    a = p.parse_args(argv)
    if a.clients < 2 * a.rooms:
        p.error("need at least two clients per room")
    if a.duration <= 0 or a.rate <= 0:
        p.error("--duration and --rate must be positive")
    warmup = a.warmup if a.warmup is not None else max(60.0, a.duration / 10)
    return Config(
        url=a.url.rstrip("/"),
        metrics_url=a.metrics_url,
        relay_pid=a.relay_pid,
        clients=a.clients,
        rooms=a.rooms,
        duration_s=a.duration,
        rate=a.rate,
        warmup_s=warmup,
        drain_s=a.drain,
        connect_concurrency=a.connect_concurrency,
        event_loop=a.loop,
    )


# ---------------------------------------------------------------------------------------
# Shared tallies


@dataclass
class Tally:
    """Counts shared by all clients: violations, deliveries, latencies, closes."""

    t0_ns: int = 0
    window_ns: int = 1
    latencies_us: list[array] = field(default_factory=list)  # per window, by send time
    sent: int = 0
    expected: int = 0  # deliveries: for each message sent, its room's size - 1
    delivered: int = 0  # first-time, valid deliveries
    duplicated: int = 0
    reordered: int = 0
    foreign_room: int = 0
    self_echo: int = 0
    malformed: int = 0
    never_sent: int = 0
    send_failures: int = 0
    unexpected_closes: list[str] = field(default_factory=list)
    closing: bool = False

    def start_windows(self, t0_ns: int, window_s: float, duration_s: float) -> None:
        self.t0_ns = t0_ns
        self.window_ns = int(window_s * 1e9)
        self.latencies_us = [array("I") for _ in range(math.ceil(duration_s / window_s - 1e-9))]


# ---------------------------------------------------------------------------------------
# Connections and clients


class SoakConnection(asyncio.Protocol):
    """One WebSocket client connection on websockets' Sans-I/O layer (ClientProtocol).

    Every received message goes to `on_message(is_binary, data, arrived_ns)` straight
    from `data_received`, stamped with the time its bytes were read: no per-message
    task wake-ups, so 20,000 deliveries a second cost this process as little as
    possible. Fragmented messages are reassembled; pings are answered by the protocol.
    """

    def __init__(self, url: str, on_message, on_lost):
        self.protocol = ClientProtocol(parse_uri(url), max_size=2**20)
        self.on_message = on_message
        self.on_lost = on_lost  # called once, with a description, when the TCP connection ends
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.fragments: list[bytes] | None = None
        self.fragments_binary = True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.protocol.send_request(self.protocol.connect())
        self._write_pending()

    def data_received(self, data: bytes) -> None:
        arrived_ns = time.monotonic_ns()
        self.protocol.receive_data(data)
        events = self.protocol.events_received()
        self._write_pending()
        for event in events:
            if type(event) is Frame:
                self._on_frame(event, arrived_ns)
            elif isinstance(event, Response) and not self.opened.done():
                if self.protocol.handshake_exc is None:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(self.protocol.handshake_exc)

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._write_pending()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        p = self.protocol
        if p.close_rcvd is not None:
            how = f"closed by the relay: {p.close_rcvd}"
        elif p.close_sent is not None:
            how = f"closed by the driver: {p.close_sent}"
        else:
            how = f"TCP connection lost without a close frame ({exc!r})"
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(how))
        self.lost.set_result(None)
        self.on_lost(how)

    # Use

    def send_binary(self, payload: bytes) -> bool:
        """Queues a message on the socket; False if the connection is not open."""
        if self.protocol.state is not State.OPEN:
            return False
        self.protocol.send_binary(payload)
        self._write_pending()
        return True

    def unsent_bytes(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    async def close(self, timeout_s: float) -> None:
        """Closing handshake (1000); the TCP connection is aborted if it lingers."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._write_pending()
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), timeout_s)
        except asyncio.TimeoutError:
            self.transport.abort()
            await self.lost

    def _write_pending(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def _on_frame(self, frame: Frame, arrived_ns: int) -> None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT:
            if frame.fin:
                self.on_message(opcode is Opcode.BINARY, frame.data, arrived_ns)
            else:
                self.fragments, self.fragments_binary = [bytes(frame.data)], opcode is Opcode.BINARY
        elif opcode is Opcode.CONT and self.fragments is not None:
            self.fragments.append(bytes(frame.data))
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                self.on_message(self.fragments_binary, data, arrived_ns)


async def open_connection(url: str, on_message, on_lost, timeout_s: float) -> SoakConnection:
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: SoakConnection(url, on_message, on_lost), uri.host, uri.port), timeout_s
    )
    try:
        await asyncio.wait_for(asyncio.shield(conn.opened), timeout_s)
    except BaseException:
        conn.transport.abort()
        raise
    return conn


class Client:
    """One soak client: sends its own numbered messages and checks what it receives."""

    def __init__(self, cid: int, room: int, tally: Tally, room_of: list[int], sent_by: list[int]):
        self.id = cid
        self.room = room
        self.tally = tally
        self.room_of = room_of  # client id -> room, for every client
        self.sent_by = sent_by  # client id -> messages it has sent (its next sequence number)
        self.conn: SoakConnection | None = None
        self.next_seq: dict[int, int] = {}  # sender -> highest sequence received + 1
        self.missing: dict[int, set[int]] = {}  # sender -> sequences skipped so far

    async def open(self, base_url: str) -> None:
        self.conn = await open_connection(f"{base_url}/soak-room{self.room}", self._check, self._on_lost, 30.0)

    def send_next(self, now_ns: int) -> bool:
        """Sends this client's next message, stamped now; False if the connection is gone."""
        seq = self.sent_by[self.id]
        self.sent_by[self.id] = seq + 1  # before sending: a recipient may see it at once
        if self.conn.send_binary(encode_message(self.room, self.id, seq, now_ns)):
            return True
        self.sent_by[self.id] = seq
        return False

    def _on_lost(self, how: str) -> None:
        if not self.tally.closing and self.conn is not None:
            self.tally.unexpected_closes.append(f"client {self.id}: {how}")

    def _check(self, is_binary: bool, data, arrived_ns: int) -> None:
        """Classifies one received message and records its latency."""
        t = self.tally
        if not is_binary or len(data) != MESSAGE_SIZE:
            t.malformed += 1
            return
        magic, room, sender, seq, sent_ns = HEADER.unpack_from(data)
        if magic != MAGIC or sender >= len(self.room_of):
            t.malformed += 1
            return
        if room != self.room or self.room_of[sender] != self.room:
            t.foreign_room += 1
            return
        if sender == self.id:
            t.self_echo += 1
            return
        if seq >= self.sent_by[sender]:
            t.never_sent += 1
            return
        expected_seq = self.next_seq.get(sender, 0)
        if seq > expected_seq:  # skipped some: they are missing until they turn up
            self.missing.setdefault(sender, set()).update(range(expected_seq, seq))
        if seq >= expected_seq:
            self.next_seq[sender] = seq + 1
        else:
            missing = self.missing.get(sender)
            if missing is None or seq not in missing:
                t.duplicated += 1
                return
            missing.discard(seq)
            t.reordered += 1
        t.delivered += 1
        window = min((sent_ns - t.t0_ns) // t.window_ns, len(t.latencies_us) - 1)
        t.latencies_us[window].append((arrived_ns - sent_ns) // 1000)

    def lost_from(self, sender: int) -> int:
        """Messages `sender` sent that never reached this client."""
        received_up_to = self.next_seq.get(sender, 0)
        return self.sent_by[sender] - received_up_to + len(self.missing.get(sender, ()))


def make_clients(cfg: Config, tally: Tally) -> list[Client]:
    room_of = [i % cfg.rooms for i in range(cfg.clients)]
    sent_by = [0] * cfg.clients
    return [Client(i, room_of[i], tally, room_of, sent_by) for i in range(cfg.clients)]


def members_by_room(clients: list[Client], rooms: int) -> list[list[Client]]:
    by_room: list[list[Client]] = [[] for _ in range(rooms)]
    for c in clients:
        by_room[c.room].append(c)
    return by_room


async def open_all(clients: list[Client], cfg: Config) -> list[str]:
    """Opens every connection, a bounded number at a time (3 tries each); the failures."""
    gate = asyncio.Semaphore(cfg.connect_concurrency)
    failures: list[str] = []

    async def open_one(c: Client) -> None:
        async with gate:
            for attempt in range(3):
                try:
                    await c.open(cfg.url)
                    return
                except Exception as exc:  # noqa: BLE001 - any failure is reported
                    if attempt == 2:
                        failures.append(f"client {c.id}: {exc!r}")
                    await asyncio.sleep(0.2)

    await asyncio.gather(*(open_one(c) for c in clients))
    return failures


async def close_all(clients: list[Client], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def close_one(c: Client) -> None:
        async with gate:
            if c.conn is not None:
                await c.conn.close(5.0)

    await asyncio.gather(*(close_one(c) for c in clients), return_exceptions=True)


# ---------------------------------------------------------------------------------------
# The send schedule


@dataclass
class ScheduleStats:
    max_lag_ns: int = 0
    late_sends: int = 0  # sends more than LAG_LIMIT_NS behind their due time
    max_unsent_bytes: int = 0  # most bytes a sender's socket held back (the relay not reading)


async def run_room_schedule(
    members: list[Client], t0_ns: int, phase_ns: int, end_ns: int, rate: float, tally: Tally, stats: ScheduleStats
) -> None:
    """Sends the room's messages, round robin over its members, each at its due time."""
    interval_ns = 1e9 / rate
    recipients = len(members) - 1
    k = 0
    while True:
        due = t0_ns + phase_ns + int(k * interval_ns)
        if due >= end_ns:
            return
        now = time.monotonic_ns()
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            now = time.monotonic_ns()
        else:
            await asyncio.sleep(0)  # behind schedule: catch up, but let the receivers run too
        lag = now - due
        stats.max_lag_ns = max(stats.max_lag_ns, lag)
        if lag > LAG_LIMIT_NS:
            stats.late_sends += 1
        sender = members[k % len(members)]
        if sender.send_next(now):
            tally.sent += 1
            tally.expected += recipients
            stats.max_unsent_bytes = max(stats.max_unsent_bytes, sender.conn.unsent_bytes())
        else:
            tally.send_failures += 1
        k += 1


# ---------------------------------------------------------------------------------------
# Watching the relay and the driver


class RelayProbe:
    """The relay process seen from outside: RSS, CPU time, metrics."""

    def __init__(self, pid: int | None, metrics_url: str | None):
        self.pid = pid
        self.metrics_url = metrics_url
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def rss_kib(self) -> int | None:
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def cpu_s(self) -> float | None:
        """User + system CPU time of all the relay's threads."""
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / CLOCK_TICKS

    def alive(self) -> bool:
        return self.pid is None or os.path.exists(f"/proc/{self.pid}")

    def metrics(self) -> dict[str, float]:
        """The `rfc6455_*` samples (histogram buckets left out); empty if unavailable."""
        if not self.metrics_url:
            return {}
        try:
            with self._http.open(self.metrics_url, timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        samples = {}
        for line in text.splitlines():
            if line.startswith("rfc6455_") and "_bucket{" not in line:
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


async def sample_rss(probe: RelayProbe, t0_ns: int, end_ns: int, samples: list[tuple[float, int]]) -> None:
    """VmRSS at t0, t0 + 5 s, ... up to the end of the measured phase."""
    k = 0
    while (due := t0_ns + int(k * RSS_INTERVAL_S * 1e9)) <= end_ns:
        await asyncio.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
        rss = probe.rss_kib()
        if rss is not None:
            samples.append(((time.monotonic_ns() - t0_ns) / 1e9, rss))
        k += 1


async def watch_loop_stalls(t0_ns: int, end_ns: int, stalls_us: array, long_stalls: list[tuple[float, int]]) -> None:
    """How late the event loop wakes a short sleep: the driver's own queueing delay
    (every probe), and when the long ones happened (seconds into the run, microseconds)."""
    while time.monotonic_ns() < end_ns:
        before = time.monotonic_ns()
        await asyncio.sleep(STALL_PROBE_S)
        stall_us = max(0, (time.monotonic_ns() - before) // 1000 - int(STALL_PROBE_S * 1e6))
        stalls_us.append(stall_us)
        if stall_us >= LONG_STALL_US:
            long_stalls.append(((before - t0_ns) / 1e9, stall_us))


def cpu_seconds_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (/proc/stat), every process together."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class CpuSample:
    driver_s: float
    relay_s: float | None
    machine_s: float


async def sample_cpu(probe: RelayProbe, t0_ns: int, end_ns: int, window_ns: int, samples: list[CpuSample]) -> None:
    """CPU counters at every latency-window boundary, to tell the driver's, the relay's
    and other processes' share in each window (others compete for the same cores)."""
    k = 0
    while True:
        due = min(t0_ns + k * window_ns, end_ns)
        await asyncio.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
        samples.append(CpuSample(cpu_seconds_self(), probe.cpu_s(), machine_busy_seconds()))
        if due >= end_ns:
            return
        k += 1


async def drain(tally: Tally, max_s: float) -> float:
    """Waits until every expected delivery arrived (at most max_s), then a short grace."""
    start = time.monotonic()
    while tally.delivered < tally.expected and time.monotonic() - start < max_s:
        await asyncio.sleep(0.05)
    waited = time.monotonic() - start
    await asyncio.sleep(DRAIN_GRACE_S)  # late duplicates or strays still count
    return waited


# ---------------------------------------------------------------------------------------
# Analysis


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of a sorted, non-empty list."""
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(p * len(sorted_values)) - 1))]


@dataclass
class WindowStats:
    start_s: float
    end_s: float
    count: int
    p50_us: int
    p99_us: int
    max_us: int
    cpu_pct: tuple[float, float | None, float] | None  # driver, relay, other processes (% of one core)


def cpu_shares(before: CpuSample, after: CpuSample, wall_s: float) -> tuple[float, float | None, float]:
    driver = after.driver_s - before.driver_s
    relay = None if before.relay_s is None or after.relay_s is None else after.relay_s - before.relay_s
    others = after.machine_s - before.machine_s - driver - (relay or 0.0)

    def pct(seconds: float) -> float:
        return seconds / wall_s * 100

    return pct(driver), None if relay is None else pct(relay), max(0.0, pct(others))


def latency_windows(tally: Tally, window_s: float, duration_s: float, cpu: list[CpuSample]) -> list[WindowStats]:
    out = []
    for i, lat in enumerate(tally.latencies_us):
        if not lat:
            continue
        start, end = i * window_s, min((i + 1) * window_s, duration_s)
        shares = cpu_shares(cpu[i], cpu[i + 1], end - start) if i + 1 < len(cpu) else None
        s = sorted(lat)
        out.append(WindowStats(start, end, len(s), percentile(s, 0.5), percentile(s, 0.99), s[-1], shares))
    return out


def p99_drift_ok(windows: list[WindowStats]) -> tuple[bool, str]:
    """Rule: last window's p99 <= 2 x first window's p99 + 1 ms."""
    if len(windows) < 2:
        return True, "fewer than two latency windows: not checked"
    first, last = windows[0].p99_us, windows[-1].p99_us
    limit = 2 * first + 1000
    verdict = "ok" if last <= limit else "DRIFT"
    return last <= limit, f"last p99 {ms(last)} vs limit 2 x {ms(first)} + 1 ms = {ms(limit)}: {verdict}"


@dataclass
class RssVerdict:
    ok: bool
    text: str


def rss_flat(samples: list[tuple[float, int]], warmup_s: float) -> RssVerdict:
    """Rule: after the warm-up, max RSS <= 1.05 x the first post-warm-up sample."""
    post = [rss for t, rss in samples if t >= warmup_s - 0.5]
    if len(post) < 2:
        return RssVerdict(True, f"fewer than two samples after the {warmup_s:.0f} s warm-up: not checked")
    first, last, lo, hi = post[0], post[-1], min(post), max(post)
    limit = first * (1 + RSS_TOLERANCE)
    ok = hi <= limit
    growth = (hi - first) / first * 100
    text = (
        f"after warm-up ({len(post)} samples): first {mib(first)}, last {mib(last)}, "
        f"min {mib(lo)}, max {mib(hi)} ({growth:+.1f} % vs first; limit +5 % = {mib(limit)}): "
        + ("flat" if ok else "GROWING")
    )
    return RssVerdict(ok, text)


def rss_steps(samples: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Rises between consecutive samples larger than RSS_STEP of the first: (time, KiB)."""
    if not samples:
        return []
    threshold = samples[0][1] * RSS_STEP
    return [(t, rss - prev) for (_, prev), (t, rss) in zip(samples, samples[1:]) if rss - prev > threshold]


def lost_deliveries(clients: list[Client], by_room: list[list[Client]]) -> tuple[int, int]:
    """Total lost deliveries, and how many recipients lost any."""
    total, recipients = 0, 0
    for c in clients:
        lost = sum(c.lost_from(s.id) for s in by_room[c.room] if s is not c)
        total += lost
        recipients += lost > 0
    return total, recipients


def ms(us: float) -> str:
    return f"{us / 1000:.3f} ms"


def number(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


# ---------------------------------------------------------------------------------------
# The run


@dataclass
class RunResult:
    connect_failures: list[str] = field(default_factory=list)
    connect_s: float = 0.0
    measured_s: float = 0.0
    drain_s: float = 0.0
    driver_cpu_s: float = 0.0
    relay_cpu_s: float | None = None
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    rss_after_connect: int | None = None
    rss_after_drain: int | None = None
    stalls_us: array = field(default_factory=lambda: array("I"))
    long_stalls: list[tuple[float, int]] = field(default_factory=list)
    cpu_samples: list[CpuSample] = field(default_factory=list)
    schedule: ScheduleStats = field(default_factory=ScheduleStats)
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    metrics_after_close: dict[str, float] = field(default_factory=dict)
    relay_alive: bool = True


async def run(cfg: Config, tally: Tally, clients: list[Client], probe: RelayProbe) -> RunResult:
    res = RunResult()
    by_room = members_by_room(clients, cfg.rooms)

    started = time.monotonic()
    res.connect_failures = await open_all(clients, cfg)
    res.connect_s = time.monotonic() - started
    if res.connect_failures:
        tally.closing = True
        await close_all(clients, cfg.connect_concurrency)
        return res
    await asyncio.sleep(1.0)  # let the relay settle every join before traffic starts
    gc.collect()
    gc.freeze()  # the long-lived setup objects: later collections need not walk them
    res.rss_after_connect = probe.rss_kib()
    res.metrics_before = probe.metrics()

    t0 = time.monotonic_ns() + 100_000_000
    end = t0 + int(cfg.duration_s * 1e9)
    tally.start_windows(t0, cfg.window_s, cfg.duration_s)
    cpu_before, relay_cpu_before = cpu_seconds_self(), probe.cpu_s()
    room_stagger_ns = int(1e9 / cfg.rate / cfg.rooms)
    schedules = [
        run_room_schedule(members, t0, r * room_stagger_ns, end, cfg.rate, tally, res.schedule)
        for r, members in enumerate(by_room)
    ]
    await asyncio.gather(
        *schedules,
        sample_rss(probe, t0, end, res.rss_samples),
        sample_cpu(probe, t0, end, tally.window_ns, res.cpu_samples),
        watch_loop_stalls(t0, end, res.stalls_us, res.long_stalls),
    )
    res.measured_s = (time.monotonic_ns() - t0) / 1e9
    res.drain_s = await drain(tally, cfg.drain_s)
    res.driver_cpu_s = cpu_seconds_self() - cpu_before
    relay_cpu_after = probe.cpu_s()
    if relay_cpu_before is not None and relay_cpu_after is not None:
        res.relay_cpu_s = relay_cpu_after - relay_cpu_before
    res.rss_after_drain = probe.rss_kib()
    res.metrics_after = probe.metrics()

    tally.closing = True
    await close_all(clients, cfg.connect_concurrency)
    await asyncio.sleep(1.0)
    res.metrics_after_close = probe.metrics()
    res.relay_alive = probe.alive()
    return res


# ---------------------------------------------------------------------------------------
# Report


METRICS_OF_INTEREST = (
    "rfc6455_relay_messages_total",
    "rfc6455_messages_received_total",
    "rfc6455_messages_sent_total",
)


def report(cfg: Config, tally: Tally, clients: list[Client], res: RunResult) -> list[str]:
    """Prints the report, section by section; returns the failure reasons (empty: pass)."""
    report_setup(cfg)
    reasons = report_connections(cfg, tally, res)
    if res.connect_failures:
        return reasons
    reasons += report_traffic_and_checks(cfg, tally, clients, res)
    reasons += report_latency(cfg, tally, res)
    reasons += report_memory(cfg, res)
    reasons += report_cpu(tally, res)
    report_metrics(tally, res)
    if not res.relay_alive:
        reasons.append("the relay process exited")
    return reasons


def report_setup(cfg: Config) -> None:
    print("== rfc6455 relay soak ==")
    print(
        f"clients {cfg.clients} in {cfg.rooms} rooms, {cfg.rate:g} msg/s per room "
        f"({cfg.rate * cfg.rooms:g} msg/s sent in all), {MESSAGE_SIZE}-byte messages, "
        f"duration {cfg.duration_s:g} s, RSS warm-up {cfg.warmup_s:g} s, latency windows of {cfg.window_s:g} s"
    )
    print(f"relay {cfg.url} (pid {cfg.relay_pid}), metrics {cfg.metrics_url}; driver event loop: {cfg.event_loop}")


def first_ten(items: list, label: str = "") -> None:
    """Prints up to ten of `items`, indented, each after `label`."""
    for item in items[:10]:
        print(f"  {label}{item}")


def report_connections(cfg: Config, tally: Tally, res: RunResult) -> list[str]:
    print("\n-- connections --")
    print(f"opened {cfg.clients - len(res.connect_failures)}/{cfg.clients} in {res.connect_s:.1f} s")
    first_ten(res.connect_failures, "failed: ")
    if res.connect_failures:
        return [f"{len(res.connect_failures)} connections could not open"]
    print(f"closed during the run: {len(tally.unexpected_closes)}")
    first_ten(tally.unexpected_closes)
    if tally.unexpected_closes:
        return [f"{len(tally.unexpected_closes)} connections closed during the run"]
    return []


def report_traffic_and_checks(cfg: Config, tally: Tally, clients: list[Client], res: RunResult) -> list[str]:
    reasons = []
    lost, lossy_recipients = lost_deliveries(clients, members_by_room(clients, cfg.rooms))
    print("\n-- traffic --")
    print(
        f"measured phase {res.measured_s:.1f} s; messages sent {tally.sent} "
        f"({tally.sent / res.measured_s:.1f}/s; scheduled {cfg.rate * cfg.rooms * cfg.duration_s:.0f})"
    )
    timed_out = "" if tally.delivered >= tally.expected else ", timed out"
    print(
        f"deliveries expected {tally.expected}, received {tally.delivered} "
        f"(drained in {res.drain_s:.2f} s{timed_out}); send failures {tally.send_failures}"
    )
    if tally.delivered + lost != tally.expected:
        print(f"  note: received + lost = {tally.delivered + lost}, not the expected {tally.expected}")

    print("\n-- delivery checks (per recipient, per sender) --")
    violations = {
        "lost": lost,
        "duplicated": tally.duplicated,
        "reordered": tally.reordered,
        "from another room": tally.foreign_room,
        "self-echo": tally.self_echo,
        "malformed": tally.malformed,
        "never sent": tally.never_sent,
    }
    for kind, n in violations.items():
        where = f" (at {lossy_recipients} recipients)" if kind == "lost" and n else ""
        print(f"{kind:>18}: {n}{where}")
        if n:
            reasons.append(f"{n} {kind}")
    return reasons


def format_cpu(shares: tuple[float, float | None, float] | None) -> str:
    if shares is None:
        return ""
    driver, relay, others = shares
    return f"{driver:>6.0f}% {'?' if relay is None else f'{relay:.0f}':>5}% {others:>6.0f}%"


def report_latency(cfg: Config, tally: Tally, res: RunResult) -> list[str]:
    print("\n-- latency (send -> receive, by send-time window) and CPU (% of one core) --")
    windows = latency_windows(tally, cfg.window_s, cfg.duration_s, res.cpu_samples)
    print(f"{'window':>14} {'count':>9} {'p50':>11} {'p99':>11} {'max':>11} {'driver':>7} {'relay':>6} {'others':>7}")
    for w in windows:
        span = f"{w.start_s:.0f}-{w.end_s:.0f} s"
        latency = f"{ms(w.p50_us):>11} {ms(w.p99_us):>11} {ms(w.max_us):>11}"
        print(f"{span:>14} {w.count:>9} {latency} {format_cpu(w.cpu_pct)}")
    print("(others: all other processes on the machine, e.g. a parallel build, competing for the same cores)")
    ok, text = p99_drift_ok(windows)
    print(f"p99 drift rule (last <= 2 x first + 1 ms): {text}")
    return [] if ok else ["latency p99 drifted (" + text.rsplit(":", 1)[0] + ")"]


def report_memory(cfg: Config, res: RunResult) -> list[str]:
    print("\n-- relay memory (VmRSS every 5 s) --")
    if not res.rss_samples:
        print("no relay PID or /proc unreadable: not checked")
        return []
    rss = [v for _, v in res.rss_samples]
    print(
        f"after connect {mib(res.rss_after_connect or 0)}; measured phase: {len(rss)} samples, "
        f"min {mib(min(rss))}, max {mib(max(rss))}; after drain {mib(res.rss_after_drain or 0)}"
    )
    print("samples (s: MiB): " + ", ".join(f"{t:.0f}: {v / 1024:.1f}" for t, v in res.rss_samples))
    steps = rss_steps(res.rss_samples)
    print("rises over 1 %: " + (", ".join(f"{kib / 1024:+.2f} MiB by {t:.0f} s" for t, kib in steps) or "none"))
    verdict = rss_flat(res.rss_samples, cfg.warmup_s)
    print(f"flat rule (max <= first post-warm-up sample + 5 %): {verdict.text}")
    return [] if verdict.ok else ["relay RSS grew more than 5 % after warm-up"]


def report_cpu(tally: Tally, res: RunResult) -> list[str]:
    print("\n-- CPU --")
    wall = res.measured_s + res.drain_s + DRAIN_GRACE_S
    driver_pct = res.driver_cpu_s / wall * 100
    print(f"driver (this process): {res.driver_cpu_s:.1f} s CPU over {wall:.1f} s = {driver_pct:.0f} % of one core")
    if driver_pct > DRIVER_BUSY_PCT:
        print("  WARNING: the driver is near one full core; its own queueing shows in the latencies")
    if res.relay_cpu_s is not None:
        relay_pct = res.relay_cpu_s / wall * 100
        per_cpu_s = f" ({tally.delivered / res.relay_cpu_s:,.0f} deliveries per relay CPU-second)" if res.relay_cpu_s else ""
        print(f"relay: {res.relay_cpu_s:.1f} s CPU over {wall:.1f} s = {relay_pct:.0f} % of one core{per_cpu_s}")
    stalls = sorted(res.stalls_us)
    if stalls:
        print(
            f"driver event-loop stalls ({STALL_PROBE_S * 1000:.0f} ms probe): p50 {ms(percentile(stalls, 0.5))}, "
            f"p99 {ms(percentile(stalls, 0.99))}, max {ms(stalls[-1])}"
        )
    if res.long_stalls:
        shown = ", ".join(f"{t:.1f} s ({us / 1000:.0f} ms)" for t, us in res.long_stalls[:20])
        more = f" and {len(res.long_stalls) - 20} more" if len(res.long_stalls) > 20 else ""
        print(f"  stalls of {LONG_STALL_US // 1000} ms or more, at: {shown}{more}")
    s = res.schedule
    print(
        f"send schedule: max lag {s.max_lag_ns / 1e6:.1f} ms, sends > 1 s late {s.late_sends}, "
        f"most bytes held back by a sender's socket {s.max_unsent_bytes}"
    )
    if s.late_sends:
        return [f"driver could not keep the rate (send schedule lagged by up to {s.max_lag_ns / 1e9:.1f} s)"]
    return []


def report_metrics(tally: Tally, res: RunResult) -> None:
    print("\n-- relay metrics (rfc6455_*, after the drain) --")
    if not res.metrics_after:
        print("unavailable")
        return
    for name, value in res.metrics_after.items():
        print(f"{name} {number(value)}")
    print("over the measured phase and drain (delta), next to the driver's counts:")
    for name in METRICS_OF_INTEREST:
        if name in res.metrics_after:
            print(f"  {name}: +{number(res.metrics_after[name] - res.metrics_before.get(name, 0))}")
    print(f"  driver: messages sent {tally.sent}, deliveries expected {tally.expected}, received {tally.delivered}")
    after_close = {k: res.metrics_after_close.get(k) for k in ("rfc6455_connections", "rfc6455_relay_members")}
    shown = ", ".join(f"{k} {'?' if v is None else number(v)}" for k, v in after_close.items())
    print(f"after closing every client: {shown}")


# ---------------------------------------------------------------------------------------


async def amain(cfg: Config) -> int:
    tally = Tally()
    clients = make_clients(cfg, tally)
    probe = RelayProbe(cfg.relay_pid, cfg.metrics_url)
    res = await run(cfg, tally, clients, probe)
    reasons = report(cfg, tally, clients, res)
    print()
    print("SOAK PASS" if not reasons else "SOAK FAIL: " + "; ".join(reasons))
    return 0 if not reasons else 1


def event_loop_runner(choice: str):
    """`run(coroutine)` for the chosen event loop, and its name."""
    if choice != "asyncio":
        try:
            import uvloop

            return uvloop.run, "uvloop"
        except ImportError:
            if choice == "uvloop":
                raise
    return asyncio.run, "asyncio"


def main() -> int:
    cfg = parse_args(sys.argv[1:])
    run_loop, cfg.event_loop = event_loop_runner(cfg.event_loop)
    return run_loop(amain(cfg))


if __name__ == "__main__":
    sys.exit(main())
