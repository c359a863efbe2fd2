#!/usr/bin/env bash
# End-to-end comparison: rfc6455 against peer servers, measured in the same run with
# the same load generator (`rfc6455 bench`).
#
#   benches/compare.sh [RUNS] [SECONDS]      (defaults: 3 runs of 5 s)
#
# Builds everything, pins each server to CPU 0 and the load generator to CPU 1, runs
# every scenario against every server in turn (A B C A B C ...), and writes a markdown
# table of medians, with the server's CPU time and messages per server CPU-second, to
# target/bench/compare.md. With SYSCALLS=1 it also counts the servers' syscalls per
# echoed message with `strace -c` (slower; counts, not speed).
#
# Servers: rfc6455 (echo, relay: the mio loop); rfc6455's tokio driver
# (examples/tokio_echo), tokio-tungstenite (echo, and a relay written as its users
# write one: a writer task per client that feeds every queued message, then flushes
# once) and fastwebsockets (echo), each on a single-threaded tokio runtime; and two
# raw TCP floors that answer the handshake and then do no frame work: tcp-floor
# writes back what it reads (echo), tcp-fanout writes what it reads from one
# connection to every other one (relay, one sender). Both pass the clients' masked
# frames on, so the load generator runs with --accept-masked against them; the
# "per CPU-s vs floor" column compares with tcp-floor (echo) or tcp-fanout (relay).
# echo-16B-tls runs the small echo over wss:// (a test CA and a localhost certificate
# made with openssl) against rfc6455 and tokio-tungstenite with tokio-rustls.
# SCENARIOS=echo-16B,echo-64KiB runs only those (default: all); the relay scenarios
# are relay-100-n16 and relay-100-n128 (100 clients, one sender keeping 16 or 128
# messages of 64 B in flight).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
secs=${2:-5}
out=target/bench
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || true

cargo build --release --quiet
cargo build --release --quiet --example tokio_echo
(cd benches/peers && cargo build --release --quiet)
ours=target/release/rfc6455
peers=benches/peers/target/release

# wss://: a CA and a leaf for localhost, made once.
tlsdir=$out/tls
if [ ! -f "$tlsdir/leaf.pem" ]; then
  mkdir -p "$tlsdir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$tlsdir/ca.key" \
    -out "$tlsdir/ca.pem" -days 3650 -subj "/CN=bench CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$tlsdir/leaf.key" \
    -out "$tlsdir/leaf.csr" -subj "/CN=localhost" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$tlsdir/ext.cnf"
  openssl x509 -req -in "$tlsdir/leaf.csr" -CA "$tlsdir/ca.pem" -CAkey "$tlsdir/ca.key" -CAcreateserial \
    -out "$tlsdir/leaf.pem" -days 3650 -extfile "$tlsdir/ext.cnf" 2>/dev/null
fi

pin_server="taskset -c 0"
pin_load="taskset -c 1"
if ! taskset -c 1 true 2>/dev/null; then pin_server=""; pin_load=""; fi

port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2
  return 1
}

# start_server NAME PORT -> sets $server_pid
start_server() {
  local name=$1 port=$2
  case $name in
  rfc6455-echo) $pin_server $ours --log warn echo --threads 1 --listen 127.0.0.1:$port --max-message-size 67108864 & ;;
  rfc6455-relay) $pin_server $ours --log warn relay --threads 1 --listen 127.0.0.1:$port & ;;
  rfc6455-tokio-echo) $pin_server target/release/examples/tokio_echo 127.0.0.1:$port --single-thread >/dev/null 2>&1 & ;;
  tungstenite-echo) $pin_server $peers/tungstenite_server 127.0.0.1:$port echo 2>/dev/null & ;;
  tungstenite-relay) $pin_server $peers/tungstenite_server 127.0.0.1:$port relay 2>/dev/null & ;;
  fastwebsockets-echo) $pin_server $peers/fastws_echo 127.0.0.1:$port 2>/dev/null & ;;
  tcp-floor) $pin_server $peers/tcp_reflector 127.0.0.1:$port 2>/dev/null & ;;
  tcp-fanout) $pin_server $peers/tcp_fanout 127.0.0.1:$port 2>/dev/null & ;;
  rfc6455-echo-tls) $pin_server $ours --log warn echo --threads 1 --listen 127.0.0.1:$port --tls-cert "$tlsdir/leaf.pem" --tls-key "$tlsdir/leaf.key" & ;;
  tungstenite-echo-tls) $pin_server $peers/tungstenite_server 127.0.0.1:$port echo "$tlsdir/leaf.pem" "$tlsdir/leaf.key" 2>/dev/null & ;;
  esac
  server_pid=$!
  wait_port "$port"
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}

