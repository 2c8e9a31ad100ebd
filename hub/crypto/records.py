"""Which Kafka records are encrypted, under which key, and how readers open them.

Every record that carries clinical data is sealed: ``hub.identity.v1``, ``hub.share-merge.v1``,
``hub.pathway.v1``, every ``hub.pathway.<recipient>.v1``, ``hub.alerts.v1``, ``hub.dlq.v1`` and the
values of the faust tables (so their changelogs and state folders hold ciphertext only). Receipts and
AuditEvents carry ids and codes only and stay readable by their consumers.

Key ids are pseudonymous (:mod:`hub.crypto.keyids`): a patient's records use the network patient id
(the record key, or the alert's patient), except on a recipient's topic, where they use the key of
that (recipient, patient) pair (``pt-…@<recipient>``, the only keys the key service hands out); each
DLQ record has a key of its own (``dlq.YYYY-MM.<random>``). Headers say the
scheme (``hub-enc``), the key id (``hub-key-id``) and the record id bound into the associated data
(``hub-record-id``: the event id, the alert id, the DLQ record's origin, a table key, or a random
id); never any content.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from hub.crypto.envelope import SCHEME, is_envelope
from hub.crypto.keyids import recipient_key_id
from hub.crypto.keyring import Keyring
from hub.errors import CryptoError, EnvelopeInvalid
from hub.kafka.clients import Record
from hub.records import (
    CRYPTO_HEADERS,
    ENC_HEADER,
    EVENT_ID_HEADER,
    KEY_ID_HEADER,
    ORIGIN_HEADER,
    RECORD_ID_HEADER,
    Header,
    Outgoing,
    decode_json,
    encode_headers,
    encode_json,
    header,
)
from hub.topics import CHANGELOG_SUFFIX, TopicNames, recipient_of_topic

DLQ_KEY_PREFIX = "dlq."
#: How long the ingest topic keeps the sources' signed bytes (in the clear): long enough to ride out a
#: worker outage; `hub erase` deletes what the workers have processed sooner.
INGEST_RETENTION_MS = 7 * 24 * 3600 * 1000
#: How long the DLQ keeps rejects (encrypted under its monthly key) for `hub dlq replay`.
DLQ_RETENTION_MS = 30 * 24 * 3600 * 1000


def _table_key(key: bytes | None) -> str:
    """A changelog record's table key (faust writes keys as JSON)."""
    try:
        value = decode_json(key or b"null")
    except ValueError as exc:
        raise EnvelopeInvalid("a changelog record's key is not JSON") from exc
    return str(value)


def dlq_key_id(at: datetime) -> str:
    """A key of its own for each reject, named by month: `hub erase` can shred the rejects that name
    the erased patient, one by one, and a month's rejects can be shredded by prefix."""
    return f"{DLQ_KEY_PREFIX}{at.astimezone(UTC):%Y-%m}.{uuid.uuid4().hex}"


def patient_of_table_key(table_key: str) -> str:
    """The patient a table entry belongs to: ``pt-x``, ``pt-x#held`` or ``<practice>|pt-x``."""
    return table_key.rsplit("|", 1)[-1].split("#", 1)[0]


class RecordSealer:
    """Seals the records a worker sends to the encrypted topics of ``topics``."""

    def __init__(self, keyring: Keyring, topics: TopicNames, recipient_topics: Iterable[str] = ()) -> None:
        self.keyring = keyring
        self.topics = topics
        #: Each recipient topic and its recipient: its records are sealed under (recipient, patient) keys.
        self.recipients = {
            topic: recipient
            for topic in recipient_topics
            if (recipient := recipient_of_topic(topic, topics.prefix)) is not None
        }
        self.by_key = {topics.identity, topics.share_merge, topics.pathway, *self.recipients}

    def encrypts(self, topic: str) -> bool:
        """True when records to ``topic`` are sealed."""
        return topic in self.by_key or topic in (self.topics.alerts, self.topics.dlq)

    def seal(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header],
        *,
        now: datetime | None = None,
    ) -> tuple[bytes | None, tuple[tuple[str, bytes], ...]]:
        """``(value, headers)`` as sent: sealed for an encrypted topic, unchanged otherwise.

        Raises :class:`hub.errors.KeyDestroyed` when the record's patient was erased.
        """
        if value is None or not self.encrypts(topic):
            return value, tuple(headers)
        parent = None
        if topic == self.topics.dlq:
            key_id = dlq_key_id(now or datetime.now(UTC))
            record_id = header(headers, ORIGIN_HEADER) or uuid.uuid4().hex
        elif topic == self.topics.alerts:
            alert = decode_json(value)
            key_id, record_id = str(alert["patient"]["patient_id"]), str(alert["alert_id"])
        else:
            key_id, parent = self._record_key(topic, key)
            record_id = header(headers, EVENT_ID_HEADER) or uuid.uuid4().hex
        sealed = self.keyring.seal(value, key_id=key_id, topic=topic, record_id=record_id, parent=parent)
        added = encode_headers(((ENC_HEADER, SCHEME), (KEY_ID_HEADER, key_id), (RECORD_ID_HEADER, record_id)))
        return sealed, (*(h for h in headers if h[0] not in CRYPTO_HEADERS), *added)

    def keys_of(self, records: Iterable[Outgoing]) -> Iterator[tuple[str, str | None]]:
        """The ``(key id, parent)`` that :meth:`seal` will seal each record under, for
        :meth:`Keyring.prepare`: those to the topics keyed by patient only (alerts and rejects are few,
        and a reject's key is its own)."""
        for record in records:
            if record.value is not None and record.key and record.topic in self.by_key:
                yield self._record_key(record.topic, record.key)

    def _record_key(self, topic: str, key: bytes | None) -> tuple[str, str | None]:
        """The key id and parent of a record to a topic keyed by patient (identity, merges, pathways)."""
        if not key:
            raise EnvelopeInvalid(f"a record to {topic} needs its patient key to be encrypted")
        key_id = key.decode()
        recipient = self.recipients.get(topic)
        if recipient is None:
            return key_id, None
        # Never the patient's own key: the recipient obtains this one, and it opens nothing else.
        return recipient_key_id(key_id, recipient), key_id


