#!/usr/bin/env bash
# Runs one cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS under libFuzzer, starting from
# the committed seeds in fuzz/corpus/TARGET. New inputs go to a scratch corpus under the
# cargo target dir (merge the interesting ones into fuzz/corpus by hand: keep it small);
# crashes go to fuzz/artifacts/TARGET/. Installs cargo-fuzz when it is missing.
#
#   scripts/fuzz.sh TARGET [SECONDS] [libFuzzer options...]
#   scripts/fuzz.sh --build-only          # build every target, run nothing
#   scripts/fuzz.sh --list
#
# Only a stable toolchain is assumed. With the default FUZZ_SANITIZER=none cargo-fuzz passes
# no -Z flag (stable rustc builds it as is: the code under test is safe Rust apart from
# glommio, rkyv and the broker's allocator). FUZZ_SANITIZER=address makes it pass
# -Zsanitizer, which stable accepts with RUSTC_BOOTSTRAP=1, set below (not measured here).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION="0.13.2"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$PWD/$TARGET_DIR" ;; esac
export CARGO_TARGET_DIR="$TARGET_DIR"
TOOLS_DIR="$TARGET_DIR/fuzz-tools"
SANITIZER="${FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$TOOLS_DIR/bin/cargo-fuzz" ]; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS_DIR"
    cargo install --locked --quiet --version "$CARGO_FUZZ_VERSION" --root "$TOOLS_DIR" cargo-fuzz
fi
export PATH="$TOOLS_DIR/bin:$PATH"

# Release code with debug assertions and overflow checks (cargo-fuzz's default); 16 codegen
# units build about twice as fast as the default of one, at a small cost in speed.
BUILD_FLAGS=(--fuzz-dir fuzz --sanitizer "$SANITIZER" --debug-assertions --codegen-units 16)

case "${1:-}" in
    --list) cargo fuzz list --fuzz-dir fuzz; exit 0 ;;
    --build-only) cargo fuzz build "${BUILD_FLAGS[@]}"; exit 0 ;;
    ""|-h|--help) sed -n '2,14p' "$0"; exit 2 ;;
esac

TARGET="$1"
SECONDS_TO_RUN="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))
SEEDS="fuzz/corpus/$TARGET"
WORK_CORPUS="$TARGET_DIR/fuzz-corpus/$TARGET"
ARTIFACTS="fuzz/artifacts/$TARGET"
[ -d "$SEEDS" ] || { echo "no such target corpus: $SEEDS" >&2; exit 2; }
mkdir -p "$WORK_CORPUS" "$ARTIFACTS"

cargo fuzz run "${BUILD_FLAGS[@]}" "$TARGET" "$WORK_CORPUS" "$SEEDS" -- \
    -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 "$@"
