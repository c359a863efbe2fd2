#!/bin/sh
# Runs every cargo-fuzz target for a bounded time (default 40 s each) with an RSS
# limit and a per-input timeout, starting from the checked-in seeds. Any crash fails
# the run; the crashing input is left in fuzz/artifacts/<target>/ (copy it to
# fuzz/regressions/<target>/ so `cargo test` replays it).
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -eu
cd "$(dirname "$0")"
secs=${1:-40}
[ $# -gt 0 ] && shift
targets=${*:-"handshake_server handshake_client frames_server frames_client frames_deflate utf8 mask roundtrip api_sequence proxy"}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
status=0
for t in $targets; do
  corpus="corpus/$t"
  mkdir -p "$corpus" "seeds/$t"
  if cargo fuzz run -O "$t" "$corpus" "seeds/$t" -- -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 \
      -max_len=70000 -print_final_stats=1 >"corpus/$t.log" 2>&1; then
    echo "$t: ok, $(grep -E 'stat::number_of_executed_units' "corpus/$t.log" | awk '{print $2}') runs, $(grep -oE 'cov: [0-9]+' "corpus/$t.log" | tail -1)"
  else
    echo "$t: FAILED"
    tail -30 "corpus/$t.log"
    status=1
  fi
done
exit $status
