#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing (kcat, Go and
# Debian's Sarama from apt, a Python venv in .venv with confluent-kafka, kafka-python, prometheus-client and pytest),
# runs the Rust tests of the whole workspace, builds the release broker and runs the client
# test suite against it.
# Extra arguments go to pytest (e.g. scripts/test.sh -k roundtrip).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
APT_PACKAGES=()
command -v kcat >/dev/null 2>&1 || APT_PACKAGES+=(kcat)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || APT_PACKAGES+=(python3 python3-venv python3-pip)
# tests/test_security.py makes its CA and certificates with the openssl CLI.
command -v openssl >/dev/null 2>&1 || APT_PACKAGES+=(openssl)
# tests/test_disk_full.py mounts a small ext4 image (skipped when not root).
command -v mkfs.ext4 >/dev/null 2>&1 || APT_PACKAGES+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || APT_PACKAGES+=(mount)
# tests/test_sarama.py builds a Sarama program from Debian's Go sources (issue 15).
command -v go >/dev/null 2>&1 || APT_PACKAGES+=(golang-go)
[ -d /usr/share/gocode/src/github.com/Shopify/sarama ] || APT_PACKAGES+=(golang-github-shopify-sarama-dev)
if [ "${#APT_PACKAGES[@]}" -gt 0 ]; then
    echo "== installing ${APT_PACKAGES[*]} (apt)"
    $SUDO apt-get update
    $SUDO apt-get install -y "${APT_PACKAGES[@]}"
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import confluent_kafka, kafka, prometheus_client, pytest" 2>/dev/null; then
    echo "== creating .venv with the Python test clients"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    # kafka-python 2.x: the older client the protocol must keep working for (non-flexible versions).
    # prometheus-client: the reference parser of the text format /metrics serves.
    .venv/bin/pip install --quiet "confluent-kafka>=2.3" "kafka-python>=2.0.3,<3" "prometheus-client>=0.17" pytest
fi
# kafka-python's lz4 and snappy codecs (xxhash: its magic 0 lz4 framing), for the old message
# format tests (tests/test_old_message_formats.py).
if ! .venv/bin/python -c "import lz4, snappy, xxhash" 2>/dev/null; then
    .venv/bin/pip install --quiet lz4 python-snappy xxhash
fi

# This replays the committed fuzz corpus too (fuzzing::tests in broker and storage). libFuzzer
# itself is not run here: installing cargo-fuzz and building the targets from scratch took
# 12 min on the 2-vCPU development machine (see fuzz/README.md); run scripts/fuzz.sh.
# Dependencies between modules point one way (docs/ARCHITECTURE.md): no import cycle may return.
echo "== import cycles"
for crate_src in protocol/src storage/src client/src cli/src broker/src; do
    python3 scripts/module-cycles.py "$crate_src" --files
done

echo "== cargo test --workspace"
cargo test --workspace

echo "== building the release broker"
cargo build --release -p ringfeed-broker
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
export RINGFEED_BIN="$PWD/$TARGET_DIR/release/ringfeed"
case "$TARGET_DIR" in /*) RINGFEED_BIN="$TARGET_DIR/release/ringfeed" ;; esac

echo "== client tests against $RINGFEED_BIN"
.venv/bin/python -m pytest -q -p no:warnings tests "$@"
