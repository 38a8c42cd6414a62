#!/usr/bin/env python3
"""Summarises a directory of `ringfeed-perf --json` files as the markdown tables in
docs/CEILINGS.md: one row per configuration, each figure the median over the repeated runs,
bandwidth also with its min-max range, and the largest share of the cores any other work
used during those runs.

    perf-tools/scripts/summarize-ceilings.py OUT_DIR
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

LATENCY = ["p50", "p90", "p99", "p999", "p9999", "max"]


def load(out_dir):
    groups = defaultdict(list)
    for path in sorted(Path(out_dir).glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("schema") != "ringfeed-perf/1":
            continue
        p = doc["parameters"]
        if doc["probe"] == "disk":
            key = ("disk", p["block_size_bytes"], p["queue_depth"])
        else:
            key = ("net", p["message_size_bytes"], p["spin"])
        groups[key].append(doc)
    return groups


def median(docs, name):
    values = [d["figures"][name] for d in docs if name in d["figures"]]
    # Older documents lack p9999; NaN prints as "nan" rather than hiding the column.
    return statistics.median(values) if values else float("nan")


def spread(docs, name):
    values = [d["figures"][name] for d in docs]
    return f"{min(values):.0f}-{max(values):.0f}"


def other_busy_max(docs):
    """The most any other work used of the cores during one of these runs, in percent."""
    values = [d["host"]["cpu_busy_other_percent"] for d in docs if d["host"].get("cpu_busy_other_percent") is not None]
    return max(values) if values else float("nan")


def size(n):
    for unit, label in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {label}"
    return f"{n} B"


def row(cells):
    return "| " + " | ".join(cells) + " |"


def disk_tables(groups):
    keys = sorted(k for k in groups if k[0] == "disk")
    out = [row(["block", "QD", "runs", "MB/s (median)", "MB/s range", "write µs p50", "p99", "p99.9", "max", "other busy≤"]),
           row(["---"] * 10)]
    for key in keys:
        docs = groups[key]
        lat = [f"{median(docs, 'write_latency_us_' + p):.0f}" for p in ("p50", "p99", "p999", "max")]
        out.append(row([size(key[1]), str(key[2]), str(len(docs)), f"{median(docs, 'write_mb_per_s'):.0f}",
                        spread(docs, "write_mb_per_s"), *lat, f"{other_busy_max(docs):.0f}%"]))
    out += ["", row(["block", "operation", "samples", *("µs " + p if p == "p50" else p for p in LATENCY)]),
            row(["---"] * (3 + len(LATENCY)))]
    seen = set()
    for key in keys:
        if key[1] in seen:
            continue
        seen.add(key[1])
        # The sync phase does not depend on queue depth: pool every run at this block size.
        docs = [d for k in keys if k[1] == key[1] for d in groups[k]]
        for prefix, label in (("write_fdatasync_latency", "write+fdatasync"), ("fdatasync_latency", "fdatasync alone")):
            cells = [f"{median(docs, f'{prefix}_us_{p}'):.0f}" for p in LATENCY]
            samples = int(sum(d["figures"][f"{prefix}_count"] for d in docs))
            out.append(row([size(key[1]), label, str(samples), *cells]))
    return "\n".join(out)


def net_tables(groups):
    keys = sorted(k for k in groups if k[0] == "net")
    out = [row(["message", "mode", "runs", *("RTT µs " + p if p == "p50" else p for p in LATENCY),
                "stream MB/s (median)", "stream range", "other busy≤"]),
           row(["---"] * (6 + len(LATENCY)))]
    for key in keys:
        docs = groups[key]
        cells = [f"{median(docs, 'rtt_us_' + p):.1f}" for p in LATENCY]
        out.append(row([size(key[1]), "spin" if key[2] else "block", str(len(docs)), *cells,
                        f"{median(docs, 'stream_mb_per_s'):.0f}", spread(docs, "stream_mb_per_s"),
                        f"{other_busy_max(docs):.0f}%"]))
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    groups = load(sys.argv[1])
    if not groups:
        sys.exit(f"no ringfeed-perf/1 documents in {sys.argv[1]}")
    print("### Disk\n")
    print(disk_tables(groups))
    print("\n### Loopback\n")
    print(net_tables(groups))


if __name__ == "__main__":
    main()
