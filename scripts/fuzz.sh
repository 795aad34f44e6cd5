#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 600), one after
# another, growing the corpus in fuzz/corpus/<target>, then minimises it.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Prints one line per target: executions, seconds, crashes; a crash leaves
# its input in fuzz/artifacts/<target>/ and makes the script exit non-zero.
# Limits (docs/SECURITY.md): inputs up to 64 KiB (the API's body cap),
# no single allocation above 64 MiB, RSS below 1 GiB.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(csr jws ocsp_request der rest_bodies)
fi
# Build once, then run the binaries: editing the tree during a long run
# does not change what is fuzzed.
cargo +nightly fuzz build -O >/dev/null 2>&1 || { echo "cargo +nightly fuzz build failed"; exit 2; }
bin=target/x86_64-unknown-linux-gnu/release
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  mkdir -p "artifacts/$t"
  "$bin/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$seconds" -max_len=65536 \
    -malloc_limit_mb=64 -rss_limit_mb=1024 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1
  status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  echo "$t: ${runs:-?} executions in ${seconds} s, exit $status, ${crashes} crash artifacts, corpus $(ls "corpus/$t" | wc -l) files"
  if [ "$status" -ne 0 ]; then
    failed=1
    tail -40 "$log"
  fi
  rm -f "$log"
  # Keep the committed corpus small: only inputs that add coverage.
  tmp=$(mktemp -d)
  if "$bin/$t" -merge=1 "$tmp" "corpus/$t" >/dev/null 2>&1; then
    rm -rf "corpus/$t" && mv "$tmp" "corpus/$t"
    echo "  corpus minimised to $(ls "corpus/$t" | wc -l) files"
  else
    rm -rf "$tmp"
  fi
done
exit $failed
