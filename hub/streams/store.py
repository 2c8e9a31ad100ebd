"""How a worker keeps its faust tables: RocksDB through rocksdict, one folder per worker, a bound per table.

Every table lives in RocksDB (``HUB_TABLE_STORE=rocksdb://``) unless a test chooses ``memory://``. Each
partition of each table is one RocksDB database in the worker's folder, which also keeps the
changelog offset it holds data up to: a restarted worker reads only the changelogs' tail.
docs/STATE.md has the bound of every table and how to size a worker.

- Memory: faust's RocksDB store gives each database its own 2 GiB block cache and 3 x 64 MiB write
  buffers, and a worker holds one database per partition of each of its six tables (standbys
  included): its RSS would follow the partition count, not the data. :class:`RocksDBStore` (faust's
  store, registered as ``hubrocksdb://`` through the ``faust.stores`` entry point in pyproject.toml)
  opens every database of the process with one block cache of ``HUB_TABLE_MEMORY_MB``, which also
  holds their index and filter blocks and to which their write buffers are charged: one bound.
- Horizon: the de-duplication tables (:data:`HORIZON_TABLES`) forget entries older than
  ``HUB_DEDUPE_HORIZON_DAYS`` in both copies: RocksDB's TTL drops them at compaction, and their
  changelogs are ``compact,delete`` with that retention, so a rebuild does not bring them back.
- One folder per worker process: RocksDB locks each database, so two workers of the host sharing a
  folder would wait on each other's locks. A worker takes the first folder of its app that no other
  process holds (``<app id>-data``, then ``<app id>-data-2``...), locked until it exits.
- A folder copies particular changelog topics: a table whose changelog was deleted and made again
  since is dropped at start (:func:`forget_foreign_tables`) and rebuilt, never resumed from; so is a
  folder written by an earlier format of this store (:data:`STORE_FORMAT`).
- Every database is opened with the hub's options only, never with those its OPTIONS file kept:
  reloaded, they stacked a second TTL filter that dropped live entries (:class:`BoundedOptions`).
- Outside the budget, glibc's malloc (:func:`tune_malloc`, unless the operator's environment says
  otherwise): each thread that allocates gets an arena of its own (up to eight per core), and
  RocksDB's threads allocate: the worker keeps :data:`MALLOC_ARENAS`. And glibc raises its mmap
  threshold to the largest block freed (up to 32 MiB), after which the Kafka client's fetch buffers
  (up to 4 MiB each) come from the heap and leave it full of holes: the worker fixes the threshold
  at :data:`MMAP_THRESHOLD_BYTES`, so large blocks go back to the system when freed.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as FaustRocksDBStore

from hub.errors import ConfigError
from hub.settings import Settings

#: Tables that remember what the hub has seen, to answer "duplicate": forgotten past the horizon.
HORIZON_TABLES = frozenset({"identity-seen-messages", "identity-seen-events"})
#: The share stage's decisions (hub.consent.decisions): kept for the policy's look-back of late
#: release (``backfill_days`` in config/policy.json), and a day more.
DECISION_TABLES = frozenset({"share-decided"})

#: glibc malloc arenas a worker keeps (``M_ARENA_MAX``, glibc's default is eight per core): fewer arenas
#: hold less freed memory between RocksDB's threads and the event loop (docs/PERFORMANCE.md).
MALLOC_ARENAS = 2
#: mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
#: Blocks of this size or more are mapped for themselves and unmapped when freed (glibc's initial
#: value). Set, it stays: glibc no longer raises it to the largest block freed, which made the Kafka
#: client's fetch buffers land in the heap and leave it fragmented, 40-70 MB of free heap held during
#: a rebuild (docs/STATE.md, "Memory while rebuilding").
MMAP_THRESHOLD_BYTES = 128 * 1024
#: mallopt's parameter number for the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3

#: faust's store scheme of each HUB_TABLE_STORE.
STORE_URLS = {"rocksdb://": "hubrocksdb://", "memory://": "memory://"}

MEBIBYTE = 1024 * 1024
#: Write buffer (memtable) of each database, and how many it may have: written to disk when full,
#: or sooner when all the process's write buffers reach half the memory budget.
WRITE_BUFFER_BYTES = 4 * MEBIBYTE
WRITE_BUFFERS = 2
#: Files each database keeps open (faust's default: 90 % of the process's limit, for each database).
MAX_OPEN_FILES = 64
#: Table folders one host's workers of one app may hold: more workers than this on a host would
#: exceed any sensible partition count (docs/DEPLOY.md, Scaling).
MAX_FOLDERS = 64

#: In a worker's faust table folder: the changelogs (table → Kafka topic id) its databases copy, and
#: the format of the store that wrote them (:data:`STORE_FORMAT`).
CHANGELOGS_FILE = "changelogs.json"
#: How often, at most, a table partition's changelog offset is written to its database under load.
#: faust writes it for every changelog record Kafka acknowledges (2.7 % of a loaded worker's event loop,
#: docs/PERFORMANCE.md, session 9); the offset only tells a restarted worker where to resume reading
#: the changelog, so one behind by up to this long costs a restart after kill -9 that much re-reading
#: (the records re-applied write the values the database already has), and nothing else.
OFFSET_WRITE_SECONDS = 1.0
#: 2: the databases are opened with the hub's options only (:class:`BoundedOptions`). A folder of an
#: earlier format may have lost entries at a compaction (a TTL filter applied twice): rebuilt once.
STORE_FORMAT = 2
#: RocksDB's one column family, the only one faust's store uses.
DEFAULT_COLUMN_FAMILY = "default"

SECONDS_PER_DAY = 24 * 3600
#: The table folders this process holds, locked until it exits (the kernel releases the lock, even
#: after kill -9, so a restarted worker takes its folder back).
_held: dict[Path, IO[bytes]] = {}


def tune_malloc() -> dict[str, bool]:
    """Set this process's glibc malloc for a long-lived worker, early, before the threads start.

    Two malloc arenas (:func:`limit_malloc_arenas`) and a fixed mmap threshold
    (:func:`fix_mmap_threshold`); each only where the operator's environment does not set it. Returns
    what was set.
    """
    return {"arenas": limit_malloc_arenas(), "mmap_threshold": fix_mmap_threshold()}


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Limit glibc's malloc arenas of this process, early, before the threads that would make more.

    True if the limit is set; False on another C library (no mallopt, or refused), or when the
    operator's MALLOC_ARENA_MAX (read by glibc itself at start) already says how many.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return _mallopt(M_ARENA_MAX, arenas)


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (see :data:`MMAP_THRESHOLD_BYTES`).

    True if set; False on another C library, or when the operator set it (MALLOC_MMAP_THRESHOLD_ or
    the glibc.malloc.mmap_threshold tunable, read by glibc itself at start).
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return _mallopt(M_MMAP_THRESHOLD, threshold)


def _mallopt(parameter: int, value: int) -> bool:
    """glibc's mallopt; False where the C library has none, or refuses."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(parameter, value))


