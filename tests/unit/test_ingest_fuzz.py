"""Property: bad input is a value, not a crash (DESIGN.md 4), for anything a sender can put on ingest.

Hypothesis drives the pure ingest core (hub/ingest/pipeline.py) and the router that turns its outcome
into Kafka records (hub/streams/routing.py) with random bytes, truncated and mutated Synthea FHIR, huge
values, deep nesting and wrong or missing headers. No Kafka: this is the fast half of the fuzzing; the
other half sends the same kind of inputs through a real worker (tests/integration/test_fuzz_ingest.py).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given

from hub.errors import ErrorCode
from hub.ingest.outcome import Accepted, IngestRecord, KafkaCoordinates, Rejected
from hub.ingest.pipeline import IngestContext, process_ingest
from hub.ingest.receipts import DLQ_EXCERPT_BYTES
from hub.ingest.signature import sign
from hub.sources.registry import Source, SourceRegistry
from hub.streams.routing import IngestRouter
from hub.topics import TopicNames
from tests.fuzzing import SYNTHEA_SYSTEM, FuzzInput, fuzz_inputs, headers_for

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SECRET = b"fuzz-unit-secret-0123456789abcdef0123"
SOURCE = Source(
    id="synthea",
    kind="hospital",
    organization_system="urn:oid:1.2.250.1.71.4.2.2",
    organization_value="330781196",
    time_zone=ZoneInfo("Europe/Paris"),
    patient_identifier_systems=(SYNTHEA_SYSTEM,),
    default_fhir_version="4.0",
    software="fuzz",
    secrets=(SECRET,),
)
CONTEXT = IngestContext(
    registry=SourceRegistry({SOURCE.id: SOURCE}), pseudonym_key=b"fuzz-pseudonym-key-0123456789"
)
TOPICS = TopicNames()
#: What the examples turned into, checked at the end: the fuzzing reached past the first checks.
SEEN: Counter[str] = Counter()
SUMMARY = Path(__file__).resolve().parents[2] / "test-output" / "fuzz-ingest.json"


def record(case: FuzzInput) -> IngestRecord:
    headers = headers_for(case, source_id=SOURCE.id, secret=SECRET, now=int(NOW.timestamp()), sign=sign)
    return IngestRecord(case.value, tuple(headers), KafkaCoordinates("hub.ingest.v1", 0, 7), NOW)


# How many examples, and whether they are the same on every run, is the profile's (tests/conftest.py):
# 300 fixed ones in `make test`, 20,000 random ones in `make fuzz`.
@given(fuzz_inputs())
def test_every_fuzzed_input_is_an_outcome_and_every_output_is_strict_json(case: FuzzInput) -> None:
    """process_ingest never raises and never fails internally; the records it leads to are strict JSON."""
    outcome = process_ingest(record(case), CONTEXT, now=NOW)
    assert isinstance(outcome, Accepted | Rejected)
    if isinstance(outcome, Rejected):
        assert outcome.code is not ErrorCode.INTERNAL
        assert "x" * 100 not in outcome.detail, "a reject's detail must not echo the input"
    SEEN[f"{case.kind}:{outcome.code if isinstance(outcome, Rejected) else 'accepted'}"] += 1
    for out in IngestRouter(CONTEXT, TOPICS).route(record(case), b"k", now=NOW):
        if out.topic == TOPICS.dlq:
            whole = dict(out.headers).get("hub-dlq-kept") is None
            kept = case.value if whole else (case.value or b"")[:DLQ_EXCERPT_BYTES]
            assert out.value == kept, "the DLQ keeps the original bytes, or past its limit their start"
            continue
        # Every consumer must be able to read what the hub writes: no NaN or Infinity tokens.
        json.loads(out.value or b"", parse_constant=_reject_constant)


def _reject_constant(token: str) -> None:
    raise AssertionError(f"the hub wrote the non-JSON token {token}")


def test_the_fuzzing_reached_every_stage() -> None:
    """The generated inputs were accepted as well as rejected at several stages (runs after the fuzz test)."""
    if not SEEN:  # run alone: generate again, quickly
        test_every_fuzzed_input_is_an_outcome_and_every_output_is_strict_json()
    outcomes: Counter[str] = Counter()
    for key, count in SEEN.items():
        outcomes[key.split(":", 1)[1]] += count
    summary = {"inputs": sum(outcomes.values()), "outcomes": dict(sorted(outcomes.items()))}
    # `make fuzz` prints this file: the figure docs/INGEST.md quotes.
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps(summary, indent=1) + "\n")
    assert outcomes["accepted"] > 0
    assert len(outcomes) >= 5, outcomes


def test_the_fuzzed_glucose_of_ten_to_the_400_is_accepted_unconverted() -> None:
    """`make fuzz` drew a Synthea glucose of 10^400 mg/dL: its conversion to mmol/L overflowed a float, an
    internal error. It is accepted as sent now, with a ``unit-unconvertible`` step, and every record the
    router writes for it is strict JSON."""
    patient = "urn:uuid:6f8ccac9-41a3-42a2-a97b-06bfc0a91c26"
    glucose = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2012-01-04T20:51:42+00:00",
        "valueQuantity": {
            "value": 10**400,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": SYNTHEA_SYSTEM, "value": "668"}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": glucose, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    case = FuzzInput(json.dumps(bundle).encode(), "good", None, None, (), "mutated")
    outcome = process_ingest(record(case), CONTEXT, now=NOW)
    assert isinstance(outcome, Accepted), outcome
    assert any("unit-unconvertible:2339-0:mg/dL" in event.steps for event in outcome.events)
    test_every_fuzzed_input_is_an_outcome_and_every_output_is_strict_json.hypothesis.inner_test(case)  # type: ignore[attr-defined]
