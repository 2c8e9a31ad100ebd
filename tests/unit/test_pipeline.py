"""The pure ingest core end to end: one record in, events or one reject out (hub/ingest/pipeline.py),
and the receipts and DLQ headers made from the outcome (hub/ingest/receipts.py)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ErrorCode, WarningCode
from hub.ingest.outcome import (
    MAX_WARNINGS,
    Accepted,
    IdentityLink,
    IngestOutcome,
    IngestRecord,
    IngestWarning,
    KafkaCoordinates,
    Rejected,
    bounded_warnings,
)
from hub.ingest.pipeline import IngestContext, process_ingest, with_patient
from hub.ingest.receipts import dlq_headers, receipt, receipt_key
from hub.normalise.codes import ICD10, LOINC, SNOMED_CT, UNMAPPED_URL, load_concept_maps
from hub.normalise.units import ORIGINAL_QUANTITY_URL
from hub.pathway.event import PathwayEvent
from hub.pathway.network_id import INS_NIR, INS_TEST_NIR, NETWORK_ID_SYSTEM, PatientKey
from hub.records import ERROR_CODE_HEADER, ERROR_DETAIL_HEADER, ORIGIN_HEADER

Loader = Callable[[str], dict[str, Any]]
RecordBuilder = Callable[..., IngestRecord]

GP_ID = "gp-cabinet-lamentin"
HOSPITAL_ID = "chu-guadeloupe"
HOSPITAL_SECRET = b"chu-unit-test-secret-fedcba9876543210"
PSEUDONYM_KEY = b"unit-test-pseudonym-key-0123456789abcdef"
TEST_INS = "248039263001064"
FAMILY = "DUPONTEL"
INGEST = {"topic": "hub.ingest.v1", "partition": 2, "offset": 1234}
JSON = "application/fhir+json"
PATIENT = b'{"resourceType":"Patient","id":"p1"}'
BUNDLE_OF = b'{"resourceType":"Bundle","type":"collection","entry":[{"resource":%s}]}'
TWO_PATIENTS = (
    b'{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","id":"p1"}},'
    b'{"resource":{"resourceType":"Patient","id":"p2"}}]}'
)
NOW_SECONDS = 1_714_730_400  # the tests' clock, 2024-05-03T10:00:00Z
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GP_MAP = FIXTURES / "conceptmaps" / "test-gp.conceptmap.json"
CONFIG_MAPS = Path(__file__).resolve().parents[2] / "config" / "conceptmaps"
GP_CONDITION = "urn:test:gp:condition"
DEMO_LAB_TEST = "urn:hub:demo:demo-lab-bio:test"
R5_TRANSPORT = (FIXTURES / "fhir-versions" / "r5" / "transport.json").read_bytes()


@pytest.fixture
def run(context: IngestContext, now: datetime) -> Callable[..., IngestOutcome]:
    """process_ingest at the tests' clock (2024-05-03T10:00Z) with the shared context unless given one."""

    def process(record: IngestRecord, ctx: IngestContext | None = None) -> IngestOutcome:
        return process_ingest(record, ctx or context, now=now)

    return process


def accepted(outcome: IngestOutcome) -> Accepted:
    assert isinstance(outcome, Accepted), outcome
    return outcome


def rejected(outcome: IngestOutcome) -> Rejected:
    assert isinstance(outcome, Rejected), outcome
    return outcome


def ins_network_id(value: str = TEST_INS, system: str = INS_TEST_NIR) -> str:
    return PatientKey("ins", system, value).network_id(PSEUDONYM_KEY)


# --- every reject code ---------------------------------------------------------------------------------


def test_source_unknown_without_header(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """No ``hub-source`` header is ``source.unknown``, with no source in the outcome."""
    result = rejected(run(make_record(fhir("observation-hba1c.json"), source_id=None, signed=False)))
    assert (result.code, result.source_id) == (ErrorCode.SOURCE_UNKNOWN, None)
    assert "no hub-source" in result.detail


def test_source_unknown_with_unregistered_id(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """An unregistered ``hub-source`` is ``source.unknown``; a plain claimed id is echoed, odd text is not."""
    result = rejected(run(make_record(fhir("observation-hba1c.json"), source_id="gp-unknown")))
    assert (result.code, result.source_id) == (ErrorCode.SOURCE_UNKNOWN, "gp-unknown")
    odd = rejected(run(make_record(fhir("observation-hba1c.json"), source_id="gp unknown\n<script>")))
    assert (odd.code, odd.source_id) == (ErrorCode.SOURCE_UNKNOWN, None)


@pytest.mark.parametrize(
    ("record_args", "code"),
    [
        ({"signed": False}, ErrorCode.SIGNATURE_MISSING),
        ({"headers": [("hub-signature", b"t=abc")], "signed": False}, ErrorCode.SIGNATURE_INVALID),
        ({"secret": HOSPITAL_SECRET}, ErrorCode.SIGNATURE_INVALID),
        ({"sign_as": HOSPITAL_ID, "secret": HOSPITAL_SECRET}, ErrorCode.SIGNATURE_INVALID),
        ({"at": NOW_SECONDS - 3600}, ErrorCode.SIGNATURE_EXPIRED),
        ({"at": NOW_SECONDS + 3600}, ErrorCode.SIGNATURE_EXPIRED),
    ],
    ids=["missing", "malformed", "wrong key", "replayed from another source", "too old", "too far ahead"],
)
def test_signature_rejects(
    run: Callable[..., IngestOutcome],
    make_record: RecordBuilder,
    fhir: Loader,
    record_args: dict[str, Any],
    code: ErrorCode,
) -> None:
    """Missing, malformed, wrongly keyed, replayed and stale signatures each have their own code."""
    result = rejected(run(make_record(fhir("observation-hba1c.json"), **record_args)))
    assert (result.code, result.source_id) == (code, GP_ID)


def test_tampered_body_is_signature_invalid(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """A body changed after signing fails the signature check."""
    record = make_record(fhir("observation-hba1c.json"))
    tampered = dataclasses.replace(record, value=(record.value or b"").replace(b"7.4", b"5.4"))
    assert rejected(run(tampered)).code is ErrorCode.SIGNATURE_INVALID


def test_payload_too_large_uses_the_configured_limit(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, context: IngestContext
) -> None:
    """A body over ``max_payload_bytes`` is ``payload.too_large``; the same body passes at a larger limit."""
    record = make_record(fhir("bundle-transaction.json"))
    size = len(record.value or b"")
    small = dataclasses.replace(context, max_payload_bytes=size - 1)
    result = rejected(run(record, small))
    assert result.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert str(size) in result.detail
    accepted(run(record, dataclasses.replace(context, max_payload_bytes=size)))


def test_size_is_checked_before_the_signature(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, context: IngestContext
) -> None:
    """An oversize body is refused by size before any HMAC is computed over it, signed or not."""
    small = dataclasses.replace(context, max_payload_bytes=1024)
    assert rejected(run(make_record(b"x" * 2048, signed=False), small)).code is ErrorCode.PAYLOAD_TOO_LARGE


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"", None, ErrorCode.PAYLOAD_MALFORMED),
        (None, None, ErrorCode.PAYLOAD_MALFORMED),
        (b"{not json", None, ErrorCode.PAYLOAD_MALFORMED),
        (b'{"resourceType":"Patient"}', "text/plain", ErrorCode.PAYLOAD_MALFORMED),
        (b"<Patient", "application/fhir+xml", ErrorCode.PAYLOAD_MALFORMED),
        (b'{"resourceType":"Observation","status":"DUPONTEL"}', None, ErrorCode.FHIR_INVALID),
        (PATIENT, f"{JSON}; fhirVersion=1.0", ErrorCode.FHIR_VERSION_UNSUPPORTED),
        (PATIENT, f"{JSON}; fhirVersion=6.0", ErrorCode.FHIR_VERSION_UNSUPPORTED),
        (R5_TRANSPORT, f"{JSON}; fhirVersion=5.0", ErrorCode.FHIR_VERSION_UNSUPPORTED),
        (b'{"resourceType":"Patient","id":"p1","gender":{"text":"f"}}', f"{JSON}; fhirVersion=3.0",
         ErrorCode.FHIR_INVALID),
        (b'{"resourceType":"Observation","status":"final","code":{"text":"A1c"}}', None,
         ErrorCode.PATIENT_UNRESOLVED),
        (TWO_PATIENTS, None, ErrorCode.PATIENT_AMBIGUOUS),
    ],
    ids=["empty", "null value", "not json", "unknown media", "bad xml", "invalid fhir", "FHIR 1.0",
         "FHIR 6.0", "unconvertible R5", "invalid STU3", "no subject", "two patients"],
)  # fmt: skip
def test_body_rejects(
    run: Callable[..., IngestOutcome],
    make_record: RecordBuilder,
    body: bytes | None,
    content_type: str | None,
    code: ErrorCode,
) -> None:
    """Signed bodies that cannot be read, validated or tied to a patient are rejected with their code."""
    result = rejected(run(make_record(body, content_type=content_type)))
    assert (result.code, result.source_id) == (code, GP_ID)


