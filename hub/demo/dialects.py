"""How each demo source writes what the generator draws in R4: STU3 or R5, naive times, JSON or XML.

The generator builds every resource as FHIR R4; a source that speaks another version rewrites the
elements that differ for the resource types the demo sends (Patient, Practitioner, Encounter,
Condition, Observation, ServiceRequest, CareTeam, Consent, and transaction Bundles of them), as that
version's own software would have written them. Anything else is a bug in the generator and raises.
"""

from __future__ import annotations

import json
import re
from typing import Any

Json = dict[str, Any]

STU3 = "3.0"
R4 = "4.0"
R5 = "5.0"
VERSIONS = frozenset({STU3, R4, R5})
MEDIA = frozenset({"json", "xml"})

_CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
#: A date-time written by the generator: seconds, then the offset that a naive writer leaves out.
_AWARE_DATE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})[+-]\d{2}:\d{2}", re.ASCII)
#: R4 Encounter statuses the demo writes, as R5 names them.
_R5_ENCOUNTER_STATUS = {"in-progress": "in-progress", "finished": "completed"}
_R4_TYPES = frozenset(
    {
        "Bundle",
        "Patient",
        "Practitioner",
        "Encounter",
        "Condition",
        "Observation",
        "ServiceRequest",
        "CareTeam",
        "Consent",
    }
)
_STU3_TYPES = _R4_TYPES - {"CareTeam", "Consent"}


def in_version(resource: Json, version: str) -> Json:
    """``resource`` (R4, as the generator builds it) as a source speaking ``version`` writes it."""
    if version == R4:
        return resource
    if version == STU3:
        return _stu3(resource)
    if version == R5:
        return _r5(resource)
    raise ValueError(f"unknown FHIR version {version!r}")


def without_offsets(node: Any) -> Any:
    """``node`` with every date-time's offset dropped: local wall-clock time, as a buggy source sends it.

    Dates (``birthDate``, a date-only ``onsetDateTime``) have no time part and stay as they are.
    """
    if isinstance(node, dict):
        return {key: without_offsets(value) for key, value in node.items()}
    if isinstance(node, list):
        return [without_offsets(value) for value in node]
    if isinstance(node, str):
        match = _AWARE_DATE_TIME.fullmatch(node)
        return match[1] if match else node
    return node


def model_class(version: str, resource_type: str) -> Any:
    """The fhir.resources model of ``resource_type`` in ``version``: STU3, R4 (R4B models) or R5."""
    # Imported on use: the models are heavy, and generating a JSON feed needs none of them.
    if version == STU3:
        from fhir.resources.STU3 import get_fhir_model_class as stu3_class  # noqa: PLC0415

        return stu3_class(resource_type)
    if version == R4:
        from fhir.resources.R4B import get_fhir_model_class as r4_class  # noqa: PLC0415

        return r4_class(resource_type)
    if version == R5:
        from fhir.resources import get_fhir_model_class as r5_class  # noqa: PLC0415

        return r5_class(resource_type)
    raise ValueError(f"unknown FHIR version {version!r}")


def serialise(resource: Json, *, version: str, media: str) -> bytes:
    """The bytes a source sends: indented UTF-8 JSON, or FHIR XML written by the version's models."""
    if media == "json":
        return (json.dumps(resource, ensure_ascii=False, indent=2) + "\n").encode()
    if media == "xml":
        model = model_class(version, str(resource["resourceType"])).model_validate(resource)
        xml = model.model_dump_xml(pretty_print=True)  # bytes, with an XML declaration saying UTF-8
        return xml if isinstance(xml, bytes) else str(xml).encode()
    raise ValueError(f"unknown media {media!r}")


# -- R4 → STU3 ---------------------------------------------------------------------------------------


def _renamed(node: Json, renames: dict[str, str]) -> Json:
    """``node`` with keys renamed in place of the old ones (so the element order stays)."""
    return {renames.get(key, key): value for key, value in node.items()}


def _stu3_references(node: Any) -> Any:
    """STU3 has no ``Reference.type``: a reference by identifier says only the identifier."""
    if isinstance(node, list):
        return [_stu3_references(item) for item in node]
    if not isinstance(node, dict):
        return node
    is_reference = isinstance(node.get("type"), str) and (
        isinstance(node.get("identifier"), dict) or isinstance(node.get("reference"), str)
    )
    return {
        key: _stu3_references(value) for key, value in node.items() if not (is_reference and key == "type")
    }


