"""Guards what a restarted broker does with damaged files (reliability/corruption.py runs the
long form): for every kind of damage (truncation, flipped bits, zeroed pages, garbage after
the end, damage in sealed and active segments, deleted or corrupt segments, indexes and
checkpoints) the broker stays up, serves only records exactly as acknowledged with no gap,
cuts a torn tail to the last valid batch and logs it, never serves past mid-log damage nor
drops it silently, and `ringfeed check-data` reports the damage. Also guards the judge, so a
pass cannot come from a checker that accepts everything."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))

import corruption  # noqa: E402


@pytest.fixture(scope="module")
def damaged_runs(tmp_path_factory):
    return corruption.run(records=3000, seeds=1, workdir=tmp_path_factory.mktemp("corruption"), log=lambda _line: None)


@pytest.mark.parametrize("kind", sorted(corruption.DAMAGE_KINDS))
def test_damage_is_handled_as_documented(damaged_runs, kind):
    outcome = next(r for r in damaged_runs if r["kind"] == kind)
    assert outcome["ok"], outcome


def test_the_judge_catches_silent_drops_and_altered_records():
    produced = {o: bytes([o % 256]) for o in range(10)}
    silent = corruption.judge("up-to-damage", 5, produced, {o: produced[o] for o in range(5)}, [], 10, "all quiet", 1, "")
    assert not silent["ok"] and "silently" in " ".join(silent["problems"])
    gap = corruption.judge("all", None, produced, {o: produced[o] for o in range(10) if o != 3}, [], 10, "", 0, "")
    assert not gap["ok"]
    altered = corruption.judge("all", None, produced, {**produced, 4: b"x"}, [], 10, "", 0, "")
    assert not altered["ok"]
    unlogged_cut = corruption.judge("tail-cut", 7, produced, {o: produced[o] for o in range(7)}, [], 7, "", 1, "")
    assert not unlogged_cut["ok"]
    past_damage = corruption.judge("up-to-damage", 5, produced, {o: produced[o] for o in range(7)}, ["Broker: Corrupt"], 10, "damaged", 1, "")
    assert not past_damage["ok"]
