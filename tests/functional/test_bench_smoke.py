"""The benchmark's pure helpers: percentiles, pacing, matching, targets, state copies, the result document.

Not a timed test and no broker: the figures themselves come from `hub bench` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from bench.run import (
    MET,
    MISSED,
    NOT_MEASURED,
    PROBE_STALL_SECONDS,
    RESULT_SCHEMA,
    TARGET_PATIENTS_IN_STATE,
    Arrivals,
    BenchFailed,
    Passthrough,
    ProbeWatch,
    ReceiptTracker,
    evaluate_targets,
    latencies,
    latency_summary,
    median_run,
    memory_estimate,
    messages_needed,
    pacing_delay,
    percentile,
    render_table,
    render_targets,
    result_document,
    send_offset,
    split_feed,
    steady_rate,
)
from bench.state import StateFormatError, copies_for, copy_key, key_bytes, table_key
from hub.crypto.records import patient_of_table_key


def test_percentile_interpolates_linearly_between_closest_ranks() -> None:
    assert percentile([4, 1, 3, 2], 50) == 2.5  # unsorted input is fine
    assert percentile([1, 2, 3, 4], 0) == 1
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_refuses_what_has_no_answer(q: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], q)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_latency_summary_has_count_and_the_three_percentiles() -> None:
    summary = latency_summary([float(v) for v in range(1, 201)])
    assert summary == {"count": 200, "p50": 100.5, "p95": 190.1, "p99": 198.0, "max": 200.0}
    assert latency_summary([]) == {"count": 0}


def test_pacing_is_an_absolute_schedule() -> None:
    assert send_offset(0, 20.0) == 0
    assert send_offset(10, 5.0) == 2.0
    assert pacing_delay(100.0, 0, 10.0, now=100.0) == 0
    assert pacing_delay(100.0, 5, 10.0, now=100.2) == pytest.approx(0.3)
    assert pacing_delay(100.0, 5, 10.0, now=101.0) == 0  # late: send at once


def test_a_paced_sender_with_overhead_still_offers_the_rate() -> None:
    """Each send costs 4 ms on a fake clock; at 50/s (20 ms apart) the schedule absorbs it, no drift."""
    rate, overhead, now = 50.0, 0.004, 0.0
    count = messages_needed(rate, 10.0)
    for index in range(count):
        now += pacing_delay(0.0, index, rate, now)
        now += overhead
    assert count == 500
    assert now == pytest.approx((count - 1) / rate + overhead)


def test_messages_needed() -> None:
    assert messages_needed(27.3, 25.0) == 683
    assert messages_needed(0.01, 1.0) == 1
    with pytest.raises(ValueError, match="positive"):
        messages_needed(0, 10)


def test_split_feed_keeps_a_share_for_latency() -> None:
    assert split_feed(4003, 0.35) == (2602, 1401)
    assert split_feed(2, 0.35) == (1, 1)
    with pytest.raises(ValueError, match="two phases"):
        split_feed(1, 0.35)


def test_steady_rate_ignores_warm_up_and_tail() -> None:
    # A slow start and a slow end around 100 records at 10 per second.
    times = [0.0, 5.0, *(10 + i / 10 for i in range(100)), 30.0, 40.0]
    assert steady_rate(times) == pytest.approx(10.0, rel=0.02)
    assert steady_rate([1.0, 2.0]) == 0.0


def test_memory_extrapolation_is_linear_in_the_inputs_held() -> None:
    # 90 MB when ready, 190 MB after 4,000 inputs: 25 MB per 1,000 inputs; 8 inputs per patient.
    growth, estimate = memory_estimate(
        ready_mb=90.0, peak_mb=190.0, inputs=4000, inputs_per_patient=8, patients=1000
    )
    assert growth == pytest.approx(25.0)
    assert estimate == pytest.approx(90.0 + 25.0 * 8)
    assert memory_estimate(ready_mb=90.0, peak_mb=80.0, inputs=10, inputs_per_patient=8, patients=10) == (
        0.0,
        90.0,
    )
    assert memory_estimate(ready_mb=90.0, peak_mb=95.0, inputs=0, inputs_per_patient=8, patients=10) == (
        0.0,
        90.0,
    )


def test_median_run_and_combined_processes() -> None:
    runs = [Passthrough(1, 1000, 10, 0.0, t) for t in (1.0, 0.5, 2.0)]  # 1000, 2000, 500 records/s
    median = median_run(runs)
    assert median.seconds == 1.0
    assert median.as_dict()["runs_records_per_s"] == [1000.0, 2000.0, 500.0]
    both = Passthrough.combined([Passthrough(1, 500, 5, 10.0, 11.0), Passthrough(1, 700, 7, 10.5, 12.0)])
    assert (both.processes, both.records, both.bytes, both.seconds) == (2, 1200, 12, 2.0)
    assert both.as_dict()["records_per_s"] == 600.0


def test_receipt_tracker_keeps_the_first_receipt_of_each_expected_input() -> None:
    tracker = ReceiptTracker(frozenset({"a", "b"}))
    tracker.add(1_000, json.dumps({"message_id": "a", "status": "accepted"}).encode())
    tracker.add(2_000, json.dumps({"message_id": "a", "status": "duplicate"}).encode())  # redelivered
    tracker.add(2_500, json.dumps({"message_id": "zz", "status": "accepted"}).encode())  # not ours
    assert not tracker.complete
    tracker.add(3_000, json.dumps({"message_id": "b", "status": "rejected"}).encode())
    assert tracker.complete
    assert tracker.first == {"a": (1.0, "accepted"), "b": (3.0, "rejected")}
    assert tracker.total == 4


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def test_latencies_match_outputs_to_inputs_by_message_and_event_ids() -> None:
    sent = {"m1": 100.0, "m2": 101.0}
    arrivals = Arrivals(
        receipts={"m1": (100.05, ["e1", "e2"]), "m2": (101.2, ["e3"]), "other": (99.0, ["x"])},
        copies=[
            (100.30, _json({"event_id": "e1"})),
            (100.10, _json({"event_id": "e1"})),  # the first copy counts, whatever the arrival order
            (100.20, _json({"event_id": "e2"})),
            (101.50, _json({"event_id": "e3"})),
            (101.60, _json({"event_id": "x"})),  # from an input this phase did not send
        ],
        alerts=[
            # Caused by the newest of its inputs (m2), even with an older event among its reasons.
            (101.9, _json({"reasons": [{"event_ids": ["e1"]}, {"event_ids": ["e3", "old"]}]})),
            (102.0, _json({"reasons": [{"event_ids": ["old"]}]})),  # nothing of this phase: ignored
        ],
    )
    receipt_ms, recipient_ms, alert_ms = latencies(sent, arrivals)
    assert sorted(receipt_ms) == pytest.approx([50.0, 200.0])
    assert sorted(recipient_ms) == pytest.approx([100.0, 200.0, 500.0])
    assert alert_ms == pytest.approx([900.0])


def _document(
    *,
    ratio: float = 0.05,
    cpu_ms: float = 18.2,
    records: float = 20.5,
    recipient_p99: float | None = 200.0,
    alert_p99: float | None = None,
    speedup: float | None = 1.6,
    patients: int = 500,
    peak: float = 180.0,
    restart_s: float = 12.0,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    def summary(p99: float | None) -> dict[str, Any]:
        return {"count": 0} if p99 is None else {"count": 10, "p50": 1, "p95": 2, "p99": p99, "max": p99}

    hub = {
        "inputs_per_s": 50.0,
        "inputs_per_s_to_receipts": 150.0,
        "steady_inputs_per_s": 300.0,
        "pathway_events_per_s": 120.0,
        "pathway_events": 6000,
        "recipient_copies": 5500,
        "alerts": 60,
        "inputs": 2600,
        "records_written_per_input": records,
        "records_written_per_s": 1025.0,
        "worker_cpu_ms_per_input": cpu_ms,
        "worker_cpu_utilisation": 0.93,
        "broker_cpu_seconds": 21.0,
        "other_cpu_seconds": 0.4,
        "ratio_to_raw": ratio,
    }
    restart = {
        "seconds_to_ready": restart_s,
        "seconds_to_receipts": restart_s - 1,
        "probe_inputs": 10,
        "changelog_records_read": 0,
        "rss_mb": 130.0,
        "peak_rss_mb": 140.0,
    }
    return result_document(
        command="hub bench --quick",
        config={"patients": patients},
        raw={"records": 2600, "bytes": 10 * 1024 * 1024, "records_per_s": 4000.0, "mb_per_s": 15.0},
        hub=hub,
        latency={
            "offered_inputs_per_s": 25.0,
            "seconds": 25.0,
            "sent": 625,
            "worker_busy_while_offered": 0.62,
            "worker_cpu_ms_per_input": 24.8,
            "worker_event_loop_cpu_share": 0.81,
            "receipt_ms": {"count": 625, "p50": 30.0, "p95": 90.0, "p99": 120.0, "max": 130.0},
            "recipient_ms": summary(recipient_p99),
            "alert_ms": summary(alert_p99),
        },
        memory={
            "worker_peak_rss_mb": peak,
            "worker_rss_ready_mb": 90.0,
            "worker_rss_end_mb": 150.0,
            "worker_idle_cpu_percent": 6.9,
            "patients_in_state": patients,
            "estimated_rss_mb_at_target_patients": 12345,
            "restart": restart,
            "table_store": "rocksdb://",
            "table_disk_mb": 3.5,
            "table_disk_kb_per_1000_inputs": 1120,
            "tables": {
                "identity-seen-messages": {"keys": 3125, "live_bytes": 786_432, "disk_bytes": 1_048_576}
            },
        },
        scaling=(
            None
            if speedup is None
            else {
                "raw_passthrough": {"records_per_s": 7000.0},
                "hub": {**hub, "inputs_per_s": 50.0 * speedup, "machine_cores_busy": 1.93},
                "speedup": speedup,
            }
        ),
        state=state,
        machine={"cpus": 2},
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def _state(*, patients: int, peak: float, restart_s: float) -> dict[str, Any]:
    """A state phase's section as ``Bench.state_phase`` returns it."""
    restart = {
        "seconds_to_ready": restart_s,
        "seconds_to_receipts": restart_s - 0.5,
        "probe_inputs": 10,
        "changelog_records_read": 0,
        "rss_mb": 150.0,
        "peak_rss_mb": 160.0,
    }
    return {
        "template_patients": 500,
        "patients_in_state": patients,
        "copies": patients // 500,
        "records_written": 3_600_000,
        "bytes_written": 2_000 * 1024 * 1024,
        "write_seconds": 200.0,
        "rebuild": {
            **restart,
            "seconds_to_ready": 240.0,
            "changelog_records_read": 3_600_000,
            "peak_rss_mb": 250.0,
        },
        "restart": restart,
        "hub": {"inputs_per_s": 45.0, "worker_cpu_ms_per_input": 19.0, "inputs": 2600},
        "worker_peak_rss_mb_loaded": peak,
        "worker_peak_rss_mb": max(peak, 250.0),
        "table_disk_mb": 4100.0,
        "tables": {"share-state": {"keys": 81_000, "live_bytes": 510_000_000, "disk_bytes": 600_000_000}},
    }


