#!/usr/bin/env bash
# Installs what the end-to-end tests need, idempotently (quick when done):
#   * make, cc, pkg-config, openssl, libssl-dev (Debian packages; only if missing)
#   * kcat                      (Debian package; only if missing)
#   * .venv with tests/requirements.txt (pytest, confluent-kafka, kafka-python)
#   * tests/js/node_modules     (kafkajs, from tests/js/package-lock.json)
# Used by .ci/run and scripts/test.sh.  Needs root (or sudo) only when a
# Debian package is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

say() { echo "[setup] $*"; }

apt_updated=0
apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then
            sudo=(sudo)
        else
            echo "[setup] need root to apt-get install $*; install it and re-run" >&2
            exit 1
        fi
    fi
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        "${sudo[@]}" apt-get update -q
        apt_updated=1
    fi
    say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "$@"
}

# --- build and test tools ----------------------------------------------------
# The bundled librdkafka (rdkafka crate: gateway, forwarder, bench) builds with
# make and a C compiler and links the system OpenSSL (found with pkg-config);
# scripts/test-postgres.sh makes its TLS certificates with the openssl CLI.
missing=()
command -v make >/dev/null || missing+=(make)
command -v cc >/dev/null || missing+=(gcc)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v openssl >/dev/null || missing+=(openssl)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
else
    say "build tools present (make, cc, pkg-config, openssl, libssl-dev)"
fi

# --- kcat ------------------------------------------------------------------
if command -v kcat >/dev/null; then
    say "kcat present: $(command -v kcat)"
else
    apt_install kcat
fi

# --- Python venv -------------------------------------------------------------
PYTHON=${PYTHON:-python3}
VENV=$ROOT/.venv
REQS=$ROOT/tests/requirements.txt
STAMP=$VENV/.requirements.sha256

if [ -x "$VENV/bin/python" ]; then
    say "reusing $VENV"
else
    say "creating $VENV with $(command -v "$PYTHON")"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi

want=$(sha256sum "$REQS" | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" = "$have" ] && "$VENV/bin/python" -c 'import pytest, pytest_timeout, confluent_kafka, kafka' 2>/dev/null; then
    say "python requirements up to date"
else
    say "pip install -r tests/requirements.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    "$VENV/bin/python" -c 'import pytest, pytest_timeout, confluent_kafka, kafka'
    echo "$want" >"$STAMP"
fi

# --- the fjord Python package (clients/python) ---------------------------------
# Installed like a user would (pip install ./clients/python), again whenever its files change.
PKG=$ROOT/clients/python
if [ -f "$PKG/pyproject.toml" ]; then
    pkg_hash=$(cd "$PKG" && find . -path ./build -prune -o -type f \( -name '*.py' -o -name '*.pyi' -o -name '*.toml' \) -print \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
    pkg_stamp=$VENV/.fjord-client.sha256
    if [ "$(cat "$pkg_stamp" 2>/dev/null || true)" = "$pkg_hash" ] && "$VENV/bin/python" -c 'import fjord' 2>/dev/null; then
        say "fjord Python package up to date"
    else
        say "pip install ./clients/python"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$PKG"
        (cd / && "$VENV/bin/python" -c 'import fjord')
        echo "$pkg_hash" >"$pkg_stamp"
    fi
fi

# --- kafkajs -----------------------------------------------------------------
JS=$ROOT/tests/js
if [ -f "$JS/package.json" ]; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        apt_install nodejs npm
    fi
    lock_hash=$(cat "$JS/package.json" "$JS/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1)
    js_stamp=$JS/node_modules/.fjord-setup.sha256
    if [ -d "$JS/node_modules" ] && [ "$(cat "$js_stamp" 2>/dev/null || true)" = "$lock_hash" ]; then
        say "tests/js/node_modules up to date"
    else
        if [ -f "$JS/package-lock.json" ]; then
            say "npm ci in tests/js"
            (cd "$JS" && npm ci --no-audit --no-fund)
        else
            say "npm install in tests/js"
            (cd "$JS" && npm install --no-audit --no-fund)
        fi
        lock_hash=$(cat "$JS/package.json" "$JS/package-lock.json" 2>/dev/null | sha256sum | cut -d' ' -f1)
        echo "$lock_hash" >"$js_stamp"
    fi
fi

say "done"
