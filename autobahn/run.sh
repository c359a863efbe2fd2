#!/bin/sh
# Runs the Autobahn|Testsuite against rfc6455's drivers and checks the verdicts.
#
#   autobahn/run.sh server            wstest (fuzzingclient) against `rfc6455 echo` (mio loop)
#   autobahn/run.sh client            our client (`rfc6455 autobahn-client`) against wstest (fuzzingserver)
#   autobahn/run.sh tokio-server      ... against examples/tokio_echo (tokio driver)
#   autobahn/run.sh hyper-server      ... against examples/hyper_echo (hyper upgrade + tokio driver)
#   autobahn/run.sh blocking-server   ... against examples/blocking_echo (blocking std driver)
#   autobahn/run.sh tls-server        ... against `rfc6455 echo` over wss:// (a test certificate)
#   autobahn/run.sh tokio-client      examples/tokio_autobahn_client against wstest (fuzzingserver)
#   autobahn/run.sh                   all of them (several sides may be named at once)
#
# Installs wstest first (autobahn/install.sh, cached), builds the release binary and
# examples, writes reports to autobahn/reports/SIDE/, prints a summary, and exits
# nonzero if any case is not OK, except those listed in autobahn/expected.txt (its
# SIDE column: server, client or both; the driver sides count as server or client).
# AUTOBAHN_CASES picks the cases (comma-separated globs). The default is what CI runs:
# sections 1-7, 9 and 10 in full and a compression subset (wstest spends about 2 s per
# compression case): 12.1, 12.2, 13.1 and 13.7 for the mio server and client, 12.1 and
# 13.1 for the other sides (the same engine; their own negotiation is what is new).
# AUTOBAHN_CASES='*' runs all.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
sides=${*:-all}
[ "$sides" = all ] && sides="server client tls-server tokio-server hyper-server blocking-server tokio-client"
wstest=$(sh "$here/install.sh")
(cd "$root" && cargo build --release --quiet && cargo build --release --quiet --examples)
bin="$root/target/release/rfc6455"
examples="$root/target/release/examples"
full_set=1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.1.*,12.2.*,13.1.*,13.7.*
# The other sides run the same engine: one compression section each way is enough to
# prove their negotiation (12.2 alone takes about 100 s a side).
driver_set=1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.1.*,13.1.*
json_list() { printf '%s' "$1" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split(",")))'; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
  i=0
  until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "nothing listens on port $1" >&2; return 1; }
    sleep 0.1
  done
}

status=0
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

for side in $sides; do
  case $side in
  server | client) cases=${AUTOBAHN_CASES:-$full_set} ;;
  *) cases=${AUTOBAHN_CASES:-$driver_set} ;;
  esac
  cases_json=$(json_list "$cases")
  port=$(free_port)
  rm -rf "$here/reports/$side"
  start=$(date +%s)
  case $side in
  server | tls-server | tokio-server | hyper-server | blocking-server)
    scheme=ws
    case $side in
    # The binary's defaults (16 MiB messages pass 9.x); only --deflate for 12.x and 13.x.
    server) "$bin" --log warn echo --listen "127.0.0.1:$port" --deflate >"$work/server.log" 2>&1 & ;;
    tokio-server) "$examples/tokio_echo" "127.0.0.1:$port" >"$work/server.log" 2>&1 & ;;
    hyper-server) "$examples/hyper_echo" "127.0.0.1:$port" >"$work/server.log" 2>&1 & ;;
    blocking-server) "$examples/blocking_echo" "127.0.0.1:$port" >"$work/server.log" 2>&1 & ;;
    tls-server)
      # wstest's client does not verify certificates: a self-signed one will do.
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/key.pem" \
        -out "$work/cert.pem" -days 2 -subj "/CN=localhost" >/dev/null 2>&1
      scheme=wss
      "$bin" --log warn echo --listen "127.0.0.1:$port" --deflate --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
        >"$work/server.log" 2>&1 &
      ;;
    esac
    pid=$!
    wait_port "$port"
    sed -e "s#ws://127.0.0.1:9002#$scheme://127.0.0.1:$port#" -e "s#\"cases\": \[\"\*\"\]#\"cases\": $cases_json#" \
      -e "s#\"./reports/server\"#\"$here/reports/$side\"#" "$here/fuzzingclient.json" >"$work/spec.json"
    (cd "$work" && "$wstest" -m fuzzingclient -s spec.json >"$work/wstest.log" 2>&1) || { tail -20 "$work/wstest.log"; status=1; }
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    ;;
  client | tokio-client)
    sed -e "s#ws://127.0.0.1:9001#ws://127.0.0.1:$port#" -e "s#\"cases\": \[\"\*\"\]#\"cases\": $cases_json#" \
      -e "s#\"./reports/client\"#\"$here/reports/$side\"#" "$here/fuzzingserver.json" >"$work/spec.json"
    (cd "$work" && exec "$wstest" -m fuzzingserver -s spec.json >"$work/wstest.log" 2>&1) &
    pid=$!
    wait_port "$port"
    case $side in
    client) "$bin" --log warn autobahn-client --url "ws://127.0.0.1:$port" --agent rfc6455 --deflate || status=1 ;;
    tokio-client) "$examples/tokio_autobahn_client" "ws://127.0.0.1:$port" rfc6455-tokio 2>"$work/client.log" || { tail -5 "$work/client.log"; status=1; } ;;
    esac
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    ;;
  *)
    echo "usage: $0 [server|client|tls-server|tokio-server|hyper-server|blocking-server|tokio-client ...]" >&2
    exit 2
    ;;
  esac
  echo "autobahn $side suite: $(($(date +%s) - start)) s"
  python3 "$here/summary.py" "$here/reports/$side" "$side" "$here/expected.txt" || status=1
done
exit $status
