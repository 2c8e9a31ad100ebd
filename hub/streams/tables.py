"""The worker's tables: their names, which are sealed, and how each is made (store, bound, batching)."""

from __future__ import annotations

from typing import Any

import faust

from hub import metrics
from hub.crypto.keyring import Keyring
from hub.crypto.records import SealedTable, patient_of_table_key
from hub.settings import Settings
from hub.streams.batch_writes import BatchWrites
from hub.streams.store import table_options
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
    if name not in SEALED_TABLES:
        plain = app.Table(name, default=None, partitions=settings.topic_partitions, **stored)
        return BatchWrites(plain, name=name)
    # Sealed values are bytes: the changelog and the state store hold ciphertext only.
    raw = app.Table(
        name,
        default=None,
        partitions=settings.topic_partitions,
        # faust derives the "raw" serializer from value_type=bytes (tables take no value_serializer).
        value_type=bytes,
        **stored,
    )
    opened = SealedTable(
        raw, keyring, topic=TopicNames.changelog(settings.app_id, name), key_id_of=patient_of_table_key
    )
    return BatchWrites(opened, name=name)
