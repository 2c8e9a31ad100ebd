"""``hub publish``: sign FHIR files as a registered source and send them to ``hub.ingest.v1``.

A JSON file over the hub's payload limit is compacted (whitespace removed); a Bundle that still does
not fit is split into several Bundles of the same type. Each part repeats the Bundle's Patient
entries, so every part resolves its own patient references, and a reference to an entry that went
to another part is rewritten from ``urn:uuid:`` to ``Type/id``. The repeated Patient makes the same
pathway event (same ``event_id``), which consumers de-duplicate. A Bundle is only split between
entries: an entry that alone does not fit, or a single resource, leaves a record over the limit.

:func:`checked_publications` refuses, before anything is sent, a file the hub would refuse for what
it is rather than for its content: unreadable, not JSON / well-formed XML, or over the limit once
compacted and split. :func:`deliver` counts as sent only what the broker acknowledged, and where it
put each record. :class:`ReceiptWait` then takes the source's receipts from its own topic,
``hub.receipts.<source>.v1`` (the one its principal may read): receipts come at least once, so each
acknowledged record is matched by its ingest coordinates, the receipts' de-duplication key.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError, KafkaTimeoutError
from lxml import etree

from hub.errors import BrokerError, BrokerRefused, ConfigError, ErrorCode, PayloadRefused
from hub.ingest.outcome import KafkaCoordinates
from hub.ingest.signature import sign
from hub.records import (
    CONTENT_TYPE_HEADER,
    MESSAGE_ID_HEADER,
    SIGNATURE_HEADER,
    SOURCE_HEADER,
    Headers,
    encode_headers,
)

#: Bytes kept free under the limit for the Bundle wrapper around the entries.
_WRAPPER_ALLOWANCE = 4096


@dataclass(frozen=True)
class Publication:
    """One signed record ready to send."""

    key: bytes
    value: bytes
    headers: Headers
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
    return _publications(
        path,
        path.read_bytes(),
        source_id=source_id,
        secret=secret,
        max_bytes=max_bytes,
        now=now,
        fhir_version=fhir_version,
    )


def _publications(
    path: Path,
    raw: bytes,
    *,
    source_id: str,
    secret: bytes,
    max_bytes: int,
    now: int | None,
    fhir_version: str | None,
) -> list[Publication]:
    if _is_xml(path):
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
                headers=encode_headers(
                    (
                        (SOURCE_HEADER, source_id),
                        (SIGNATURE_HEADER, sign(secret, source_id, body, timestamp)),
                        (CONTENT_TYPE_HEADER, media),
                        (MESSAGE_ID_HEADER, message_id),
                    )
                ),
                label=path.name if len(bodies) == 1 else f"{path.name} (part {n + 1}/{len(bodies)})",
            )
        )
    return publications


def _is_xml(path: Path) -> bool:
    """Sent as FHIR XML: the file's suffix decides, as for the content-type."""
    return path.suffix.lower() == ".xml"


# The hub's own parser settings (hub.ingest.decode): no DTDs, entities or network, even for a check.
_SAFE_XML = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _syntax_problem(raw: bytes, *, xml: bool) -> str | None:
    """Why the hub could not parse the body at all (its ``payload.malformed``), or None.

    Positions only: a parser's message can quote the text it choked on.
    """
    if xml:
        try:
            root = etree.fromstring(raw, parser=_SAFE_XML)
        except etree.XMLSyntaxError as exc:
            return f"not well-formed XML (line {exc.lineno})"
        return "XML with a DOCTYPE, which the hub refuses" if root.getroottree().docinfo.doctype else None
    try:
        json.loads(raw.decode("utf-8-sig"))  # as the hub reads it: UTF-8, a BOM tolerated
    except UnicodeDecodeError:
        return "not UTF-8"
    except json.JSONDecodeError as exc:
        return f"not JSON (line {exc.lineno}, column {exc.colno})"
    except (ValueError, RecursionError):  # an integer too long to convert, nesting too deep
        return "not JSON the hub can read"
    return None


