"""``hub publish``: sign FHIR files as a registered source and send them to ``hub.ingest.v1``.

Bundles over the hub's payload limit are split into several Bundles of the same type. Each part
repeats the Bundle's Patient entries, so every part resolves its own patient references, and a
reference to an entry that went to another part is rewritten from ``urn:uuid:`` to ``Type/id``.
The repeated Patient makes the same pathway event (same ``event_id``), which consumers de-duplicate.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.ingest.pipeline import CONTENT_TYPE_HEADER, MESSAGE_ID_HEADER, SIGNATURE_HEADER, SOURCE_HEADER
from hub.ingest.signature import sign

#: Bytes kept free under the limit for the Bundle wrapper around the entries.
_WRAPPER_ALLOWANCE = 4096


@dataclass(frozen=True)
class Publication:
    """One signed record ready to send."""

    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    label: str  # file name and part, for progress and errors


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _rewrite_references(node: Any, moved: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: (moved.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite_references(v, moved))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_references(item, moved) for item in node]
    return node


def split_bundle(bundle: dict[str, Any], max_bytes: int) -> list[dict[str, Any]]:
    """The Bundle itself when it fits, else parts that each fit (see the module docstring)."""
    if len(_dumps(bundle)) <= max_bytes or bundle.get("resourceType") != "Bundle":
        return [bundle]
    entries = bundle.get("entry", [])
    patients = [e for e in entries if (e.get("resource") or {}).get("resourceType") == "Patient"]
    others = [e for e in entries if e not in patients]
    budget = max_bytes - _WRAPPER_ALLOWANCE - sum(len(_dumps(p)) for p in patients)
    if budget <= 0:
        return [bundle]  # cannot help: the hub will answer payload.too_large
    groups: list[list[dict[str, Any]]] = [[]]
    used = 0
    for entry in others:
        size = len(_dumps(entry)) + 1
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(entry)
        used += size
    part_of = {e.get("fullUrl"): n for n, group in enumerate(groups) for e in group if e.get("fullUrl")}
    relative = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for group in groups
        for e in group
        if e.get("fullUrl") and (e.get("resource") or {}).get("id")
    }
    parts = []
    for n, group in enumerate(groups):
        moved = {url: ref for url, ref in relative.items() if part_of.get(url) != n}
        wrapper = {k: v for k, v in bundle.items() if k not in ("entry", "id")}
        parts.append({**wrapper, "entry": patients + [_rewrite_references(e, moved) for e in group]})
    return parts


def message_id_for(value: bytes) -> str:
    """Idempotency key: the body's hash, so sending the same content twice is a known duplicate."""
    return "sha256:" + hashlib.sha256(value).hexdigest()[:40]


def publications_for_file(
    path: Path,
    *,
    source_id: str,
    secret: bytes,
    max_bytes: int,
    now: int | None = None,
    fhir_version: str | None = None,
) -> list[Publication]:
    """Signed records for one file (several when a large Bundle is split).

    ``fhir_version`` ("3.0", "4.0", "5.0"...) is sent as the content-type's ``fhirVersion`` parameter;
    without it the hub reads the file in the source's ``default_fhir_version``.
    """
    raw = path.read_bytes()
    if path.suffix.lower() == ".xml":
        bodies, media = [raw], "application/fhir+xml"
    else:
        media = "application/fhir+json"
        bodies = [raw]
        if len(raw) > max_bytes:
            try:
                document = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass  # send as is: the hub will receipt it payload.malformed
            else:
                if isinstance(document, dict):
                    # Compact JSON first; split only what still does not fit.
                    bodies = [_dumps(part) for part in split_bundle(document, max_bytes)]
    if fhir_version is not None:
        media += f"; fhirVersion={fhir_version}"
    timestamp = int(time.time()) if now is None else now
    publications = []
    for n, body in enumerate(bodies):
        message_id = message_id_for(body)
        publications.append(
            Publication(
                key=message_id.encode(),
                value=body,
                headers=(
                    (SOURCE_HEADER, source_id.encode()),
                    (SIGNATURE_HEADER, sign(secret, source_id, body, timestamp).encode()),
                    (CONTENT_TYPE_HEADER, media.encode()),
                    (MESSAGE_ID_HEADER, message_id.encode()),
                ),
                label=path.name if len(bodies) == 1 else f"{path.name} (part {n + 1}/{len(bodies)})",
            )
        )
    return publications


def fhir_files(paths: list[Path]) -> Iterator[Path]:
    """The .json and .xml files named or found (recursively, sorted) under the given paths."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in (".json", ".xml"))
        else:
            yield path
