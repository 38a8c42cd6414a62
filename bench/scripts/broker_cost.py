#!/usr/bin/env python3
"""Broker builds side by side: throughput and the broker's CPU-seconds per GB produced.

    bench/scripts/broker_cost.py --rounds 5 A=path/to/ringfeed B=other/ringfeed \\
        [--bench target/release/ringfeed-bench] [-- BENCH WORKLOAD FLAGS]

Each run starts a fresh broker of one build (`serve --shards 2 --admin-listen off`, its own
empty data directory), runs one `ringfeed-bench` workload against it with `--broker-pid`,
and stops it. Rounds rotate which build goes first, so drift on the host hits every build
alike; medians are over rounds. The default workload is 100 B records in 16 KiB batches,
acks=1, 2 partitions, 1 s warm-up and 6 s measured; flags after `--` replace it.

CPU-seconds per GB: the broker's user + system CPU over the whole run (warm-up included,
from /proc via the bench) divided by the record bytes produced over the same time (measured
and warm-up messages). It is the figure issue 16 item 2 asks for ("broker CPU-seconds per GB
produced"). For an end-to-end workload (`--workload e2e`) the table adds the end-to-end
latency percentiles and the broker's CPU share; there CPU per GB means little (the rate is
fixed). For `--workload consume` the figure is the consumer's MB/s, and CPU per GB counts the
bytes twice (the unmeasured fill writes them, the read returns them).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_WORKLOAD = [
    "--workload", "produce", "--message-size", "100", "--batch-size", "16384",
    "--acks", "1", "--warmup", "1", "--duration", "6",
]


def run_once(binary, bench, port, workload, work_dir):
    data_dir = work_dir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    with open(work_dir / "broker.log", "w") as broker_log:
        broker = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
             "--shards", "2", "--admin-listen", "off"],
            stdout=broker_log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1)
        result_file = work_dir / "run.json"
        result_file.unlink(missing_ok=True)
        with open(work_dir / "bench.log", "w") as bench_log:
            subprocess.run(
                [bench, "--bootstrap", f"127.0.0.1:{port}", "--topic", "cost", "--partitions", "2",
                 "--broker-pid", str(broker.pid), "--json", str(result_file)] + workload,
                stdout=bench_log, stderr=subprocess.STDOUT, check=True)
    finally:
        broker.terminate()
        broker.wait()
    run = json.loads(result_file.read_text())
    consumed = run["results"].get("consume", {})
    if "produce" in run["results"]:
        measured = run["results"]["produce"]
        bytes_per_message = measured["bytes"] / max(measured["messages"], 1)
        all_bytes = (measured["messages"] + measured.get("unmeasured_messages", 0)) * bytes_per_message
    else:
        # `--workload consume`: the bench fills the topic (unmeasured) and then reads it all
        # back, so the broker's CPU covers every byte twice, in and out.
        measured = consumed
        all_bytes = 2 * consumed["bytes"]
    return {
        "mb_per_s": measured["throughput_mb_per_s"],
        "broker_cpu_s_per_gb": run["broker"]["cpu_s"] / (all_bytes / 1e9),
        "broker_cpus": run["broker"]["cpu_fraction_of_wall"],
        "client_cpu_s_per_gb": run["client"]["process_cpu_s"] / (all_bytes / 1e9),
        "other_percent": run["host_cpu_busy_other_percent"],
        "e2e_us": [consumed.get(f"e2e_latency_us_{p}") for p in ("p50", "p99", "p999")],
    }


def main():
    argv = sys.argv[1:]
    workload = DEFAULT_WORKLOAD
    if "--" in argv:
        split = argv.index("--")
        argv, workload = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("builds", nargs="+", help="NAME=PATH of a ringfeed binary")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bench", default="target/release/ringfeed-bench")
    parser.add_argument("--port", type=int, default=19094)
    args = parser.parse_args(argv)
    builds = [build.split("=", 1) for build in args.builds]
    runs = {name: [] for name, _ in builds}
    with tempfile.TemporaryDirectory(prefix="broker-cost-") as scratch:
        for round_number in range(args.rounds):
            shift = round_number % len(builds)
            for name, binary in builds[shift:] + builds[:shift]:
                work_dir = Path(scratch) / name
                work_dir.mkdir(exist_ok=True)
                run = run_once(binary, args.bench, args.port, workload, work_dir)
                runs[name].append(run)
                e2e = run["e2e_us"]
                print(f"round {round_number} {name}: {run['mb_per_s']:.1f} MB/s, broker "
                      f"{run['broker_cpu_s_per_gb']:.2f} CPU-s/GB ({run['broker_cpus']:.2f} CPUs), "
                      f"client {run['client_cpu_s_per_gb']:.2f} CPU-s/GB, other work "
                      f"{run['other_percent']:.0f}%"
                      + (f", e2e p50/p99/p99.9 {e2e[0]:.0f}/{e2e[1]:.0f}/{e2e[2]:.0f} µs"
                         if e2e[0] is not None else ""), flush=True)
    print()
    print("| build | MB/s (median) | broker CPU-s per GB (median) | runs (MB/s / CPU-s per GB) | broker CPUs | e2e µs p50 / p99 / p99.9 |")
    print("| --- | ---: | ---: | --- | ---: | --- |")
    for name, _ in builds:
        done = runs[name]
        median = lambda key: statistics.median(run[key] for run in done)  # noqa: E731
        e2e = "-"
        if done[0]["e2e_us"][0] is not None:
            e2e = " / ".join(f"{statistics.median(run['e2e_us'][i] for run in done):.0f}"
                             for i in range(3))
        listed = ", ".join(f"{run['mb_per_s']:.0f} / {run['broker_cpu_s_per_gb']:.1f}" for run in done)
        print(f"| {name} | {median('mb_per_s'):.1f} | {median('broker_cpu_s_per_gb'):.2f} | {listed} "
              f"| {median('broker_cpus'):.2f} | {e2e} |")


if __name__ == "__main__":
    main()
