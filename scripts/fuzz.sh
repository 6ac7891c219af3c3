#!/usr/bin/env bash
# Fuzzes the broker's request path (fuzz/fuzz_targets/request.rs) for a bounded time:
#   scripts/fuzz.sh [SECONDS]      default 60
#   scripts/fuzz.sh --build-only   only build the fuzz target (scripts/test.sh does this in the
#                                  background while the end-to-end tests run)
# Replays fuzz/regressions/ (inputs that once crashed the broker) and the seeds first. Installs
# cargo-fuzz if missing. The machine has only a stable toolchain, so RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass its -Z flags, and the sanitizer is off (libFuzzer still catches panics,
# aborts, out-of-memory and timeouts). Exits non-zero on any finding; the crashing input is
# written to fuzz/artifacts/request/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}

if ! command -v cargo-fuzz >/dev/null; then
    echo "[fuzz] installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
if [ "$seconds" = "--build-only" ]; then
    exec cargo fuzz build request -s none
fi
corpus=$(mktemp -d "${TMPDIR:-/tmp}/fjord-fuzz.XXXXXX")
trap 'rm -rf "$corpus"' EXIT
log=$corpus.log
trap 'rm -rf "$corpus" "$log"' EXIT
fuzz() {
    # libFuzzer prints a line per new input: keep it in a log, show it only on failure.
    if ! cargo fuzz run request -s none "$@" >"$log" 2>&1; then
        tail -n 80 "$log"
        echo "[fuzz] FAILED: the input is in fuzz/artifacts/request/"
        exit 1
    fi
    grep -E '^(stat::|Done|INFO: Running with)' "$log" || tail -n 5 "$log"
}
echo "[fuzz] replaying fuzz/regressions"
fuzz fuzz/regressions -- -runs=0 -rss_limit_mb=2048
echo "[fuzz] fuzzing the request path for ${seconds}s"
fuzz "$corpus" fuzz/seeds/request -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
echo "[fuzz] no findings"
