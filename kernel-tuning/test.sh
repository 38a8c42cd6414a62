#!/usr/bin/env bash
# Guards tune.sh's contract: `check` is read-only, exits 0 on any machine (CI runs it on
# untuned hosts and containers), and reports every knob; `apply --dry-run` changes nothing.
# Also run by `cargo test -p ringfeed-perf --test kernel_tuning`.
set -euo pipefail
cd "$(dirname "$0")"

sections=(cpu-isolation irq-affinity cpufreq-governor transparent-hugepages swappiness
    network-sysctls block-scheduler filesystem memlock systemd-unit)
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

output=$(./tune.sh check --data-dir .) || fail "tune.sh check exited $?"
for section in "${sections[@]}"; do
    grep -qE "^== $section( |$)" <<<"$output" || fail "check does not report $section"
done
grep -qE '^[0-9]+ knob\(s\) want tuning' <<<"$output" || fail "check prints no summary line"

dry_run=$(./tune.sh apply --dry-run --persist --data-dir .) || fail "apply --dry-run exited $?"
if grep -qE '^  (set|wrote) ' <<<"$dry_run"; then
    fail "apply --dry-run changed something"
fi

if ./tune.sh frobnicate >/dev/null 2>&1; then
    fail "an unknown mode must be a usage error"
fi

if command -v shellcheck >/dev/null; then
    shellcheck tune.sh test.sh || fail "shellcheck"
else
    echo "shellcheck not installed; skipped (apt-get install -y shellcheck)"
fi

if [[ $failures -gt 0 ]]; then
    exit 1
fi
echo "kernel-tuning: ok (${#sections[@]} sections reported)"
