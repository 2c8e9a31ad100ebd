"""One vocabulary for records: header names, the JSON codec, topic/changelog/group names and the AuditEvent
vocabulary are each spelled in one module (hub.records, hub.topics, hub.audit_vocabulary), and read the same
way everywhere."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub import audit_vocabulary as vocabulary
from hub import records
from hub.errors import ErrorCode
from hub.ingest.outcome import IngestRecord, KafkaCoordinates, Rejected
from hub.ingest.receipts import dlq_record
from hub.records import (
    CRYPTO_ERROR_HEADER,
    ERROR_CODE_HEADER,
    ORIGIN_HEADER,
    SOURCE_HEADER,
    decode_json,
    encode_headers,
    encode_json,
    header,
    header_dict,
    headers_of,
)
from hub.topics import TopicNames

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = KafkaCoordinates("hub.ingest.v1", 3, 7)


def _code_strings(path: Path) -> Iterator[str]:
    """Every string constant of a module that is not a docstring (f-strings' literal parts included)."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def _where_spelled(predicate: object) -> dict[str, set[str]]:
    """Each module of hub/ and bench/ → the string constants in it for which ``predicate`` holds."""
    assert callable(predicate)
    found: dict[str, set[str]] = {}
    for path in sorted([*(ROOT / "hub").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        hits = {text for text in _code_strings(path) if predicate(text)}
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    return found


# -- spelled once ------------------------------------------------------------------------------------------


def test_every_kafka_header_name_is_spelled_in_hub_records_only() -> None:
    """No module of hub/ or bench/ but hub/records.py writes a header name as a string of its own."""
    names = {value for name, value in vars(records).items() if name.endswith("_HEADER")}
    assert {"hub-source", "hub-signature", "hub-error-code", "hub-enc", "hub-audit-mac"} <= names
    assert _where_spelled(names.__contains__) == {"hub/records.py": names}


def test_the_audit_event_vocabulary_is_defined_in_one_module() -> None:
    """The DICOM and HL7 code systems, the hub's audit identifier systems and the subtypes are defined in
    hub/audit_vocabulary.py only: the consent package, the key service, ops, crypto and the audit chain
    import them instead of spelling them again."""
    systems = {value for name, value in vars(vocabulary).items() if name == "DCM" or name.endswith("_SYSTEM")}
    subtypes = {
        vocabulary.SHARE_DECISIONS,
        vocabulary.SHARE_DECISION,
        vocabulary.INGEST_REJECT,
        vocabulary.CONSENT_REJECTED,
        vocabulary.KEY_RELEASE,
        vocabulary.KEY_REFUSAL,
        vocabulary.KEY_ROTATION,
        vocabulary.DLQ_REPLAY,
        vocabulary.PATIENT_ERASURE,
        vocabulary.AUDIT_CHAIN_BREAK,
    }
    # The demo's CareTeam participants use HL7's ParticipationType too: FHIR data, not the audit's.
    defined = (systems - {vocabulary.PARTICIPATION_TYPE_SYSTEM}) | subtypes
    assert "http://dicom.nema.org/resources/ontology/DCM" in defined
    spelled = _where_spelled(defined.__contains__)
    assert spelled.pop("hub/audit_vocabulary.py") == defined
    assert spelled == {}, "AuditEvent vocabulary spelled outside hub/audit_vocabulary.py"


def test_changelog_and_consumer_group_names_are_spelled_in_hub_topics_only() -> None:
    """faust's ``-changelog`` suffix and the gateway's group suffix are written in hub/topics.py only."""
    spelled = _where_spelled(lambda text: "-changelog" in text or text == "-gateway")
    assert spelled == {"hub/topics.py": {"-changelog", "-gateway"}}


def test_topic_names_give_changelogs_groups_and_recipient_topics() -> None:
    """The contract's names (docs/KAFKA.md): ``<app id>-<table>-changelog``, ``<app id>-gateway``, the
    workers' group is the app id, and ``hub.pathway.<recipient>.v1`` under the prefix."""
    names = TopicNames("t.")
    assert TopicNames.changelog("hub", "share-state") == "hub-share-state-changelog"
    assert TopicNames.gateway_group("hub") == "hub-gateway"
    assert TopicNames.worker_group("hub") == "hub"
    assert names.recipient_pathway("hosp-a") == "t.hub.pathway.hosp-a.v1"
    assert names.recipient_of("t.hub.pathway.hosp-a.v1") == "hosp-a"
    assert names.recipient_of("t.hub.pathway.v1") is None
    assert names.recipient_of("hub.pathway.hosp-a.v1") is None


# -- headers -------------------------------------------------------------------------------------------------


def test_a_source_header_is_read_at_its_first_occurrence_whatever_its_case() -> None:
    """What a source sends (hub-source, hub-message-id) is read as ingest reads it: first, any case."""
    pairs = (("HUB-Source", b"gp-a"), ("hub-source", b"gp-b"))
    assert header(pairs, SOURCE_HEADER) == "gp-a"
    assert header((), SOURCE_HEADER) is None
    assert header((("hub-source", b"\xff"),), SOURCE_HEADER) == "\ufffd"


def test_a_header_the_hub_appends_is_read_at_its_last_occurrence() -> None:
    """A sender's own hub-error-code or hub-origin never stands in for the hub's, which comes after it."""
    forged = (
        ("hub-source", b"gp-a"),
        (ERROR_CODE_HEADER, b"nothing.wrong"),
        (ORIGIN_HEADER, b"hub.ingest.v1/0/0"),
    )
    rejected = Rejected(ErrorCode.FHIR_INVALID, "bad", "gp-a", None)
    dead = dlq_record(b"{}", forged, rejected, ORIGIN, limit=1 << 20)
    assert header(dead.headers, ERROR_CODE_HEADER) == "fhir.invalid"
    assert header(dead.headers, ORIGIN_HEADER) == "hub.ingest.v1/3/7"
    assert header_dict(dead.headers) == {
        "hub-source": "gp-a",
        ERROR_CODE_HEADER: "fhir.invalid",
        "hub-error-detail": "bad",
        ORIGIN_HEADER: "hub.ingest.v1/3/7",
    }


def test_an_ingest_record_reads_its_headers_as_every_reader_does() -> None:
    """IngestRecord.header is hub.records.header: the DLQ, trace and the console name the same source."""
    pairs = (("hub-source", b"gp-a"), ("hub-source", b"gp-b"), (CRYPTO_ERROR_HEADER, b"x"))
    record = IngestRecord(b"{}", pairs, ORIGIN, datetime(2026, 1, 1, tzinfo=UTC))
    assert record.header("Hub-Source") == header(pairs, SOURCE_HEADER) == "gp-a"


def test_client_headers_become_pairs_of_name_and_bytes() -> None:
    """faust's dict or list and kafka-python's list, with a header that has no value, read alike."""
    assert headers_of(None) == ()
    assert headers_of({"a": b"1", "b": None}) == (("a", b"1"), ("b", b""))
    assert headers_of([("a", b"1"), ("b", None)]) == (("a", b"1"), ("b", b""))
    assert encode_headers({"a": "é", "b": b"\x00"}) == (("a", "é".encode()), ("b", b"\x00"))
    assert encode_headers([("a", "1"), ("a", "2")]) == (("a", b"1"), ("a", b"2"))


# -- JSON ----------------------------------------------------------------------------------------------------


def test_a_record_value_keeps_its_keys_order_and_its_text_unescaped() -> None:
    """The same document always gives the same bytes (a receipt sent again is the same receipt)."""
    document = {"z": 1, "a": ["é", None, True], "m": {"b": 0.5}}
    assert encode_json(document) == '{"z":1,"a":["é",null,true],"m":{"b":0.5}}'.encode()
    assert decode_json(encode_json(document)) == document


def test_an_integer_beyond_64_bits_survives_the_round_trip_exactly() -> None:
    """FHIR decimals may carry one: encode falls back to the standard library, decode keeps it an int."""
    big = {"value": 2**70 + 1}
    assert decode_json(encode_json(big)) == big
    assert isinstance(decode_json(b"123456789012345678901234567890"), int)


@pytest.mark.parametrize(
    "text",
    [
        b"-9223372036854775809",
        b"[18446744073709551616, 1]",
        b'{"v": 0.12345678901234567890123}',
        b"[NaN, Infinity]",
        b'"\\ud800"',
        b"[1e400]",
        b'{"a": 1, "a": 2, "b": [true, null, -0.0, 1.5e-7, "\\u00e9"]}',
    ],
)
def test_decode_reads_every_value_as_the_standard_library_does(text: bytes) -> None:
    """orjson reads most records; what it would read inexactly or refuse goes to the standard library."""
    decoded, expected = decode_json(text), json.loads(text)
    assert repr(decoded) == repr(expected)


def test_canonical_bytes_sort_keys_and_keep_the_standard_number_format() -> None:
    """Event ids and signed checkpoints are computed over these bytes: they must never change."""
    document = {"b": 1e-05, "a": {"d": 1e16, "c": "é"}}
    assert records.canonical_json(document) == '{"a":{"c":"é","d":1e+16},"b":1e-05}'.encode()
    assert (
        records.canonical_json(document)
        == json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_decode_refuses_what_is_not_json() -> None:
    """Readers catch ValueError for a record that is not JSON."""
    with pytest.raises(ValueError, match="Expecting value"):
        decode_json(b"not json")
