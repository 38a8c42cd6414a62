#!/usr/bin/env python3
"""TLS against plaintext on one broker, with librdkafka's rdkafka_performance (issue 13's
target: TLS >= 70% of plaintext produce and consume throughput at 1 KiB).

One broker with a PLAINTEXT and an SSL listener (certificates made here with openssl, rustls on
the broker's side, OpenSSL in librdkafka). Each round produces COUNT records of SIZE bytes to a
fresh topic over one listener and consumes them back over the same listener; rounds alternate
plaintext and TLS so drift of the host hits both. Prints each round and the median ratio.

    .venv/bin/python bench/tls_ratio.py --bin target/release/ringfeed \
        --rdkafka-performance /path/to/rdkafka_performance [--count 300000] [--size 1024] [--rounds 3]

rdkafka_performance is not installed by the test command: build it from librdkafka's sources
(`./configure && make -C src && make -C examples rdkafka_performance`).
"""

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# rdkafka_performance prints a line a second and a final one; the final (last) one counts.
PRODUCED = re.compile(r"messages produced \(\d+ bytes\), (\d+) delivered .* in (\d+)ms: (\d+) msgs/s and ([\d.]+) MB/s")
CONSUMED = re.compile(r"messages \((\d+) bytes\) consumed in (\d+)ms: (\d+) msgs/s \(([\d.]+) MB/s\)")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def certificates(directory):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=bench-ca",
            "-x509", "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.pem", cwd=directory)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-subj", "/CN=localhost",
            "-out", "broker.csr", cwd=directory)
    (directory / "broker.ext").write_text(
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "broker.ext", "-out", "broker.pem", cwd=directory)
    (directory / "keystore.pem").write_text((directory / "broker.pem").read_text() + (directory / "broker.key").read_text())


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(tool, bootstrap, security, args):
    command = [tool, "-b", bootstrap, *security, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    return done.stdout + done.stderr


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--rdkafka-performance", required=True)
    parser.add_argument("--count", type=int, default=300_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=1)
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tls-ratio-"))
    certificates(work)
    plain_port, tls_port = free_port(), free_port()
    broker = subprocess.Popen(
        [options.bin, "serve", "--data-dir", str(work / "data"), "--shards", str(options.shards),
         "--listeners", f"PLAINTEXT://127.0.0.1:{plain_port},SSL://127.0.0.1:{tls_port}",
         "--ssl-keystore-location", str(work / "keystore.pem"), "--admin-listen", "127.0.0.1:0"],
        stdout=open(work / "broker.log", "wb"), stderr=subprocess.STDOUT)
    time.sleep(1.5)
    listeners = {
        "plaintext": (f"127.0.0.1:{plain_port}", []),
        "tls": (f"127.0.0.1:{tls_port}", ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={work / 'ca.pem'}"]),
    }
    results = {name: {"produce": [], "consume": []} for name in listeners}
    try:
        for round_number in range(options.rounds):
            for name, (bootstrap, security) in listeners.items():
                topic = f"{name}-{round_number}"
                produced = run(options.rdkafka_performance, bootstrap, security,
                               ["-P", "-t", topic, "-p", "0", "-s", str(options.size), "-c", str(options.count),
                                "-a", "1", "-X", "linger.ms=5", "-X", "batch.size=1000000"])
                matches = PRODUCED.findall(produced)
                if not matches or int(matches[-1][0]) != options.count:
                    sys.exit(f"{name} produce: not every record delivered\n{produced[-2000:]}")
                consumed = run(options.rdkafka_performance, bootstrap, security,
                               ["-C", "-t", topic, "-p", "0", "-o", "beginning", "-c", str(options.count), "-e"])
                consumed_matches = CONSUMED.findall(consumed)
                if not consumed_matches or int(consumed_matches[-1][0]) != options.count * options.size:
                    sys.exit(f"{name} consume: not every record consumed\n{consumed[-2000:]}")
                produce_mb, consume_mb = float(matches[-1][3]), float(consumed_matches[-1][3])
                results[name]["produce"].append(produce_mb)
                results[name]["consume"].append(consume_mb)
                print(f"round {round_number + 1} {name:9} produce {produce_mb:8.1f} MB/s  consume {consume_mb:8.1f} MB/s",
                      flush=True)
    finally:
        broker.terminate()
        broker.wait(timeout=30)
    for kind in ("produce", "consume"):
        plain = statistics.median(results["plaintext"][kind])
        tls = statistics.median(results["tls"][kind])
        print(f"{kind}: median plaintext {plain:.1f} MB/s, TLS {tls:.1f} MB/s, TLS/plaintext {tls / plain:.2f}")


if __name__ == "__main__":
    main()