@functools.cache
def memory_budget(total_bytes: int) -> tuple[rocksdict.Cache, rocksdict.WriteBufferManager]:
    """The process's block cache of ``total_bytes`` and the write-buffer manager charged to it.

    One pair per process (and size): every database opened with it shares the bound. Write buffers
    may take about half of it before RocksDB flushes the one being written; data, index and filter
    blocks the rest.
    """
    cache = rocksdict.Cache(total_bytes)
    return cache, rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
        total_bytes // 2, False, cache
    )


class BoundedOptions(RocksDBOptions):
    """faust's RocksDB (rocksdict) options, every database opened within the process's memory budget.

    Opened with exactly these options (:meth:`open`), never with those a database's OPTIONS file kept
    from its last session. Without them given, rocksdict reopens an existing database with the
    options in that file; once the process has opened one TTL database (RocksDB then knows its TTL
    filter's name), that file's ``TtlCompactionFilterFactory`` is rebuilt as the column family's own
    filter, and RocksDB's TTL wraps it in a second one. The inner filter then reads the last four
    bytes of each value (the stored value, its timestamp already taken off) as a write time: at the
    next compaction it drops live entries whose bytes read as an old time, faust's changelog offset
    (``b"6147"``, a date in 1999) among them, so a restart read the whole partition again
    (docs/STATE.md, "Restart").
    """

    def __init__(self, budget_bytes: int, **options: Any) -> None:
        super().__init__(**options)
        self.budget_bytes = budget_bytes

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        """Open the database at ``path`` with these options, and these only (see the class's text).

        ``read_only`` is faust's argument for python-rocksdb; with rocksdict faust opens read-write too.
        A ``rocksdict.Rdict`` in raw mode (bytes keys and values), typed as faust's ``open`` is.
        """
        access = (
            rocksdict.AccessType.read_write() if self.ttl is None else rocksdict.AccessType.with_ttl(self.ttl)
        )
        db = rocksdict.Rdict(
            str(path),
            options=self.as_options(),
            # The default column family's options given here, not read back from the database's
            # OPTIONS file: that file names the TTL filter of the last session, which rocksdict
            # would load and RocksDB wrap in another one (see the class's text).
            column_families={DEFAULT_COLUMN_FAMILY: self.as_options()},
            access_type=access,
        )
        db.set_read_options(rocksdict.ReadOptions())
        return db

    def as_options(self) -> rocksdict.Options:
        """faust's own options (raw keys, bloom filters, binary-search index), with the shared budget."""
        cache, write_buffers = memory_budget(self.budget_bytes)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_max_open_files(MAX_OPEN_FILES)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(WRITE_BUFFERS)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_write_buffer_manager(write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(cache)
        # Index and filter blocks in the cache too (else they grow with the data, outside any bound);
        # the newest files' pinned, as RocksDB advises with this setting.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


class RocksDBStore(FaustRocksDBStore):
    """faust's RocksDB store with rocksdict, its databases within the process's memory budget.

    The table's options carry the budget (``memory_budget_bytes``) and, for the dedupe tables, the TTL.
    """

    rocksdb_options: BoundedOptions

    def __init__(self, url: Any, app: Any, table: Any, *, options: dict[str, Any], **kwargs: Any) -> None:
        options = dict(options)
        budget = int(options.pop("memory_budget_bytes"))
        super().__init__(url, app, table, options=options, **kwargs)
        self.rocksdb_options = BoundedOptions(budget, ttl=options.get("ttl"), use_rocksdict=True)
        #: Changelog offsets acknowledged and not yet written (OFFSET_WRITE_SECONDS), by partition.
        self.unwritten_offsets: dict[Any, int] = {}
        self._offsets_written_at = 0.0

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        """Remember ``offset`` as the partition's last changelog offset in the database; written at
        most every OFFSET_WRITE_SECONDS (with every other partition's), and when the partition is
        revoked or the store stops, instead of once per acknowledged record."""
        self.unwritten_offsets[tp] = offset
        if time.monotonic() - self._offsets_written_at >= OFFSET_WRITE_SECONDS:
            self.write_offsets()

    def write_offsets(self, tps: Iterable[Any] | None = None) -> None:
        """Write the unwritten offsets (of ``tps`` only, when given) to their databases."""
        for tp in (
            list(self.unwritten_offsets) if tps is None else [t for t in tps if t in self.unwritten_offsets]
        ):
            super().set_persisted_offset(tp, self.unwritten_offsets.pop(tp))
        if tps is None:
            self._offsets_written_at = time.monotonic()

    def persisted_offset(self, tp: Any) -> int | None:
        """The partition's last changelog offset: the unwritten one if there is one."""
        unwritten = self.unwritten_offsets.get(tp)
        return unwritten if unwritten is not None else super().persisted_offset(tp)

    def revoke_partitions(self, table: Any, tps: Any) -> None:
        self.write_offsets(tps)
        super().revoke_partitions(table, tps)

    async def stop(self) -> None:
        self.write_offsets()
        await super().stop()


def horizon_seconds(settings: Settings) -> int:
    """The de-duplication horizon in seconds."""
    return settings.dedupe_horizon_days * SECONDS_PER_DAY


def decision_memory_seconds(settings: Settings) -> int:
    """How long the share stage's decisions are kept: the policy's look-back, and a day more, so that
    no record the stage may still read is dropped first."""
    from hub.consent import load_policy  # noqa: PLC0415 - the policy file is read only for this table

    return int((load_policy(settings.policy_file).backfill + timedelta(days=1)).total_seconds())


def forget_after_seconds(settings: Settings, table: str) -> int | None:
    """After how long ``table`` forgets an entry (RocksDB TTL and changelog retention); None: never."""
    if table in HORIZON_TABLES:
        return horizon_seconds(settings)
    if table in DECISION_TABLES:
        return decision_memory_seconds(settings)
    return None


def table_options(settings: Settings, table: str) -> dict[str, Any] | None:
    """The store options of ``table``: rocksdict, the memory budget, the horizon as TTL; None for memory.

    A new dict for each table: faust's RocksDB store pops ``driver`` out of the dict it is given.
    """
    if settings.table_store != "rocksdb://":
        return None
    options: dict[str, Any] = {
        "driver": "rocksdict",
        "memory_budget_bytes": settings.table_memory_mb * MEBIBYTE,
    }
    forget = forget_after_seconds(settings, table)
    if forget is not None:
        # RocksDB's TTL (rocksdict AccessType.with_ttl): an entry written longer ago than this is
        # dropped by the next compaction that reaches it.
        options["ttl"] = forget
    return options


def changelog_configs(settings: Settings, table: str) -> dict[str, str]:
    """The cleanup configs of ``table``'s changelog topic.

    Compacted (the latest value of each key); the tables that forget (the de-duplication tables past
    the horizon, the share stage's decisions past the policy's look-back) also deleted past that, so
    that a worker rebuilding them from the changelog does not bring forgotten entries back.
    Deletions (tombstones) are kept for the horizon too, not Kafka's default day: a worker that takes
    a partition back after a while reads the changelog from where its folder stopped, and must still
    find the deletions made meanwhile (a patient's held events, released).
    """
    horizon_ms = str(horizon_seconds(settings) * 1000)
    forget = forget_after_seconds(settings, table)
    if forget is not None:
        return {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(forget * 1000),
            "delete.retention.ms": horizon_ms,
        }
    return {"cleanup.policy": "compact", "delete.retention.ms": horizon_ms}


def claim_table_folder(settings: Settings) -> Path:
    """The folder of this worker's tables: the first of its app's that no other process holds, locked.

    Locked with ``flock`` on a file inside it, for the life of the process. ConfigError when
    :data:`MAX_FOLDERS` workers of this app already hold one on this host.
    """
    tables = settings.table_dir or settings.state_dir / "tables"
    for number in range(1, MAX_FOLDERS + 1):
        folder = tables / (f"{settings.app_id}-data" if number == 1 else f"{settings.app_id}-data-{number}")
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / "worker.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()  # another worker of this host holds it
            continue
        _held[folder] = lock
        return folder
    raise ConfigError(
        f"{MAX_FOLDERS} workers of {settings.app_id} already keep their tables under {tables}",
        hint="stop a worker, or give this one its own HUB_TABLE_DIR",
    )


def forget_foreign_tables(tabledir: Path, changelog_ids: Mapping[str, str]) -> list[str]:
    """Remove the databases of each table not built from the changelog that bears its name now.

    A database says up to which changelog offset it holds data; against another topic of the same
    name (deleted and made again, a new broker) that offset means nothing, and faust would go on with
    stale entries (a message still "seen", a patient's old state). ``changelog_ids`` gives each
    table's changelog topic id; the folder keeps those it was built from (:data:`CHANGELOGS_FILE`),
    with the store's format. A table whose id changed, or any table of a folder that kept none or
    was written by another format of the store (:data:`STORE_FORMAT`), is removed, to be rebuilt
    from its changelog. Returns the tables removed.
    """
    try:
        kept = json.loads((tabledir / CHANGELOGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        kept = {}
    built_from = (
        kept.get("changelogs", {}) if isinstance(kept, dict) and kept.get("format") == STORE_FORMAT else {}
    )
    removed = []
    for table, topic_id in sorted(changelog_ids.items()):
        if built_from.get(table) == topic_id:
            continue
        pattern = re.compile(rf"{re.escape(table)}-\d+\.db")
        stale = [path for path in tabledir.glob(f"{table}-*.db") if pattern.fullmatch(path.name)]
        for path in stale:
            shutil.rmtree(path)
        if stale:
            removed.append(table)
    tabledir.mkdir(parents=True, exist_ok=True)
    (tabledir / CHANGELOGS_FILE).write_text(
        json.dumps({"format": STORE_FORMAT, "changelogs": dict(changelog_ids)}, sort_keys=True),
        encoding="utf-8",
    )
    return removed
