#!/usr/bin/env python3
"""Damaged files: what a restarted broker serves and reports after its segments, indexes or
checkpoints were damaged while it was stopped.

A broker gets a known set of records (acks=all, confluent-kafka) on a topic with small
segments, so the partition has sealed segments with indexes and an active segment, and is
stopped with SIGTERM. For each kind of damage a copy of that data directory is damaged,
`ringfeed check-data` is run on it, a broker is started on it, and everything readable is
consumed. Each kind has a documented expected outcome (docs/RELIABILITY.md, section 3):

  all           every acknowledged record is served (the damage was to rebuildable files);
  tail-cut      the records before the damaged batch are served, the rest are cut, and the
                cut is logged (torn tail);
  refused       the partition is kept out of service (KAFKA_STORAGE_ERROR) and the
                refusal is logged; nothing is cut;
  up-to-damage  records before the damage are served, never a record past it; the broker
                answers KAFKA_STORAGE_ERROR for the damaged batch and logs it with its
                position (librdkafka retries that error, so the consumer stalls there).

In every case: the broker stays up; every record served is the one acknowledged at that
offset (nothing altered); offsets served are contiguous from 0 (nothing silently skipped);
and `check-data` reports the damage (exit 1) unless the kind is benign by design.

    .venv/bin/python reliability/corruption.py --records 20000 --seeds 5
"""

import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Consumer, KafkaException, TopicPartition  # noqa: E402

import helpers  # noqa: E402
from conftest import Broker, ringfeed_binary  # noqa: E402

TOPIC = "damaged"
PAGE = 4096
BATCH_HEADER = 61


# --- Reading the on-disk format (storage/FORMAT.md) -------------------------------------

def batches(segment_path):
    """[(position, size, base_offset, last_offset)] of the batches before the first all-zero
    or impossible header."""
    data = segment_path.read_bytes()
    found, position = [], 0
    while position + BATCH_HEADER <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, position)
        if length < 49 or position + 12 + length > len(data):
            break
        last_delta = struct.unpack_from(">i", data, position + 23)[0]
        found.append((position, 12 + length, base_offset, base_offset + last_delta))
        position += 12 + length
    return found


def segments(partition_dir):
    return sorted(partition_dir.glob("*.log"))


def flip_byte(path, position, mask=0x10):
    with open(path, "r+b") as file:
        file.seek(position)
        byte = file.read(1)[0]
        file.seek(position)
        file.write(bytes([byte ^ mask]))


def overwrite(path, position, data):
    with open(path, "r+b") as file:
        file.seek(position)
        file.write(data)


# --- Damage kinds: each returns (description, expected outcome, first damaged offset) ---
# `expected` is one of all / tail-cut / refused / up-to-damage (see the module docs).

def truncate_last_batch(pdir, rng):
    active = segments(pdir)[-1]
    position, size, base, _ = batches(active)[-1]
    cut = position + rng.randint(1, size - 1)
    os.truncate(active, cut)
    return f"active segment truncated at byte {cut}, inside its last batch", "tail-cut", base


def flip_in_last_batch(pdir, rng):
    active = segments(pdir)[-1]
    position, size, base, _ = batches(active)[-1]
    flip_byte(active, position + rng.randint(BATCH_HEADER, size - 1))
    return "one bit flipped in the records of the last batch", "tail-cut", base


def zero_last_page(pdir, rng):
    active = segments(pdir)[-1]
    found = batches(active)
    end = found[-1][0] + found[-1][1]
    page = (end - 1) // PAGE * PAGE
    overwrite(active, page, bytes(PAGE))
    first_hit = next(b for b in found if b[0] + b[1] > page)
    return f"the last data page (byte {page}) zeroed", "tail-cut", first_hit[2]


def garbage_after_end(pdir, rng):
    active = segments(pdir)[-1]
    found = batches(active)
    end = found[-1][0] + found[-1][1]
    overwrite(active, end, rng.randbytes(3000))
    return "3,000 random bytes written after the last batch", "all", None


