"""The console's pure core: lag from offsets, rates from counters, the state document, DLQ entries."""

from __future__ import annotations

import json

from hub.console.broker import BrokerView, GroupState, PartitionLag, compute_lag, reject_of
from hub.console.scrape import Sample, Scrape, Target, parse
from hub.console.state import History, Point, healthy, point, snapshot

WORKER = Target("worker", "http://127.0.0.1:9464/metrics")
GATEWAY = Target("gateway", "http://127.0.0.1:8080/metrics")


def test_lag_is_end_minus_committed_and_counts_from_the_start_when_never_committed() -> None:
    """Committed 7 of 10 → 3; never committed, log from 2 to 5 → 3; committed past a truncation → 0."""
    rows = compute_lag(
        "hub",
        committed={("t", 0): 7, ("t", 2): 12},
        begin={("t", 0): 0, ("t", 1): 2, ("t", 2): 0},
        end={("t", 0): 10, ("t", 1): 5, ("t", 2): 11},
    )
    assert [(r.partition, r.committed, r.lag) for r in rows] == [(0, 7, 3), (1, None, 3), (2, 12, 0)]


def test_rates_are_per_second_and_a_restarted_worker_gives_zero_not_a_negative_rate() -> None:
    """10 records in 2 s → 5/s; the counter falling back to 3 (restart) → 0 for that interval."""
    history = History()
    for at, count, lag in ((100.0, 0.0, 0), (102.0, 10.0, 4), (104.0, 3.0, 1)):
        history.add(Point(at, {"ingest": count}, {"hub": lag}))
    history.add(Point(106.0, {"ingest": 3.0}, {}))  # the broker did not answer
    series = history.series()
    assert series["t"] == [102.0, 104.0, 106.0]
    assert series["throughput"] == {"ingest": [5.0, 0.0, 0.0]}
    assert series["lag"] == {"hub": [4, 1, None]}


def test_history_keeps_only_its_last_points() -> None:
    history = History(size=3)
    for at in range(10):
        history.add(Point(float(at), {}, {}))
    assert [p.at for p in history.points] == [7.0, 8.0, 9.0]


def scrape_of(target: Target, text: str) -> Scrape:
    return Scrape(target, True, None, parse(text))


WORKER_TEXT = """\
hub_stage_records_total{stage="ingest"} 12.0
hub_stage_failures_total{stage="share"} 0.0
hub_receipts_total{code="",status="accepted"} 9.0
hub_receipts_total{code="fhir.invalid",status="rejected"} 2.0
hub_receipts_total{code="signature.missing",status="rejected"} 1.0
hub_share_decisions_total{rule="care_team",verdict="permit"} 5.0
hub_share_decisions_total{rule="objection",verdict="deny"} 2.0
hub_alerts_total{network="onco",status="eligible"} 3.0
hub_table_keys{table="share-state"} 4.0
"""
GATEWAY_TEXT = """\
hub_gateway_alerts{state="new"} 1.0
hub_gateway_alerts{state="read"} 1.0
hub_gateway_alerts{state="dismissed"} 1.0
"""


def test_the_state_document_sums_workers_and_reads_the_gateway() -> None:
    """Two workers' counters add up; alerts sent come from workers, their states from the gateway."""
    second = Target("worker", "http://127.0.0.1:9465/metrics")
    scrapes = [
        scrape_of(WORKER, WORKER_TEXT),
        scrape_of(second, WORKER_TEXT),
        scrape_of(GATEWAY, GATEWAY_TEXT),
    ]
    view = BrokerView(
        "b:9092",
        True,
        brokers=1,
        expected_topics=("t",),
        lag=(PartitionLag("hub", "t", 0, 5, 9, 4),),
        groups=(GroupState("hub", "Stable", 2),),
    )
    history = History()
    history.add(point(1.0, scrapes, view))
    document = snapshot(
        generated_at="now",
        refresh_seconds=2.0,
        history=history,
        scrapes=scrapes,
        view=view,
        dlq_counts={"fhir.invalid": 2},
        dlq_sources={"gp-a": 2},
        latest=[],
    )
    assert document["receipts"] == {"accepted": 18.0, "duplicate": 0.0, "rejected": 6.0}
    assert document["share"] == {
        "care_team": {"permit": 10.0, "deny": 0.0},
        "objection": {"permit": 0.0, "deny": 4.0},
    }
    assert document["alerts"] == {"sent": 6.0, "unread": 1.0, "read": 1.0, "dismissed": 1.0}
    assert document["tables"] == {"share-state": 8.0}
    assert document["lag_partitions"] == [{"group": "hub", "topic": "t", "partition": 0, "lag": 4}]
    assert healthy(document)
    json.dumps(document)  # the page receives it as JSON


def test_a_down_target_a_missing_topic_or_a_stage_failure_is_not_healthy() -> None:
    view = BrokerView("b:9092", True, brokers=1, expected_topics=("t",))
    base = {"generated_at": "now", "refresh_seconds": 2.0, "history": History(), "view": view}
    extra = {"dlq_counts": {}, "dlq_sources": {}, "latest": []}
    up = [scrape_of(WORKER, WORKER_TEXT)]
    assert healthy(snapshot(scrapes=up, **base, **extra))  # type: ignore[arg-type]
    down = [Scrape(WORKER, False, "URLError")]
    assert not healthy(snapshot(scrapes=down, **base, **extra))  # type: ignore[arg-type]
    missing = BrokerView("b:9092", True, brokers=1, expected_topics=("t",), missing_topics=("t",))
    assert not healthy(snapshot(scrapes=up, **{**base, "view": missing}, **extra))  # type: ignore[arg-type]
    failing = [scrape_of(WORKER, 'hub_stage_failures_total{stage="share"} 1.0\n')]
    assert not healthy(snapshot(scrapes=failing, **base, **extra))  # type: ignore[arg-type]


def test_a_dlq_entry_keeps_code_source_time_and_place_only() -> None:
    """Detail, message id and unprintable source ids never reach the console."""
    headers = [
        ("hub-source", b"gp-a"),
        ("hub-message-id", b"Zephyrine-msg"),
        ("hub-error-code", b"fhir.invalid"),
        ("hub-error-detail", b"Patient.name 'Zephyrine' is invalid"),
    ]
    reject = reject_of("hub.dlq.v1", 1, 42, 1_795_000_000_000, headers)
    assert (reject.code, reject.source, reject.where) == ("fhir.invalid", "gp-a", "hub.dlq.v1/1/42")
    assert "Zephyrine" not in json.dumps(vars(reject))
    odd = reject_of("hub.dlq.v1", 0, 0, 0, [("hub-source", b"bad\nsource")])
    assert (odd.code, odd.source) == ("(none)", "(unknown)")


def test_samples_are_summed_by_labels() -> None:
    found = Scrape(
        WORKER, True, None, (Sample("x_total", (("a", "1"),), 2.0), Sample("x_total", (("a", "2"),), 3.0))
    )
    assert found.total("x_total") == 5.0 and found.total("x_total", a="2") == 3.0
    assert found.by("x_total", "a") == {("1",): 2.0, ("2",): 3.0}
