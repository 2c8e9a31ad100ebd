"""The benchmark's pure helpers: percentiles, pacing, matching, targets and the result document.

Not a timed test and no broker: the figures themselves come from `hub bench` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bench.run import (
    RESULT_SCHEMA,
    Arrivals,
    Passthrough,
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
    result_document,
    send_offset,
    split_feed,
    steady_rate,
)


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


def _document(*, ratio: float, recipient_p99: float | None, patients: int, peak: float) -> dict[str, Any]:
    recipient = (
        {"count": 0} if recipient_p99 is None else {"count": 10, "p50": 1, "p95": 2, "p99": recipient_p99}
    )
    hub = {
        "inputs_per_s": 50.0,
        "inputs_per_s_to_receipts": 150.0,
        "steady_inputs_per_s": 300.0,
        "pathway_events_per_s": 120.0,
        "pathway_events": 6000,
        "recipient_copies": 5500,
        "alerts": 60,
        "records_written_per_input": 20.5,
        "records_written_per_s": 1025.0,
        "worker_cpu_ms_per_input": 18.2,
        "worker_cpu_utilisation": 0.93,
        "broker_cpu_seconds": 21.0,
        "other_cpu_seconds": 0.4,
        "ratio_to_raw": ratio,
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
            "receipt_ms": {"count": 625, "p50": 30.0, "p95": 90.0, "p99": 120.0, "max": 130.0},
            "recipient_ms": recipient,
            "alert_ms": {"count": 0},
        },
        memory={
            "worker_peak_rss_mb": peak,
            "worker_rss_ready_mb": 90.0,
            "worker_rss_end_mb": 150.0,
            "patients_in_state": patients,
            "estimated_rss_mb_at_target_patients": 12345,
            "restart": {"seconds_to_ready": 12.0, "changelog_records_read": 0, "rss_mb": 130.0},
            "table_store": "rocksdb://",
            "table_disk_mb": 3.5,
            "table_disk_kb_per_1000_inputs": 1120,
            "tables": {
                "identity-seen-messages": {"keys": 3125, "live_bytes": 786_432, "disk_bytes": 1_048_576}
            },
        },
        scaling={
            "raw_passthrough": {"records_per_s": 7000.0},
            "hub": {**hub, "inputs_per_s": 80.0},
            "speedup": 1.6,
        },
        machine={"cpus": 2},
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_result_document_shape_is_json_and_carries_its_targets() -> None:
    document = _document(ratio=0.05, recipient_p99=200.0, patients=500, peak=180.0)
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
        "profile",
        "targets",
    }
    assert document["schema"] == RESULT_SCHEMA
    assert document["started_at"] == "2026-01-01T00:00:00+00:00"
    verdicts = {t["name"]: t["met"] for t in document["targets"]}
    assert verdicts == {
        "hub throughput / raw passthrough": False,
        "p99 ingest -> recipient topic": True,
        "p99 ingest -> alert": None,  # no alert in the window: not shown, not met
        "worker peak RSS, 100,000 patients in state": None,  # 500 patients say nothing about 100,000
    }
    memory = next(t for t in document["targets"] if t["name"].startswith("worker peak RSS"))
    assert "linear extrapolation of this run: 12,345 MB" in memory["note"]
    table = render_table(document)
    assert "MISSED" in table
    assert "hub, 2 workers" in table
    assert "x1.60" in table
    assert "3.5 MB on disk, 1,120 kB per 1,000 inputs; 3,125 keys, 0.8 MB live" in table
    assert "ready in 12 s, 0 changelog records read, 130 MB RSS" in table


def test_targets_met_and_missed_at_the_limits() -> None:
    met = evaluate_targets(_document(ratio=0.10, recipient_p99=249.9, patients=100_000, peak=499.0))
    assert [t.met for t in met] == [True, True, None, True]
    missed = evaluate_targets(_document(ratio=0.099, recipient_p99=250.0, patients=100_000, peak=500.0))
    assert [t.met for t in missed] == [False, False, None, False]
    assert [t.measured for t in met] == ["0.100", "249.9 ms", "none measured", "499 MB with 100,000 patients"]
