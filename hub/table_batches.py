"""The format of a changelog record that carries a batch of table entries (hub.streams.changelog_batches
writes and rebuilds from them; ``hub consent show`` and the benchmark read them).

The record has the header :data:`hub.records.TABLE_BATCH_HEADER` (its value the format,
:data:`hub.records.TABLE_BATCH_FORMAT`), a key of its own (:data:`BATCH_KEY_PREFIX`), and as value its
entries packed one after the other: each one's key and value bytes exactly as its own changelog record
would carry them (a sealed value stays sealed under its patient's key, bound to the table key).

Pure: no faust, no Kafka client.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from hub.records import TABLE_BATCH_FORMAT, TABLE_BATCH_HEADER, header, headers_of

#: A packed batch stays under this size: several fit in one produce batch of a partition
#: (hub.streams.app.PRODUCER_BATCH_BYTES), and far under Kafka's default largest record (1 MiB).
BATCH_RECORD_BYTES = 256 * 1024
#: Each entry: the key's length, the value's length (DELETED_LENGTH: a deletion), then both.
_LENGTHS = struct.Struct(">II")
#: The value length that marks a deleted key (no value follows).
DELETED_LENGTH = 0xFFFFFFFF
#: Prefix of a batch record's key (a JSON string, as the table's keys are, followed by a random id):
#: each record keeps a key of its own, so compaction never drops one batch for another.
BATCH_KEY_PREFIX = "~batch:"

#: One entry as its changelog record would carry it: the encoded key, the encoded value (None: deleted).
Entry = tuple[bytes, bytes | None]


def pack_entries(entries: Iterable[Entry], limit: int = BATCH_RECORD_BYTES) -> list[bytes]:
    """The entries packed into batch values of at most ``limit`` bytes (an entry larger alone gets one
    of its own), in the order given."""
    packed: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for key, value in entries:
        entry = (
            _LENGTHS.pack(len(key), DELETED_LENGTH if value is None else len(value)) + key + (value or b"")
        )
        if parts and size + len(entry) > limit:
            packed.append(b"".join(parts))
            parts, size = [], 0
        parts.append(entry)
        size += len(entry)
    if parts:
        packed.append(b"".join(parts))
    return packed


def unpack_entries(data: bytes) -> list[Entry]:
    """The entries of a batch value; ValueError if it is cut short or malformed."""
    entries: list[Entry] = []
    view = memoryview(data)
    at = 0
    while at < len(view):
        if at + _LENGTHS.size > len(view):
            raise ValueError("a table batch record ends inside an entry's lengths")
        key_length, value_length = _LENGTHS.unpack_from(view, at)
        at += _LENGTHS.size
        deleted = value_length == DELETED_LENGTH
        end = at + key_length + (0 if deleted else value_length)
        if end > len(view):
            raise ValueError("a table batch record ends inside an entry")
        key = bytes(view[at : at + key_length])
        entries.append((key, None if deleted else bytes(view[at + key_length : end])))
        at = end
    return entries


def batch_entries(headers: Any, value: bytes | None) -> list[Entry] | None:
    """The entries of a changelog record if its headers (faust's or a Kafka client's) mark it as a
    batch record (None: a record of one key).

    ValueError if it is one this version cannot read: another format (a newer hub wrote it), or cut
    short.
    """
    found = header(headers_of(headers), TABLE_BATCH_HEADER)
    if found is None:
        return None
    if found != TABLE_BATCH_FORMAT:
        raise ValueError(f"table batch format {found!r}, this version reads {TABLE_BATCH_FORMAT!r}")
    return unpack_entries(bytes(value or b""))