def checked_publications(
    path: Path, *, source_id: str, secret: bytes, max_bytes: int, fhir_version: str | None = None
) -> list[Publication]:
    """:func:`publications_for_file`, or an error when the hub would refuse the file whatever it says.

    Raises ConfigError (the file cannot be read), PayloadRefused ``payload.malformed`` (not UTF-8
    JSON; for a ``.xml`` file, not well-formed XML or with a DOCTYPE) or ``payload.too_large`` (a
    record still over ``max_bytes`` once compacted and split).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path} ({exc.strerror or type(exc).__name__})",
            hint="check the path and its permissions",
        ) from exc
    problem = _syntax_problem(raw, xml=_is_xml(path))
    if problem is not None:
        expected = "FHIR XML" if _is_xml(path) else "FHIR JSON (UTF-8)"
        raise PayloadRefused(
            ErrorCode.PAYLOAD_MALFORMED,
            f"{path}: {problem}; nothing was sent",
            hint=f"the hub reads a {path.suffix or 'suffix-less'} file as {expected}: fix the file, or "
            "give it the suffix of what it holds (.json or .xml)",
        )
    publications = _publications(
        path,
        raw,
        source_id=source_id,
        secret=secret,
        max_bytes=max_bytes,
        now=None,
        fhir_version=fhir_version,
    )
    oversized = [pub for pub in publications if len(pub.value) > max_bytes]
    if oversized:
        largest = max(len(pub.value) for pub in oversized)
        if len(publications) > 1:
            what = (
                f"split into {len(publications)} parts, {len(oversized)} still over the limit (largest "
                f"{largest:,} bytes): a Bundle is split between entries, and an entry alone does not fit"
            )
        elif largest < len(raw):
            what = f"{len(raw):,} bytes, still {largest:,} once compacted"
        else:
            what = f"{largest:,} bytes"
        raise PayloadRefused(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"{path}: {what}; the hub takes at most {max_bytes:,} bytes per record "
            "(HUB_MAX_PAYLOAD_BYTES); nothing was sent",
            hint="send it as smaller inputs: fewer entries per Bundle, or large attachments by "
            "reference (DocumentReference with a URL) rather than inline",
        )
    return publications


#: The errors that mean a record is too large for the topic, and what each says in words.
_TOO_LARGE = {
    "MessageSizeTooLargeError": "the record is larger than the topic accepts (its max.message.bytes)",
    "RecordListTooLargeError": "the record is larger than the topic accepts (its segment.bytes)",
}


@dataclass(frozen=True)
class Refusal:
    """A record the broker (or the Kafka client before it) would not take, and why."""

    label: str
    reason: str
    too_large: bool


def refusal(pub: Publication, exc: BaseException) -> Refusal:
    """The refusal of ``pub``: the error's name and message, which never quote the record."""
    name = type(exc).__name__
    said = next((str(arg) for arg in getattr(exc, "args", ()) if arg), "")
    known = _TOO_LARGE.get(name)
    if known is not None:
        return Refusal(pub.label, f"{known} ({name}{': ' + said if said else ''})", too_large=True)
    return Refusal(pub.label, f"{name}: {said}" if said else name, too_large=False)


@dataclass(frozen=True)
class Delivery:
    """What became of the records of one run: acknowledged by the broker, or refused."""

    acknowledged: tuple[Publication, ...]
    refused: tuple[Refusal, ...]
    #: Where the broker put each acknowledged record: the coordinates its receipt names.
    placed: tuple[tuple[KafkaCoordinates, Publication], ...] = ()