def _status_code(concept: Json) -> str:
    """The one code of a status CodeableConcept, which STU3 writes as a plain code."""
    (coding,) = concept["coding"]
    return str(coding["code"])


def _stu3(resource: Json) -> Json:
    resource_type = resource["resourceType"]
    if resource_type not in _STU3_TYPES:
        raise ValueError(f"the demo has no STU3 form for {resource_type}")
    out: Json = _stu3_references(resource)
    if resource_type == "Bundle":
        out["entry"] = [_stu3_entry(entry) for entry in out["entry"]]
    elif resource_type == "Condition":
        out = _renamed(out, {"encounter": "context", "recordedDate": "assertedDate"})
        for name in ("clinicalStatus", "verificationStatus"):
            if name in out:
                out[name] = _status_code(out[name])
    elif resource_type == "Observation":
        out = _renamed(out, {"encounter": "context"})
    elif resource_type == "ServiceRequest":
        # STU3 had no ServiceRequest: an order for a service was a ProcedureRequest.
        out = _renamed(out, {"encounter": "context"})
        out["resourceType"] = "ProcedureRequest"
        if "requester" in out:
            out["requester"] = {"agent": out["requester"]}
        if "performer" in out:
            (out["performer"],) = out["performer"]  # a single Reference in STU3
    return out


def _stu3_entry(entry: Json) -> Json:
    resource = _stu3(entry["resource"])
    return {**entry, "resource": resource, "request": {**entry["request"], "url": resource["resourceType"]}}


# -- R4 → R5 -----------------------------------------------------------------------------------------


def _r5(resource: Json) -> Json:
    resource_type = resource["resourceType"]
    if resource_type not in _R4_TYPES:
        raise ValueError(f"the demo has no R5 form for {resource_type}")
    if resource_type == "Bundle":
        return {
            **resource,
            "entry": [{**entry, "resource": _r5(entry["resource"])} for entry in resource["entry"]],
        }
    if resource_type == "Encounter":
        return _r5_encounter(resource)
    if resource_type == "ServiceRequest":
        out = dict(resource)
        out["code"] = {"concept": resource["code"]}
        if "reasonCode" in resource:
            out = _renamed(out, {"reasonCode": "reason"})
            out["reason"] = [{"concept": concept} for concept in resource["reasonCode"]]
        return out
    if resource_type == "CareTeam":
        return {**resource, "participant": [_r5_care_team_member(item) for item in resource["participant"]]}
    if resource_type == "Consent":
        return _r5_consent(resource)
    return resource  # Patient, Practitioner, Condition, Observation: the same for what the demo sends


def _r5_encounter(resource: Json) -> Json:
    out = _renamed(resource, {"period": "actualPeriod", "hospitalization": "admission"})
    out["status"] = _R5_ENCOUNTER_STATUS[resource["status"]]
    out["class"] = [{"coding": [resource["class"]]}]  # a list of CodeableConcept in R5
    if "participant" in resource:
        out["participant"] = [_renamed(item, {"individual": "actor"}) for item in resource["participant"]]
    return out


def _r5_care_team_member(participant: Json) -> Json:
    (role,) = participant["role"]  # R5 gives a participant one role
    return {**participant, "role": role}


def _r5_consent(resource: Json) -> Json:
    """An R4 objection (a deny provision on everything) as R5 writes it: a ``decision`` and a period.

    R5 provisions are exceptions to the decision, so an R4 provision limited to some actors has no
    direct R5 form; the demo's R5 source records objections only.
    """
    provision = resource["provision"]
    if set(provision) - {"type", "period"}:
        raise ValueError("the demo writes only whole-record decisions in R5 Consents")
    scope = {"coding": [{"system": _CONSENT_SCOPE, "code": "patient-privacy"}]}
    out: Json = {"resourceType": "Consent", "status": resource["status"]}
    out["category"] = [*resource["category"], scope]  # R5 folded scope into category
    out["subject"] = resource["patient"]
    out["date"] = resource["dateTime"][:10]  # a date in R5
    out["controller"] = resource["organization"]
    out["regulatoryBasis"] = [resource["policyRule"]]
    out["decision"] = provision["type"]
    if "period" in provision:
        out["period"] = provision["period"]
    return out
