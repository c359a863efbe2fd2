#!/bin/sh
# Installs what the tests use besides Rust crates, if it is missing: Python's
# `websockets` (the third-party client of tests/tls.rs) with pip; `microsocks` and
# `tinyproxy` (real proxies for tests/proxy_net.rs) and `chromium` (the browser of
# tests/browser.rs, driven headless), `redis-server` and `nats-server` (the brokers
# of tests/broker.rs) from Debian with apt. Idempotent;
# `cargo test` after it runs everything. README and .ci/run call it.
set -eu
if ! python3 -c 'import websockets' 2>/dev/null; then
  python3 -m pip install --quiet websockets || python3 -m pip install --quiet --break-system-packages websockets
fi
missing=""
for tool in microsocks tinyproxy chromium redis-server nats-server; do
  command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq microsocks tinyproxy chromium redis-server nats-server
fi
