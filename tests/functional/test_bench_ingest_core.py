"""The ingest-core benchmark (bench/ingest_core.py) measures what it says: every input of each FHIR
version through the real core, accepted, and one outcome hash that changes when a decision does.

Not a timed test: the figures come from ``python -m bench.ingest_core`` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

from dataclasses import replace

from bench.ingest_core import (
    SYNTHEA_DIR,
    demo_inputs,
    idle_gap_costs,
    ingest_context,
    measure,
    render,
    synthea_inputs,
)
from hub.ingest.outcome import IngestRecord


def test_every_version_and_source_of_the_bench_is_accepted_and_hashed() -> None:
    inputs = list(demo_inputs(patients=6, seed=7))
    if SYNTHEA_DIR.is_dir():
        inputs += list(synthea_inputs(files=1, entries_per_bundle=8))[:3]
    result = measure(inputs, ingest_context(), rounds=1)
    assert {"demo R4 json", "demo R5 json", "demo STU3 xml"} <= set(result["groups"])
    for group, row in result["groups"].items():
        assert row["outcomes"] == {"accepted": row["inputs"]}, group
        assert row["events"] > 0 and row["core_us_mean"] > 0, group
    assert result["outcomes"] in render(result)


def test_the_outcome_hash_changes_when_one_decision_does() -> None:
    inputs = list(demo_inputs(patients=6, seed=7))
    context = ingest_context()
    tampered = inputs[0].record
    broken = replace(
        inputs[0], record=IngestRecord(b"{}", tampered.headers, tampered.origin, tampered.timestamp)
    )
    assert measure(inputs, context, rounds=1)["outcomes"] == measure(inputs, context, rounds=1)["outcomes"]
    assert (
        measure([broken, *inputs[1:]], context, rounds=1)["outcomes"]
        != measure(inputs, context, rounds=1)["outcomes"]
    )


def test_idle_gaps_time_each_input_once_per_gap_and_round() -> None:
    inputs = list(demo_inputs(2, 7))[:3]
    costs = idle_gap_costs(inputs, ingest_context(), [0, 1], rounds=2)
    assert list(costs) == ["0 ms", "1 ms"]
    assert all(len(per_round) == 2 and all(c > 0 for c in per_round) for per_round in costs.values())
