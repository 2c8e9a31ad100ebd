"""Erasure by crypto-shredding: destroy a patient's data keys, and shorten what stays in the clear.

A patient's records on the encrypted topics and in the table changelogs stay on the log (Kafka is
append-only) but can never be decrypted again once the keys are destroyed. The person may be known
under several network ids: the qualified-INS id and the source-local ids linked to it (the
``identity-aliases`` table, itself encrypted, read here with the operator's keys); every one of
them is destroyed, with the keys of every recipient's copies of their events (``pt-…@<recipient>``,
the keys the key service hands out). Ingest records (the sources' signed bytes, in the clear) that
the worker group has processed are deleted from the ingest topic, and the segments that hold them
rolled when due, so their cleartext leaves the broker's disks within ``HUB_ERASURE_BOUND_SECONDS``
(:mod:`hub.crypto.retention`); rejects that name the patient (FHIR JSON or XML) are shredded; the
alert gateway's local store forgets the patient's alerts. Each erasure is audited, with ids, counts
and times only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub.audit_vocabulary import (
    APPLICATION_ROLE,
    OPERATOR_SYSTEM,
    OPS_COMPONENT,
    OUTCOME_SUCCESS,
    PATIENT_ERASURE,
    PATIENT_RECORD,
    PATIENT_ROLE,
    PERSON,
    agent,
    audit_event,
    audit_id,
    component,
    detail,
    entity,
    identified,
)
from hub.crypto.keyids import recipient_keys_prefix
from hub.crypto.keyring import Keyring
from hub.normalise.time import utc_iso
from hub.pathway.network_id import INS_NIR, NETWORK_ID_SYSTEM, PatientKey
from hub.records import decode_json

NETWORK_ID_PREFIX = "pt-"


def resolve_patient(text: str, *, pseudonym_key: bytes, ins_system: str = INS_NIR) -> str:
    """The network patient id of ``pt-…`` (as is) or of an INS (``system|value``, or a bare value)."""
    text = text.strip()
    if text.startswith(NETWORK_ID_PREFIX):
        return text
    system, _, value = text.rpartition("|")
    if not value:
        raise ValueError("give a network patient id (pt-…) or an INS")
    return PatientKey("ins", system or ins_system, value).network_id(pseudonym_key)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _xml_node(element: Any) -> dict[str, Any]:
    """An XML element as the JSON-like node :func:`named_patients` walks: each child by its local
    name (a primitive as its ``value`` attribute), a list where a name repeats; a capitalised element
    (a resource) gets its ``resourceType``."""
    from lxml import etree  # noqa: PLC0415 - only rejects in XML need it

    node: dict[str, Any] = {}
    name = etree.QName(element).localname
    if name[:1].isupper():
        node["resourceType"] = name
    for child in element:
        if not isinstance(child.tag, str):
            continue
        value = child.get("value") if "value" in child.attrib else _xml_node(child)
        key = etree.QName(child).localname
        if key in node:
            node[key] = [*node[key], value] if isinstance(node[key], list) else [node[key], value]
        else:
            node[key] = value
    return node


def reject_document(payload: bytes | None) -> Any:
    """A reject's payload as JSON data: FHIR JSON as is, FHIR XML as :func:`_xml_node` reads it."""
    try:
        return json.loads(payload or b"")
    except (ValueError, UnicodeDecodeError):
        pass
    from lxml import etree  # noqa: PLC0415

    from hub.ingest.fhir_xml import SAFE_PARSER  # noqa: PLC0415 - no DTD, no entities, no network

    try:
        return _xml_node(etree.fromstring(payload or b"", parser=SAFE_PARSER))
    except (etree.LxmlError, ValueError):
        return None


def named_patients(payload: bytes | None, source_id: str | None, *, pseudonym_key: bytes) -> set[str]:
    """Every network id a rejected FHIR payload (JSON or XML) could be about (over-inclusive, never under).

    The ids are derived as ingest derives them (``hub.ingest.split``): an identifier under the INS
    systems or the source's own, a Patient's id, a ``Patient/<id>`` reference. Payloads that are
    neither JSON nor well-formed XML name nobody here (docs/SECURITY.md: they leave with the DLQ's
    retention).
    """
    document = reject_document(payload)
    if document is None:
        return set()
    keys: set[PatientKey] = set()
    for node in _walk(document):
        system, value = node.get("system"), node.get("value")
        if isinstance(system, str) and isinstance(value, (str, int)) and system:
            keys.add(PatientKey("ins", system, str(value)))
            if source_id:
                keys.add(PatientKey("local", source_id, str(value)))
        if source_id and node.get("resourceType") == "Patient" and isinstance(node.get("id"), str):
            keys.add(PatientKey("local", source_id, node["id"]))
        reference = node.get("reference")
        if source_id and isinstance(reference, str) and "Patient/" in reference:
            keys.add(PatientKey("local", source_id, reference.partition("/_history/")[0].rsplit("/", 1)[-1]))
    return {key.network_id(pseudonym_key) for key in keys}