#: The rows of issue 13's table, in its order.
MEASURES = [
    "hub inputs/s / raw passthrough records/s",
    "worker CPU per input (demo mix)",
    "records written per input",
    "p99 ingest -> recipient topic, at half the sustained load",
    "p99 ingest -> alert, at half the sustained load",
    "throughput, 1 -> 2 workers",
    "worker peak RSS with 100,000 patients in state",
    "restart to ready with that state",
]


def test_result_document_shape_is_json_and_carries_its_targets() -> None:
    document = _document()
    assert json.loads(json.dumps(document)) == document
    assert set(document) == {
        "schema",
        "command",
        "started_at",
        "machine",
        "config",
        "raw_passthrough",
        "hub",
        "latency",
        "memory",
        "scaling",
        "state",
        "profile",
        "samples",
        "targets",
    }
    assert document["schema"] == RESULT_SCHEMA
    assert document["started_at"] == "2026-01-01T00:00:00+00:00"
    assert [t["measure"] for t in document["targets"]] == MEASURES
    assert {tuple(t) for t in document["targets"]} == {
        ("measure", "target", "measured", "met", "note", "value")
    }
    assert [(t["target"], t["met"]) for t in document["targets"]] == [
        (">= 0.25", MISSED),
        ("<= 1.5 ms", MISSED),
        ("<= 12", MISSED),
        ("< 100 ms", MISSED),
        ("< 250 ms", NOT_MEASURED),  # no alert in the window: not measured, never met
        (">= 1.7x", MISSED),
        ("<= 300 MB", NOT_MEASURED),  # 500 patients say nothing about 100,000
        ("<= 30 s", NOT_MEASURED),
    ]