def append_garbage_to_file(pdir, rng):
    active = segments(pdir)[-1]
    with open(active, "ab") as file:
        file.write(rng.randbytes(5000))
    return "5,000 random bytes appended to the end of the active segment file", "all", None


def flip_in_active_middle(pdir, rng):
    active = segments(pdir)[-1]
    found = batches(active)
    position, size, base, _ = found[len(found) // 2]
    flip_byte(active, position + rng.randint(BATCH_HEADER, size - 1))
    return "one bit flipped in a batch in the middle of the active segment", "up-to-damage", base


def flip_in_sealed(pdir, rng):
    sealed = segments(pdir)[len(segments(pdir)) // 2 - 1]
    found = batches(sealed)
    position, size, base, _ = found[len(found) // 2]
    flip_byte(sealed, position + rng.randint(BATCH_HEADER, size - 1))
    return f"one bit flipped in a batch in the middle of sealed segment {sealed.name}", "up-to-damage", base


def zero_page_in_sealed(pdir, rng):
    sealed = segments(pdir)[len(segments(pdir)) // 2 - 1]
    found = batches(sealed)
    page = (found[len(found) // 2][0] // PAGE) * PAGE
    overwrite(sealed, page, bytes(PAGE))
    first_hit = next(b for b in found if b[0] + b[1] > page)
    return f"a 4 KiB page zeroed in the middle of sealed segment {sealed.name}", "up-to-damage", first_hit[2]


def flip_header_in_sealed_without_index(pdir, rng):
    sealed = segments(pdir)[len(segments(pdir)) // 2 - 1]
    found = batches(sealed)
    position, _, base, _ = found[len(found) // 2]
    flip_byte(sealed, position + 9, 0x40)  # batchLength: the scan cannot step over it
    sealed.with_suffix(".index").unlink()
    return f"a batch length corrupted in sealed segment {sealed.name}, its index deleted", "refused", base


def delete_sealed_segment(pdir, rng):
    sealed = segments(pdir)[len(segments(pdir)) // 2 - 1]
    base = int(sealed.stem)
    sealed.unlink()
    sealed.with_suffix(".index").unlink(missing_ok=True)
    return f"sealed segment {sealed.name} and its index deleted", "refused", base


def delete_index(pdir, rng):
    for index in pdir.glob("*.index"):
        index.unlink()
    return "every index file deleted", "all", None


def corrupt_index(pdir, rng):
    index = sorted(pdir.glob("*.index"))[0]
    size = index.stat().st_size
    overwrite(index, rng.randint(0, size - 1), rng.randbytes(16))
    return f"16 random bytes written into {index.name}", "all", None


def delete_checkpoint_and_marker(pdir, rng):
    for name in ("recovery.checkpoint", "clean.shutdown"):
        (pdir / name).unlink(missing_ok=True)
    return "recovery.checkpoint and clean.shutdown deleted (full scan)", "all", None


def corrupt_checkpoint_and_marker(pdir, rng):
    for name in ("recovery.checkpoint", "clean.shutdown"):
        path = pdir / name
        if path.exists():
            overwrite(path, rng.randint(0, path.stat().st_size - 1), rng.randbytes(8))
    return "random bytes written into recovery.checkpoint and clean.shutdown", "all", None


def crash_then_torn_tail(pdir, rng):
    """What a crash leaves: no marker, and the last batch half-written."""
    (pdir / "clean.shutdown").unlink(missing_ok=True)
    active = segments(pdir)[-1]
    position, size, base, _ = batches(active)[-1]
    overwrite(active, position + size // 2, bytes(size - size // 2))
    return "clean.shutdown deleted and the second half of the last batch zeroed (a torn write)", "tail-cut", base


DAMAGE_KINDS = {
    "truncate-last-batch": truncate_last_batch,
    "flip-bit-last-batch": flip_in_last_batch,
    "zero-last-page": zero_last_page,
    "garbage-after-end": garbage_after_end,
    "append-garbage-to-file": append_garbage_to_file,
    "crash-torn-tail": crash_then_torn_tail,
    "flip-bit-active-middle": flip_in_active_middle,
    "flip-bit-sealed-middle": flip_in_sealed,
    "zero-page-sealed-middle": zero_page_in_sealed,
    "bad-length-sealed-no-index": flip_header_in_sealed_without_index,
    "delete-sealed-segment": delete_sealed_segment,
    "delete-indexes": delete_index,
    "corrupt-index": corrupt_index,
    "delete-checkpoint-and-marker": delete_checkpoint_and_marker,
    "corrupt-checkpoint-and-marker": corrupt_checkpoint_and_marker,
}


# --- Running one case ---------------------------------------------------------------------

def read_all(bootstrap, timeout_s=30.0, stall_s=2.0):
    """What a consumer gets from offset 0: (records {offset: value}, errors [str],
    high watermark or None when the partition does not answer)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "corruption-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    records, errors = {}, []
    try:
        try:
            _low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=3)
        except KafkaException as error:
            return records, [f"watermarks: {error.args[0].str()}"], None
        consumer.assign([TopicPartition(TOPIC, 0, 0)])
        deadline = time.monotonic() + timeout_s
        progress = time.monotonic()  # a consumer stalled at damage stops after stall_s
        while time.monotonic() < deadline and time.monotonic() - progress < stall_s:
            message = consumer.poll(0.2)
            if message is None:
                continue
            progress = time.monotonic()
            if message.error():
                if message.error().code() == -191:  # _PARTITION_EOF
                    if len(records) >= high:
                        break
                    continue
                errors.append(message.error().str())
                if len(errors) >= 3:
                    break
                continue
            records[message.offset()] = message.value()
        return records, errors, high
    finally:
        consumer.close()


def check_data(data_dir):
    result = subprocess.run([ringfeed_binary(), "check-data", str(data_dir)], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def run_case(kind, pristine, workdir, produced, seed):
    """Damages a copy of `pristine` with `kind`; returns what happened and whether it matches."""
    rng = random.Random(f"{kind}-{seed}")
    data_dir = workdir / f"{kind}-{seed}"
    shutil.copytree(pristine, data_dir)
    description, expected, damaged_offset = DAMAGE_KINDS[kind](data_dir / f"{TOPIC}-0", rng)
    check_code, check_output = check_data(data_dir)
    broker = Broker(data_dir, workdir / f"{kind}-{seed}.log", shards=1)
    outcome = {"kind": kind, "seed": seed, "damage": description, "expected": expected,
               "damaged_offset": damaged_offset, "check_data_exit": check_code}
    try:
        broker.start(timeout=30)
        records, errors, high = read_all(broker.bootstrap)
        outcome["broker_alive_after_reads"] = broker.alive()
        broker.stop(signal.SIGTERM)
    except RuntimeError as error:  # did not start: refusing to open is not a crash, but say so
        records, errors, high = {}, [f"broker did not start: {error}"[:300]], None
        outcome["broker_alive_after_reads"] = False
    log = broker.new_log() if broker.log_path.exists() else ""
    helpers.forget_admin_clients()
    outcome.update(judge(expected, damaged_offset, produced, records, errors, high, log, check_code, check_output))
    if not outcome["ok"]:
        outcome["log_tail"] = log[-2000:]
        outcome["check_data_output"] = check_output[-1500:]
    return outcome


def judge(expected, damaged_offset, produced, records, errors, high, log, check_code, check_output):
    """Compares what was served and reported with the documented outcome."""
    problems = []
    served = sorted(records)
    if served != list(range(len(served))):
        problems.append(f"offsets served are not contiguous from 0 (first gap after {next((o for i, o in enumerate(served) if o != i), None)})")
    altered = [o for o in served if o in produced and records[o] != produced[o]]
    unknown = [o for o in served if o not in produced]
    if altered or unknown:
        problems.append(f"records altered at {altered[:5]}, unknown at {unknown[:5]}")
    damage_logged = any(word in log for word in ("torn tail", "corrupt", "Corrupt", "damaged", "damage", "offline", "MidLog", "mid-log"))
    crashed = "panicked" in log
    if crashed:
        problems.append("the broker panicked")
    count = len(served)
    if expected == "all":
        if count != len(produced):
            problems.append(f"served {count} of {len(produced)} records, expected all")
    elif expected == "tail-cut":
        if count != damaged_offset:
            problems.append(f"served {count} records, expected exactly the {damaged_offset} before the damaged batch")
        if not damage_logged:
            problems.append("the cut was not logged")
    elif expected == "refused":
        if count != 0 or high is not None and not errors:
            problems.append(f"partition served {count} records (high watermark {high}); expected it out of service")
        if not damage_logged:
            problems.append("the refusal was not logged")
    elif expected == "up-to-damage":
        refused = count == 0 and (high is None or errors)
        if not refused:
            if count > damaged_offset:
                problems.append(f"served {count} records, past the damaged batch at offset {damaged_offset}")
        # librdkafka retries KAFKA_STORAGE_ERROR without surfacing it: the consumer stalls
        # at the damaged batch. That is not silent if the broker reports the damage.
        if count < len(produced) and not damage_logged and not errors:
            problems.append(f"served {count} of {len(produced)}, nothing logged or reported: silently dropped")
    if expected != "all" and check_code != 1:
        problems.append(f"check-data exited {check_code}, expected 1 (damage found)")
    return {
        "served": count,
        "produced": len(produced),
        "high_watermark": high,
        "consumer_errors": errors[:3],
        "damage_logged": damage_logged,
        "check_data_found": check_code == 1,
        "ok": not problems,
        "problems": problems,
    }


def prepare(workdir, records, segment_bytes):
    """Produces `records` known records (acks=all) to a stopped broker's data dir; returns
    (data dir, {offset: value})."""
    data_dir = workdir / "pristine"
    broker = Broker(data_dir, workdir / "pristine.log", shards=1).start()
    try:
        helpers.create_topic(broker.bootstrap, TOPIC, 1, {"segment.bytes": str(segment_bytes)})
        rng = random.Random(11)  # incompressible values of 0.5-3 kB: a few records make a segment
        messages = [(f"key-{i}".encode(), rng.randbytes(rng.randint(500, 3000)), [], helpers.TIMESTAMP_BASE_MS + i) for i in range(records)]
        delivered = helpers.produce(broker.bootstrap, TOPIC, messages, **{"linger.ms": 2, "batch.num.messages": 50})
        assert broker.stop(signal.SIGTERM) == 0
    finally:
        helpers.forget_admin_clients()
        if broker.alive():
            broker.process.kill()
            broker.process.wait()
    produced = {offset: message[1] for (_partition, offset), message in delivered.items()}
    pdir = data_dir / f"{TOPIC}-0"
    assert len(segments(pdir)) >= 4, f"want several sealed segments, got {len(segments(pdir))}"
    return data_dir, produced


def run(kinds=None, records=3000, seeds=1, segment_bytes=1024 * 1024, workdir=None, log=print):
    workdir = Path(workdir or tempfile.mkdtemp(prefix="ringfeed-corruption-"))
    pristine, produced = prepare(workdir, records, segment_bytes)
    results = []
    for kind in kinds or DAMAGE_KINDS:
        for seed in range(seeds):
            outcome = run_case(kind, pristine, workdir, produced, seed)
            results.append(outcome)
            log(f"{kind:32} seed {seed}: {'ok  ' if outcome['ok'] else 'FAIL'} served {outcome['served']}/{outcome['produced']}"
                f" expected {outcome['expected']} check-data exit {outcome['check_data_exit']}"
                f"{' problems: ' + '; '.join(outcome['problems']) if outcome['problems'] else ''}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--seeds", type=int, default=3, help="random damage positions per kind")
    parser.add_argument("--kind", action="append", choices=sorted(DAMAGE_KINDS))
    parser.add_argument("--json")
    args = parser.parse_args()
    results = run(args.kind, args.records, args.seeds)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} of {len(results)} cases as documented")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
