"""Guards the hostile-client limits in short form (reliability/hostile.py runs the long one
with 10,000 idle and 1,000 trickling connections): idle connections are closed after
connections.max.idle.ms; connections that declare a 100 MiB frame and trickle it are closed
after the request read timeout and cost memory for what they sent, not what they declared;
max.connections and max.connections.per.ip refuse connections over them; and a real client
keeps producing with every record acknowledged and stored throughout."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))

import hostile  # noqa: E402


def test_idle_and_trickling_connections_are_bounded_and_closed(tmp_path):
    result = hostile.run(idle=500, trickle=100, idle_timeout_ms=1500, read_timeout_ms=3000, phase_s=2, rate_per_s=50,
                         workdir=tmp_path, log=lambda _line: None)
    assert result["broker_alive"] and not result["broker_panicked"], result
    assert result["idle_closed_by_broker"] == 500 and result["idle_closed_before_timeout"] == 0, result
    assert result["trickle_closed_by_broker"] == 100, result
    assert result["read_timeouts_logged"] == 100, result
    # Budget admits two 100 MiB frames per shard; allocating them would add 400 MiB.
    assert result["rss_kib_trickle_max"] < result["rss_kib_start"] + 64 * 1024, result
    assert not result["probe_failures"], result
    assert result["probe_stored"] >= result["probe_acknowledged"] > 100, result
    limits = result["limits"]
    assert (limits["closed_by_per_ip_limit"], limits["closed_by_total_limit"]) == (5, 15), limits
    assert limits["refusals_logged"], limits
    assert hostile.passed(result)
