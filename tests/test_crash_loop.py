"""Guards the crash-loop promise in short form (reliability/crash_loop.py runs the long one):
idempotent acks=all producers keep writing while the broker is SIGKILLed and restarted; at
the end nothing acknowledged is lost, nothing is duplicated or reordered, and no offset holds
a value other than the one acknowledged there. Also guards the checker itself, so a pass
cannot come from a checker that counts nothing."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))

import crash_loop  # noqa: E402


def test_a_short_crash_loop_loses_and_duplicates_nothing(tmp_path):
    result = crash_loop.run(cycles=4, producers=2, partitions=4, shards=2, rate_per_s=200, workdir=tmp_path, seed=7)
    assert result["sends_acknowledged"] > 500, result
    assert not result["producer_fatal_errors"], result
    assert (result["lost"], result["duplicates"], result["inconsistent"], result["aborted"], result["out_of_order"]) == (0, 0, 0, 0, 0), result
    assert crash_loop.passed(result)


def test_the_checker_counts_each_anomaly():
    sends = SimpleNamespace(
        attempted=6,
        ok={"0:0": (0, 0), "0:1": (0, 1), "0:2": (0, 2), "1:0": (1, 0)},
        failed={"1:1"},
        unknown={"1:2"},
        fatal_errors=[],
    )
    records = [
        (0, 0, "0:0"),
        (0, 1, "0:2"),  # inconsistent: 0:1 was acknowledged at offset 1; and 0:1 is lost
        (0, 2, "0:2"),  # duplicate of 0:2
        (1, 0, "1:1"),  # aborted: its send failed; and 1:0 is lost
        (1, 1, "1:2"),  # an unknown send that turned out present
        (1, 2, "1:0"),  # 1:0 read after 1:1 and 1:2 of the same producer: out of order
    ]
    result = crash_loop.check(sends, records)
    assert result["lost"] == 1  # 0:1 (1:0 was read, at another offset)
    assert result["inconsistent"] == 2  # offset (0,1) holds 0:2; offset (1,0) holds 1:1
    assert result["duplicates"] == 1
    assert result["aborted"] == 1
    assert result["unknown_found_present"] == 1
    assert result["out_of_order"] == 2  # 0:2 read again (not after itself) and 1:0 after 1:2
    assert not crash_loop.passed(result)
