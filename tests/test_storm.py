"""Guards the live-socket storm in short form (reliability/storm.py runs the long one):
mutated and random frames (hostile sizes, truncations, bit flips, unknown keys and versions,
huge array counts, invalid varints and tags) from several processes, seeded with requests
captured from real clients, never take the broker down, and a real acks=all producer keeps
getting every record acknowledged meanwhile. Latency ratios are reported, not asserted
(performance targets live in the long form, not in timed tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))

import storm  # noqa: E402


def test_a_short_storm_neither_crashes_the_broker_nor_fails_a_real_producer(tmp_path):
    result = storm.run(seconds=4, storm_processes=2, rate_per_s=100, workdir=tmp_path, log=lambda _line: None)
    assert result["broker_alive"] and not result["broker_panicked"], result
    assert result["frames_sent"] > 500, result
    assert result["connections_closed_for_bad_input"] > 50, result
    assert not result["probe_failures"], result
    assert result["storm"]["sent"] > 100, result
    # Bounded memory: the storm declares frames up to INT32_MAX; none may be allocated.
    assert result["rss_kib_during_max"] < result["rss_kib_before"] + 256 * 1024, result


def test_mutations_cover_the_hostile_shapes():
    import random
    seeds = [storm.frame(b"\x00\x03\x00\x0c\x00\x00\x00\x01\x00\x02id" + bytes(40))]
    rng = random.Random(1)
    sizes = set()
    for _ in range(2000):
        data, _hang = storm.mutate(rng, seeds)
        if len(data) >= 4:
            sizes.add(int.from_bytes(data[:4], "big", signed=True))
    assert storm.INT32_MAX in sizes and -1 in sizes and 0 in sizes