def test_every_ingest_reject_code_is_reachable() -> None:
    """The reject tests above cover every ingest code of the contract (DESIGN.md section 2)."""
    covered = {
        ErrorCode.SOURCE_UNKNOWN, ErrorCode.SIGNATURE_MISSING, ErrorCode.SIGNATURE_INVALID,
        ErrorCode.SIGNATURE_EXPIRED, ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.PAYLOAD_MALFORMED,
        ErrorCode.FHIR_INVALID, ErrorCode.FHIR_VERSION_UNSUPPORTED, ErrorCode.PATIENT_UNRESOLVED,
        ErrorCode.PATIENT_AMBIGUOUS,
    }  # fmt: skip
    # config.* and broker.* are raised, not receipted; hub.* means the hub itself failed (a bug);
    # consent.* belongs to the share stage, which audits rather than rejects; crypto.* is raised, and
    # patient.erased is decided by the worker once a key is destroyed (tests/integration/test_erasure.py);
    # keys.* are the key service's answers to recipients (tests/functional/test_key_service_http.py);
    # audit.* are the sealing stage's alarms (tests/integration/test_audit_chain.py).
    ingest_codes = {
        code
        for code in ErrorCode
        if not code.value.startswith(("config.", "broker.", "hub.", "consent.", "crypto.", "keys.", "audit."))
        and code is not ErrorCode.PATIENT_ERASED
    }
    assert ingest_codes == covered


