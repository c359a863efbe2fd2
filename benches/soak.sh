#!/usr/bin/env bash
# Soak test of the chat relay (issue 16): builds the release binary, starts
# `rfc6455 relay --threads 1 --no-page` on a free 127.0.0.1 port with /metrics on
# another, runs benches/soak.py against it and always stops the relay.
#
#   benches/soak.sh [soak.py flags]     e.g. benches/soak.sh --duration 60
#
# Defaults: 1,000 clients in 10 rooms, 20 msg/s per room, 10 minutes (see
# `python3 benches/soak.py --help`). SOAK_NO_BUILD=1 skips `cargo build` and uses
# target/release/rfc6455 as it is. The relay's log (level warn) goes to
# target/soak/relay.log. Exit code: 0 on SOAK PASS, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SOAK_NO_BUILD:-}" ]; then
  cargo build --release --quiet --bin rfc6455
fi
bin=target/release/rfc6455
dirty=$(git diff --quiet HEAD -- src 2>/dev/null || echo ', with uncommitted changes in src/')
echo "relay binary: $bin, built $(date -r "$bin" '+%F %T'); tree at $(git rev-parse --short HEAD 2>/dev/null)$dirty"

# websockets is required; uvloop is optional (without it the driver takes about twice
# the CPU: see soak.py --loop).
python3 -c 'import websockets' 2>/dev/null ||
  python3 -m pip install --quiet --break-system-packages websockets
python3 -c 'import uvloop' 2>/dev/null ||
  python3 -m pip install --quiet --break-system-packages uvloop 2>/dev/null ||
  echo "soak: uvloop could not be installed; the driver uses asyncio's own loop" >&2
# 1,000 client sockets here plus 1,000 in the relay.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin=$(free_port)
while [ "$admin" = "$port" ]; do admin=$(free_port); done

mkdir -p target/soak
log=target/soak/relay.log
"$bin" --log warn relay --threads 1 --no-page \
  --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" >"$log" 2>&1 &
relay=$!

stop_relay() {
  if kill -0 "$relay" 2>/dev/null; then
    kill "$relay" 2>/dev/null || true
    wait "$relay" 2>/dev/null || true
  fi
}
trap stop_relay EXIT
trap 'exit 130' INT TERM

listening=
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then listening=1; break; fi
  sleep 0.05
done
if [ -z "$listening" ]; then
  echo "soak: the relay did not start listening on 127.0.0.1:$port" >&2
  cat "$log" >&2
  exit 1
fi

rc=0
python3 benches/soak.py --url "ws://127.0.0.1:$port" --metrics-url "http://127.0.0.1:$admin/metrics" \
  --relay-pid "$relay" "$@" || rc=$?

if ! kill -0 "$relay" 2>/dev/null; then
  echo "soak: the relay exited during the run" >&2
  rc=1
fi
if [ -s "$log" ]; then
  echo "relay log ($log, last lines):"
  tail -n 20 "$log"
fi
exit "$rc"
