#!/usr/bin/env bash
# Rooms across processes: two `rfc6455 relay --threads 1` processes sharing rooms
# through a broker (Redis, NATS), against one process without a broker. The senders
# connect to the first relay, every other client to the second (`rfc6455 bench relay
# --receivers-url`), so every delivery crosses the broker; "one process" has everyone
# on one relay. Scenarios, each alternated over the setups, medians of RUNS runs of
# SECS seconds:
#   pair-1:   1 sender, 1 receiver, 1 message in flight: the latency of the hop
#   pair-128: 1 sender, 1 receiver, 128 in flight: cross-node messages/s
#   room-16:  1 sender, 99 receivers, 16 in flight, 64 B: deliveries/s of a fan-out
# CPU is summed over every server process (both relays and the broker), per
# delivery. Needs redis-server and nats-server (tests/deps.sh installs them).
# Usage: benches/broker.sh (after cargo build --release).
set -eu
cd "$(dirname "$0")/.."
ours=target/release/rfc6455
secs=${SECS:-5}
runs=${RUNS:-3}
out=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$out" >/dev/null &
redis_pid=$!
pids+=("$redis_pid")
nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" >/dev/null 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
wait_port "$redis_port"
wait_port "$nats_port"

relay() { # port [broker URL] -> sets $relay_pid
  if [ -n "${2:-}" ]; then
    $ours --log warn relay --threads 1 --no-page --listen "127.0.0.1:$1" --broker "$2" &
  else
    $ours --log warn relay --threads 1 --no-page --listen "127.0.0.1:$1" &
  fi
  relay_pid=$!
  pids+=("$relay_pid")
  wait_port "$1"
}

one() { # setup scenario
  local a b pa pb broker_pid="" bench_args
  a=$(free_port)
  case $1 in
    local) relay "$a"; pa=$relay_pid; b=$a; pb="" ;;
    redis|nats)
      if [ "$1" = redis ]; then url="redis://127.0.0.1:$redis_port"; broker_pid=$redis_pid; else url="nats://127.0.0.1:$nats_port"; broker_pid=$nats_pid; fi
      relay "$a" "$url"; pa=$relay_pid
      b=$(free_port); relay "$b" "$url"; pb=$relay_pid
      sleep 0.2 ;;
  esac
  case $2 in
    pair-1) bench_args="-c 2 --senders 1 -n 1 -s 64" ;;
    pair-128) bench_args="-c 2 --senders 1 -n 128 -s 64" ;;
    room-16) bench_args="-c 100 --senders 1 -n 16 -s 64" ;;
  esac
  local pid_args="--server-pid $pa"
  [ -n "$pb" ] && pid_args="$pid_args --server-pid $pb"
  [ -n "$broker_pid" ] && pid_args="$pid_args --server-pid $broker_pid"
  # shellcheck disable=SC2086
  $ours --log warn bench relay --url "ws://127.0.0.1:$a/room" --receivers-url "ws://127.0.0.1:$b/room" \
    $bench_args -d "$secs" $pid_args -q >"$out/run.txt" 2>&1 || { cat "$out/run.txt" >&2; exit 1; }
  kill "$pa" ${pb:+"$pb"} 2>/dev/null || true
  wait "$pa" ${pb:+"$pb"} 2>/dev/null || true
  # rate p50 p99 per-CPU-s
  grep -E '^\| Relay' "$out/run.txt" | awk -F'|' '{gsub(/ /,""); printf "%s %s %s ", $6, $8, $9}' >>"$out/$1-$2"
  (grep -oE '[0-9]+ deliveries per server CPU-second' "$out/run.txt" || echo 0) | awk '{print $1}' >>"$out/$1-$2"
}

for _ in $(seq "$runs"); do
  for scenario in pair-1 pair-128 room-16; do
    for setup in local redis nats; do one "$setup" "$scenario"; done
  done
done

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk "{print \$$2}" "$out/$1" | median; }
echo "| scenario | setup | deliveries/s | p50 ms | p99 ms | deliveries per server CPU-s (relays + broker) |"
echo "|---|---|---|---|---|---|"
for scenario in pair-1 pair-128 room-16; do
  for setup in local redis nats; do
    f="$setup-$scenario"
    name=$setup
    [ "$setup" = local ] && name="one process"
    [ "$setup" != local ] && name="two processes via $setup"
    echo "| $scenario | $name | $(col "$f" 1) | $(col "$f" 2) | $(col "$f" 3) | $(col "$f" 4) |"
  done
done
echo "(medians of $runs runs of ${secs} s, alternated; $(nproc) cores)"
