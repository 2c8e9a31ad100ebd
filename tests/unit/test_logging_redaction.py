"""The log-redaction proof: a patient name, an INS and a source secret never reach the log output,
whether logged through structlog or through a library's stdlib logger (hub/logging.py)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from hub.ingest.outcome import Accepted, IngestRecord, KafkaCoordinates
from hub.logging import (
    REDACTED,
    bind_kafka_coordinates,
    clear_bound,
    configure_logging,
    get_logger,
    register_secret,
)
from hub.pathway.event import PathwayEvent

FAMILY = "DUPONTEL"
GIVEN = "Jeanne-Éloïse"
INS_SPACED = "1 85 05 78 006 084 36"
INS_COMPACT = "185057800608436"
SECRET = "gp-log-secret-7f3a9c1e5b2d4f60"
FORBIDDEN = (FAMILY, GIVEN, INS_SPACED, INS_COMPACT, SECRET)

PATIENT = {
    "resourceType": "Patient",
    "id": "pat-dupont",
    "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": INS_COMPACT}],
    "name": [{"family": FAMILY, "given": [GIVEN]}],
    "birthDate": "1948-03-12",
}


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    """Logging configured as in production (JSON) into a buffer; the old configuration restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("aiokafka", "kafka", "faust", "mode")}
    buffer = io.StringIO()
    configure_logging("debug", json=True, stream=buffer)
    register_secret(SECRET)
    try:
        yield buffer
    finally:
        clear_bound()
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def assert_clean(buffer: io.StringIO) -> None:
    output = buffer.getvalue()
    assert output, "nothing was logged"
    for text in FORBIDDEN:
        assert text not in output, f"{text!r} reached the log output"


def test_nothing_sensitive_reaches_the_output(captured_log: io.StringIO) -> None:
    """Names under name/family, a Patient, INS and secret in text: none reach structlog or stdlib output."""
    bind_kafka_coordinates("hub.ingest.v1", 4, 98765)
    log = get_logger("hub.ingest")
    log.info("patient received", name=f"{GIVEN} {FAMILY}", family=FAMILY, given=[GIVEN])
    log.info("patient resource", resource=PATIENT)
    log.warning(f"INS {INS_SPACED} (compact {INS_COMPACT}) does not match")
    log.error(f"signature check with key {SECRET} failed", source="gp-cabinet-lamentin")
    logging.getLogger("aiokafka").warning(
        f"fetch error for patient INS {INS_SPACED} / {INS_COMPACT}, sasl password {SECRET}"
    )
    logging.getLogger("aiokafka").warning("retrying with %s for %s", SECRET, INS_COMPACT)
    assert_clean(captured_log)

    records = lines(captured_log)
    assert len(records) == 6
    for record in records:
        assert (record["topic"], record["partition"], record["offset"]) == ("hub.ingest.v1", 4, 98765)
    assert records[0]["name"] == records[0]["family"] == records[0]["given"] == REDACTED
    assert records[1]["resource"] == REDACTED
    assert records[2]["event"] == f"INS {REDACTED} (compact {REDACTED}) does not match"
    assert records[3]["event"] == f"signature check with key {REDACTED} failed"
    assert records[3]["source"] == "gp-cabinet-lamentin"  # non-sensitive context survives
    assert records[4]["logger"] == "aiokafka"
    assert records[5]["event"] == f"retrying with {REDACTED} for {REDACTED}"


def test_patient_nested_under_an_innocent_key(captured_log: io.StringIO) -> None:
    """A Patient logged under any key (or in a list) has its name, identifiers and birth date removed."""
    log = get_logger("hub.normalise")
    log.info("linked", patient=PATIENT, candidates=[PATIENT, {"entry": {"resource": PATIENT}}])
    assert_clean(captured_log)
    [record] = lines(captured_log)
    assert record["patient"]["name"] == REDACTED
    assert record["patient"]["identifier"] == REDACTED
    assert record["patient"]["birthDate"] == REDACTED
    assert record["patient"]["resourceType"] == "Patient"


def test_objects_logged_as_values_are_scrubbed(captured_log: io.StringIO) -> None:
    """A record, an outcome or an event passed as a value is scrubbed field by field, not printed by repr."""
    body = json.dumps(PATIENT).encode()
    record = IngestRecord(
        body,
        (("hub-source", b"gp-cabinet-lamentin"), ("hub-signature", SECRET.encode())),
        KafkaCoordinates("hub.ingest.v1", 0, 7),
        datetime(2024, 5, 3, 10, 0, tzinfo=UTC),
    )
    event = PathwayEvent(
        event_id="e-1",
        patient_id="pt-abc",
        kind="patient",
        occurred_at="2024-05-03T10:00:00.000Z",
        recorded_at="2024-05-03T10:00:00.000Z",
        source_id="gp-cabinet-lamentin",
        source_organization={"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "970000001"},
        resource=PATIENT,
        ingest={"topic": "hub.ingest.v1", "partition": 0, "offset": 7},
    )
    log = get_logger("hub.streams")
    log.warning("poison record", record=record)
    log.info("accepted", outcome=Accepted("gp-cabinet-lamentin", None, (event,)))
    log.error("bad key", error=ValueError(f"key {SECRET} rejected for {INS_COMPACT}"))
    assert_clean(captured_log)
    first = lines(captured_log)[0]
    assert first["record"]["origin"] == {"topic": "hub.ingest.v1", "partition": 0, "offset": 7}


def test_exception_tracebacks_are_scrubbed(captured_log: io.StringIO) -> None:
    """An exception message carrying a secret or an INS is scrubbed in the rendered traceback."""

    def fail() -> None:
        raise RuntimeError(f"broker refused key {SECRET} while sending {INS_SPACED}")

    for logger in (get_logger("hub.streams").exception, logging.getLogger("aiokafka").exception):
        try:
            fail()
        except RuntimeError:
            logger("send failed")
    assert_clean(captured_log)
    records = lines(captured_log)
    assert all("RuntimeError" in record["exception"] for record in records)


def test_stdlib_library_logs_carry_kafka_coordinates(captured_log: io.StringIO) -> None:
    """A library's stdlib line logged while a record is processed names topic, partition and offset."""
    bind_kafka_coordinates("hub.ingest.v1", 1, 42)
    logging.getLogger("aiokafka").warning("heartbeat failed")
    clear_bound()
    logging.getLogger("aiokafka").warning("after the record")
    inside, after = lines(captured_log)
    assert (inside["topic"], inside["partition"], inside["offset"]) == ("hub.ingest.v1", 1, 42)
    assert inside["event"] == "heartbeat failed"
    assert "topic" not in after


@pytest.mark.parametrize(
    "render",
    [lambda log: log.info("x", note=f"ins {INS_COMPACT}"), lambda log: log.info("x", family=FAMILY)],
    ids=["free text", "field"],
)
def test_console_renderer_is_redacted_too(render: Callable[[Any], None]) -> None:
    """The human-readable (non-JSON) renderer gets the same redaction."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    try:
        configure_logging("info", json=False, stream=buffer)
        render(get_logger("hub.cli"))
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert buffer.getvalue()
    assert INS_COMPACT not in buffer.getvalue()
    assert FAMILY not in buffer.getvalue()


def test_ordinary_numbers_are_not_masked(captured_log: io.StringIO) -> None:
    """Offsets, counts and short numbers are kept: only INS-shaped runs are masked."""
    get_logger("hub.bench").info("throughput 12345 events/s over 6 partitions at offset 987654")
    [record] = lines(captured_log)
    assert record["event"] == "throughput 12345 events/s over 6 partitions at offset 987654"