def _target_rows(table: str) -> list[list[str]]:
    """The rows of the targets table ``hub bench`` ends with, cells stripped; the header first."""
    lines = table.split("targets (issue 13):\n")[1].splitlines()
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("|")]


def test_the_run_ends_with_the_table_of_every_target() -> None:
    table = render_table(_document(alert_p99=80.0))
    summary, targets = table.split("targets (issue 13):\n")
    assert "hub, 2 workers" in summary
    assert "x1.60" in summary
    assert "3.5 MB on disk, 1,120 kB per 1,000 inputs; 3,125 keys, 0.8 MB live" in summary
    assert "worker CPU while idle" in summary and "6.9 % of a core" in summary
    assert (
        "(625 inputs); worker busy 62% meanwhile, 24.8 ms of CPU per input (81% in its event loop" in summary
    )
    assert (
        "ready in 12.0 s (10 new inputs end to end; receipts in 11.0 s), 0 changelog records read" in summary
    )
    lines = targets.splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == [
        "measure",
        "target",
        "measured",
        "met?",
    ]
    assert set(lines[1]) == {"|", "-"}
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:10]]
    assert [row[0] for row in rows] == MEASURES
    assert rows[0] == ["hub inputs/s / raw passthrough records/s", ">= 0.25", "0.050 (50.0 / 4,000)", "no"]
    assert rows[4] == ["p99 ingest -> alert, at half the sustained load", "< 250 ms", "80.0 ms (n=10)", "yes"]
    assert rows[6] == [
        "worker peak RSS with 100,000 patients in state",
        "<= 300 MB",
        "180 MB at 500 patients",
        "not measured (2)",
    ]
    assert rows[5][3] == "no (1)"  # why: how busy the machine was (test_targets_met_and_missed_at_the_limits)
    assert rows[7][3] == "not measured (3)"
    assert lines[11].startswith(
        "(2) throughput phase's worker with 500 patients in state; the target is for 100,000"
    )
    assert len({len(line) for line in lines[:10]}) == 1  # aligned columns


