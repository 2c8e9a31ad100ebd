"""The worker's tables: their names, which are sealed, and how each is made (store, bound, batching)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import faust

from hub import metrics
from hub.crypto.keyring import Keyring
from hub.crypto.records import SealedTable, patient_of_table_key
from hub.records import decode_json, encode_json
from hub.settings import Settings
from hub.streams.batch_writes import BatchWrites
from hub.streams.changelog_batches import BatchedChangelogTable
from hub.streams.store import DECISION_TABLES, HORIZON_TABLES, table_options
from hub.topics import TopicNames

#: The faust tables of the worker; their changelog topics are created before faust starts (see
#: ``hub.streams.worker.create_contract_topics``): when faust creates them itself at start-up, the
#: consumer can miss them in its first metadata and wait on their recovery forever.
TABLES = (
    "identity-aliases",
    "identity-seen-messages",
    "identity-seen-events",
    "share-state",
    "share-decided",
    "eligibility-facts",
    "eligibility-alerted",
)


#: Tables whose values are sealed under the entry's patient key (hub.crypto.records.SealedTable);
#: ``identity-seen-messages`` holds source message ids and event ids only, in the clear.
SEALED_TABLES = frozenset(TABLES) - {"identity-seen-messages"}
#: Tables whose changelog takes a batch's entries in one record per partition
#: (hub.streams.changelog_batches): those that forget their entries by age (the de-duplication tables
#: past the horizon, the share stage's decisions past the look-back), whose changelog's retention, not
#: its compaction, is what bounds it.
BATCHED_CHANGELOG_TABLES = HORIZON_TABLES | DECISION_TABLES


class JsonValues(MutableMapping[str, Any]):
    """A table of bytes values, read and written as JSON documents (a table in the clear whose
    changelog is batched: the batch's packing carries bytes)."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table

    def get(self, key: str, default: Any = None) -> Any:
        raw = self.table.get(key)
        return default if raw is None else decode_json(bytes(raw))

    def __getitem__(self, key: str) -> Any:
        return decode_json(bytes(self.table[key]))

    def __setitem__(self, key: str, value: Any) -> None:
        self.table[key] = encode_json(value)

    def __delitem__(self, key: str) -> None:
        del self.table[key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.table.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)


def make_table(app: faust.App, settings: Settings, keyring: Keyring, name: str) -> BatchWrites:
    """One of the worker's TABLES; values of the SEALED_TABLES are sealed under their patient's key.

    Co-partitioned with the topic of its agent (hub.identity.v1 or hub.pathway.v1, both keyed by
    patient): each worker remembers only its own patients. Writes are held for a batch and written
    once per key (hub.streams.batch_writes): the agent using it flushes it.
    """
    stored: dict[str, Any] = {
        # RocksDB with bounded memory, the dedupe horizon as TTL (hub.streams.store); None for memory.
        "options": table_options(settings, name),
        # hub_table_changelog_records_total: what a start (or a standby copy) read from the changelog.
        "on_changelog_event": metrics.changelog_reader(name),
    }
    # Sealed values, and every value of a batched changelog, are bytes: the changelog and the state
    # store hold ciphertext only, and a batch record packs bytes. faust derives the "raw" serializer
    # from value_type=bytes (tables take no value_serializer).
    raw_values = name in SEALED_TABLES or name in BATCHED_CHANGELOG_TABLES
    options: dict[str, Any] = {
        "default": None,
        "partitions": settings.topic_partitions,
        **({"value_type": bytes} if raw_values else {}),
        **stored,
    }
    raw: MutableMapping[str, Any]
    if name in BATCHED_CHANGELOG_TABLES:
        batched = BatchedChangelogTable(app, name=name, beacon=app.tables.beacon, **options)
        app.tables.add(batched)
        raw, batching = batched, batched.batching
    else:
        raw, batching = app.Table(name, **options), None
    if name in SEALED_TABLES:
        opened: MutableMapping[str, Any] = SealedTable(
            raw, keyring, topic=TopicNames.changelog(settings.app_id, name), key_id_of=patient_of_table_key
        )
    else:
        opened = JsonValues(raw) if raw_values else raw
    return BatchWrites(opened, name=name, batching=batching)
