"""Shared builders for the unit tier: two registered sources with throwaway secrets, an ingest context,
signed ``hub.ingest.v1`` records, and the FHIR fixtures under ``tests/fixtures/fhir``.

Builders are handed out as fixtures (``make_record``, ``fhir``), so test modules never import this file.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.ingest.outcome import IngestRecord, KafkaCoordinates
from hub.ingest.pipeline import IngestContext
from hub.ingest.signature import sign
from hub.sources.registry import Source, SourceRegistry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
SYNTHEA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "synthea-r4"

GP_ID = "gp-cabinet-lamentin"
GP_SECRET = b"gp-unit-test-secret-0123456789abcdef"
#: The GP software's own patient identifier system (its IPP), as registered for the source.
GP_LOCAL_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.9999"
HOSPITAL_ID = "chu-guadeloupe"
HOSPITAL_SECRET = b"chu-unit-test-secret-fedcba9876543210"
PSEUDONYM_KEY = b"unit-test-pseudonym-key-0123456789abcdef"
#: The hub's clock in every unit test, and the Kafka timestamp of every record built here.
NOW = datetime(2024, 5, 3, 10, 0, tzinfo=UTC)
ORIGIN = KafkaCoordinates("hub.ingest.v1", 2, 1234)

RecordBuilder = Callable[..., IngestRecord]


def build_record(
    value: bytes | dict[str, Any] | None,
    *,
    source_id: str | None = GP_ID,
    secret: bytes = GP_SECRET,
    signed: bool = True,
    sign_as: str | None = None,
    at: datetime | int = NOW,
    content_type: str | None = None,
    message_id: str | None = None,
    headers: Iterable[tuple[str, bytes]] = (),
    origin: KafkaCoordinates = ORIGIN,
    timestamp: datetime = NOW,
) -> IngestRecord:
    """One ingest record; a dict value is sent as compact JSON, signed with ``secret`` unless not ``signed``.

    ``sign_as`` signs for another source id than the ``hub-source`` header claims (replay attempts).
    """
    body = json.dumps(value).encode() if isinstance(value, dict) else value
    record_headers: list[tuple[str, bytes]] = []
    if source_id is not None:
        record_headers.append(("hub-source", source_id.encode()))
    if signed:
        seconds = at if isinstance(at, int) else int(at.timestamp())
        signature = sign(secret, sign_as or source_id or "", body or b"", seconds)
        record_headers.append(("hub-signature", signature.encode()))
    if content_type is not None:
        record_headers.append(("content-type", content_type.encode()))
    if message_id is not None:
        record_headers.append(("hub-message-id", message_id.encode()))
    record_headers.extend(headers)
    return IngestRecord(body, tuple(record_headers), origin, timestamp)


def make_source(
    source_id: str = GP_ID,
    *,
    secrets: tuple[bytes, ...] = (GP_SECRET,),
    kind: str = "gp",
    time_zone: str = "America/Guadeloupe",
    patient_identifier_systems: tuple[str, ...] = (GP_LOCAL_SYSTEM,),
    default_fhir_version: str = "4.0",
    organization_value: str = "970000001",
) -> Source:
    """A source profile as the registry would build it."""
    return Source(
        id=source_id,
        kind=kind,
        organization_system="urn:oid:1.2.250.1.71.4.2.2",
        organization_value=organization_value,
        time_zone=ZoneInfo(time_zone),
        patient_identifier_systems=patient_identifier_systems,
        default_fhir_version=default_fhir_version,
        software="unit-test",
        secrets=secrets,
    )


@cache
def _fixture_text(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def now() -> datetime:
    """The hub's clock."""
    return NOW


@pytest.fixture
def gp() -> Source:
    """A GP practice in Guadeloupe (naive times are read as UTC-4), one key."""
    return make_source()


@pytest.fixture
def hospital() -> Source:
    """A hospital in Paris time, with its own key and patient identifier system."""
    return make_source(
        HOSPITAL_ID,
        secrets=(HOSPITAL_SECRET,),
        kind="hospital",
        time_zone="Europe/Paris",
        patient_identifier_systems=("urn:oid:1.2.250.1.71.4.2.7.970100000",),
        organization_value="970100000",
    )


@pytest.fixture
def registry(gp: Source, hospital: Source) -> SourceRegistry:
    """Both sources, registered."""
    return SourceRegistry({gp.id: gp, hospital.id: hospital})


@pytest.fixture
def context(registry: SourceRegistry) -> IngestContext:
    """The ingest context of the unit tests; the fixtures' INS are test INS (.10), so they are allowed."""
    return IngestContext(registry=registry, pseudonym_key=PSEUDONYM_KEY, allow_test_ins=True)


@pytest.fixture
def make_record() -> RecordBuilder:
    """The record builder (see :func:`build_record`)."""
    return build_record


@pytest.fixture
def fhir() -> Callable[[str], dict[str, Any]]:
    """Loader of a JSON fixture by file name; each call returns a fresh copy to modify."""

    def load(name: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(_fixture_text(name))
        return copy.deepcopy(document)

    return load


@pytest.fixture
def fixture_bytes() -> Callable[[str], bytes]:
    """The raw bytes of a fixture file (for XML, and for signing exactly what is on disk)."""
    return _fixture_text


@pytest.fixture
def synthea_bundle_path() -> Path:
    """The smallest Synthea R4 bundle of the shared data set; skips only when the folder is absent."""
    if not SYNTHEA_DIR.is_dir():
        pytest.skip(f"Synthea data folder {SYNTHEA_DIR} is absent")
    files = sorted(SYNTHEA_DIR.glob("*.json"), key=lambda path: path.stat().st_size)
    if not files:
        pytest.skip(f"no Synthea bundle in {SYNTHEA_DIR}")
    return files[0]