def deliver(
    sender: Any, topic: str, publications: Sequence[Publication], *, done: Callable[[], None]
) -> Delivery:
    """Send every publication and wait for each one's acknowledgement (``sender``: a KafkaProducer).

    ``done()`` is called as each record is settled. Raises BrokerError when the topic is unavailable.
    """
    pending = []
    refused: list[Refusal] = []
    for pub in publications:
        try:
            pending.append((pub, sender.send(topic, key=pub.key, value=pub.value, headers=list(pub.headers))))
        except KafkaTimeoutError as exc:  # no metadata for the topic within max_block_ms
            raise BrokerError(
                f"topic {topic} is not available ({type(exc).__name__})",
                hint="create the topics (`hub topics create`), or check HUB_TOPIC_PREFIX and "
                "HUB_BOOTSTRAP_SERVERS",
            ) from exc
        except KafkaError as exc:  # refused by the client itself (its max_request_size, buffer_memory)
            refused.append(refusal(pub, exc))
            done()
    sender.flush()
    acknowledged: list[Publication] = []
    placed: list[tuple[KafkaCoordinates, Publication]] = []
    for pub, future in pending:
        try:
            metadata = future.get()  # settled by the flush: the broker's acknowledgement, or its error
        except KafkaError as exc:
            refused.append(refusal(pub, exc))
        else:
            acknowledged.append(pub)
            placed.append((KafkaCoordinates(metadata.topic, metadata.partition, metadata.offset), pub))
        done()
    return Delivery(tuple(acknowledged), tuple(refused), tuple(placed))


@dataclass
class ReceiptWait:
    """The receipts one run waits for: one per acknowledged record, matched by ingest coordinates.

    Receipts are delivered at least once, with the same content each time: a second receipt for a
    record already answered, and the receipts of other inputs (an earlier run, another process of
    the same source), are passed over. Matching by coordinates rather than message id also tells
    apart two records with the same body, and cannot be fooled by a receipt for someone else's
    record that claims this source's id.
    """

    waiting: dict[KafkaCoordinates, Publication]
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, delivery: Delivery) -> ReceiptWait:
        """Wait for a receipt for every record ``delivery`` placed."""
        return cls(dict(delivery.placed))

    def take(self, receipt: Any) -> tuple[Publication, dict[str, Any]] | None:
        """(the record, its receipt) when ``receipt`` is the first one for an awaited record; else None."""
        if not isinstance(receipt, dict) or not isinstance(receipt.get("ingest"), dict):
            return None
        try:
            where = KafkaCoordinates(**receipt["ingest"])
        except TypeError:  # not the {topic, partition, offset} of a hub receipt
            return None
        pub = self.waiting.pop(where, None)
        if pub is None:
            return None
        status = str(receipt.get("status"))
        self.counts[status] = self.counts.get(status, 0) + 1
        return pub, receipt

    @property
    def done(self) -> bool:
        return not self.waiting

    def summary(self) -> str:
        """``2 accepted, 1 rejected``: the statuses seen, or ``none``."""
        return ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items())) or "none"

    def failures(self) -> int:
        """Records rejected, or without a receipt yet."""
        return len(self.waiting) + self.counts.get("rejected", 0)


def refused_error(delivery: Delivery, *, topic: str, max_bytes: int) -> BrokerRefused:
    """The error ``hub publish`` ends with when records were refused: the first reason, what to do."""
    first = delivery.refused[0]
    if first.too_large:
        hint = (
            f"the topic takes smaller records than this hub's limit ({max_bytes:,} bytes, "
            "HUB_MAX_PAYLOAD_BYTES) lets through: split the Bundle into smaller inputs, or set "
            "HUB_MAX_PAYLOAD_BYTES as the hub's workers have it (they create the topic for twice "
            "their limit)"
        )
    else:
        hint = "the broker's log says more"
    if delivery.acknowledged:
        hint += f"; the {len(delivery.acknowledged)} records acknowledged were sent and get their receipts"
    total = len(delivery.acknowledged) + len(delivery.refused)
    others = f" and {len(delivery.refused) - 1} more" if len(delivery.refused) > 1 else ""
    return BrokerRefused(
        f"the broker refused {first.label}{others} ({total} records sent to {topic}): {first.reason}",
        hint=hint,
    )


def fhir_files(paths: list[Path]) -> Iterator[Path]:
    """The .json and .xml files named or found (recursively, sorted) under the given paths."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in (".json", ".xml"))
        else:
            yield path
