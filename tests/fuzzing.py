"""Hypothesis strategies for fuzzing ingest: what a misbehaving or hostile sender could put on hub.ingest.v1.

Shared by the pure-core fuzz test (tests/unit/test_ingest_fuzz.py) and the one through a real worker
(tests/integration/test_fuzz_ingest.py). Seeds are real Synthea R4 resources from the shared data set,
cut into small Bundles (a Patient and a few of its resources, so references still resolve), plus
single resources; when the data set is absent a built-in Observation and Patient stand in.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

SYNTHEA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea-r4"
SYNTHEA_SYSTEM = "https://github.com/synthetichealth/synthea"

Json = Any


@dataclass(frozen=True)
class FuzzInput:
    """One ingest record to send: value and how its headers are made (signing happens at send time)."""

    value: bytes | None
    #: "good" (registered source, valid signature), "unsigned", "bad-signature", "expired",
    #: "unknown-source", "no-source", "source-only-garbage".
    auth: str
    content_type: bytes | None
    message_id: bytes | None
    #: Extra headers, appended after the real ones (duplicates of a real header included).
    extra_headers: tuple[tuple[str, bytes], ...]
    kind: str


_FALLBACK: tuple[Json, ...] = (
    {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:8d4c1a4e-1111-4a8a-9b1e-0c1d2e3f4a5b",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": SYNTHEA_SYSTEM, "value": "fuzz-1"}],
                    "birthDate": "1950-01-01",
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                    "subject": {"reference": "urn:uuid:8d4c1a4e-1111-4a8a-9b1e-0c1d2e3f4a5b"},
                    "effectiveDateTime": "2026-03-29T01:30:00+01:00",
                    "valueQuantity": {"value": 8.4, "unit": "%", "system": "http://unitsofmeasure.org"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    },
)


@cache
def seeds() -> tuple[Json, ...]:
    """Small Bundles and single resources cut from the three smallest Synthea bundles."""
    if not SYNTHEA_DIR.is_dir():
        return _FALLBACK
    # The seeds are fixed (not security: which entries to cut); hypothesis draws among and around them.
    rng = random.Random(7)  # noqa: S311
    found: list[Json] = []
    for path in sorted(SYNTHEA_DIR.glob("*.json"), key=lambda p: p.stat().st_size)[:3]:
        bundle = json.loads(path.read_bytes())
        entries = bundle.get("entry", [])
        patients = [e for e in entries if e["resource"]["resourceType"] == "Patient"]
        others = [e for e in entries if e["resource"]["resourceType"] != "Patient"]
        for _ in range(6):
            picked = rng.sample(others, k=min(len(others), rng.randint(1, 6)))
            found.append({**bundle, "entry": patients + picked})
        for entry in rng.sample(entries, k=min(len(entries), 6)):
            found.append(entry["resource"])
    return tuple(found) or _FALLBACK


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths_in(document: Json, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (bounded, so a big seed stays cheap)."""
    found = [prefix]
    if len(prefix) > 8:
        return found
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths_in(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document[:8]):
            found += paths_in(value, (*prefix, index))
    return found


def _set(document: Json, path: tuple[Any, ...], value: Json) -> Json:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        return {**document, head: _set(document[head], rest, value)}
    copy = list(document)
    copy[head] = _set(copy[head], rest, value)
    return copy


def _delete(document: Json, path: tuple[Any, ...]) -> Json:
    if len(path) == 1:
        if isinstance(document, dict):
            return {k: v for k, v in document.items() if k != path[0]}
        return [v for i, v in enumerate(document) if i != path[0]]
    head = path[0]
    if isinstance(document, dict):
        return {**document, head: _delete(document[head], path[1:])}
    copy = list(document)
    copy[head] = _delete(copy[head], path[1:])
    return copy


@st.composite
def mutated_fhir(draw: st.DrawFn) -> Json:
    """A real resource with one to four changes: values replaced, keys deleted, huge or odd values."""
    document = draw(st.sampled_from(seeds()))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = paths_in(document)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "huge", "deep", "number", "type"]))
        if action == "delete" and path:
            document = _delete(document, path)
        elif action == "huge":
            document = _set(document, path, "x" * draw(st.sampled_from([10_000, 300_000])))
        elif action == "deep":
            depth = draw(st.sampled_from([50, 500, 5_000]))
            nested: Json = "leaf"
            for _ in range(depth):
                nested = {"extension": [nested]}
            document = _set(document, path, nested)
        elif action == "number":
            document = _set(document, path, draw(st.sampled_from([10**400, -(10**40), 1e308, -0.0, 2**63])))
        elif action == "type" and isinstance(document, dict):
            document = {**document, "resourceType": draw(st.text(max_size=20))}
        else:
            document = _set(document, path, draw(_json_values))
    return document