# scenario NAME "SERVERS" BENCH-ARGS...
results=$out/results.tsv
: >"$results"
scenario() {
  local scen=$1 servers=$2
  shift 2
  case ",${SCENARIOS:-$scen}," in *",$scen,"*) ;; *) return 0 ;; esac
  for run in $(seq "$runs"); do
    for srv in $servers; do
      local port
      port=$(port_of)
      start_server "$srv" "$port"
      local log=$out/$scen-$srv-$run.txt
      local url="ws://127.0.0.1:$port/bench" tls_args="" floor_args=""
      case $srv in *-tls) url="wss://localhost:$port/bench" tls_args="--ca $tlsdir/ca.pem" ;; esac
      # The TCP floors pass the clients' masked frames on.
      case $srv in tcp-*) floor_args="--accept-masked" ;; esac
      # shellcheck disable=SC2086
      $pin_load $ours bench "$@" --url "$url" $tls_args $floor_args --server-pid "$server_pid" -d "$secs" -q >"$log" 2>&1 || true
      stop_server
      # | Mode | conns | size | count | rate | MB/s | p50 | p99 | p99.9 | errors |
      local row rate p50 p99 cpu per
      row=$(grep -E '^\| (Echo|Relay|Idle) ' "$log" | head -1)
      rate=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$6); print $6}')
      p50=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$8); print $8}')
      p99=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$9); print $9}')
      cpu=$(grep -oE 'server CPU [0-9.]+ s over [0-9.]+ s \([0-9]+ %\)' "$log" | awk '{print $8}' | tr -d '(' || true)
      per=$(grep -oE ': [0-9]+ [a-z]+ per server CPU-second' "$log" | awk '{print $2}' || true)
      local rss
      rss=$(grep -oE '[0-9]+ bytes per open connection' "$log" | awk '{print $1}' || true)
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$srv" "$run" "${rate:-0}" "${p50:--}" "${p99:--}" "${cpu:--}" "${per:-0}" "${rss:--}" >>"$results"
      echo "$scen $srv run $run: ${rate:-0}/s p99 ${p99:--} ms, server CPU ${cpu:--} %, ${per:-0} per CPU-s ${rss:+, $rss B/conn}" >&2
    done
  done
}

scenario echo-16B "rfc6455-echo rfc6455-tokio-echo fastwebsockets-echo tungstenite-echo tcp-floor" echo -c 64 -n 16 -s 16
scenario echo-64KiB "rfc6455-echo rfc6455-tokio-echo fastwebsockets-echo tungstenite-echo tcp-floor" echo -c 16 -n 4 -s 65536 --binary
scenario echo-16B-tls "rfc6455-echo-tls tungstenite-echo-tls" echo -c 64 -n 16 -s 16
scenario relay-100-n16 "rfc6455-relay tungstenite-relay tcp-fanout" relay -c 100 -n 16 -s 64
scenario relay-100-n128 "rfc6455-relay tungstenite-relay tcp-fanout" relay -c 100 -n 128 -s 64
scenario idle-10k "rfc6455-relay tungstenite-relay" idle -c 10000

python3 - "$results" "$out/compare.md" "$runs" "$secs" <<'EOF'
import statistics, sys, collections, datetime, platform, subprocess
results, md, runs, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = collections.defaultdict(list)
order = []
for line in open(results):
    scen, srv, run, rate, p50, p99, cpu, per, rss = line.rstrip("\n").split("\t")
    if (scen, srv) not in rows:
        order.append((scen, srv))
    rows[(scen, srv)].append((float(rate), p50, p99, cpu, float(per), rss))
def med(xs):
    return statistics.median(xs) if xs else 0.0
def medf(xs):
    v = [float(x) for x in xs if x not in ("-", "")]
    return statistics.median(v) if v else None
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
out = []
out.append("Measured %s on %s (%d cores), %s runs of %s s each, medians; server on CPU 0, load generator on CPU 1; "
    "floor: tcp-floor (echo), tcp-fanout (relay).\n" % (
    datetime.date.today().isoformat(), cpu_model, len([l for l in open("/proc/cpuinfo") if l.startswith("processor")]), runs, secs))
out.append("| scenario | server | rate/s | p50 ms | p99 ms | server CPU % | per server CPU-s | rate vs rfc6455 | per CPU-s vs rfc6455 | per CPU-s vs floor | RSS/conn B |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|")
base = {}
floor = {}
for scen, srv in order:
    r = rows[(scen, srv)]
    if srv.startswith("rfc6455") and scen not in base:
        base[scen] = (med([x[0] for x in r]), med([x[4] for x in r]))
    if srv in ("tcp-floor", "tcp-fanout"):
        floor[scen] = med([x[4] for x in r])
for scen, srv in order:
    r = rows[(scen, srv)]
    rate = med([x[0] for x in r]); per = med([x[4] for x in r])
    p50 = medf([x[1] for x in r]); p99 = medf([x[2] for x in r]); cpu = medf([x[3] for x in r]); rss = medf([x[5] for x in r])
    b = base.get(scen, (0, 0))
    ratio = lambda a, c: ("%.2fx" % (a / c)) if c else "-"
    out.append("| %s | %s | %.0f | %s | %s | %s | %.0f | %s | %s | %s | %s |" % (
        scen, srv, rate, "-" if p50 is None else "%.3f" % p50, "-" if p99 is None else "%.3f" % p99,
        "-" if cpu is None else "%.0f" % cpu, per, ratio(rate, b[0]), ratio(per, b[1]), ratio(per, floor.get(scen, 0)),
        "-" if rss is None else "%.0f" % rss))
open(md, "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF

if [ "${SYSCALLS:-0}" = 1 ] && command -v strace >/dev/null; then
  echo
  echo "| server | echoed messages | syscalls | syscalls per message |"
  echo "|---|---|---|---|"
  for srv in rfc6455-echo fastwebsockets-echo tungstenite-echo; do
    port=$(port_of)
    start_server "$srv" "$port"
    strace -f -c -o "$out/strace-$srv.txt" -p "$server_pid" 2>/dev/null &
    spid=$!
    sleep 0.5
    msgs=$($pin_load $ours bench echo -c 64 -n 16 -s 16 --url "ws://127.0.0.1:$port/" -d 3 --warmup 0 -q | grep -E '^\| Echo' | awk -F'|' '{gsub(/ /,"",$5); print $5}')
    sleep 0.3
    kill -INT "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    stop_server
    calls=$(awk '$NF == "total" {print $(NF-2)}' "$out/strace-$srv.txt")
    python3 -c "print('| $srv | $msgs | $calls | %.3f |' % ($calls / max(1, $msgs)))"
  done
fi
