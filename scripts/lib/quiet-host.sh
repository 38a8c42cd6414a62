# Shared by the measurement scripts (perf-tools/scripts/measure-ceilings.sh,
# bench/scripts/figures.sh): other work on the cores (a build, a test suite) shows up as a
# slower figure, so each measurement first waits, up to quiet_wait_s seconds, for the cores to
# be under quiet_busy_percent busy. The sourcing script sets both variables.

# Percent of all cpu time spent busy (not idle or iowait) over one second.
cpu_busy_percent() {
    local -a first second
    read -ra first < <(head -1 /proc/stat)
    sleep 1
    read -ra second < <(head -1 /proc/stat)
    local total=0 idle i
    for i in 1 2 3 4 5 6 7 8; do
        total=$((total + second[i] - first[i]))
    done
    idle=$((second[4] - first[4] + second[5] - first[5]))
    echo $(((total - idle) * 100 / (total > 0 ? total : 1)))
}

wait_for_quiet() {
    local busy waited=0
    busy=$(cpu_busy_percent)
    while ((busy > quiet_busy_percent && waited < quiet_wait_s)); do
        busy=$(cpu_busy_percent)
        waited=$((waited + 1))
    done
    echo "cpu busy ${busy}% after waiting ${waited}s"
}