def _json_bytes(document: Json) -> bytes:
    # Deep documents overflow the encoder's recursion: such a sender would send the bytes anyway.
    try:
        return json.dumps(document, separators=(",", ":")).encode()
    except RecursionError:
        return b'{"resourceType":"Observation","extension":' + b"[" * 20_000 + b"]" * 20_000 + b"}"


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes | None]:
    """A value and what kind of abuse made it."""
    kind = draw(
        st.sampled_from(
            [
                "random-bytes",
                "truncated",
                "mutated",
                "mutated",
                "mutated",
                "valid",
                "valid",
                "deep-array",
                "non-finite",
                "text-encodings",
                "xml",
                "null-value",
            ]
        )
    )
    if kind == "random-bytes":
        return kind, draw(st.binary(max_size=2_000))
    if kind == "truncated":
        whole = _json_bytes(draw(st.sampled_from(seeds())))
        return kind, whole[: draw(st.integers(min_value=0, max_value=len(whole) - 1))]
    if kind == "mutated":
        return kind, _json_bytes(draw(mutated_fhir()))
    if kind == "valid":
        return kind, _json_bytes(draw(st.sampled_from(seeds())))
    if kind == "deep-array":
        depth = draw(st.sampled_from([1_000, 100_000]))
        return kind, b"[" * depth + b"]" * depth
    if kind == "non-finite":
        # Python's json accepts NaN and Infinity; RFC 8259 and every other consumer do not.
        token = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999"]))
        return kind, (
            b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
            b'"subject":{"identifier":{"system":"' + SYNTHEA_SYSTEM.encode() + b'","value":"fz"}},'
            b'"valueQuantity":{"value":' + token + b"}}"
        )
    if kind == "text-encodings":
        text = _json_bytes(draw(st.sampled_from(seeds())))[:4000].decode()
        encoding = draw(st.sampled_from(["utf-16", "utf-32", "latin-1"]))
        return kind, text.encode(encoding, errors="replace")
    if kind == "xml":
        body = draw(
            st.sampled_from(
                [
                    b'<Observation xmlns="http://hl7.org/fhir"><status value="final"/>',
                    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
                    b'<Patient xmlns="http://hl7.org/fhir"><id value="&b;"/></Patient>',
                    b'<Patient xmlns="http://hl7.org/fhir">'
                    + b"<extension>" * 3000
                    + b"</extension>" * 3000
                    + b"</Patient>",
                    b'<Patient xmlns="http://example.org/not-fhir"><id value="p"/></Patient>',
                ]
            )
        )
        return kind, body + draw(st.binary(max_size=20))
    return kind, None


_HEADER_TEXT = st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode))


@st.composite
def fuzz_inputs(draw: st.DrawFn) -> FuzzInput:
    """One abusive (or, now and then, valid) ingest record."""
    kind, value = draw(bodies())
    # Most inputs authenticate, so that most of them reach decoding, validation and splitting.
    auth = draw(
        st.sampled_from(
            ["good"] * 12 + ["unsigned", "bad-signature", "expired", "unknown-source", "no-source"]
        )
    )
    plain = b"application/fhir+xml" if kind == "xml" else b"application/fhir+json"
    content_type = draw(
        st.one_of(
            st.sampled_from([None, plain]),
            st.sampled_from([None, plain]),
            st.sampled_from(
                [
                    b"application/fhir+json; fhirVersion=4.0",
                    b"application/fhir+json; fhirVersion=3.0",
                    b"application/fhir+json; fhirVersion=5.0",
                    b"application/fhir+json; fhirVersion=1.0",
                    b"application/fhir+xml; fhirVersion=4.0",
                    b"text/plain",
                    b"application/fhir+json; fhirVersion=",
                    b";;;=;",
                ]
            ),
            _HEADER_TEXT,
        )
    )
    message_id = draw(st.one_of(st.none(), _HEADER_TEXT))
    extra = draw(
        st.lists(  # after the real headers: a receiver must read the first occurrence
            st.tuples(
                st.sampled_from(["hub-source", "hub-signature", "content-type", "x-fuzz", "HUB-SOURCE"]),
                _HEADER_TEXT,
            ),
            max_size=1,
        )
    )
    return FuzzInput(value, auth, content_type, message_id, tuple(extra), kind)


def headers_for(
    case: FuzzInput, *, source_id: str, secret: bytes, now: int, sign: Any
) -> list[tuple[str, bytes]]:
    """The record's headers: the ones its ``auth`` says, then its content type, id and extras."""
    value = case.value or b""
    headers: list[tuple[str, bytes]] = []
    if case.auth == "unknown-source":
        headers.append(("hub-source", b"no-such-source"))
    elif case.auth != "no-source":
        headers.append(("hub-source", source_id.encode()))
    if case.auth in ("good", "unknown-source", "no-source"):
        headers.append(("hub-signature", sign(secret, source_id, value, now).encode()))
    elif case.auth == "bad-signature":
        headers.append(
            ("hub-signature", sign(b"not-the-key-0123456789abcdef", source_id, value, now).encode())
        )
    elif case.auth == "expired":
        headers.append(("hub-signature", sign(secret, source_id, value, now - 7200).encode()))
    if case.content_type is not None:
        headers.append(("content-type", case.content_type))
    if case.message_id is not None:
        headers.append(("hub-message-id", case.message_id))
    return headers + list(case.extra_headers)
