#!/usr/bin/env bash
# The relay and echo servers on one loop and on two (`--threads 1` / `--threads 2`),
# alternated, medians of RUNS runs of SECS seconds: rate and rate per server CPU-second
# (all the server's threads, from /proc/PID/task/*/schedstat). On a 2-core machine the
# load generator shares the cores with a 2-loop server, so the per-CPU-second figure is
# the one to compare. Usage: benches/loops.sh (after cargo build --release).
set -eu
cd "$(dirname "$0")/.."
ours=target/release/rfc6455
secs=${SECS:-5}
runs=${RUNS:-3}
port=${PORT:-9410}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

one() { # mode threads
  port=$((port + 1))
  $ours --log warn "$1" --threads "$2" --listen "127.0.0.1:$port" &
  pid=$!
  # Until it listens (bounded).
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.05
  done
  case $1 in
    relay) $ours --log warn bench relay --url "ws://127.0.0.1:$port/room" -c 100 -n 16 -s 64 -d "$secs" --server-pid "$pid" -q ;;
    echo) $ours --log warn bench echo --url "ws://127.0.0.1:$port/" -c 64 -n 16 -s 16 -d "$secs" --server-pid "$pid" -q ;;
  esac >"$out/run.txt" 2>&1 || { cat "$out/run.txt" >&2; kill "$pid"; exit 1; }
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rate=$(grep -E '^\| (Relay|Echo)' "$out/run.txt" | awk -F'|' '{gsub(/ /,"",$6); print $6}')
  percpu=$(grep -oE '[0-9]+ (deliveries|msg|messages)[a-z ]* per server CPU-second' "$out/run.txt" | awk '{print $1}')
  echo "$rate $percpu" >>"$out/$1-$2"
}

for _ in $(seq "$runs"); do
  for mode in relay echo; do
    for t in 1 2; do one "$mode" "$t"; done
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| server | loops | rate/s (median of $runs) | per server CPU-s |"
echo "|---|---|---|---|"
for mode in relay echo; do
  for t in 1 2; do
    rate=$(awk '{print $1}' "$out/$mode-$t" | median)
    percpu=$(awk '{print $2}' "$out/$mode-$t" | median)
    echo "| $mode | $t | $rate | $percpu |"
  done
done
