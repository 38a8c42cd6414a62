#!/usr/bin/env python3
"""Median tables of a figures.sh output directory, in the markdown docs/BENCHMARKS.md uses.

    bench/scripts/summarize.py OUT_DIR [CEILINGS_DIR]

CEILINGS_DIR holds `ringfeed-perf disk|net --json` files (perf-tools/scripts/measure-ceilings.sh);
when given, throughput is also shown as a fraction of the disk and loopback ceilings and
end-to-end p99 as a multiple of the loopback ping-pong p99.
"""
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def load_runs(out_dir):
    runs = defaultdict(list)
    for path in sorted(Path(out_dir).glob("*.json")):
        name = re.sub(r"-\d+$", "", path.stem)
        try:
            runs[name].append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            print(f"skipping {path}: not (yet) a whole JSON document", file=sys.stderr)
    return runs


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fig(runs, role, key):
    return median([r["results"].get(role, {}).get(key) for r in runs])


def fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def busiest(runs):
    return median([r["client"]["busiest_thread_busy_fraction"] for r in runs])


def broker_cpu(runs):
    return median([(r.get("broker") or {}).get("cpu_fraction_of_wall") for r in runs])


def other_busy(runs):
    return max(r.get("host_cpu_busy_other_percent", 0.0) for r in runs)


def load_ceilings(ceilings_dir):
    """Median figures per (probe, label) of ringfeed-perf documents."""
    grouped = defaultdict(list)
    for path in sorted(Path(ceilings_dir).glob("*.json")):
        document = json.loads(path.read_text())
        label = re.sub(r"-\d+$", "", path.stem)
        grouped[label].append(document["figures"])
    return {
        label: {key: median([f.get(key) for f in figures]) for key in figures[0]}
        for label, figures in grouped.items()
    }


def throughput_table(runs, ceilings):
    disk = (ceilings or {}).get("disk-1MiB-qd1", {}).get("write_mb_per_s")
    stream = (ceilings or {}).get("net-1KiB-block", {}).get("stream_mb_per_s")
    print("| configuration | runs | msg/s | MB/s | % of disk 1 MiB qd1 | % of loopback stream "
          "| publish µs p50 | p99 | p99.9 | busiest client thread | broker CPU (of one core) "
          "| other work ≤ |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in sorted(runs):
        if name.startswith("e2e"):
            continue
        role = "consume" if name.startswith("consume") else "produce"
        group = runs[name]
        mbps = fig(group, role, "throughput_mb_per_s")
        ratio = lambda ceiling: "-" if not (ceiling and mbps) else f"{mbps / ceiling:.0%}"
        print(f"| {name} | {len(group)} | {fmt(fig(group, role, 'throughput_msgs_per_s'))} "
              f"| {fmt(mbps, 1)} | {ratio(disk)} | {ratio(stream)} "
              f"| {fmt(fig(group, role, 'publish_latency_us_p50'))} "
              f"| {fmt(fig(group, role, 'publish_latency_us_p99'))} "
              f"| {fmt(fig(group, role, 'publish_latency_us_p999'))} "
              f"| {fmt((busiest(group) or 0) * 100)}% | {fmt((broker_cpu(group) or 0) * 100)}% "
              f"| {other_busy(group):.0f}% |")


def latency_table(runs, ceilings):
    print("| configuration | runs | e2e µs p50 | p90 | p99 | p99.9 | p99.99 | max "
          "| publish µs p99 | client send delay µs p99 | p99 / loopback p99 (block, spin) "
          "| broker CPU | other work ≤ |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    block = (ceilings or {}).get("net-100-block", {}).get("rtt_us_p99")
    spin = (ceilings or {}).get("net-100-spin", {}).get("rtt_us_p99")
    for name in sorted(runs):
        if not name.startswith("e2e"):
            continue
        group = runs[name]
        p99 = fig(group, "consume", "e2e_latency_us_p99")
        ratios = "-"
        if p99 and block and spin:
            ratios = f"{p99 / block:.1f}x, {p99 / spin:.0f}x"
        delay = median([r["client"].get("send_delay_ns_p99") for r in group])
        print(f"| {name} | {len(group)} "
              + " ".join(f"| {fmt(fig(group, 'consume', 'e2e_latency_us_' + p))}"
                         for p in ["p50", "p90", "p99", "p999", "p9999", "max"])
              + f" | {fmt(fig(group, 'produce', 'publish_latency_us_p99'))}"
              f" | {fmt(None if delay is None else delay / 1000, 1)} | {ratios}"
              f" | {fmt((broker_cpu(group) or 0) * 100)}% | {other_busy(group):.0f}% |")


def acks_table(runs):
    print("| message | batch | requests in flight | acks=1 MB/s | acks=all MB/s "
          "| acks=all / acks=1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in ["100B", "1024B"]:
        for suffix, in_flight in [("", 5), ("-inflight32", 32)]:
            one = runs.get(f"produce-{size}-b16KiB-acks1{suffix}")
            every = runs.get(f"produce-{size}-b16KiB-acksall{suffix}")
            if not one or not every:
                continue
            a = fig(one, "produce", "throughput_mb_per_s")
            b = fig(every, "produce", "throughput_mb_per_s")
            print(f"| {size} | 16 KiB | {in_flight} | {fmt(a, 1)} | {fmt(b, 1)} | {b / a:.0%} |")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    runs = load_runs(sys.argv[1])
    ceilings = load_ceilings(sys.argv[2]) if len(sys.argv) > 2 else None
    print("### Throughput\n")
    throughput_table(runs, ceilings)
    print("\n### acks=1 against acks=all\n")
    acks_table(runs)
    print("\n### End-to-end latency at 10,000 msg/s\n")
    latency_table(runs, ceilings)


if __name__ == "__main__":
    main()