def linked_ids(patient_id: str, aliases: Mapping[str, str]) -> list[str]:
    """Every network id of the same person: the id, what it is linked to, and what is linked to those."""
    found = {patient_id}
    changed = True
    while changed:
        changed = False
        for local_id, ins_id in aliases.items():
            if (local_id in found) != (ins_id in found):
                found |= {local_id, ins_id}
                changed = True
    return sorted(found)


def aliases_from_changelog(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, str]:
    """``local id → INS id`` from the opened ``identity-aliases`` changelog (JSON key, JSON value)."""
    aliases: dict[str, str] = {}
    for key, value in records:
        try:
            local_id = decode_json(key or b"null")
            ins_id = decode_json(value) if value else None
        except ValueError:
            continue
        if isinstance(local_id, str):
            if isinstance(ins_id, str):
                aliases[local_id] = ins_id
            else:
                aliases.pop(local_id, None)
    return aliases


def destroy_patient_keys(keyring: Keyring, patient_ids: Iterable[str], *, by: str) -> int:
    """Destroy each id's own data key, then every recipient key of it; return how many usable keys went.

    The patient's key first: from then on no recipient key of that patient can be created
    (:meth:`hub.crypto.store.KeyStore.create_many` checks it in the same transaction), so the list of
    recipient keys read next is complete even while workers run.
    """
    destroyed = 0
    for patient_id in patient_ids:
        destroyed += keyring.destroy(patient_id, by=by)
        for key_id in keyring.store.key_ids(recipient_keys_prefix(patient_id)):
            destroyed += keyring.destroy(key_id, by=by)
    return destroyed


@dataclass(frozen=True)
class ErasureReport:
    """What one erasure did: ids and counts only."""

    patient_ids: list[str]
    keys_destroyed: int
    gateway_alerts_removed: int
    ingest_records_deleted: int
    ingest_records_left: int
    dlq_records_shredded: int = 0
    notes: list[str] = field(default_factory=list)
    #: Readable rejects that are neither JSON nor XML: they name nobody, and stay until the DLQ's retention.
    dlq_records_unattributed: int = 0
    #: By when (UTC, ISO 8601) the processed ingest records' cleartext has left the broker's disks
    #: (hub.crypto.retention); records not yet processed count from their processing instead.
    ingest_cleartext_until: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "patient_ids": self.patient_ids,
            "keys_destroyed": self.keys_destroyed,
            "gateway_alerts_removed": self.gateway_alerts_removed,
            "ingest_records_deleted": self.ingest_records_deleted,
            "ingest_records_left": self.ingest_records_left,
            "dlq_records_shredded": self.dlq_records_shredded,
            "dlq_records_unattributed": self.dlq_records_unattributed,
            "ingest_cleartext_until": self.ingest_cleartext_until,
            "notes": self.notes,
        }


def audit_erasure(report: ErasureReport, *, requested_by: str, recorded: datetime) -> dict[str, Any]:
    """The AuditEvent of one erasure (DICOM Patient Record, action D): who, which ids, what was done."""
    if recorded.utcoffset() is None:
        raise ValueError("recorded must be timezone-aware")
    primary = report.patient_ids[0]
    details = [
        detail("keys_destroyed", str(report.keys_destroyed)),
        detail("gateway_alerts_removed", str(report.gateway_alerts_removed)),
        detail("ingest_records_deleted", str(report.ingest_records_deleted)),
        detail("ingest_records_left", str(report.ingest_records_left)),
        detail("dlq_records_shredded", str(report.dlq_records_shredded)),
        detail("dlq_records_unattributed", str(report.dlq_records_unattributed)),
    ]
    if report.ingest_cleartext_until is not None:
        details.append(detail("ingest_cleartext_until", report.ingest_cleartext_until))
    return audit_event(
        id=audit_id(PATIENT_ERASURE, *report.patient_ids, utc_iso(recorded)),
        type=PATIENT_RECORD,
        subtype=PATIENT_ERASURE,
        action="D",
        recorded=utc_iso(recorded),
        outcome=OUTCOME_SUCCESS,
        description=f"destroyed {report.keys_destroyed} data keys of {len(report.patient_ids)} network ids",
        agents=[
            agent(
                APPLICATION_ROLE,
                {"identifier": {"system": OPERATOR_SYSTEM, "value": requested_by}},
                requestor=True,
            )
        ],
        # Without a source type, as erasure records have always been written: the same act, the same record.
        source={"observer": component(OPS_COMPONENT)},
        entities=[
            # The counts once, on the first id; the patient by id only (no "Patient" type, as always).
            entity(
                identified(NETWORK_ID_SYSTEM, patient_id),
                type=PERSON,
                role=PATIENT_ROLE,
                details=details if patient_id == primary else None,
            )
            for patient_id in report.patient_ids
        ],
    )
