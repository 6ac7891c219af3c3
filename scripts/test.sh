#!/usr/bin/env bash
# The one command to check Fjord: formatting, lints, build, unit tests and
# the end-to-end tests against real Kafka clients.  Exits non-zero if any
# step fails.
#
#   ./scripts/test.sh              everything
#   ./scripts/test.sh --e2e-only   only the end-to-end tests (needs a built
#                                  target/release/fjord or FJORD_BIN)
#   ./scripts/test.sh -- -k kcat   extra arguments after -- go to pytest
#
# The test environment (.venv, kcat, kafkajs) is set up by
# scripts/setup-test-env.sh, which this script runs first (it is quick when
# everything is in place).  Set FJORD_SKIP_SETUP=1 to skip that.
set -euo pipefail

cd "$(dirname "$0")/.."

e2e_only=0
pytest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --e2e-only) e2e_only=1 ;;
        --) shift; pytest_args=("$@"); break ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

step() { echo; echo "==> $*"; }
# Runs a step and says how long it took (CI has a time budget; keep an eye on the slow steps).
run() {
    step "$*"
    local start=$SECONDS
    "$@"
    echo "==> took $((SECONDS - start)) s: $*"
}

if [ "${FJORD_SKIP_SETUP:-0}" != 1 ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "No .venv yet: setting up the test environment (as .ci/run does)."
    fi
    run scripts/setup-test-env.sh
fi
if [ ! -x .venv/bin/python ]; then
    echo "error: .venv missing; run .ci/run (or scripts/setup-test-env.sh) once" >&2
    exit 1
fi

# A throwaway PostgreSQL for the coordinator conformance suite and the e2e tests that use it.
step "scripts/test-postgres.sh start"
eval "$(scripts/test-postgres.sh start)"
fuzz_build=""
fuzz_log=""
cleanup() {
    if [ -n "$fuzz_log" ]; then rm -f "$fuzz_log"; fi
    # The build runs in its own session (setsid): stop all of it.
    if [ -n "$fuzz_build" ]; then kill -- -"$fuzz_build" 2>/dev/null || true; fi
    scripts/test-postgres.sh stop "$FJORD_PG_DIR"
}
trap cleanup EXIT

if [ "$e2e_only" -eq 0 ]; then
    run cargo fmt --all -- --check
    # One profile and one feature set for everything: clippy checks in the release profile (so
    # build scripts and proc macros, librdkafka's C build among them, are compiled once), and the
    # binaries are built together with the test targets, so that dev-dependency features (tokio's
    # test-util) do not make `cargo test` rebuild half the dependency graph.
    run cargo clippy --workspace --all-targets --release -- -D warnings
    run cargo build --workspace --all-targets --release
    run cargo test --workspace --release
    # The fuzz target is compiled with its own instrumentation flags, every dependency again
    # (about four minutes). Build it at the lowest priority while the end-to-end tests run: they
    # wait on sockets and timers much of the time and leave the CPU idle.
    fuzz_log=$(mktemp "${TMPDIR:-/tmp}/fjord-fuzz-build.XXXXXX")
    step "scripts/fuzz.sh --build-only (in the background, nice 19, log in $fuzz_log)"
    setsid nice -n 19 scripts/fuzz.sh --build-only >"$fuzz_log" 2>&1 &
    fuzz_build=$!
fi

run .venv/bin/python -m pytest tests/e2e -v --durations=15 "${pytest_args[@]}"

if [ "$e2e_only" -eq 0 ]; then
    step "waiting for the fuzz target build"
    start=$SECONDS
    if ! wait "$fuzz_build"; then
        fuzz_build=""
        tail -n 60 "$fuzz_log"
        echo "error: building the fuzz target failed" >&2
        exit 1
    fi
    fuzz_build=""
    echo "==> took $((SECONDS - start)) s more: the fuzz target build"
    run scripts/fuzz.sh "${FJORD_FUZZ_SECONDS:-60}"
fi

echo
echo "==> all checks passed in $((SECONDS / 60)) min $((SECONDS % 60)) s"
