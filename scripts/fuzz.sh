#!/usr/bin/env bash
# Fuzzes the broker for a bounded time with two targets: `request` (fuzz/fuzz_targets/request.rs,
# the whole request path) and `sasl` (fuzz/fuzz_targets/sasl.rs, SASL authentication):
#   scripts/fuzz.sh [SECONDS]      default 60 in all: 2/3 for request, the rest for sasl
#   scripts/fuzz.sh --build-only   only build the fuzz targets (scripts/test.sh does this in the
#                                  background while the end-to-end tests run)
# Replays each target's fuzz/regressions/TARGET/ (inputs that once crashed the broker) and its
# seeds first. Installs cargo-fuzz if missing. The machine has only a stable toolchain, so
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags, and the sanitizer is off (libFuzzer still
# catches panics, aborts, out-of-memory and timeouts). Exits non-zero on any finding; the
# crashing input is written to fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}

if ! command -v cargo-fuzz >/dev/null; then
    echo "[fuzz] installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
if [ "$seconds" = "--build-only" ]; then
    # Without a target name, cargo fuzz builds every target.
    exec cargo fuzz build -s none
fi
corpus=$(mktemp -d "${TMPDIR:-/tmp}/fjord-fuzz.XXXXXX")
log=$corpus.log
trap 'rm -rf "$corpus" "$log"' EXIT
fuzz() {
    # libFuzzer prints a line per new input: keep it in a log, show it only on failure.
    local target=$1
    shift
    if ! cargo fuzz run "$target" -s none "$@" >"$log" 2>&1; then
        tail -n 80 "$log"
        echo "[fuzz] FAILED: the input is in fuzz/artifacts/$target/"
        exit 1
    fi
    grep -E '^(stat::|Done|INFO: Running with|#[0-9]+[[:space:]]+DONE)' "$log" || tail -n 5 "$log"
}
# The total stays $seconds: request gets 2/3, sasl the rest (each at least 1s; 0 would mean
# no limit to libFuzzer).
request_seconds=$((seconds * 2 / 3))
[ "$request_seconds" -ge 1 ] || request_seconds=1
sasl_seconds=$((seconds - request_seconds))
[ "$sasl_seconds" -ge 1 ] || sasl_seconds=1
for target in request sasl; do
    echo "[fuzz] replaying fuzz/regressions/$target"
    fuzz "$target" "fuzz/regressions/$target" -- -runs=0 -rss_limit_mb=2048
done
echo "[fuzz] fuzzing the request path for ${request_seconds}s"
mkdir "$corpus/request" "$corpus/sasl"
fuzz request "$corpus/request" fuzz/seeds/request -- \
    -max_total_time="$request_seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
echo "[fuzz] fuzzing SASL authentication for ${sasl_seconds}s"
fuzz sasl "$corpus/sasl" fuzz/seeds/sasl -- \
    -max_total_time="$sasl_seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
echo "[fuzz] no findings"