class RecordOpener:
    """Opens sealed records; plaintext records (receipts, audit) pass through unchanged."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def open(
        self, topic: str, value: bytes | None, headers: Sequence[Header], *, required: bool = False
    ) -> bytes | None:
        """The plaintext of one record; a CryptoError says why not (``required``: refuse cleartext)."""
        if not is_envelope(value):
            if required and value is not None:
                raise EnvelopeInvalid(f"a record on {topic} is not encrypted")
            return value
        assert value is not None  # noqa: S101 - is_envelope said so; for mypy
        record_id = header(headers, RECORD_ID_HEADER)
        if record_id is None:
            raise EnvelopeInvalid(f"an encrypted record on {topic} has no {RECORD_ID_HEADER} header")
        return self.keyring.open(value, topic=topic, record_id=record_id)

    def open_record(self, record: Record) -> Record:
        """``record`` with its plaintext value, without the crypto headers; CryptoError when it cannot.

        A faust changelog record carries no headers: its record id is the table key (JSON in the key).
        """
        if not is_envelope(record.value):
            return record
        headers = record.headers
        if header(headers, RECORD_ID_HEADER) is None and record.topic.endswith(CHANGELOG_SUFFIX):
            headers = (*headers, *encode_headers({RECORD_ID_HEADER: _table_key(record.key)}))
        plain = self.open(record.topic, record.value, headers)
        return replace(
            record, value=plain, headers=tuple(h for h in record.headers if h[0] not in CRYPTO_HEADERS)
        )


@dataclass(frozen=True)
class Unreadable:
    """A record that could not be opened, and why (its code), for readers that report instead of failing."""

    record: Record
    error: CryptoError


def open_records(opener: RecordOpener | None, records: Iterable[Record]) -> Iterator[Record | Unreadable]:
    """Each record opened (or passed through without an opener), or an :class:`Unreadable`."""
    for record in records:
        if opener is None:
            yield record
            continue
        try:
            yield opener.open_record(record)
        except CryptoError as exc:
            yield Unreadable(record, exc)


class SealedTable(MutableMapping[str, Any]):
    """A faust table whose values are JSON sealed under the entry's patient key.

    The associated data binds each value to the table's changelog topic and the entry's key, so the
    changelog and a RocksDB state folder hold ciphertext only. An entry of a destroyed key reads as
    absent: the patient is forgotten.
    """

    def __init__(
        self,
        table: MutableMapping[str, Any],
        keyring: Keyring,
        *,
        topic: str,
        key_id_of: Callable[[str], str] = patient_of_table_key,
    ) -> None:
        self.table = table
        self.keyring = keyring
        self.topic = topic
        self.key_id_of = key_id_of

    def _open(self, key: str, raw: Any) -> Any:
        from hub.errors import KeyDestroyed  # noqa: PLC0415 - local: the common path never needs it

        if raw is None:
            return None
        try:
            return decode_json(self.keyring.open(bytes(raw), topic=self.topic, record_id=key))
        except KeyDestroyed:
            return None

    def get(self, key: str, default: Any = None) -> Any:
        """The entry's value, or ``default`` when absent or erased."""
        value = self._open(key, self.table.get(key))
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        value = self._open(key, self.table[key])
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        plain = encode_json(value)
        self.table[key] = self.keyring.seal(
            plain, key_id=self.key_id_of(key), topic=self.topic, record_id=key
        )

    def __delitem__(self, key: str) -> None:
        del self.table[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)