def test_bundle_with_one_bad_entry_is_rejected_whole(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """All or nothing: one unresolvable entry rejects the Bundle, and its good entries make no events."""
    bundle = fhir("bundle-transaction.json")
    bundle["entry"].append(
        {"resource": {**bundle["entry"][3]["resource"], "subject": {"reference": "urn:uuid:missing"}}}
    )
    result = rejected(run(make_record(bundle)))
    assert result.code is ErrorCode.PATIENT_UNRESOLVED
    assert result.detail.startswith("entry 6:")
    assert not hasattr(result, "events")


def test_bundle_with_one_invalid_entry_is_rejected_whole(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """All or nothing: one entry failing validation rejects the Bundle, good entries included."""
    bundle = fhir("bundle-transaction.json")
    bundle["entry"][1]["resource"]["status"] = "DUPONTEL"
    result = rejected(run(make_record(bundle)))
    assert result.code is ErrorCode.FHIR_INVALID
    assert "entry.1" in result.detail


# --- accepted events -------------------------------------------------------------------------------------


def test_transaction_bundle_events(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """A transaction makes one event per patient resource, all for the INS's network id, none for the rest."""
    outcome = accepted(run(make_record(fhir("bundle-transaction.json"), message_id="tx-2024-05-03-001")))
    assert outcome.source_id == GP_ID
    assert outcome.message_id == "tx-2024-05-03-001"
    assert [event.kind for event in outcome.events] == [
        "patient", "encounter.discharge", "condition", "observation",
    ]  # fmt: skip
    assert {event.patient_id for event in outcome.events} == {ins_network_id()}


def test_event_ids_are_deterministic_across_runs(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """Processing the same input twice (redelivery, other offset, later) gives the same event ids."""
    first = accepted(run(make_record(fhir("bundle-transaction.json"))))
    again = make_record(
        fhir("bundle-transaction.json"),
        origin=KafkaCoordinates("hub.ingest.v1", 5, 99),
        timestamp=now + timedelta(minutes=1),
    )
    second = accepted(run(again))
    assert [e.event_id for e in first.events] == [e.event_id for e in second.events]
    assert len({e.event_id for e in first.events}) == len(first.events)


def test_same_fact_from_two_sources_has_one_event_id(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """The same clinical fact about the same INS patient, sent by a GP and a hospital, has one event id.

    Each names the patient by the INS its own Patient entry carries with identity reliability VALI.
    """
    observation = fhir("observation-hba1c.json")
    observation["subject"] = {"identifier": {"system": INS_TEST_NIR, "value": TEST_INS}}
    from_gp = dict(observation, id="gp-obs-1", meta={"lastUpdated": "2024-05-02T09:00:00+02:00"})
    from_hospital = dict(observation, id="lab-77812", meta={"versionId": "3"})

    def observation_event(resource: dict[str, Any], **record_args: Any) -> PathwayEvent:
        entries = [{"resource": fhir("patient-ins-vali.json")}, {"resource": resource}]
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        [event] = [
            e for e in accepted(run(make_record(bundle, **record_args))).events if e.kind == "observation"
        ]
        return event

    gp_event = observation_event(from_gp)
    hospital_event = observation_event(from_hospital, source_id=HOSPITAL_ID, secret=HOSPITAL_SECRET)
    assert gp_event.event_id == hospital_event.event_id
    assert gp_event.patient_id == hospital_event.patient_id == ins_network_id()
    assert (gp_event.source_id, hospital_event.source_id) == (GP_ID, HOSPITAL_ID)


def test_different_facts_have_different_event_ids(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """Another value of the same test is another fact."""
    observation = fhir("observation-hba1c.json")
    first = accepted(run(make_record(observation))).events[0]
    observation["valueQuantity"]["value"] = 8.1
    second = accepted(run(make_record(observation))).events[0]
    assert first.event_id != second.event_id


def test_patient_reference_is_rewritten_to_the_network_id(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """The source's local patient reference becomes ``Patient/<network id>``, with the network identifier."""
    event = accepted(run(make_record(fhir("observation-hba1c.json")))).events[0]
    patient_id = PatientKey("local", GP_ID, "pat-dupont").network_id(PSEUDONYM_KEY)
    assert event.patient_id == patient_id
    assert event.resource["subject"] == {
        "reference": f"Patient/{patient_id}",
        "identifier": {"system": NETWORK_ID_SYSTEM, "value": patient_id},
    }
    assert "pat-dupont" not in json.dumps(event.resource["subject"])


def test_input_resource_is_not_modified(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fixture_bytes: Callable[[str], bytes]
) -> None:
    """Normalisation copies: the decoded input keeps the source's own reference."""
    body = fixture_bytes("bundle-transaction.json")
    outcome = accepted(run(make_record(body)))
    assert json.loads(body)["entry"][3]["resource"]["subject"]["reference"].startswith("urn:uuid:")
    assert outcome.events[3].resource["subject"]["reference"].startswith("Patient/pt-")


def test_patient_resource_gains_the_network_id(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """A Patient keeps its identifiers (the qualified INS among them) and gains the network id last."""
    original = fhir("patient-ins-vali.json")
    event = accepted(run(make_record(original))).events[0]
    assert event.kind == "patient"
    identifiers = event.resource["identifier"]
    assert identifiers[:-1] == original["identifier"]
    assert identifiers[-1] == {"system": NETWORK_ID_SYSTEM, "value": ins_network_id()}


def test_times_are_utc_z_strings(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """occurred_at comes from the resource (offset applied), recorded_at from the record; both UTC ``Z``."""
    events = {e.kind: e for e in accepted(run(make_record(fhir("bundle-transaction.json")))).events}
    assert events["observation"].occurred_at == "2024-05-02T06:15:00.000Z"
    assert events["encounter.discharge"].occurred_at == "2024-05-03T09:00:00.000Z"  # period.end
    assert events["observation"].recorded_at == "2024-05-03T10:00:00.000Z"
    for event in events.values():
        assert event.occurred_at.endswith("Z")
        assert event.recorded_at.endswith("Z")


def test_naive_times_are_read_in_the_source_time_zone(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """A partial date (``2019-06``) means its first instant in the source's zone: Guadeloupe is UTC-4."""
    events = {e.kind: e for e in accepted(run(make_record(fhir("bundle-transaction.json")))).events}
    assert events["condition"].occurred_at == "2019-06-01T04:00:00.000Z"


def test_unknown_occurrence_falls_back_to_recorded_at(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """A resource that does not say when it happened uses the record time, and the provenance says so."""
    patient_event = accepted(run(make_record(fhir("patient-ins-vali.json")))).events[0]
    assert patient_event.occurred_at == patient_event.recorded_at == "2024-05-03T10:00:00.000Z"
    assert "occurred-at:unknown, recorded-at used" in patient_event.steps


def test_date_out_of_datetime_range_does_not_crash(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """Year 0001 is valid FHIR but before datetime.min in UTC east of Greenwich: recorded_at is used."""
    observation = fhir("observation-hba1c.json")
    observation["effectiveDateTime"] = "0001-01-01"
    observation.pop("issued")
    observation.pop("meta")
    record = make_record(observation, source_id=HOSPITAL_ID, secret=HOSPITAL_SECRET)  # Europe/Paris
    event = accepted(run(record)).events[0]
    assert event.occurred_at == event.recorded_at


def test_provenance_carries_ingest_coordinates(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """Each event's provenance names the ingest record (topic, partition, offset) and the steps taken, in
    order: decoding, the Bundle entry, normalisation (stable references, instants to UTC), then the
    patient's basis."""
    events = accepted(run(make_record(fhir("bundle-transaction.json")))).events
    observation = events[3].to_dict()
    assert observation["provenance"]["ingest"] == INGEST
    assert observation["provenance"]["steps"] == [
        "decoded:json/fhir-4.0", "bundle-entry:3", "references-stable", "instants-utc", "patient-id:ins",
    ]  # fmt: skip
    assert observation["source"] == {
        "id": GP_ID,
        "organization": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "970000001"},
    }


def test_event_envelope_matches_the_contract(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """The envelope has exactly the contract's fields and serialises to JSON."""
    event = accepted(run(make_record(fhir("observation-hba1c.json")))).events[0]
    envelope = json.loads(event.to_json())
    assert set(envelope) == {
        "event_id", "patient_id", "kind", "occurred_at", "recorded_at", "source", "sensitivity", "resource",
        "provenance",
    }  # fmt: skip
    assert envelope == event.to_dict()


def test_security_labels_become_sensitivity(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """``meta.security`` codes are carried, sorted and unique, as the event's sensitivity."""
    observation = fhir("observation-hba1c.json")
    confidentiality = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    act_code = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    observation["meta"]["security"] = [
        {"system": act_code, "code": "HIV"},
        {"system": confidentiality, "code": "R"},
        {"system": act_code, "code": "HIV"},
    ]
    event = accepted(run(make_record(observation))).events[0]
    assert event.sensitivity == ("HIV", "R")


def test_duplicate_facts_inside_one_bundle_give_one_event(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """The same fact twice in one Bundle (only ids differ) gives one event."""
    bundle = fhir("bundle-transaction.json")
    copy = json.loads(json.dumps(bundle["entry"][3]))
    copy["fullUrl"] = "urn:uuid:11111111-2222-4333-8444-555555555555"
    copy["resource"]["id"] = "duplicate"
    bundle["entry"].append(copy)
    events = accepted(run(make_record(bundle))).events
    assert [event.kind for event in events].count("observation") == 1
    assert len(events) == 4


def test_reference_only_input_is_accepted_without_events(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """An Organization alone is accepted with no pathway event."""
    organization = fhir("bundle-transaction.json")["entry"][4]["resource"]
    assert accepted(run(make_record(organization))).events == ()


def test_xml_input_makes_the_same_event_as_json(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fixture_bytes: Callable[[str], bytes]
) -> None:
    """A Patient sent as FHIR XML makes the same event as the same Patient sent as JSON."""
    from_xml = accepted(
        run(make_record(fixture_bytes("patient-ins-vali.xml"), content_type="application/fhir+xml"))
    ).events[0]
    from_json = accepted(run(make_record(fixture_bytes("patient-ins-vali.json")))).events[0]
    assert from_xml.event_id == from_json.event_id
    assert from_xml.resource == from_json.resource
    assert from_xml.steps[0] == "decoded:xml/fhir-4.0"


@pytest.mark.parametrize(
    "message_id", ["msg-0001", "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427", "a" * 128]
)
def test_plain_message_id_is_echoed(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, message_id: str
) -> None:
    """A plain ``hub-message-id`` is carried to the outcome (and so the receipt) as sent."""
    outcome = accepted(run(make_record(fhir("observation-hba1c.json"), message_id=message_id)))
    assert outcome.message_id == message_id


@pytest.mark.parametrize("message_id", ["DUPONTEL Jeanne 1948-03-12", "x" * 129, "id\nwith\tcontrol"])
def test_unusual_message_id_is_kept_as_a_hash(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, message_id: str
) -> None:
    """A message id with unusual characters is kept as a stable hash: receipts never echo arbitrary text."""
    first = accepted(run(make_record(fhir("observation-hba1c.json"), message_id=message_id)))
    again = accepted(run(make_record(fhir("observation-hba1c.json"), message_id=message_id)))
    assert first.message_id is not None
    assert first.message_id == again.message_id
    assert first.message_id.startswith("sha256:")
    assert "DUPONTEL" not in first.message_id


def test_absent_message_id_is_none(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """Without ``hub-message-id`` the outcome has no message id."""
    assert accepted(run(make_record(fhir("observation-hba1c.json")))).message_id is None


# --- receipts and DLQ -------------------------------------------------------------------------------------


def test_rejected_receipt(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """A reject's receipt has status rejected, the code and detail, no event ids, and no clinical data."""
    record = make_record(fhir("patient-ins-vali.json"), secret=HOSPITAL_SECRET, message_id="msg-42")
    outcome = run(record)
    body = receipt(outcome, record.origin, at=now)
    assert body == {
        "ingest": INGEST,
        "source": GP_ID,
        "message_id": "msg-42",
        "status": "rejected",
        "error": {
            "code": "signature.invalid",
            "detail": "hub-signature does not match any key of the source",
        },
        "event_ids": [],
        "warnings": [],
        "at": "2024-05-03T10:00:00.000Z",
    }
    text = json.dumps(body)
    assert FAMILY not in text
    assert TEST_INS not in text
    assert receipt_key(outcome) == GP_ID


def test_rejected_receipt_for_unknown_source(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """A receipt for a record with no source has ``source: null`` and is keyed ``unknown``."""
    record = make_record(fhir("observation-hba1c.json"), source_id=None, signed=False)
    outcome = run(record)
    assert receipt(outcome, record.origin, at=now)["source"] is None
    assert receipt_key(outcome) == "unknown"


def test_accepted_receipt(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """An accepted receipt lists the event ids, has no error, and carries no clinical data."""
    record = make_record(fhir("bundle-transaction.json"), message_id="tx-1")
    outcome = accepted(run(record))
    body = receipt(outcome, record.origin, at=now)
    assert body == {
        "ingest": INGEST,
        "source": GP_ID,
        "message_id": "tx-1",
        "status": "accepted",
        "error": None,
        "event_ids": [event.event_id for event in outcome.events],
        "warnings": [],
        "at": "2024-05-03T10:00:00.000Z",
    }
    text = json.dumps(body)
    assert FAMILY not in text
    assert TEST_INS not in text
    assert receipt_key(outcome) == GP_ID


def test_duplicate_receipt(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """The identity stage's receipt for known facts says ``duplicate`` and names the ids it was given."""
    record = make_record(fhir("observation-hba1c.json"), message_id="msg-7")
    outcome = run(record)
    body = receipt(outcome, record.origin, at=now, status="duplicate", event_ids=("e-1", "e-2"))
    assert (body["status"], body["event_ids"], body["error"]) == ("duplicate", ["e-1", "e-2"], None)
    assert (body["source"], body["message_id"]) == (GP_ID, "msg-7")


def test_receipt_status_and_ids_apply_to_accepted_outcomes_only(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """A rejected receipt stays ``rejected`` with no event ids, whatever status or ids are passed."""
    record = make_record(fhir("observation-hba1c.json"), secret=HOSPITAL_SECRET)
    body = receipt(run(record), record.origin, at=now, status="duplicate", event_ids=("e-1",))
    assert (body["status"], body["event_ids"]) == ("rejected", [])


def test_dlq_headers_keep_the_original_and_append_the_reject(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """DLQ headers are the original headers, unchanged and in order, then code, detail and origin."""
    record = make_record(
        fhir("observation-hba1c.json"),
        content_type="application/fhir+json; fhirVersion=6.0",
        message_id="msg-9",
        headers=[
            ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("x-raw", b"\xff\x00"),
        ],
    )
    result = rejected(run(record))
    headers = dlq_headers(record.headers, result, record.origin)
    assert headers[: len(record.headers)] == list(record.headers)
    assert headers[len(record.headers) :] == [
        (ERROR_CODE_HEADER, b"fhir.version.unsupported"),
        (ERROR_DETAIL_HEADER, result.detail.encode()),
        (ORIGIN_HEADER, b"hub.ingest.v1/2/1234"),
    ]


# --- robustness ------------------------------------------------------------------------------------------


def _assert_outcome(outcome: IngestOutcome) -> None:
    assert isinstance(outcome, Accepted | Rejected)
    if isinstance(outcome, Rejected):
        assert isinstance(outcome.code, ErrorCode)
        assert isinstance(outcome.detail, str)


def test_never_raises_on_random_bytes(run: Callable[..., IngestOutcome], make_record: RecordBuilder) -> None:
    """Random, correctly signed bytes as JSON or XML always give an outcome, never an exception."""
    rng = random.Random(20240503)  # noqa: S311 - seeded fuzzing, not cryptography
    content_types = [None, "application/fhir+xml", "application/fhir+json; fhirVersion=4.0"]
    for n in range(300):
        body = rng.randbytes(rng.randint(0, 400))
        if n % 5 == 0:  # start some like a document, so the parsers get past the first byte
            body = rng.choice([b"{", b"<", b'{"resourceType":"', b"<Bundle "]) + body
        _assert_outcome(run(make_record(body, content_type=content_types[n % 3])))


def test_never_raises_on_truncated_bundles(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fixture_bytes: Callable[[str], bytes]
) -> None:
    """Every truncation of a valid Bundle (a cut-off transfer) is a reject, never an exception."""
    body = fixture_bytes("bundle-transaction.json")
    for end in range(0, len(body), 37):
        outcome = run(make_record(body[:end]))
        _assert_outcome(outcome)
        assert isinstance(outcome, Rejected)


@pytest.mark.parametrize(
    ("header", "body"),
    [
        ("t=²,v1=00", b"{}"),
        (None, b'{"resourceType":"Patient","id":"p","x":1' + b"9" * 4400 + b"}"),
        (None, BUNDLE_OF % b'{"resourceType":"Nope"}'),
        (None, BUNDLE_OF % b'{"id":"x"}'),
        (None, BUNDLE_OF % b'{"resourceType":7}'),
        (None, b'{"resourceType":"Coding","code":"x"}'),
    ],
    ids=["unicode digit in t", "huge integer", "unknown entry type", "entry without type",
         "numeric entry type", "data type as resource"],
)  # fmt: skip
def test_regressions_that_used_to_raise(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, header: str | None, body: bytes
) -> None:
    """Inputs that once escaped as exceptions (ValueError, KeyError, TypeError) are now rejects."""
    extra = [("hub-signature", header.encode())] if header else []
    outcome = run(make_record(body, signed=header is None, headers=extra))
    assert isinstance(outcome, Rejected)


def test_realistic_synthea_bundle(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, synthea_bundle_path: Path
) -> None:
    """A real Synthea R4 transaction is accepted whole: one patient, an event per clinical entry."""
    body = synthea_bundle_path.read_bytes()
    document = json.loads(body)
    reference_data = {"Organization", "Practitioner", "Location", "PractitionerRole"}
    clinical = [
        entry for entry in document["entry"] if entry["resource"]["resourceType"] not in reference_data
    ]
    outcome = accepted(run(make_record(body)))
    events: tuple[PathwayEvent, ...] = outcome.events
    assert 0 < len(events) <= len(clinical)
    assert len({event.event_id for event in events}) == len(events)
    assert len({event.patient_id for event in events}) == 1
    assert {"patient", "observation", "condition"} <= {event.kind for event in events}
    patient = next(e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "Patient")
    family = patient["name"][0]["family"]
    for event in events:
        assert event.occurred_at.endswith("Z")
        assert event.ingest == INGEST
        if event.kind != "patient":
            assert family not in json.dumps(event.resource.get("subject"))
    assert INS_NIR not in json.dumps([e.patient_id for e in events])


# --- normalisation in the event: units, instants, codes -------------------------------------------------


def _hba1c_ifcc(fhir: Loader) -> dict[str, Any]:
    observation = fhir("observation-hba1c.json")
    observation["valueQuantity"] = {
        "value": 57, "unit": "mmol/mol", "system": "http://unitsofmeasure.org", "code": "mmol/mol",
    }  # fmt: skip
    del observation["referenceRange"]
    return observation


def _with_maps(context: IngestContext, *paths: Path, source_id: str = GP_ID) -> IngestContext:
    return dataclasses.replace(context, code_mappers={source_id: load_concept_maps(paths)})


def _condition(*codings: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/pat-dupont"},
        "code": {"coding": [{"system": system, "code": code} for system, code in codings]},
        "recordedDate": "2024-05-02",
    }


def test_hba1c_in_mmol_per_mol_is_published_in_percent(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """An HbA1c in IFCC mmol/mol is published in % NGSP; the original quantity is kept in an extension."""
    event = accepted(run(make_record(_hba1c_ifcc(fhir)))).events[0]
    quantity = event.resource["valueQuantity"]
    assert (quantity["value"], quantity["code"], quantity["system"]) == (
        7.37,
        "%",
        "http://unitsofmeasure.org",
    )
    assert quantity["extension"] == [
        {
            "url": ORIGINAL_QUANTITY_URL,
            "valueQuantity": {
                "value": 57, "unit": "mmol/mol", "system": "http://unitsofmeasure.org", "code": "mmol/mol",
            },
        }
    ]  # fmt: skip
    assert "unit:4548-4:mmol/mol->%" in event.steps


def test_the_same_hba1c_in_either_unit_is_one_fact_apart_from_the_original(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """Conversion happens before the event id is computed: the converted value is what the id covers."""
    converted = accepted(run(make_record(_hba1c_ifcc(fhir)))).events[0]
    again = accepted(run(make_record(_hba1c_ifcc(fhir)))).events[0]
    assert converted.event_id == again.event_id
    plain = accepted(run(make_record(fhir("observation-hba1c.json")))).events[0]
    assert plain.event_id != converted.event_id


def test_instants_with_an_offset_are_published_in_utc(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """Every date-time with a time part is published in UTC ``Z``; a date alone is left as sent."""
    event = accepted(run(make_record(fhir("observation-hba1c.json")))).events[0]
    assert event.resource["effectiveDateTime"] == "2024-05-02T06:15:00Z"
    assert event.resource["issued"] == "2024-05-02T09:40:00Z"
    assert "instants-utc" in event.steps
    condition = accepted(run(make_record(_condition(("http://snomed.info/sct", "44054006"))))).events[0]
    assert condition.resource["recordedDate"] == "2024-05-02"


def test_naive_time_is_read_in_the_source_zone_across_the_dst_change(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """A naive 02:30 from a Paris source on 2025-03-30 (no such wall time) is 01:30Z, and the step says so."""
    observation = fhir("observation-hba1c.json")
    observation["effectiveDateTime"] = "2025-03-30T02:30:00"
    record = make_record(observation, source_id=HOSPITAL_ID, secret=HOSPITAL_SECRET)
    event = accepted(run(record)).events[0]
    assert event.resource["effectiveDateTime"] == "2025-03-30T01:30:00Z"
    assert event.occurred_at == "2025-03-30T01:30:00.000Z"
    assert "naive-time-read-in:Europe/Paris" in event.steps


def test_local_code_gains_the_standard_code_of_the_source_concept_map(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, context: IngestContext
) -> None:
    """A local code keeps its coding and gains the ICD-10 and SNOMED CT codes of the source's ConceptMap."""
    outcome = accepted(run(make_record(_condition((GP_CONDITION, "DT2"))), _with_maps(context, GP_MAP)))
    event = outcome.events[0]
    codings = event.resource["code"]["coding"]
    assert codings[0] == {"system": GP_CONDITION, "code": "DT2"}
    assert {(c["system"], c["code"]) for c in codings[1:]} == {(ICD10, "E11.9"), (SNOMED_CT, "44054006")}
    assert f"code-mapped:{GP_CONDITION}|DT2->{ICD10}|E11.9" in event.steps
    assert outcome.unmapped_codes == ()


def test_concept_maps_apply_only_to_their_source(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, context: IngestContext
) -> None:
    """Another source's ConceptMaps are not applied: the hospital's unknown local code stays unmapped."""
    record = make_record(_condition((GP_CONDITION, "DT2")), source_id=HOSPITAL_ID, secret=HOSPITAL_SECRET)
    outcome = accepted(run(record, _with_maps(context, GP_MAP)))
    assert len(outcome.events[0].resource["code"]["coding"]) == 1
    assert outcome.unmapped_codes == ((GP_CONDITION, "DT2"),)


def test_demo_concept_map_maps_a_demo_local_code(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, context: IngestContext
) -> None:
    """The shipped demo ConceptMaps load and map their source's local condition codes to ICD-10."""
    path = CONFIG_MAPS / "demo-gp-cabinet-lamentin.conceptmap.json"
    mapper = load_concept_maps([path])
    (system, code), targets = next(iter(mapper.targets.items()))
    outcome = accepted(run(make_record(_condition((system, code))), _with_maps(context, path)))
    added = {(c["system"], c["code"]) for c in outcome.events[0].resource["code"]["coding"][1:]}
    assert {(target.system, target.code) for target in targets} <= added
    assert outcome.unmapped_codes == ()


def test_unmapped_local_codes_are_reported_and_marked(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, context: IngestContext
) -> None:
    """A local code no ConceptMap of the source maps passes through, marked unmapped, and is reported."""
    outcome = accepted(run(make_record(_condition((GP_CONDITION, "INCONNU"))), _with_maps(context, GP_MAP)))
    concept = outcome.events[0].resource["code"]
    assert concept["coding"] == [{"system": GP_CONDITION, "code": "INCONNU"}]
    assert concept["extension"] == [{"url": UNMAPPED_URL, "valueBoolean": True}]
    assert outcome.unmapped_codes == ((GP_CONDITION, "INCONNU"),)
    assert f"code-unmapped:{GP_CONDITION}|INCONNU" in outcome.events[0].steps


def test_unmapped_codes_are_reported_for_a_source_without_concept_maps(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder
) -> None:
    """A source with no ConceptMap at all still has its local codes marked unmapped and reported."""
    outcome = accepted(run(make_record(_condition((GP_CONDITION, "DT2")))))
    assert outcome.unmapped_codes == ((GP_CONDITION, "DT2"),)
    assert outcome.events[0].resource["code"]["extension"] == [{"url": UNMAPPED_URL, "valueBoolean": True}]


def test_standard_codes_are_not_reported_unmapped(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """Standard and FHIR-shared codes need no map: nothing is reported for the LOINC-coded HbA1c."""
    assert accepted(run(make_record(fhir("observation-hba1c.json")))).unmapped_codes == ()


def test_local_lab_code_mapped_to_loinc_gets_its_unit_converted(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, context: IngestContext
) -> None:
    """A lab's local code mapped to LOINC by its ConceptMap is converted like a LOINC-coded result."""
    observation = _hba1c_ifcc(fhir)
    observation["code"] = {"coding": [{"system": DEMO_LAB_TEST, "code": "HBA1C-IFCC"}]}
    ctx = _with_maps(context, CONFIG_MAPS / "demo-lab-bio.conceptmap.json")
    event = accepted(run(make_record(observation), ctx)).events[0]
    assert (LOINC, "59261-8") in {(c["system"], c["code"]) for c in event.resource["code"]["coding"]}
    assert (event.resource["valueQuantity"]["value"], event.resource["valueQuantity"]["code"]) == (7.37, "%")
    assert "unit:59261-8:mmol/mol->%" in event.steps


# --- the input's patient: patient_id and identity link ---------------------------------------------------


def test_patient_with_local_id_and_qualified_ins_links_them(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """A Patient showing its local IPP and a qualified INS is published under the INS id, with a link."""
    outcome = accepted(run(make_record(fhir("patient-ins-vali.json"))))
    local_id = PatientKey("local", GP_ID, "IPP-004217").network_id(PSEUDONYM_KEY)
    assert outcome.patient_id == ins_network_id()
    assert outcome.link == IdentityLink(local_id=local_id, ins_id=ins_network_id())
    assert [event.patient_id for event in outcome.events] == [ins_network_id()]


def test_every_entry_of_a_bundle_with_local_id_and_ins_is_keyed_by_the_ins(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """Entries that name the Patient by its local id are published under the INS id too, with one link."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": fhir("patient-ins-vali.json")}, {"resource": fhir("observation-hba1c.json")}],
    }
    outcome = accepted(run(make_record(bundle)))
    assert {event.patient_id for event in outcome.events} == {ins_network_id()}
    assert outcome.link is not None
    assert outcome.link.ins_id == outcome.patient_id == ins_network_id()
    observation = outcome.events[1]
    assert observation.resource["subject"]["reference"] == f"Patient/{ins_network_id()}"


@pytest.mark.parametrize(
    "case", ["local only", "ins in a reference", "ins not validated", "test ins refused"]
)
def test_no_link_without_both_a_local_id_and_a_qualified_ins(
    run: Callable[..., IngestOutcome],
    make_record: RecordBuilder,
    fhir: Loader,
    context: IngestContext,
    case: str,
) -> None:
    """``link`` is None unless the input shows both a local id and a qualified INS of its patient."""
    ctx = context
    if case == "local only":
        resource = fhir("observation-hba1c.json")
    elif case == "ins in a reference":
        resource = fhir("observation-hba1c.json")
        resource["subject"]["identifier"] = {"system": INS_TEST_NIR, "value": TEST_INS}
    elif case == "ins not validated":
        resource = fhir("patient-ins-vali.json")
        del resource["extension"]
    else:
        resource = fhir("patient-ins-vali.json")
        ctx = dataclasses.replace(context, allow_test_ins=False)
    outcome = accepted(run(make_record(resource), ctx))
    assert outcome.link is None
    assert outcome.patient_id == outcome.events[0].patient_id


def test_reference_data_has_no_patient_id(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """An input about no patient has neither patient id nor link nor unmapped codes."""
    organization = fhir("bundle-transaction.json")["entry"][4]["resource"]
    outcome = accepted(run(make_record(organization)))
    assert (outcome.patient_id, outcome.link, outcome.unmapped_codes) == (None, None, ())


def test_with_patient_names_the_patient_by_network_id() -> None:
    """``with_patient`` copies: a Patient's old network identifier is replaced, a subject is rewritten."""
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:x", "value": "1"}, {"system": NETWORK_ID_SYSTEM, "value": "pt-old"}],
    }
    assert with_patient(patient, "pt-new")["identifier"] == [
        {"system": "urn:x", "value": "1"}, {"system": NETWORK_ID_SYSTEM, "value": "pt-new"},
    ]  # fmt: skip
    assert patient["identifier"][1]["value"] == "pt-old"
    episode = {"resourceType": "EpisodeOfCare", "patient": {"reference": "Patient/local-1"}}
    assert with_patient(episode, "pt-new")["patient"] == {
        "reference": "Patient/pt-new", "identifier": {"system": NETWORK_ID_SYSTEM, "value": "pt-new"},
    }  # fmt: skip
    assert episode["patient"] == {"reference": "Patient/local-1"}


# --- warnings: what the hub ignored, in the receipt --------------------------------------------------------

NOT_VALIDATED = (
    "Patient.identifier: an INS is not used to link: the Patient has no FR Core identity reliability VALI"
)


def _codes(outcome: Accepted) -> list[tuple[str, str]]:
    return [(str(w.code), w.detail) for w in outcome.warnings]


def test_a_patient_with_a_provisional_ins_is_accepted_with_a_warning(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """A FR Core Patient whose identity is only provisional (PROV): accepted under its IPP, no link, and
    its receipt says the INS was ignored and why, naming neither the INS nor the patient."""
    patient = fhir("patient-ins-vali.json")
    patient["extension"][0]["extension"][0]["valueCoding"].update(code="PROV", display="Identité provisoire")
    record = make_record(patient, message_id="adt-1")
    outcome = accepted(run(record))
    assert outcome.link is None
    assert outcome.patient_id == PatientKey("local", GP_ID, "IPP-004217").network_id(PSEUDONYM_KEY)
    assert _codes(outcome) == [("ins.unqualified", NOT_VALIDATED)]
    body = receipt(outcome, record.origin, at=now)
    assert body["warnings"] == [{"code": "ins.unqualified", "detail": NOT_VALIDATED}]
    text = json.dumps(body)
    for secret in (TEST_INS, FAMILY, "IPP-004217", "1948-03-12", "PROV"):
        assert secret not in text


def test_a_qualified_patient_has_no_warning(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """The FR Core Patient with a VALI identity links, and its receipt has an empty warnings list."""
    record = make_record(fhir("patient-ins-vali.json"))
    outcome = accepted(run(record))
    assert outcome.link is not None
    assert receipt(outcome, record.origin, at=now)["warnings"] == []


def test_an_ins_in_a_reference_links_only_beside_a_patient_that_qualifies_it(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """``Observation.subject.identifier`` with an INS, beside ``Patient/<id>``: routed by the local id with
    an ``ins.unqualified`` warning; with the qualified Patient in the same input, it links, silently."""
    observation = fhir("observation-hba1c.json")
    observation["subject"]["identifier"] = {"system": INS_TEST_NIR, "value": TEST_INS}
    alone = accepted(run(make_record(observation)))
    assert (alone.patient_id, alone.link) == (
        PatientKey("local", GP_ID, "pat-dupont").network_id(PSEUDONYM_KEY),
        None,
    )
    assert _codes(alone) == [
        (
            "ins.unqualified",
            "Observation.subject.identifier: an INS is not used to link: a reference cannot state "
            "identity reliability, and no Patient of this input carries this INS with FR Core identity "
            "reliability VALI",
        )
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": fhir("patient-ins-vali.json")}, {"resource": observation}],
    }
    linked = accepted(run(make_record(bundle)))
    assert linked.patient_id == ins_network_id()
    assert linked.warnings == ()


def test_an_unmapped_local_code_is_named_by_its_system_only(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, context: IngestContext
) -> None:
    """A local code of a system the source's ConceptMap covers, but not listed in it: ``code.unmapped``,
    counted, naming the system (as the unmapped-codes metric does) and never the code."""
    ctx = _with_maps(context, GP_MAP)
    outcome = accepted(run(make_record(_condition((GP_CONDITION, "INCONNU"))), ctx))
    assert outcome.unmapped_codes == ((GP_CONDITION, "INCONNU"),)
    assert _codes(outcome) == [
        (
            "code.unmapped",
            f"Condition: 1 code of {GP_CONDITION}, not in this source's ConceptMaps for that system; "
            "kept as sent and marked unmapped",
        )
    ]
    assert "INCONNU" not in json.dumps(_codes(outcome))
    mapped = accepted(run(make_record(_condition((GP_CONDITION, "DT2"))), ctx))
    assert mapped.warnings == ()


UNKNOWN = ", a code system the hub does not know and no ConceptMap of this source maps;"


@pytest.mark.parametrize(
    ("system", "named"),
    [
        ("urn:test:gp:allergy", "of urn:test:gp:allergy" + UNKNOWN),
        ("http://hl7.org/fhir/sid/cvx", "of http://hl7.org/fhir/sid/cvx" + UNKNOWN),
        ("urn:test:" + "x" * 300, "of a code system that is not a plain URI" + UNKNOWN),
        (None, "without a code system;"),
    ],
    ids=["local system without a map", "outside terminology", "overlong system", "no system"],
)
def test_a_code_of_an_unknown_system_warns(
    run: Callable[..., IngestOutcome],
    make_record: RecordBuilder,
    context: IngestContext,
    system: str | None,
    named: str,
) -> None:
    """A code system neither standard, nor shared, nor covered by a ConceptMap of the source, or none:
    ``code.system_unknown``; a system that is no short plain URI is described, not echoed."""
    condition = _condition(("-", "A1"), ("-", "A2"))
    for coding in condition["code"]["coding"]:
        if system is None:
            del coding["system"]
        else:
            coding["system"] = system
    outcome = accepted(run(make_record(condition), _with_maps(context, GP_MAP)))
    assert _codes(outcome) == [
        ("code.system_unknown", f"Condition: 2 codes {named} kept as sent and marked unmapped")
    ]


def test_a_resource_type_without_events_and_a_delete_are_named(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader, now: datetime
) -> None:
    """A transaction with a DELETE entry and an AdverseEvent about the patient: accepted, both said."""
    bundle = fhir("bundle-transaction.json")
    bundle["entry"].append({"request": {"method": "DELETE", "url": "Observation/obs-old"}})
    patient_url = bundle["entry"][0]["fullUrl"]
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:6f1c3b9e-1d5a-4b7e-9a41-0c2d8e5f7a10",
            "resource": {
                "resourceType": "AdverseEvent",
                "actuality": "actual",
                "subject": {"reference": patient_url},
                "date": "2024-05-01T08:00:00+02:00",
            },
            "request": {"method": "POST", "url": "AdverseEvent"},
        }
    )
    record = make_record(bundle)
    outcome = accepted(run(record))
    assert "AdverseEvent" not in {event.resource["resourceType"] for event in outcome.events}
    assert _codes(outcome) == [
        (
            "resource.ignored",
            "AdverseEvent (1 entry): the hub makes no pathway event of this resource type, "
            "so no recipient receives it",
        ),
        (
            "entry.no_resource",
            "1 Bundle entry without a resource (request DELETE): the hub applies no request, "
            "nothing was changed",
        ),
    ]
    assert "obs-old" not in json.dumps(receipt(outcome, record.origin, at=now))


def test_a_reference_only_input_receipts_its_warnings(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, now: datetime
) -> None:
    """An input about no patient (an Appointment whose participants name no one the hub resolves) is
    accepted with no event; its receipt, written by ingest, still says what was ignored."""
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "participant": [{"actor": {"reference": "Patient/pat-dupont"}, "status": "accepted"}],
    }
    record = make_record(appointment)
    outcome = accepted(run(record))
    assert (outcome.patient_id, outcome.events) == (None, ())
    assert receipt(outcome, record.origin, at=now)["warnings"] == [
        {
            "code": "resource.ignored",
            "detail": "Appointment (1 entry): the hub makes no pathway event of this resource type, "
            "so no recipient receives it",
        }
    ]


def test_synthea_warnings_name_code_systems_and_no_patient_data(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, synthea_bundle_path: Path, now: datetime
) -> None:
    """A real Synthea bundle: US vocabularies the hub has no map for (RxNorm, CVX) are named by system,
    bounded, in a stable order, and nothing of the patient appears in the receipt."""
    body = synthea_bundle_path.read_bytes()
    outcome = accepted(run(make_record(body)))
    again = accepted(run(make_record(body)))
    assert outcome.warnings == again.warnings
    assert 0 < len(outcome.warnings) <= 21
    assert {w.code for w in outcome.warnings} <= {"code.system_unknown", "warnings.truncated"}
    details = " ".join(w.detail for w in outcome.warnings)
    assert (
        "http://www.nlm.nih.gov/research/umls/rxnorm" in details or "http://hl7.org/fhir/sid/cvx" in details
    )
    document = json.loads(body)
    patient = next(e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "Patient")
    text = json.dumps(receipt(outcome, KafkaCoordinates("hub.ingest.v1", 0, 1), at=now))
    for secret in (
        patient["name"][0]["family"],
        patient["birthDate"],
        *(identifier["value"] for identifier in patient["identifier"]),
    ):
        assert secret not in text


def test_warnings_are_deduplicated_ordered_and_bounded() -> None:
    """Each warning once, most important code first then by detail, at most 20 and a count of the rest."""
    codes = [
        IngestWarning(WarningCode.CODE_SYSTEM_UNKNOWN, f"Observation: 1 code of urn:test:s{n:02d}, …")
        for n in range(30)
    ]
    ins = IngestWarning(WarningCode.INS_UNQUALIFIED, NOT_VALIDATED)
    kept = bounded_warnings([*reversed(codes), ins, ins, *codes])
    assert len(kept) == MAX_WARNINGS + 1
    assert kept[0] == ins
    assert list(kept[1:MAX_WARNINGS]) == codes[: MAX_WARNINGS - 1]
    assert kept[-1] == IngestWarning(WarningCode.WARNINGS_TRUNCATED, "11 more warning(s) not listed")
    assert bounded_warnings(codes[:3]) == tuple(codes[:3])
    assert bounded_warnings([]) == ()


def test_many_unknown_systems_are_cut_at_the_bound(
    run: Callable[..., IngestOutcome], make_record: RecordBuilder, fhir: Loader
) -> None:
    """An input with 25 unknown systems and a provisional INS: the INS warning stays first, then 19 code
    warnings, then ``warnings.truncated``."""
    patient = fhir("patient-ins-vali.json")
    del patient["extension"]
    conditions = [_condition((f"urn:test:local:{n:02d}", "X")) for n in range(25)]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient}, *({"resource": condition} for condition in conditions)],
    }
    outcome = accepted(run(make_record(bundle)))
    assert [str(w.code) for w in outcome.warnings] == [
        "ins.unqualified",
        *["code.system_unknown"] * (MAX_WARNINGS - 1),
        "warnings.truncated",
    ]
    assert outcome.warnings[-1].detail == "6 more warning(s) not listed"


def test_the_documented_fr_core_patient_links_and_its_provisional_twin_warns(
    make_record: RecordBuilder, context: IngestContext, now: datetime
) -> None:
    """docs/INGEST.md's example Patient (INS-NIR, identity reliability VALI) links its IPP to its INS,
    with no warning; the same Patient with ``PROV`` is accepted under its IPP with ``ins.unqualified``."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "INGEST.md").read_text(encoding="utf-8")
    blocks = [block.partition("\n```")[0] for block in text.split("```json\n")[1:]]
    [document] = [json.loads(block) for block in blocks if '"resourceType": "Patient"' in block]
    [ipp] = [i for i in document["identifier"] if i["system"] != INS_NIR]
    hospital = dataclasses.replace(
        context.registry.sources[HOSPITAL_ID], patient_identifier_systems=(ipp["system"],)
    )
    ctx = dataclasses.replace(
        context,
        registry=dataclasses.replace(context.registry, sources={HOSPITAL_ID: hospital}),
        allow_test_ins=False,
    )

    def run(patient: dict[str, Any]) -> Accepted:
        record = make_record(patient, source_id=HOSPITAL_ID, secret=HOSPITAL_SECRET)
        return accepted(process_ingest(record, ctx, now=now))

    linked = run(document)
    [ins] = [i["value"] for i in document["identifier"] if i["system"] == INS_NIR]
    assert linked.patient_id == ins_network_id(ins, INS_NIR)
    assert linked.link == IdentityLink(
        PatientKey("local", HOSPITAL_ID, ipp["value"]).network_id(PSEUDONYM_KEY), linked.patient_id
    )
    assert linked.warnings == ()
    document["extension"][0]["extension"][0]["valueCoding"]["code"] = "PROV"
    provisional = run(document)
    assert (provisional.link, _codes(provisional)) == (None, [("ins.unqualified", NOT_VALIDATED)])