def test_targets_met_and_missed_at_the_limits() -> None:
    at_limits = _document(
        ratio=0.25,
        cpu_ms=1.5,
        records=12.0,
        recipient_p99=99.9,
        alert_p99=249.9,
        speedup=1.7,
        state=_state(patients=TARGET_PATIENTS_IN_STATE, peak=300.0, restart_s=30.0),
    )
    assert [t["met"] for t in at_limits["targets"]] == [MET] * 8
    # Restarted and loaded, the worker grew larger than while rebuilding (250 MB): that figure counts.
    assert at_limits["targets"][6]["measured"] == "300 MB at 100,000 patients"
    past = _document(
        ratio=0.2499,
        cpu_ms=1.51,
        records=12.1,
        recipient_p99=100.0,
        alert_p99=250.0,
        speedup=1.69,
        state=_state(patients=TARGET_PATIENTS_IN_STATE, peak=300.1, restart_s=30.1),
    )
    assert [t["met"] for t in past["targets"]] == [MISSED] * 8
    assert [t["value"] for t in past["targets"]] == [0.2499, 1.51, 12.1, 100.0, 250.0, 1.69, 300.1, 30.1]
    assert render_targets(past["targets"]).count("| no ") == 8
    # A missed speedup says how much of the machine the two workers' run had left.
    assert past["targets"][5]["note"] == "the two workers' run kept 1.93 of the machine's 2 cores busy"


def test_a_skipped_or_smaller_measure_is_never_met() -> None:
    document = _document(
        ratio=1.0,
        cpu_ms=0.1,
        records=1.0,
        recipient_p99=None,
        alert_p99=None,
        speedup=None,
        state=_state(patients=2_000, peak=10.0, restart_s=1.0),
    )
    verdicts = {t["measure"]: (t["measured"], t["met"], t["note"]) for t in document["targets"]}
    assert verdicts["p99 ingest -> recipient topic, at half the sustained load"] == (
        "-",
        NOT_MEASURED,
        "no sample in the latency window",
    )
    assert verdicts["throughput, 1 -> 2 workers"] == ("-", NOT_MEASURED, "skipped (--skip-scaling)")
    # The state phase's figures, shown, but a state of 2,000 patients does not meet a target for 100,000.
    measured, met, note = verdicts["worker peak RSS with 100,000 patients in state"]
    assert (measured, met) == ("250 MB at 2,000 patients (rebuilding it)", NOT_MEASURED)
    assert note.endswith("run with --state-patients 100000")
    assert verdicts["restart to ready with that state"][:2] == ("1.0 s at 2,000 patients", NOT_MEASURED)
    table = render_table(document)
    met = {row[0]: row[3] for row in _target_rows(table)}
    assert [met[m] for m in MEASURES] == [
        *("yes",) * 3,
        *("not measured (1)", "not measured (2)", "not measured (3)"),
        *("not measured (4)", "not measured (5)"),
    ]
    assert "state: patients in state" in table
    assert "4 copies of the throughput phase's state of 500 patients" in table
    assert "state: first start, rebuilt from the changelogs  ready in 240.0 s" in table


def test_a_copy_of_the_state_renames_every_key_to_a_patient_of_its_own() -> None:
    keys = ["pt-abc", "pt-abc#held", "gp-lyon|pt-abc", "a|b|pt-abc#held#2", "src/msg-1"]
    for key in keys:
        assert copy_key(key, 0) == key
        for copy in (1, 37):
            renamed = copy_key(key, copy)
            assert patient_of_table_key(renamed) == f"{patient_of_table_key(key)}~{copy}"
    assert copy_key("gp-lyon|pt-abc#held", 3) == "gp-lyon|pt-abc~3#held"
    copies = {copy_key(key, copy) for key in keys for copy in range(5)}
    assert len(copies) == len(keys) * 5  # no two entries of the state share a key
    assert copies_for(100_000, 500) == 200
    assert copies_for(2_000, 40) == 50
    assert copies_for(1_001, 500) == 3  # at least as many patients as asked
    with pytest.raises(ValueError, match="positive"):
        copies_for(0, 500)


def test_changelog_keys_are_read_and_written_as_faust_writes_them() -> None:
    raw = key_bytes("gp-lyon|pt-é~2")
    assert table_key(raw) == "gp-lyon|pt-é~2"
    for foreign in (b'{"a": 1}', b"17", b'"spaced" '):
        with pytest.raises(StateFormatError):
            table_key(foreign)
    with pytest.raises(StateFormatError):
        table_key(None)


def _receipt(message_id: str) -> bytes:
    return json.dumps({"message_id": message_id, "status": "accepted"}).encode()


def test_a_restarted_worker_is_ready_once_its_new_inputs_are_handled_end_to_end() -> None:
    watch = ProbeWatch(frozenset({"a-new", "b-new"}), "restart", copies_before=40)
    watch.receipt(_receipt("a-new"), 10.0)
    watch.receipt(_receipt("someone-else"), 10.5)
    watch.check(copies=41, now=11.0)  # a copy, but not every receipt yet
    assert math.isnan(watch.ready_at)
    watch.receipt(_receipt("b-new"), 12.0)
    watch.receipt(_receipt("a-new"), 12.5)  # redelivered: its first receipt counts
    watch.check(copies=40, now=12.6)
    assert watch.receipts_at == 12.0
    assert math.isnan(watch.ready_at)  # no copy yet
    watch.check(copies=42, now=13.0)
    assert (watch.ready_at, watch.shared) == (13.0, True)


def test_new_inputs_receipted_but_never_shared_are_ready_as_of_their_receipts() -> None:
    watch = ProbeWatch(frozenset({"a-new"}), "restart", copies_before=0)
    watch.receipt(_receipt("a-new"), 5.0)
    watch.check(copies=0, now=5.0 + PROBE_STALL_SECONDS)
    assert math.isnan(watch.ready_at)
    watch.check(copies=0, now=5.1 + PROBE_STALL_SECONDS)
    assert (watch.ready_at, watch.shared) == (5.0, False)


def test_a_new_input_without_receipt_while_the_others_have_theirs_fails_the_run() -> None:
    watch = ProbeWatch(frozenset({"a-new", "b-new", "c-new"}), "state restart", copies_before=0)
    watch.check(copies=0, now=1000.0)  # nothing yet: a worker still starting is not a loss
    watch.receipt(_receipt("a-new"), 1001.0)
    watch.check(copies=3, now=1001.0 + PROBE_STALL_SECONDS)
    with pytest.raises(
        BenchFailed, match=r"state restart: 2 of 3 new inputs have no receipt .*\(b-new, c-new\)"
    ):
        watch.check(copies=3, now=1001.1 + PROBE_STALL_SECONDS)


def test_a_latency_taken_at_a_rate_given_is_shown_and_never_compared() -> None:
    document = _document(
        ratio=0.05, cpu_ms=5.0, records=11.8, recipient_p99=60.0, alert_p99=80.0, speedup=None
    )
    document["config"]["latency_rate"] = 20.0
    rows = {t.measure: t for t in evaluate_targets(document)}
    recipient = rows["p99 ingest -> recipient topic, at half the sustained load"]
    assert (recipient.measured, recipient.met, recipient.value) == ("60.0 ms (n=10)", NOT_MEASURED, 60.0)
    assert recipient.note == "at 20 inputs/s (--latency-rate), not half the sustained load"
    assert rows["p99 ingest -> alert, at half the sustained load"].met == NOT_MEASURED
